"""Transfer objectives (METHOD.md section 2): one small function each, in one registry.

An objective is a function ``fn(inputs: ObjectiveInputs, params: dict) -> ObjectiveOutput``. The loop
computes every tensor an objective may need (student logits with gradients; teacher and frozen-student
logits without) and the objective only does the maths, so each formula is testable on hand-made logits.

Conventions shared by all objectives:

- ``KL(p || q) = sum_c p_c (log p_c - log q_c)`` with p, q softmaxes at temperature T; every KL term is
  ``T^2 * mean over the batch`` (Hinton's T^2 keeps gradient magnitudes comparable across T).
- Cross-entropy is a plain CE on the student's logits (the reference code applies softmax twice); label
  smoothing smooths the *targets* (eps spread uniformly over all C classes), not the predictions.
- Data partitioning (DP) routes each sample to one source: the frozen initial student (index 0) or a
  teacher (index k >= 1). The confidence used for routing is the plain softmax (T = 1) at the label
  (supervised) or the max-probability (unsupervised); the highest confidence wins and ties go to the
  lowest index, i.e. to the student (``torch.argmax`` returns the first maximum). Ties are exact float
  ties, as an identical teacher produces; no tolerance is applied, so two mathematically equal
  confidences computed from differently arranged logits may differ in the last bit. Single-teacher
  KL+DP is the K = 1 case of the parallel multi-teacher rule, so both share one implementation.
- ``ObjectiveOutput.route`` (DP only) holds the chosen source per sample; the loop turns it into the
  logged teacher share.

Hyper-parameters of a method live in its :class:`Objective` entry (``params`` with defaults and ranges;
``lr`` and ``temperature`` are the per-method defaults of the loop), so configs are validated against
one table and the analysis layer keys on the exact registry names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ObjectiveInputs",
    "ObjectiveOutput",
    "Param",
    "Objective",
    "OBJECTIVES",
    "register_objective",
    "get_objective",
    "method_names",
    "kl_rows",
    "kl_term",
    "cross_entropy",
    "route_sources",
]


# ----------------------------------------------------------------------------------------------- types
@dataclass
class ObjectiveInputs:
    """What the loop hands an objective for one batch. Logits are float32 [B, C]."""

    student: Tensor  # logits of the student being trained (with gradients)
    teachers: Tensor | None = None  # [K, B, C] logits of the K teachers (no gradients)
    frozen: Tensor | None = None  # [B, C] logits of the frozen initial student (no gradients)
    labels: Tensor | None = None  # [B] int64
    temperature: float = 1.0
    student_features: Tensor | None = None  # [B, D_s] penultimate features (pre-logits)
    teacher_features: Tensor | None = None  # [B, D_t] of the first teacher
    index: Tensor | None = None  # [B] positions of the samples in the transfer set (CRD memory)
    state: nn.Module | None = None  # trainable per-job module of the objective (CRD heads and memory)
    generator: torch.Generator | None = None  # for objectives that sample (CRD negatives)

    @property
    def teacher(self) -> Tensor:
        if self.teachers is None or self.teachers.shape[0] == 0:
            raise ValueError("this objective needs teacher logits, but none were given")
        return self.teachers[0]


@dataclass
class ObjectiveOutput:
    loss: Tensor  # scalar
    route: Tensor | None = None  # [B] int64: 0 = frozen student, k = teacher k (DP objectives)
    logs: dict[str, Tensor] = field(default_factory=dict)  # detached scalars; the loop averages per epoch


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


ObjectiveFn = Callable[[ObjectiveInputs, Mapping[str, Any]], ObjectiveOutput]
StateFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class Objective:
    """A registry entry: the loss function and what the loop must provide and do for it."""

    name: str
    fn: ObjectiveFn
    params: Mapping[str, Param] = field(default_factory=dict)
    lr: float = 1e-4  # default base lr for batch 256
    temperature: float = 1.0  # default T
    needs_labels: bool = False
    needs_frozen: bool = False
    needs_features: bool = False  # penultimate features of student and first teacher
    routes: bool = False  # returns ObjectiveOutput.route (logs the teacher share)
    multi_teacher: bool = False  # accepts K > 1 teachers at once (parallel mode)
    momentum_interp: bool = False  # MCL: the loop keeps slow weights (params tau, N)
    make_state: StateFactory | None = None  # builds ObjectiveInputs.state (CRD)
    doc: str = ""

    def resolve_params(self, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults merged with ``given``, each value checked; unknown names are errors."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            valid = ", ".join(sorted(self.params)) or "none"
            raise ValueError(f"method {self.name!r} has no hyper-parameter(s) {unknown}; valid: {valid}")
        return {k: p.check(self.name, k, given.get(k, p.default)) for k, p in sorted(self.params.items())}


OBJECTIVES: dict[str, Objective] = {}


def register_objective(obj: Objective) -> Objective:
    if obj.name in OBJECTIVES:
        raise ValueError(f"objective {obj.name!r} is already registered")
    OBJECTIVES[obj.name] = obj
    return obj


def method_names() -> list[str]:
    return sorted(OBJECTIVES)


def get_objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown transfer method {name!r}; valid: {', '.join(method_names())}") from None


# ----------------------------------------------------------------------------------------------- maths
def kl_rows(target_logits: Tensor, student_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-row KL( softmax(target/T) || softmax(student/T) ), [B]. Log-space, so no 0 * log 0 issue."""
    log_p = F.log_softmax(target_logits / temperature, dim=-1)
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)


