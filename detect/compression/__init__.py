"""How a model is made smaller: truncated SVD of the box head, weight / unit / Fisher pruning, and the
report that compares them (the layer surgery itself is in ``detect.models.svd`` and ``detect.models.pruning``)."""

# the names the command line offers (read without importing torch)
PRUNE_METHODS = ("weight", "unit", "fisher")
UNIT_CRITERIA = ("l2", "l1", "activation")  # unit pruning's ranking (Fisher pruning ranks by Fisher)
REPORT_METHODS = ("svd", *PRUNE_METHODS)
