"""Transfer methods: the torch-free registry (names, parameters, labels, grids) and the built-ins.

See :mod:`zoo_study.methods.registry` for how a method is declared and
:mod:`zoo_study.methods.builtin` for the study's methods.
"""

from zoo_study.methods.registry import (
    Method,
    MethodState,
    ObjectiveInputs,
    ObjectiveOutput,
    Param,
    SetupContext,
    default_grid,
    get_method,
    method_label,
    method_names,
    method_sort_key,
    methods,
    multi_teacher_methods,
    register_method,
    unregister_method,
)
from zoo_study.methods import builtin as _builtin  # noqa: F401  (registers the built-in methods)

__all__ = [
    "Method", "MethodState", "ObjectiveInputs", "ObjectiveOutput", "Param", "SetupContext", "default_grid",
    "get_method", "method_label", "method_names", "method_sort_key", "methods", "multi_teacher_methods",
    "register_method", "unregister_method",
]
