"""The method registry: the one list of transfer methods, their parameters, flags, tables, labels and grids.

Why one registry: a method's name is used by the config (which methods a study may name, which
hyper-parameters each takes), by the planner (default grids, which methods may run several teachers at
once, which tables a job writes), by the transfer loop (what to compute for the objective), by the store
and the SQL views (the method's own tables, the ``methods`` view) and by the report (labels, order, the
paper's reference numbers). Each of these reads the entry that the method's decorator wrote, so adding a
method, with its state and its tables, touches one module::

    from zoo_study.methods import Param, register_method

    @register_method("my_kd", label="My KD", params={"alpha": Param(0.5, float, 0.0, 1.0)},
                     grid={"base_lr": [1e-3, 1e-4]}, needs_labels=True, setup=setup_my_kd)
    def my_kd(inp, p):
        ...  # return ObjectiveOutput(loss)

This module imports no torch, and neither does importing :mod:`zoo_study.methods`. The shipped methods
are registered by the modules in :data:`PLUGINS`, imported on the first query (:func:`get_method`,
:func:`methods`, ...): the stateless ones (:mod:`~zoo_study.methods.builtin`,
:mod:`~zoo_study.methods.partitioning`) reach torch through a lazy module, the stateful ones (CRD, MCL,
AMTML-KD, Talking Models: one module each in ``zoo_study/transfer/``) hold their objective, state, setup
hook and tables next to the torch code. A method of one's own is registered by importing its module.

An objective is ``fn(inputs: ObjectiveInputs, params: dict) -> ObjectiveOutput``. The loop computes
every tensor an objective may need (flags ``needs_*``) and the objective only does the maths.
Methods with state of their own give a ``setup`` function that builds a :class:`MethodState` per
transfer stage; its hooks run at fixed points of the loop (parameters to train, after every optimiser
step, the model to evaluate and keep). A method that writes a table beside the summary declares it as a
:class:`MethodTable` (``tables=``).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from zoo_study.methods.grids import check_grid_keys

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from torch import Generator, Tensor, nn

__all__ = [
    "Param",
    "Method",
    "MethodTable",
    "MethodState",
    "PLUGINS",
    "SetupContext",
    "ObjectiveInputs",
    "ObjectiveOutput",
    "register_method",
    "unregister_method",
    "get_method",
    "method_names",
    "methods",
    "multi_teacher_methods",
    "method_label",
    "method_sort_key",
    "default_grid",
    "method_tables",
]


# ----------------------------------------------------------------------------------------- params
@dataclass(frozen=True)
class Param:
    """One hyper-parameter of a method: default and valid range (for clear config errors)."""

    default: Any
    kind: type = float  # float | int
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    doc: str = ""

    def describe(self) -> str:
        if self.low is None and self.high is None:
            return f"a {self.kind.__name__}"
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        lb = "(" if self.low_open or self.low is None else "["
        rb = ")" if self.high_open or self.high is None else "]"
        return f"a {self.kind.__name__} in {lb}{lo}, {hi}{rb}"

    def check(self, method: str, name: str, value: Any) -> Any:
        ok = not isinstance(value, bool)
        if self.kind is int:
            ok = ok and (isinstance(value, int) or (isinstance(value, float) and value.is_integer()))
        else:
            ok = ok and isinstance(value, (int, float)) and math.isfinite(float(value))
        if ok:
            v = self.kind(value)
            if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
                ok = False
            if self.high is not None and (v > self.high or (self.high_open and v == self.high)):
                ok = False
        if not ok:
            raise ValueError(f"method {method!r}: hyper-parameter {name}={value!r} is invalid; must be {self.describe()}")
        return self.kind(value)


# ------------------------------------------------------------------------------------ loop <-> method
@dataclass
class ObjectiveInputs:
    """What the loop hands an objective for one batch. Logits are float32 [B, C]."""

    student: "Tensor"  # logits of the student being trained (with gradients)
    teachers: "Tensor | None" = None  # [K, B, C] logits of the K teachers (no gradients)
    frozen: "Tensor | None" = None  # [B, C] logits of the frozen initial student (no gradients)
    labels: "Tensor | None" = None  # [B] int64 (under mixup: the label of each sample's larger component)
    soft_targets: "Tensor | None" = None  # [B, C] mixed one-hot labels under batch mixup, else None
    temperature: float = 1.0
    student_features: "Tensor | None" = None  # [B, D_s] penultimate features (pre-logits)
    teacher_features: "Tensor | None" = None  # [B, D_t] of the first teacher
    student_map: "Tensor | None" = None  # [B, C, H, W] last feature map of the student (needs_maps)
    teacher_maps: "list[Tensor] | None" = None  # per teacher [B, C_k, H_k, W_k] (needs_maps)
    student_levels: "list[Tensor] | None" = None  # K student maps, shallow to deep, as grids (needs_levels)
    teacher_inputs: "list[Tensor] | None" = None  # per teacher its preprocessed batch (methods that re-run it)
    index: "Tensor | None" = None  # [B] positions of the samples in the transfer set (needs_index)
    state: "MethodState | None" = None  # the method's per-stage state (setup hook)
    generator: "Generator | None" = None  # for objectives that sample (CRD negatives)

    @property
    def targets(self) -> "Tensor | None":
        """What a CE term compares with: the mixed one-hot labels under mixup, else the labels."""
        return self.soft_targets if self.soft_targets is not None else self.labels

    @property
    def teacher(self) -> "Tensor":
        if self.teachers is None or self.teachers.shape[0] == 0:
            raise ValueError("this objective needs teacher logits, but none were given")
        return self.teachers[0]


@dataclass
class ObjectiveOutput:
    loss: "Tensor"  # scalar
    route: "Tensor | None" = None  # [B] int64: 0 = frozen student, k = teacher k (DP objectives)
    logs: dict[str, "Tensor"] = field(default_factory=dict)  # detached scalars; the loop averages per epoch


@dataclass
class SetupContext:
    """What a method's ``setup`` hook may use to build its state for one transfer stage."""

    model: "nn.Module"  # the student being trained (already on the device)
    params: Mapping[str, Any]  # the method's resolved hyper-parameters
    n_data: int  # samples in the transfer set
    device: Any
    feature_dims: Callable[[], tuple[int, int]]  # (student, first teacher) penultimate sizes, probed on demand
    # (student, [per teacher]) last-feature-map shapes (C, H, W) as the loop hands them (needs_maps)
    map_shapes: "Callable[[], tuple[tuple[int, int, int], list[tuple[int, int, int]]]] | None" = None
    # (student, [per teacher]) shapes of forward_features itself (no batch): (C, H, W) or (N, D)
    native_shapes: "Callable[[], tuple[tuple[int, ...], list[tuple[int, ...]]]] | None" = None
    teachers: "list[nn.Module] | None" = None  # the stage's teacher modules (frozen; eval mode)
    # shapes (C, H, W) of the student's K maps at increasing depth, K = the stage's teachers (needs_levels)
    level_shapes: "Callable[[], list[tuple[int, int, int]]] | None" = None
    # (student input, [per teacher input]): one training image twice, preprocessed for each model (probes)
    sample_inputs: "Callable[[], tuple[Tensor, list[Tensor]]] | None" = None
    labels: Any = None  # [n_data] labels of the transfer set, in the order of ObjectiveInputs.index
    total_steps: int | None = None  # optimiser steps this stage will take (epochs x full batches)
    protocol: str = "as_given"  # TransferConfig.protocol: 'paper_ratios' rescales step-count-bound settings


