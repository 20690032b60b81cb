"""detect: the R-CNN family of object detectors built from one set of shared parts.

Contracts used everywhere in the package (README, "Contracts"):

- boxes are float32 ``(N, 4)`` xyxy in absolute pixels of the image they belong to;
- labels are int64 in ``1..C``; ``0`` is background;
- a dataset item is ``(image, target)`` with ``image`` an ``HxWx3`` uint8 RGB array.
"""

__version__ = "0.1.0"

from detect import _moved

_moved.install()
