"""AMTML-KD (Liu et al., adaptive multi-teacher multi-level distillation; METHOD.md section 7) as a per-job module.

What is learned with the student (and not kept with it): a latent factor theta_t in R^d per teacher and
a global vector v in R^d, which weigh the teachers per instance, and one 1x1-conv regressor per teacher
for the hint loss. The kept model is the plain student.

- Instance representation b_i: channel-wise max pool of the student's last feature map (d = its
  channels, timm's ``num_features``). The map is read in the model's declared format
  (:mod:`zoo_study.transfer.feature_maps`: Swin's NHWC permuted, token models' patch grid without prefix
  tokens, PiT's last stage), so the max runs over positions.
- gamma_{t,i} = v . (theta_t * b_i); w_{t,i} = softmax_t gamma_{t,i}; integrated target
  p_i = sum_t w_{t,i} softmax(z_{t,i} / T).
- L = alpha T^2 KL(p_i || softmax(z_s / T)) + (1 - alpha) CE + angle * RKD-angle(p, softmax(z_s / T))
  + beta * hint, with the hint loss the mean over teachers of MSE(regressor_t(student map resized to
  teacher t's grid), teacher t's map). Defaults alpha = 0.7, T = 5 (the paper).

Multi-group hints: the student's layers are split into K groups, one per teacher, read as the outputs
of its last K stages (CNNs) or blocks (token models, as patch grids) from one pass of timm's
``forward_intermediates`` (:func:`zoo_study.transfer.loop.forward_levels`), shallow to deep. Teacher k
of the stage (in its phase order) guides group k with its last map through its own 1x1 regressor, so
with the multi-teacher stage's default ascending order (weakest teacher first) stronger teachers guide
deeper groups, as the paper's default. A student with fewer than K levels (or no
``forward_intermediates``) repeats its last map for the missing shallow groups. Spatial sizes that
differ are matched by adaptive average pooling of the student map to the teacher's grid (token models:
their patch grid).

The method's own table (``teacher_weights``: the mean learned weight of each teacher per class, which
teacher each class listens to) is declared here with its schema and builder (:data:`TEACHER_WEIGHTS`);
the store's catalogue, the DuckDB view, the planner's outputs and the executor read it from the registry.
The objective and the registration of ``amtml_kd`` are at the end of this module.
"""

from __future__ import annotations

from typing import Any, Mapping

import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo_study.methods import losses as L
from zoo_study.methods.registry import (MethodState, MethodTable, ObjectiveInputs, ObjectiveOutput, Param,
                                        SetupContext, register_method)
from zoo_study.store import table_from_rows

__all__ = ["AMTMLModule", "setup_amtml", "instance_weights", "integrated_target", "rkd_angle_loss", "hint_loss",
           "TEACHER_WEIGHT_SCHEMA", "TEACHER_WEIGHTS", "teacher_weight_table"]


def instance_weights(b: Tensor, theta: Tensor, v: Tensor) -> Tensor:
    """[B, K] softmax over teachers of v . (theta_t * b_i); b [B, d], theta [K, d], v [d]."""
    gamma = torch.einsum("bd,kd,d->bk", b, theta, v)
    return torch.softmax(gamma, dim=-1)


def integrated_target(weights: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """[B, C] sum_t w_{t,i} softmax(z_{t,i} / T); weights [B, K], teacher_logits [K, B, C]."""
    probs = torch.softmax(teacher_logits / temperature, dim=-1)
    return torch.einsum("bk,kbc->bc", weights, probs)


def _angles(x: Tensor) -> Tensor:
    """[B, B, B] cosines of the angle at j between (i - j) and (k - j) (RKD, Park et al.)."""
    d = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=-1)  # d[j, i] = normalise(x_i - x_j)
    return torch.bmm(d, d.transpose(1, 2))  # [j, i, k]


def rkd_angle_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Huber (smooth L1) distance between the triplet-angle structures of two embeddings [B, D]."""
    with torch.no_grad():
        t = _angles(teacher)
    return F.smooth_l1_loss(_angles(student), t)


def hint_loss(regressed: list[Tensor], teacher_maps: list[Tensor]) -> Tensor:
    """Mean over teachers of the MSE between a regressed student map and the teacher's map."""
    return torch.stack([F.mse_loss(r, t.detach()) for r, t in zip(regressed, teacher_maps)]).mean()