class MethodState:
    """Per-stage state of a method; the loop calls these hooks. Override what the method needs."""

    def parameters(self) -> list:
        """Extra tensors the optimiser trains with the student (CRD's projection heads)."""
        return []

    def train(self) -> None:
        """Called at the start of every epoch (put extra modules in train mode)."""

    def after_step(self, model: "nn.Module") -> None:
        """Called after every optimiser step (MCL: the slow-weight interpolation)."""

    def kept_model(self, model: "nn.Module") -> "nn.Module":
        """The model that is evaluated and kept (MCL: the slow weights); the trained one by default."""
        return model

    def extra(self) -> dict[str, Any]:
        """Values recorded with the stage result (MCL: number of interpolations)."""
        return {}

    def close(self) -> None:
        """Called once when the stage ends, failed or not (remove hooks the state put on models)."""


ObjectiveFn = Callable[[ObjectiveInputs, Mapping[str, Any]], ObjectiveOutput]
SetupFn = Callable[[SetupContext], MethodState]


# ----------------------------------------------------------------------------------------- entries
@dataclass(frozen=True)
class MethodTable:
    """A result table a method writes beside a transfer's summary (AMTML-KD's per-class teacher weights).

    Why declared on the method: the store's catalogue (:data:`zoo_study.store.TABLES`), the DuckDB view of
    the same name, the planner's job outputs and the executor that writes the file all read this one entry,
    so a method with a table of its own touches only its module. ``template`` is a path under the results
    root with ``{job_id}``; ``schema`` a pyarrow schema; ``build(result)`` makes the table from a finished
    :class:`~zoo_study.transfer.job.TransferResult` (its ``row``, ``info``)."""

    name: str  # the DuckDB view and the job's output name
    template: str  # e.g. "transfers/{job_id}/teacher_weights.parquet"
    schema: Any  # pyarrow.Schema (the registry imports no pyarrow)
    what: str  # its rows in words, for messages
    description: str  # one line
    build: Callable[[Any], Any]  # TransferResult -> pyarrow.Table