def kl_term(target_logits: Tensor, student_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``T^2 * mean_i KL_i``: the KL term every objective uses."""
    return temperature**2 * kl_rows(target_logits, student_logits, temperature).mean()


def cross_entropy(student_logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Plain CE on logits; with smoothing the targets are (1 - eps) one_hot + eps / C."""
    if labels is None:
        raise ValueError("this objective needs labels (cross-entropy term), but none were given")
    log_q = F.log_softmax(student_logits, dim=-1)
    c = student_logits.shape[-1]
    target = F.one_hot(labels, c).to(log_q.dtype)
    if label_smoothing:
        target = target * (1.0 - label_smoothing) + label_smoothing / c
    return -(target * log_q).sum(-1).mean()


def route_sources(frozen: Tensor, teachers: Tensor, labels: Tensor | None, supervised: bool) -> Tensor:
    """Per sample, the source to distil from: 0 = frozen student, k = teacher k (1-based).

    Confidence = softmax probability of the label (supervised) or the max probability (unsupervised)
    at T = 1; the highest wins and ties go to the lowest index (the student first). Vectorised.
    """
    logits = torch.cat([frozen.unsqueeze(0), teachers], dim=0)  # [K+1, B, C]
    probs = logits.softmax(dim=-1)
    if supervised:
        if labels is None:
            raise ValueError("supervised data partitioning needs labels; use kl_dp_unsup for no labels")
        conf = probs.gather(-1, labels.view(1, -1, 1).expand(probs.shape[0], -1, 1)).squeeze(-1)
    else:
        conf = probs.amax(dim=-1)
    return conf.argmax(dim=0)  # [B]; first maximum -> ties to the student


# ---------------------------------------------------------------------------------------- objectives
_LAMBDA = Param(0.7, float, 0.0, 1.0, doc="weight of the KL term; 1 - lambda weighs the CE term")


def _kl(inp: ObjectiveInputs, p: Mapping[str, Any]) -> ObjectiveOutput:
    return ObjectiveOutput(kl_term(inp.teacher, inp.student, inp.temperature))


def _xe_kl(inp: ObjectiveInputs, p: Mapping[str, Any]) -> ObjectiveOutput:
    lam = p["lambda"]
    kl = kl_term(inp.teacher, inp.student, inp.temperature)
    ce = cross_entropy(inp.student, inp.labels, p.get("label_smoothing", 0.0))
    return ObjectiveOutput(lam * kl + (1.0 - lam) * ce, logs={"kl": kl.detach(), "ce": ce.detach()})


def _kl_topk(inp: ObjectiveInputs, p: Mapping[str, Any]) -> ObjectiveOutput:
    t = inp.teacher
    k = min(int(p["k"]), t.shape[-1])
    idx = t.topk(k, dim=-1).indices  # the teacher's k most likely classes (same for any T > 0)
    # log_softmax over the gathered logits = both distributions renormalised over those k classes
    return ObjectiveOutput(kl_term(t.gather(-1, idx), inp.student.gather(-1, idx), inp.temperature))


def _dp(supervised: bool) -> ObjectiveFn:
    def fn(inp: ObjectiveInputs, p: Mapping[str, Any]) -> ObjectiveOutput:
        if inp.frozen is None or inp.teachers is None:
            raise ValueError("data partitioning needs the frozen student's and the teachers' logits")
        route = route_sources(inp.frozen, inp.teachers, inp.labels, supervised)
        sources = torch.cat([inp.frozen.unsqueeze(0), inp.teachers], dim=0)  # [K+1, B, C]
        b = torch.arange(route.shape[0], device=route.device)
        target = sources[route, b]  # [B, C]: per-sample chosen source
        loss = kl_term(target, inp.student, inp.temperature)
        return ObjectiveOutput(loss, route=route, logs={"teacher_share": (route > 0).float().mean()})

    return fn


def _cd(inp: ObjectiveInputs, p: Mapping[str, Any]) -> ObjectiveOutput:
    if inp.student_features is None or inp.teacher_features is None:
        raise ValueError("cd needs penultimate features of the student and the teacher")
    fs = F.normalize(inp.student_features.flatten(1), dim=-1)
    ft = F.normalize(inp.teacher_features.flatten(1), dim=-1)
    s_s = fs @ fs.t()  # [B, B] in-batch cosine similarities (dims of the two models may differ)
    s_t = ft @ ft.t()
    cd = kl_term(s_t, s_s, inp.temperature)  # row-wise KL(softmax(S_t) || softmax(S_s)), mean over rows
    ce = cross_entropy(inp.student, inp.labels)
    return ObjectiveOutput(ce + p["beta"] * cd, logs={"cd": cd.detach(), "ce": ce.detach()})


def _crd(inp: ObjectiveInputs, p: Mapping[str, Any]) -> ObjectiveOutput:
    if inp.state is None or inp.index is None:
        raise ValueError("crd needs its state (projection heads, memory bank) and sample indices")
    if inp.student_features is None or inp.teacher_features is None:
        raise ValueError("crd needs penultimate features of the student and the teacher")
    crd = inp.state(inp.student_features.flatten(1), inp.teacher_features.flatten(1), inp.index, inp.generator)
    ce = cross_entropy(inp.student, inp.labels)
    return ObjectiveOutput(ce + p["beta"] * crd, logs={"crd": crd.detach(), "ce": ce.detach()})


def _make_crd_state(*, student_dim: int, teacher_dim: int, n_data: int, params: Mapping[str, Any]) -> nn.Module:
    from zoo_study.transfer.crd import CRDState

    return CRDState(student_dim, teacher_dim, n_data, feat_dim=params["feat_dim"], nce_k=params["nce_k"],
                    nce_t=params["nce_t"], nce_m=params["nce_m"])


register_objective(Objective(
    "kl", _kl, doc="KL-Dist (Hinton): T^2 * mean KL(teacher || student)."))
register_objective(Objective(
    "xe_kl", _xe_kl, {"lambda": _LAMBDA}, needs_labels=True,
    doc="XE-KL-Dist: lambda * KL + (1 - lambda) * CE."))
register_objective(Objective(
    "xe_kl_ls", _xe_kl,
    {"lambda": _LAMBDA, "label_smoothing": Param(0.1, float, 0.0, 1.0, high_open=True, doc="eps of the CE targets")},
    needs_labels=True, doc="XE-KL-Dist with label-smoothed CE targets (eps = 0.1)."))
register_objective(Objective(
    "kl_topk", _kl_topk, {"k": Param(10, int, 1, None, doc="number of teacher classes kept")},
    doc="KL restricted to the teacher's top-k classes, both distributions renormalised over them."))
register_objective(Objective(
    "kl_dp", _dp(True), needs_labels=True, needs_frozen=True, routes=True, multi_teacher=True,
    doc="KL+DP: per sample distil from the teacher where sigma_y(teacher) > sigma_y(frozen student), "
        "else from the frozen student. No CE; lr 1e-4, T = 1."))
register_objective(Objective(
    "kl_dp_unsup", _dp(False), needs_frozen=True, routes=True, multi_teacher=True,
    doc="Unsupervised KL+DP: route by max-probability instead of the label's probability."))
register_objective(Objective(
    "xe_kl_mcl", _xe_kl,
    {"lambda": _LAMBDA,
     "tau": Param(0.9999, float, 0.0, 1.0, doc="slow-weight momentum"),
     "N": Param(2, int, 1, None, doc="optimiser steps between interpolations")},
    lr=0.01, needs_labels=True, momentum_interp=True,
    doc="XE-KL + momentum weight interpolation: slow weights (a copy of the pretrained student) follow "
        "theta_slow <- tau theta_slow + (1 - tau) theta_fast every N steps; the slow model is kept."))
register_objective(Objective(
    "cd", _cd, {"beta": Param(1.0, float, 0.0, None, doc="weight of the CD term (CE has weight 1)")},
    needs_labels=True, needs_features=True,
    doc="Contrastive distillation: row-wise KL between in-batch cosine-similarity matrices of the "
        "L2-normalised penultimate features, + CE with equal weights."))
register_objective(Objective(
    "crd", _crd,
    {"beta": Param(0.8, float, 0.0, None, doc="weight of the CRD term (CE has weight 1)"),
     "feat_dim": Param(128, int, 1, None, doc="projection dimension"),
     "nce_k": Param(4096, int, 1, None, doc="negatives drawn from the memory bank"),
     "nce_t": Param(0.07, float, 0.0, None, low_open=True, doc="NCE temperature"),
     "nce_m": Param(0.5, float, 0.0, 1.0, high_open=True, doc="memory-bank momentum")},
    needs_labels=True, needs_features=True, make_state=_make_crd_state,
    doc="CRD (Tian et al. 2020): 128-d projection heads, NCE against a memory bank, + CE."))
