"""The package's layers: a module imports only from its own layer or lower ones, never upwards.

    config, errors, utils.visualize  <  ops  <  data  <  proposals  <  models  <  engine  <  benchmark  <  utils.cli

Every import counts, the ones inside functions too (a lazy import is still a dependency).
"""
import ast
from pathlib import Path
from typing import List

PACKAGE = Path(__file__).resolve().parents[1] / "detect"
LAYERS = [("detect", "detect.config", "detect.errors", "detect.utils", "detect.utils.visualize"),
          ("detect.ops",), ("detect.data",), ("detect.proposals",), ("detect.models",), ("detect.engine",),
          ("detect.benchmark",), ("detect.utils.cli",)]


def layer_of(module: str) -> int:
    """The layer of ``detect.x.y``: the most specific entry of LAYERS that names it or a parent."""
    best, depth = None, -1
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and name.count(".") > depth:
                best, depth = index, name.count(".")
    assert best is not None, module
    return best


def upward_imports(root: Path) -> List[str]:
    """``"a.b imports c.d"`` for each import of a module in a higher layer, in the files under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            target = next((t for t in reversed(targets) if t.startswith("detect.") and _is_module(root, t)), None)
            if target and layer_of(target) > layer_of(module):
                found.append(f"{module} imports {target}")
    return found


def _is_module(root: Path, name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def test_no_module_imports_from_a_higher_layer():
    assert upward_imports(PACKAGE) == []


def test_an_upward_import_is_caught(tmp_path):
    fake = tmp_path / "detect"
    for rel in ("__init__.py", "ops/__init__.py", "ops/boxes.py", "engine/__init__.py", "engine/trainer.py"):
        (fake / rel).parent.mkdir(parents=True, exist_ok=True)
        (fake / rel).write_text("")
    (fake / "ops" / "boxes.py").write_text("def f():\n    from detect.engine.trainer import Trainer\n")
    (fake / "engine" / "trainer.py").write_text("from detect.ops import boxes\n")  # downwards: allowed
    assert upward_imports(fake) == ["detect.ops.boxes imports detect.engine.trainer"]
