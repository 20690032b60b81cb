"""Module paths of the layout before 0.2 (one ``detect/engine/`` for six concerns), kept importable for
one release: ``from detect.engine.trainer import train`` still works and warns once with the new path.

An old path is a module whose attributes are looked up, on first use, in the modules that now hold
them (a module that was split names each part). This is the package's one dynamic import: the
table below is what it can import, and ``tests/test_layers.py`` checks that every target exists and
that no code in the package or its tests still uses an old path.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Dict, Tuple

REMOVED_IN = "0.3"

MOVED: Dict[str, Tuple[str, ...]] = {
    "detect.engine": ("detect.inference",),
    "detect.engine.checkpoint": ("detect.checkpoint.storage", "detect.inference.loading"),
    "detect.engine.compress": ("detect.compression.svd_checkpoint",),
    "detect.engine.compress_report": ("detect.compression.sparsity_report",),
    "detect.engine.device": ("detect.utils.device",),
    "detect.engine.distributed": ("detect.training.distributed",),
    "detect.engine.ema": ("detect.training.ema",),
    "detect.engine.errors": ("detect.evaluation.error_analysis",),
    "detect.engine.evaluation": ("detect.evaluation.metrics",),
    "detect.engine.export": ("detect.export.onnx_export",),
    "detect.engine.infer_folder": ("detect.inference.folders",),
    "detect.engine.inference": ("detect.inference.over_dataset",),
    "detect.engine.onnx_model": ("detect.inference.onnx_backend",),
    "detect.engine.predictor": ("detect.inference.predictor",),
    "detect.engine.prune": ("detect.compression.pruning_runs",),
    "detect.engine.quantize": ("detect.export.int8",),
    "detect.engine.rcnn": ("detect.training.rcnn_phases",),
    "detect.engine.report": ("detect.evaluation.report",),
    "detect.engine.results_io": ("detect.evaluation.results_files",),
    "detect.engine.runtime": ("detect.inference.runtime",),
    "detect.engine.svm": ("detect.training.svm",),
    "detect.engine.trainer": ("detect.training.trainer",),
    "detect.data.dataset": ("detect.data.detection_dataset",),
    "detect.models.build": ("detect.models.parts", "detect.models.registry"),
    "detect.models.prune": ("detect.models.pruning",),
    "detect.benchmark.infer": ("detect.benchmark.folder_throughput",),
    "detect.benchmark.proposals": ("detect.benchmark.selective_search",),
    "detect.utils.cli": ("detect.cli.common",),
    "detect.utils.files": ("detect.utils.atomic",),
}


class _MovedModule(types.ModuleType):
    """An old module path: attributes come from the modules in ``__moved_to__``, in order."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        for target in MOVED[self.__name__]:
            module = importlib.import_module(target)
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {self.__name__!r} (now {', '.join(MOVED[self.__name__])}) has no "
                             f"attribute {name!r}")


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        is_package = any(other.startswith(fullname + ".") for other in MOVED)
        return importlib.machinery.ModuleSpec(fullname, self, is_package=is_package)

    def create_module(self, spec):
        module = _MovedModule(spec.name)
        module.__moved_to__ = MOVED[spec.name]
        if spec.submodule_search_locations is not None:
            module.__path__ = []
        return module

    def exec_module(self, module) -> None:
        warnings.warn(f"{module.__name__} is now {' / '.join(MOVED[module.__name__])}; the old path works until "
                      f"detect {REMOVED_IN}", FutureWarning, stacklevel=2)


def install() -> None:
    """Put the finder last on ``sys.meta_path`` (a real module of the same name always wins)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