class AMTMLModule(nn.Module):
    """Latent factors, the global vector and one hint regressor per teacher. ``level_channels``: the
    channels of the student group each teacher guides (default: the last map for every teacher)."""

    def __init__(self, student_channels: int, teacher_shapes: list[tuple[int, int, int]],
                 level_channels: list[int] | None = None) -> None:
        super().__init__()
        k = len(teacher_shapes)
        if k < 1:
            raise ValueError("AMTML-KD needs at least one teacher")
        d = int(student_channels)
        levels = [d] * k if level_channels is None else [int(c) for c in level_channels]
        if len(levels) != k:
            raise ValueError(f"AMTML-KD needs one student group per teacher, got {len(levels)} for {k} teachers")
        self.theta = nn.Parameter(torch.randn(k, d) * d ** -0.5)
        self.v = nn.Parameter(torch.randn(d) * d ** -0.5)
        self.regressors = nn.ModuleList(nn.Conv2d(c_in, c, kernel_size=1)
                                        for c_in, (c, _, _) in zip(levels, teacher_shapes))
        self.grids = [(h, w) for _, h, w in teacher_shapes]

    def weights(self, student_map: Tensor) -> Tensor:
        b = student_map.amax(dim=(2, 3))  # channel-wise max pool -> [B, d]
        return instance_weights(b, self.theta, self.v)

    def regress(self, student_maps: Tensor | list[Tensor]) -> list[Tensor]:
        """Per teacher k: regressor k on student group k (one map: the same map for every teacher),
        pooled to teacher k's grid first when the sizes differ."""
        maps = student_maps if isinstance(student_maps, (list, tuple)) else [student_maps] * len(self.regressors)
        out = []
        for reg, (h, w), m in zip(self.regressors, self.grids, maps):
            m = m if m.shape[-2:] == (h, w) else F.adaptive_avg_pool2d(m, (h, w))
            out.append(reg(m))
        return out


class _AMTMLState(MethodState):
    """The loop's hooks: the module trains with the student; per-class mean teacher weights are logged."""

    def __init__(self, module: AMTMLModule, num_teachers: int) -> None:
        self.module = module
        self.k = num_teachers
        self.class_weight_sum: dict[int, Tensor] = {}
        self.class_count: dict[int, int] = {}
        self._pending: list[tuple[Tensor, Tensor]] = []  # (weights, labels) per step, still on the device

    def parameters(self) -> list:
        return list(self.module.parameters())

    def train(self) -> None:
        self._flush()  # once per epoch
        self.module.train()

    def record(self, weights: Tensor, labels: Tensor) -> None:
        """Keep the step's weights and labels on the device; :meth:`_flush` reads them (no sync per step)."""
        self._pending.append((weights.detach().float().clone(), labels.detach().clone()))

    def _flush(self) -> None:
        """Per-class sums of the pending steps, in step order (the same sums as one step at a time)."""
        for weights, labels in self._pending:
            w, labels = weights.cpu(), labels.cpu()
            for c in labels.unique().tolist():
                sel = labels == c
                self.class_weight_sum[c] = self.class_weight_sum.get(c, torch.zeros(self.k)) + w[sel].sum(0)
                self.class_count[c] = self.class_count.get(c, 0) + int(sel.sum())
        self._pending.clear()

    def extra(self) -> dict:
        """Mean teacher weights per class over all training batches: which teacher each class listens to."""
        self._flush()
        return {"amtml_class_weights": {str(c): (self.class_weight_sum[c] / self.class_count[c]).tolist()
                                        for c in sorted(self.class_count)}}


def setup_amtml(ctx: SetupContext) -> MethodState:
    """The ``setup`` hook of ``amtml_kd``: latent factors and regressors sized by a probe of the maps."""
    if ctx.map_shapes is None:
        raise ValueError("amtml_kd needs the loop's feature-map probe (SetupContext.map_shapes)")
    (c_s, _, _), teacher_shapes = ctx.map_shapes()
    multi = int(ctx.params.get("groups", 1)) == 1 and ctx.level_shapes is not None
    levels = [c for c, _, _ in ctx.level_shapes()] if multi else None
    module = AMTMLModule(c_s, teacher_shapes, levels).to(ctx.device)  # init from the member's seeded torch RNG
    return _AMTMLState(module, len(teacher_shapes))


