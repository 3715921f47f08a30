"""The paper's method: KL+DP, data-partitioned KL distillation (METHOD.md section 2), supervised and without labels.

Per sample the student distils from whichever source is more confident: a teacher or the frozen initial
student (the anchor the loop computes because of ``needs_frozen``). The routing maths is in
:mod:`zoo_study.methods.losses` (``route_sources``, ``routed_targets``); the share routed to the teacher is
logged (``routes``). Both methods accept several teachers at once (``multi_teacher``: parallel mode).
``kl_dp`` names ``kl_dp_unsup`` as its ``unsupervised_twin``: older results that ran ``kl_dp`` with
``"unsupervised": true`` in their hparams count as ``kl_dp_unsup`` in the analysis (SQL ``method_key``).
"""

from __future__ import annotations

from typing import Any, Mapping

from zoo_study._lazy import LazyModule
from zoo_study.methods.registry import ObjectiveInputs, ObjectiveOutput, Param, register_method

L = LazyModule("zoo_study.methods.losses")


def _data_partitioned(inp: ObjectiveInputs, p: Mapping[str, Any], supervised: bool) -> ObjectiveOutput:
    if inp.frozen is None or inp.teachers is None:
        raise ValueError("data partitioning needs the frozen student's and the teachers' logits")
    route = L.route_sources(inp.frozen, inp.teachers, inp.labels, supervised)
    loss = L.kl_term(L.routed_targets(inp.frozen, inp.teachers, route), inp.student, inp.temperature)
    logs = {"teacher_share": (route > 0).float().mean()}
    lam = p.get("lambda", 1.0)
    if lam < 1.0:  # the paper's lambda ablation: lambda * KL_DP + (1 - lambda) * CE
        ce = L.cross_entropy(inp.student, inp.targets)
        loss = lam * loss + (1.0 - lam) * ce
        logs["ce"] = ce.detach()
    return ObjectiveOutput(loss, route=route, logs=logs)


@register_method("kl_dp", label="KL+DP", needs_labels=True, needs_frozen=True, routes=True, multi_teacher=True,
                 unsupervised_twin="kl_dp_unsup",
                 params={"lambda": Param(1.0, float, 0.0, 1.0, doc="weight of the DP KL term; 1 - lambda weighs a "
                                                                  "CE term (the paper's ablation; 1 = no CE)")},
                 grid={"base_lr": [1e-3, 1e-4, 1e-5], "temperature": [0.1, 1.0, 10.0]}, paper_success_rate="92.5%")
def kl_dp(inp: ObjectiveInputs, p: Mapping[str, Any]) -> ObjectiveOutput:
    """KL+DP: per sample distil from the teacher where sigma_y(teacher) > sigma_y(frozen student), else
    from the frozen student. No CE by default (lambda = 1); lr 1e-4, T = 1."""
    return _data_partitioned(inp, p, supervised=True)


@register_method("kl_dp_unsup", label="KL+DP (unsupervised)", needs_frozen=True, routes=True, multi_teacher=True,
                 grid={"base_lr": [1e-3, 1e-4, 1e-5], "temperature": [0.1, 1.0, 10.0]})
def kl_dp_unsup(inp: ObjectiveInputs, p: Mapping[str, Any]) -> ObjectiveOutput:
    """Unsupervised KL+DP: route by max-probability instead of the label's probability (no labels, no CE)."""
    return _data_partitioned(inp, p, supervised=False)
