"""Measurements against the reference libraries (``detect benchmark``). Nothing here imports torch at
package level: the command's ``--help`` lists :data:`ACCURACY_RUNS` without it."""

# the runs of the same-budget accuracy comparison (detect.benchmark.frcnn.accuracy_same_budget), in the
# order its table prints them
ACCURACY_RUNS = ("detect", "detect_finetuned", "torchvision")