# the mean per-instance teacher weight per class of the transfer set (over all training batches of a
# stage): which teacher each class listens to
TEACHER_WEIGHT_SCHEMA = pa.schema(
    [
        pa.field("job_id", pa.string(), nullable=False),
        pa.field("stage", pa.int32(), nullable=False),
        pa.field("class_id", pa.int64(), nullable=False),
        pa.field("teacher", pa.string(), nullable=False),
        pa.field("weight", pa.float64(), nullable=False),
    ]
)


def teacher_weight_table(result: Any) -> pa.Table:
    """Per stage, class and teacher: the mean learned teacher weight, from a finished transfer's result
    (the state's ``extra`` under ``amtml_class_weights`` in each phase of ``result.info``)."""
    job_id = result.row["job_id"]
    rows = []
    teachers = result.info.get("teachers", [])
    for stage, phase in enumerate(result.info.get("phases", [])):
        for cls, ws in sorted(phase.get("amtml_class_weights", {}).items(), key=lambda kv: int(kv[0])):
            names = teachers if len(ws) == len(teachers) else [phase["teacher"]]
            rows += [{"job_id": job_id, "stage": stage, "class_id": int(cls), "teacher": t, "weight": float(w)}
                     for t, w in zip(names, ws)]
    return table_from_rows(rows, TEACHER_WEIGHT_SCHEMA)


TEACHER_WEIGHTS = MethodTable("teacher_weights", "transfers/{job_id}/teacher_weights.parquet", TEACHER_WEIGHT_SCHEMA,
                              "per-class teacher weights", "AMTML-KD: mean learned weight of each teacher per class",
                              build=teacher_weight_table)


@register_method("amtml_kd", label="AMTML-KD", temperature=5.0, needs_labels=True, needs_maps=True, multi_teacher=True,
                 needs_levels=True, tables=(TEACHER_WEIGHTS,),
                 params={"alpha": Param(0.7, float, 0.0, 1.0, doc="weight of the KL term; 1 - alpha weighs CE"),
                         "angle": Param(1.0, float, 0.0, None, doc="weight of the RKD angle loss (ours)"),
                         "beta": Param(1.0, float, 0.0, None, doc="weight of the hint loss (ours)"),
                         "groups": Param(1, int, 0, 1, doc="1: teacher k guides the student's k-th group of layers "
                                         "(multi-group hints); 0: every teacher guides the last map")},
                 setup=setup_amtml,
                 doc="AMTML-KD (METHOD.md section 7): per-instance teacher weights from learned latent factors, "
                     "integrated soft target, KL + CE + RKD angle + hint losses; T = 5. Runs with one or more "
                     "teachers (multi_teacher.parallel_methods); its modules are not part of the kept student.")
def amtml_kd(inp: ObjectiveInputs, p: Mapping[str, Any]) -> ObjectiveOutput:
    if inp.state is None or inp.student_map is None or inp.teacher_maps is None or inp.teachers is None:
        raise ValueError("amtml_kd needs its state, the student's and the teachers' feature maps and logits")
    t = inp.temperature
    module = inp.state.module
    w = module.weights(inp.student_map)
    target = integrated_target(w, inp.teachers, t)
    log_q = L.log_softmax(inp.student / t)
    kl = t * t * (target * (target.clamp_min(1e-12).log() - log_q)).sum(-1).mean()
    ce = L.cross_entropy(inp.student, inp.targets)
    angle = rkd_angle_loss(log_q.exp(), target)
    multi = p["groups"] == 1 and inp.student_levels is not None
    groups = inp.student_levels if multi else inp.student_map  # one group per teacher, or the last map for all
    hint = hint_loss(module.regress(groups), inp.teacher_maps)
    if inp.labels is not None:
        inp.state.record(w, inp.labels)
    loss = p["alpha"] * kl + (1.0 - p["alpha"]) * ce + p["angle"] * angle + p["beta"] * hint
    return ObjectiveOutput(loss, logs={"kl": kl.detach(), "ce": ce.detach(), "angle": angle.detach(),
                                       "hint": hint.detach()})
