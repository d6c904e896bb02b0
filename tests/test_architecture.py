"""The package's layers, checked on its source: imports go downward only, nothing inside the
package imports its ``__init__``, no private name crosses a module, modules and classes stay
small, and light entry points do not load heavy libraries.

The layers are the ones ``docs/architecture.md`` draws; change both together.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "metric_sim"

# Lower rank = lower layer. A module may import modules of a lower rank, and modules of its
# own top-level subpackage (e.g. metric_sim.index.search -> metric_sim.index.results).
RANKS = {
    "version": 0,
    "lazy": 0,
    "errors": 0,
    "layout": 1,
    "storage": 1,
    "schema": 1,
    "validation": 1,
    "distances": 2,
    "items": 2,
    "distributed": 2,
    "client": 2,
    "clusters": 3,
    "images": 3,
    "encoders": 4,
    "data": 4,
    "calibration": 5,
    "losses": 5,
    "metrics": 6,
    "model": 6,
    "index": 7,
    "evaluation": 7,
    "export": 7,
    "interpolation": 7,
    "mining": 8,
    "training": 9,
    "serve": 9,
    "cli": 10,
    "__main__": 11,
    "__init__": 11,
}
# Old import paths kept for users: thin re-exports of the module that replaced them.
COMPAT_SHIMS = {"encoder": "encoders", "onnx_backend": "encoders", "sharded": "index"}
# (importer, imported) pairs allowed to go up: old names served lazily from their new home.
ALLOWED_UPWARD = {("calibration", "model")}
MAX_MODULE_LINES = 550  # "about 500"
MAX_CLASS_LINES = 320  # "about 300"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _top(module: str) -> str:
    top = module.split(".")[0]
    return COMPAT_SHIMS.get(top, top)


def _rank(module: str) -> int:
    return RANKS[_top(module)]


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module relative to metric_sim, imported names, line) for every import of metric_sim."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "metric_sim" or node.module.startswith("metric_sim."):
                target = node.module[len("metric_sim.") :] if node.module != "metric_sim" else ""
                out.append((target, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "metric_sim" or alias.name.startswith("metric_sim."):
                    out.append((alias.name[len("metric_sim.") :] if alias.name != "metric_sim" else "", [], node.lineno))
    return out


def test_every_module_has_a_layer():
    missing = sorted({_top(m) for m in MODULES} - set(RANKS))
    assert not missing, f"modules without a layer in RANKS (and docs/architecture.md): {missing}"


def test_imports_go_downward_only():
    submodules = {m.split(".")[0] for m in MODULES}
    problems = []
    for module, path in MODULES.items():
        if module == "__init__":
            continue
        for target, names, line in _imports(path):
            if target == "":  # `from metric_sim import x` is fine for a submodule x only
                from_init = [n for n in names if n not in submodules]
                if from_init:
                    problems.append(f"{module}:{line} imports {from_init} from the package __init__")
                imported_modules = [n for n in names if n in submodules]
            else:
                imported_modules = [target]
            for imported in imported_modules:
                if _top(imported) == _top(module) or (_top(module), _top(imported)) in ALLOWED_UPWARD:
                    continue
                if _rank(imported) >= _rank(module):
                    problems.append(f"{module}:{line} imports {imported} (layer {_rank(imported)} >= {_rank(module)})")
    assert not problems, "\n".join(problems)


def test_no_private_name_crosses_a_module():
    problems = []
    for module, path in MODULES.items():
        for target, names, line in _imports(path):
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private or any(part.startswith("_") and part != "__main__" for part in target.split(".") if part):
                problems.append(f"{module}:{line} imports private {target} {private}")
    assert not problems, "\n".join(problems)


def test_modules_and_classes_stay_small():
    problems = []
    for module, path in MODULES.items():
        source = path.read_text(encoding="utf-8")
        lines = source.count("\n")
        if lines > MAX_MODULE_LINES:
            problems.append(f"{module}: {lines} lines > {MAX_MODULE_LINES}")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    problems.append(f"{module}.{node.name}: {size} lines > {MAX_CLASS_LINES}")
    assert not problems, "\n".join(problems)


def test_no_banner_comments():
    banners = [
        f"{module}:{i}"
        for module, path in MODULES.items()
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if line.lstrip().startswith("# ----")
    ]
    assert not banners, banners


HEAVY = ("torch", "transformers", "datasets", "faiss", "pyarrow", "sklearn", "matplotlib")


@pytest.mark.parametrize(
    "statement, forbidden",
    [
        ("import metric_sim", HEAVY),
        ("from metric_sim import Metric, Calibrator", HEAVY),
        ("import metric_sim.cli", HEAVY),
        ("from metric_sim.training import TrainConfig", ("torch", "transformers", "datasets", "faiss")),
        ("import metric_sim.index", ("torch", "transformers", "datasets", "pyarrow")),
        ("import metric_sim.encoders", ("torch", "transformers", "onnxruntime")),
        ("import metric_sim.clusters, metric_sim.items", ("torch", "datasets", "pyarrow")),
    ],
)
def test_light_imports(statement, forbidden):
    code = f"{statement}; import sys; print(','.join(m for m in {forbidden!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "", f"`{statement}` loads {loaded}"