@dataclass(frozen=True)
class Method:
    """A registry entry: the loss function, its parameters, and what the loop and the report need.

    The capability flags below are declared here once; :func:`register_method` takes them by name, and
    the loop (``needs_*``), the planner (``multi_teacher``, ``tables``), the estimate (``needs_frozen``),
    the job summary (``routes``) and the SQL ``methods`` view (:mod:`analysis.macros`) read them."""

    name: str
    fn: ObjectiveFn
    label: str
    params: Mapping[str, Param] = field(default_factory=dict)
    lr: float = 1e-4  # default base lr for batch 256
    temperature: float = 1.0  # default T
    needs_labels: bool = False
    needs_frozen: bool = False  # logits of the frozen initial student (data partitioning's anchor)
    needs_features: bool = False  # penultimate features of student and first teacher
    needs_maps: bool = False  # last feature maps of the student and of every teacher (as grids)
    # the student's maps at K depths, K = the stage's teachers (timm forward_intermediates; AMTML's hint groups)
    needs_levels: bool = False
    needs_index: bool = False  # positions of the batch's samples in the transfer set
    routes: bool = False  # returns ObjectiveOutput.route (logs the teacher share)
    multi_teacher: bool = False  # accepts K > 1 teachers at once (parallel mode)
    # the method that is this one without labels: a run of this method whose hparams_json says
    # "unsupervised": true (results of an older study) counts as that method in the analysis (SQL method_key)
    unsupervised_twin: str | None = None
    grid: Mapping[str, tuple] | None = None  # default grid search (paper appendix axes)
    setup: SetupFn | None = None  # builds the per-stage MethodState (a function of the method's module)
    tables: tuple[MethodTable, ...] = ()  # result tables it writes beside the summary
    paper_success_rate: str | None = None  # the paper's reference number (Tab/Fig 4a), shown in the report
    doc: str = ""
    order: int = 0  # registration sequence; the report's order is methods() (plugin modules first, in PLUGINS order)

    def resolve_params(self, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults merged with ``given``, each value checked; unknown names are errors."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            valid = ", ".join(sorted(self.params)) or "none"
            raise ValueError(f"method {self.name!r} has no hyper-parameter(s) {unknown}; valid: {valid}")
        return {k: p.check(self.name, k, given.get(k, p.default)) for k, p in sorted(self.params.items())}

    def make_state(self, ctx: SetupContext) -> MethodState | None:
        """The method's per-stage state, or None for a stateless method."""
        return None if self.setup is None else self.setup(ctx)


# the fields register_method accepts: every field of Method but those it fills itself
_FIELDS = tuple(f.name for f in fields(Method) if f.name not in ("name", "fn", "order"))

# The modules that register the shipped methods, imported on the first registry query (not at import:
# the stateful methods' modules import torch, and listing or validating methods must stay cheap to
# import). Their order is the report's order: the weakest baselines first, then CRD, MCL, the paper's
# KL+DP, and the related multi-teacher / interaction methods.
PLUGINS = (
    "zoo_study.methods.builtin",
    "zoo_study.transfer.crd",
    "zoo_study.transfer.mcl",
    "zoo_study.methods.partitioning",
    "zoo_study.transfer.amtml",
    "zoo_study.transfer.talking",
)
_REGISTRY: dict[str, Method] = {}
_loaded = False


def _load() -> None:
    """Import the plugin modules once (their decorators fill the registry)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in PLUGINS:
        importlib.import_module(module)


def register_method(name: str, **spec: Any) -> Callable[[ObjectiveFn], ObjectiveFn]:
    """Decorator: register ``fn`` as the objective of method ``name``; ``spec`` are :class:`Method` fields
    (``label`` required; flags such as ``needs_labels``, ``setup``, ``tables``, ``grid``). Stack it for
    variants that share one function with other parameters. Registering a taken name is an error, so two
    modules can never silently define one method twice."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"method name must be an identifier-like string, got {name!r}")
    unknown = sorted(set(spec) - set(_FIELDS))
    if unknown or "label" not in spec:
        raise TypeError(f"register_method({name!r}): unknown field(s) {unknown} or no label; "
                        f"valid: {', '.join(_FIELDS)}")
    setup = spec.get("setup")
    if setup is not None and not callable(setup):
        raise TypeError(f"method {name!r}: setup must be a function SetupContext -> MethodState, got {setup!r}")

    def decorator(fn: ObjectiveFn) -> ObjectiveFn:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is already registered (by {_REGISTRY[name].fn.__module__})")
        params = dict(spec.get("params") or {})
        grid = spec.get("grid")
        if grid is not None:
            check_grid_keys(name, grid, params)
            grid = {k: tuple(v) for k, v in grid.items()}
        _REGISTRY[name] = Method(name=name, fn=fn, **{**spec, "params": params, "grid": grid,
                                                      "tables": tuple(spec.get("tables", ())),
                                                      "doc": spec.get("doc") or (fn.__doc__ or "").strip()},
                                 order=len(_REGISTRY))
        return fn

    return decorator


def unregister_method(name: str) -> None:
    """Remove a method (tests that register a toy method clean up with this)."""
    _REGISTRY.pop(name, None)


def _rank(m: Method) -> tuple[int, int]:
    """The report's order: the plugin modules' methods in PLUGINS order, then methods registered by other
    modules (a study's own, a test's toy), each group in registration order, whichever was imported first."""
    module = m.fn.__module__
    return (PLUGINS.index(module) if module in PLUGINS else len(PLUGINS), m.order)


def methods() -> list[Method]:
    """Every registered method in the report's order (see :func:`_rank`)."""
    _load()
    return sorted(_REGISTRY.values(), key=_rank)


def method_names() -> list[str]:
    """Registered names, sorted alphabetically."""
    _load()
    return sorted(_REGISTRY)


def get_method(name: str) -> Method:
    """The entry of method ``name``; an unknown name is a one-line error listing the valid ones."""
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown transfer method {name!r}; valid: {', '.join(method_names())}") from None


def multi_teacher_methods() -> list[str]:
    """Methods that may run with several teachers at once (parallel mode)."""
    return sorted(m.name for m in methods() if m.multi_teacher)


def method_label(name: str) -> str:
    """The paper's name for a method key (the key itself when unknown, e.g. results of an old study)."""
    _load()
    m = _REGISTRY.get(name)
    return m.label if m is not None else name


def method_sort_key(name: str) -> tuple[int, str]:
    """Known methods in the report's order (weakest baseline first; :func:`methods`), then the rest
    alphabetically."""
    position = {m.name: i for i, m in enumerate(methods())}
    return (position[name], "") if name in position else (len(position), name)


def default_grid(name: str) -> dict[str, list]:
    """The method's default grid (``{}`` when it has none)."""
    m = get_method(name)
    return {k: list(v) for k, v in (m.grid or {}).items()}


def method_tables() -> list[MethodTable]:
    """The result tables of every registered method, in registration order, each once (the store's catalogue
    adds them to its own tables; two methods may share one table object)."""
    out: dict[str, MethodTable] = {}
    for m in methods():
        for t in m.tables:
            if out.setdefault(t.name, t) is not t:
                raise ValueError(f"method {m.name!r} declares table {t.name!r}, which another method declares "
                                 "differently")
    return list(out.values())
