"""The package's shape: layers that only point down, no import cycle, no two modules of one file name,
no import by string, no use of a module path that moved.

    config, errors, utils  <  ops  <  data  <  proposals  <  models  <  checkpoint  <  inference  <
    evaluation  <  training  <  export, compression  <  benchmark  <  cli

Every import counts, the ones inside functions too (a lazy import is still a dependency).
"""
import ast
from collections import Counter
from pathlib import Path
from typing import Dict, List, Set

from detect._moved import MOVED

PACKAGE = Path(__file__).resolve().parents[1] / "detect"
LAYERS = [("detect", "detect.config", "detect.errors", "detect.utils", "detect._moved"),
          ("detect.ops",), ("detect.data",), ("detect.proposals",), ("detect.models",), ("detect.checkpoint",),
          ("detect.inference",), ("detect.evaluation",), ("detect.training",), ("detect.export", "detect.compression"),
          ("detect.benchmark",), ("detect.cli", "detect.__main__")]


def layer_of(module: str) -> int:
    """The layer of ``detect.x.y``: the most specific entry of LAYERS that names it or a parent."""
    best, depth = None, -1
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and name.count(".") > depth:
                best, depth = index, name.count(".")
    assert best is not None, module
    return best


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(root: Path) -> Dict[str, Set[str]]:
    """Module -> the package's modules it imports (``from a import b`` counts ``a.b`` when b is a
    module, else ``a``), over every ``.py`` under ``root``."""
    graph: Dict[str, Set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        module = module_name(root, path)
        found = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [[f"{node.module}.{a.name}", node.module] for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [[a.name] for a in node.names]
            else:
                continue
            for candidates in targets:
                target = next((t for t in candidates if t.startswith("detect") and _is_module(root, t)), None)
                if target and target != module:
                    found.add(target)
    return graph


def upward_imports(root: Path) -> List[str]:
    """``"a.b imports c.d"`` for each import of a module in a higher layer, in the files under ``root``."""
    return [f"{module} imports {target}" for module, targets in imports_of(root).items() for target in sorted(targets)
            if layer_of(target) > layer_of(module)]


def import_cycles(root: Path) -> List[List[str]]:
    """Each cycle of the import graph once, as the modules along it (depth-first search)."""
    graph = imports_of(root)
    cycles, state = [], {}

    def visit(module: str, stack: List[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def _is_module(root: Path, name: str) -> bool:
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def repeated_file_names(root: Path) -> List[str]:
    names = Counter(p.name for p in root.rglob("*.py") if p.name != "__init__.py")
    return sorted(name for name, count in names.items() if count > 1)


def test_no_module_imports_from_a_higher_layer():
    assert upward_imports(PACKAGE) == []


def test_an_upward_import_is_caught(tmp_path):
    fake = _fake_package(tmp_path, {"ops/boxes.py": "def f():\n    from detect.training.trainer import Trainer\n",
                                    "training/trainer.py": "from detect.ops import boxes\n"})  # downwards: allowed
    assert upward_imports(fake) == ["detect.ops.boxes imports detect.training.trainer"]


def test_no_import_cycle_in_the_package():
    assert import_cycles(PACKAGE) == []


def test_a_cycle_through_a_lazy_import_is_caught(tmp_path):
    # the shape of 0.1's models/build.py <-> models/registry.py: one side deferred its import
    fake = _fake_package(tmp_path, {"models/build.py": "def build_model(cfg):\n    from detect.models.registry "
                                                       "import stage_of\n",
                                    "models/registry.py": "from detect.models.build import build_rpn\n"})
    assert import_cycles(fake) == [["detect.models.build", "detect.models.registry", "detect.models.build"]]


def test_no_two_modules_share_a_file_name():
    assert repeated_file_names(PACKAGE) == []


def test_a_repeated_file_name_is_caught(tmp_path):
    fake = _fake_package(tmp_path, {"engine/errors.py": "", "errors.py": "", "ops/boxes.py": ""})
    assert repeated_file_names(fake) == ["errors.py"]


def test_no_module_is_imported_by_a_string():
    """A dependency must be an import statement the checks above can read; the one exception is the
    table of module paths that moved (detect/_moved.py), checked below."""
    users = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
             if "importlib" in p.read_text() or "__import__(" in p.read_text()]
    assert users == ["_moved.py"]


def test_every_moved_path_points_at_a_module_and_none_is_used_any_more():
    for old, targets in MOVED.items():
        assert not _is_module(PACKAGE, old), f"{old} exists again: take it out of detect/_moved.py"
        for target in targets:
            assert _is_module(PACKAGE, target), (old, target)
    repo = PACKAGE.parent
    sources = [p for folder in ("detect", "tests", "tools") for p in (repo / folder).rglob("*.py")
               if p.name != "_moved.py" and p.name != "test_layers.py" and p.name != "test_moved_paths.py"]
    for path in sources:
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
        assert not imported & set(MOVED), (path, imported & set(MOVED))


def _fake_package(tmp_path: Path, files: Dict[str, str]) -> Path:
    fake = tmp_path / "detect"
    for rel, text in {"__init__.py": "", **files}.items():
        (fake / rel).parent.mkdir(parents=True, exist_ok=True)
        init = (fake / rel).parent / "__init__.py"
        if not init.exists():
            init.write_text("")
        (fake / rel).write_text(text)
    return fake
