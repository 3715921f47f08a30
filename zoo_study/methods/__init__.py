"""Transfer methods: the torch-free registry (names, parameters, flags, tables, labels, grids).

See :mod:`zoo_study.methods.registry` for how a method is declared; the shipped methods are registered
by the modules of :data:`~zoo_study.methods.registry.PLUGINS` (:mod:`~zoo_study.methods.builtin`,
:mod:`~zoo_study.methods.partitioning`, and the stateful methods' own modules under ``zoo_study/transfer/``),
imported on the first registry query.
"""

from zoo_study.methods.registry import (
    PLUGINS,
    Method,
    MethodState,
    MethodTable,
    ObjectiveInputs,
    ObjectiveOutput,
    Param,
    SetupContext,
    default_grid,
    get_method,
    method_label,
    method_names,
    method_sort_key,
    method_tables,
    methods,
    multi_teacher_methods,
    register_method,
    unregister_method,
)

__all__ = [
    "PLUGINS", "Method", "MethodState", "MethodTable", "ObjectiveInputs", "ObjectiveOutput", "Param", "SetupContext",
    "default_grid", "get_method", "method_label", "method_names", "method_sort_key", "method_tables", "methods",
    "multi_teacher_methods", "register_method", "unregister_method",
]
