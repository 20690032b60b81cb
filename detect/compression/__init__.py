"""How a model is made smaller: truncated SVD of the box head, weight / unit / Fisher pruning, and the
report that compares them (the layer surgery itself is in ``detect.models.svd`` and ``detect.models.pruning``)."""
