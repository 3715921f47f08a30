"""A module proxy that imports its target on first attribute access.

Why: the method registry (:mod:`zoo_study.methods`) must import without torch, so that the config,
the planner and the analysis layer can list and validate methods in a process that never trains
anything. Objective functions reach torch code through such a proxy; the import happens the first
time an objective actually runs (inside a transfer job), and costs nothing after that.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Callable, Mapping


class LazyModule:
    """``LazyModule("pkg.mod").attr`` is ``importlib.import_module("pkg.mod").attr``."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)

    def __repr__(self) -> str:
        state = "loaded" if self._module is not None else "not loaded yet"
        return f"<lazy module {self._name!r} ({state})>"


def lazy_exports(package: str, exports: Mapping[str, str], before: Callable[[str], None] | None = None
                 ) -> Callable[[str], Any]:
    """A PEP 562 module ``__getattr__`` for ``package`` that imports ``exports[name]`` (a module path) on
    first use; ``before(module)`` runs first (e.g. the torchvision compat step for torch modules)."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if before is not None:
            before(module)
        return getattr(importlib.import_module(module), name)

    return __getattr__
