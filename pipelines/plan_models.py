"""Planners of the stages that handle whole models: zoo, predict, score, semantics, robustness.

A planner takes the :class:`~pipelines.study.Study` (models resolved, data spec and results layout
computed once) and returns its stage's jobs, or None while they depend on results not written yet. It
is named by its :class:`~pipelines.stages.Stage` record; :meth:`Study.plan` calls it once per stage.
"""

from __future__ import annotations

from typing import Any

from pipelines.jobs import Job, job_id_for
from pipelines.plan_transfers import transfer_pairs
from zoo_study.scoring.pairs import PairSelection

__all__ = ["plan_zoo", "plan_predict", "plan_score", "plan_semantics", "plan_robustness"]


def plan_zoo(study: Any) -> list[Job]:
    """One job per model: its catalog row, and the weights of a model the pipeline trains or adapts."""
    cfg, layout = study.cfg, study.layout
    jobs = []
    for m in study.models:
        outputs = {"model": study.rel(layout.model_row(m.model_id))}
        if m.has_weights_file:
            outputs["weights"] = study.rel(layout.weights(m.model_id))
        jobs.append(Job("zoo", {"model": m.payload(), "data": study.data}, outputs, num_cpus=cfg.ray.cpus_per_job,
                        num_gpus=cfg.ray.gpus_per_job if m.has_weights_file else 0, name=m.model_id,
                        runtime=study.runtime))
    return jobs


def plan_predict(study: Any) -> list[Job]:
    """One job per model: its predictions on the eval split."""
    cfg = study.cfg
    return [Job("predict", {"model": m.payload(), "data": study.data, "batch_size": cfg.predict.batch_size,
                            "topk": cfg.predict.topk, "device": cfg.study.device},
                {"predictions": study.rel(study.layout.predictions(m.model_id))},
                inputs=tuple(study.model_inputs(m)), num_cpus=cfg.ray.cpus_per_job, num_gpus=cfg.ray.gpus_per_job,
                name=m.model_id, runtime=study.runtime)
            for m in study.models]


def plan_score(study: Any) -> list[Job]:
    """One job scoring every selected pair from the cached predictions (none with fewer than 2 trained models)."""
    cfg, layout = study.cfg, study.layout
    trained = [m.model_id for m in study.models if m.trained]
    if len(trained) < 2:
        return []
    spec = {"models": trained, "random_teachers": [m.model_id for m in study.models if not m.trained],
            "pairs": cfg.score.model_dump(mode="json", include=set(PairSelection.model_fields))}
    if cfg.score.pair_classes != "all":  # only then: the default spec (and job id) stays as it was
        spec["pair_classes"] = class_pairs_spec(study)
    if cfg.data.kind == "imagefolder":  # labels may be a subset of ImageNet's ids: count the present classes
        spec["classes"] = "present"
    inputs = tuple(study.rel(layout.predictions(m.model_id)) for m in study.models)
    outputs = {"pairs": study.rel(layout.pairs), "pair_classes": study.rel(layout.pair_classes)}
    return [Job("score", spec, outputs, inputs=inputs, num_cpus=cfg.ray.cpus_per_job, name="all pairs")]


def class_pairs_spec(study: Any) -> dict[str, Any]:
    """Which pairs keep per-class counts (``score.pair_classes`` other than ``all``), as the score job's
    spec holds it: ``{"keep": "none"}``, or ``{"keep": "transfer_pairs"}`` with the transfer stage's pairs
    (``explicit``) or, for sampled pairs, the draw the score job repeats on its own pair table
    (``sample``: n and seed of :func:`~pipelines.plan_transfers.sample_pairs_by_delta`, which the transfer
    planner also calls)."""
    cfg = study.cfg
    keep = cfg.score.pair_classes
    if keep == "none":
        return {"keep": keep}
    if not cfg.transfer.enabled:
        return {"keep": keep, "explicit": []}
    if cfg.transfer.pairs == "sample":
        return {"keep": keep, "sample": {"n": cfg.transfer.n_pairs, "seed": cfg.study.seed}}
    return {"keep": keep, "explicit": [list(p) for p in transfer_pairs(study) or []]}


def plan_semantics(study: Any) -> list[Job]:
    """Fig 2b's tables from the score stage's: one job (class embeddings, per-pair similarities)."""
    cfg, layout = study.cfg, study.layout
    if not cfg.semantics.enabled or not study.plan("score"):
        return []
    spec = {"data": study.data, "settings": cfg.semantics.model_dump(mode="json")}
    if cfg.score.pair_classes != "all":  # only the pairs that kept per-class counts (default id unchanged)
        spec["pair_classes"] = cfg.score.pair_classes
    inputs = (study.rel(layout.pairs), study.rel(layout.pair_classes))
    outputs = {"embeddings": study.rel(layout.class_embeddings), "pair_semantics": study.rel(layout.pair_semantics)}
    return [Job("semantics", spec, outputs, inputs=inputs, num_cpus=cfg.ray.cpus_per_job,
                name=f"class similarity ({cfg.semantics.encoder})", runtime=study.runtime)]


def plan_robustness(study: Any) -> list[Job] | None:
    """One job per student of the study's transfers (the zoo model, before any transfer) and one per
    transfer job of the selected methods (its kept last student); None while the transfers are unplanned.
    Reads the transfer and multi-teacher plans of the Study: nothing is planned twice."""
    cfg = study.cfg
    rb = cfg.robustness
    if not rb.enabled:
        return []
    transfers = study.plan("transfer")
    if transfers is None:
        return None
    settings = rb.model_dump(mode="json", exclude={"enabled", "methods"})
    chosen = [j for j in transfers + (study.plan("multi_teacher") or [])
              if not rb.methods or j.spec["config"]["method"] in rb.methods]
    runs = [(sid, None) for sid in dict.fromkeys(j.spec["student"]["model_id"] for j in chosen)]
    runs += [(j.spec["student"]["model_id"], j) for j in chosen]
    jobs = []
    for student, transfer in runs:
        model = study.by_id[student]
        spec = {"model": model.payload(), "transfer_id": transfer.job_id if transfer else None,
                "data": study.data, "settings": settings, "device": cfg.study.device}
        inputs = list(study.model_inputs(model))
        if transfer is not None:
            inputs.append(transfer.outputs["student_weights"])
        name = f"{student} after {transfer.name}" if transfer is not None else f"{student} (before transfer)"
        jobs.append(Job("robustness", spec, {"robustness": study.rel(study.layout.robustness_row(
            job_id_for("robustness", spec)))}, inputs=tuple(inputs), num_cpus=cfg.ray.cpus_per_job,
            num_gpus=cfg.ray.gpus_per_job, name=name, runtime=study.runtime))
    return jobs
