"""Names a package exports without importing their modules until first use (PEP 562).

The package root and the heavier subpackages (data, training, losses) use this so that
``import metric_sim`` or ``from metric_sim.training import TrainConfig`` does not load
torch, transformers or ``datasets`` for names the caller never touches.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(
    package: str, exports: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a name to the module defining it.

    A name is imported on first access and cached in ``namespace`` (the package's
    ``globals()``), so later lookups skip ``__getattr__``.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
