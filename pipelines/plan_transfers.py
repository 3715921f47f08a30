"""Planners of the transfer-like stages: transfer, multi_teacher, hparam.

Each stage has a *grid* (the resolved :class:`~zoo_study.transfer.config.TransferConfig` dicts it will
run, known from the config alone) and a planner that crosses its grid with the pairs. The validator
checks the grids (``*_configs``, through :meth:`Study.transfer_configs`) and the planners read the same
grids, so the configs checked before a run are the configs planned, and each is resolved once
(:meth:`Study.transfer_config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipelines.jobs import Job, job_id_for
from zoo_study.config import ConfigError

__all__ = ["sample_pairs_by_delta", "transfer_pairs", "method_pair_indices", "transfer_grid", "multi_teacher_grid",
           "hparam_grid", "transfer_configs", "multi_teacher_configs", "hparam_configs", "plan_transfer",
           "plan_multi_teacher", "plan_hparam"]


def sample_pairs_by_delta(pairs_table, n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (teacher, student) pairs spread over the range of delta_acc: sort the trained pairs by
    delta_acc, cut them into ``n`` equal-count strata, draw one pair per stratum (seeded)."""
    rows = pairs_table.filter(pairs_table.column("teacher_is_random").to_numpy(zero_copy_only=False) == False)  # noqa: E712
    if rows.num_rows == 0:
        return []
    order = np.argsort(rows.column("delta_acc").to_numpy(), kind="stable")
    teachers = rows.column("teacher").to_pylist()
    students = rows.column("student").to_pylist()
    rng = np.random.default_rng(seed)
    picks = []
    for stratum in np.array_split(order, min(n, len(order))):
        i = int(rng.choice(stratum))
        picks.append((teachers[i], students[i]))
    return picks


def transfer_pairs(study: Any) -> list[tuple[str, str]] | None:
    """The (teacher, student) pairs of the transfer stage; None while they depend on missing scores."""
    cfg = study.cfg
    t = cfg.transfer
    if t.pairs == "explicit":
        return [tuple(p) for p in t.explicit]
    if t.pairs == "grid":
        return [(te, st) for st in t.students for te in t.teachers if te != st]
    if t.pairs == "paper":
        from zoo_study.zoo.catalog import paper_models

        study_name = cfg.zoo.paper_study or "imagenet_10pct"
        rows = [r for r in paper_models() if r["study"] == study_name]
        students = [r["timm_name"] for r in rows if r["role"] == "student"]
        teachers = [r["timm_name"] for r in rows if r["role"] == "teacher"]
        return [(te, st) for st in students for te in teachers if te != st]
    scores = study.scores()
    return None if scores is None else sample_pairs_by_delta(scores, t.n_pairs, cfg.study.seed)


def method_pair_indices(n_pairs: int, k: int | None) -> set[int]:
    """Which of ``n_pairs`` pairs (in delta_acc order when sampled) a method with ``k`` pairs runs on:
    ``k`` indices spread evenly from the first to the last, so a claim's subset spans the whole range
    of delta_acc; every pair when ``k`` is None or not smaller."""
    if k is None or k >= n_pairs:
        return set(range(n_pairs))
    return {int(i) for i in np.linspace(0, n_pairs - 1, k).round()}


# ------------------------------------------------------------------------------------------------ grids
def transfer_grid(study: Any, n_pairs: int) -> list[list[dict[str, Any]]]:
    """Per pair index (of ``n_pairs``): the configs its single-teacher transfers run, in job order (method,
    seed, then the study's settings and each variant). Replicate seeds go to the first pairs, a method of
    ``transfer.method_pairs`` to its evenly spread subset."""
    t = study.cfg.transfer
    rep = t.replicate
    grid: list[list[dict[str, Any]]] = []
    for i in range(n_pairs):
        configs = []
        for method in t.methods:
            if i not in method_pair_indices(n_pairs, t.method_pairs.get(method)):
                continue
            seeds = list(t.seeds)
            if i < rep.n_pairs and (not rep.methods or method in rep.methods):  # extra seeds on the first pairs
                seeds += [s for s in rep.seeds if s not in seeds]
            for seed in seeds:  # loops, not comprehensions, on the way to every job: fewer calls
                for variant in [None, *t.variants]:
                    configs.append(study.transfer_config(method, seed, variant=variant))
        grid.append(configs)
    return grid


def multi_teacher_grid(study: Any) -> list[tuple[str, dict[str, Any]]]:
    """(role, config) of every multi-teacher job of one student, in job order: each ``"mode"``, each
    ``"method"`` of parallel_methods with the study's variants (its outputs may add the method's table),
    then the ``"alone"`` baseline, run from each teacher alone (Tab 4; study_part keeps it apart from the
    study's own transfers)."""
    cfg = study.cfg
    mt, seed = cfg.multi_teacher, cfg.transfer.seeds[0]
    out = [("mode", study.transfer_config(mt.method, seed, mode=mode, study_part="multi_teacher", epochs=mt.epochs,
                                         order=mt.order)) for mode in mt.modes]
    out += [("method", study.transfer_config(method, seed, mode="parallel", study_part="multi_teacher", epochs=mt.epochs,
                                          order=mt.order, variant=variant))
            for method in mt.parallel_methods for variant in [None, *cfg.transfer.variants]]
    if mt.single_baselines:
        out.append(("alone", study.transfer_config(mt.method, seed, epochs=mt.epochs, study_part="multi_teacher")))
    return out


def hparam_grid(study: Any) -> list[dict[str, Any]]:
    """Every grid point of every searched method, as the config its jobs run."""
    from zoo_study.methods import default_grid
    from zoo_study.methods.grids import grid_points

    hs = study.cfg.hparam_search
    return [study.transfer_config(method, study.cfg.transfer.seeds[0], study_part="hparam", epochs=hs.epochs,
                                  hparams=point)
            for method in hs.methods for point in grid_points(hs.grid or default_grid(method))]


def transfer_configs(study: Any) -> list[dict[str, Any]]:
    """The transfer stage's configs for the validator: its grid over the pairs given, or over as many as
    ``transfer.n_pairs`` asks of the scores (they may not exist yet)."""
    t = study.cfg.transfer
    if not t.enabled:
        return []
    n = t.n_pairs if t.pairs == "sample" else len(transfer_pairs(study))
    return [c for configs in transfer_grid(study, n) for c in configs]


def multi_teacher_configs(study: Any) -> list[dict[str, Any]]:
    """The multi_teacher stage's configs for the validator."""
    return [c for _, c in multi_teacher_grid(study)] if study.cfg.multi_teacher.enabled else []


def hparam_configs(study: Any) -> list[dict[str, Any]]:
    """The hparam stage's configs for the validator."""
    return hparam_grid(study) if study.cfg.hparam_search.enabled else []


# ---------------------------------------------------------------------------------------------- jobs
def transfer_outputs(study: Any, method: str | None = None) -> Callable[[str], dict[str, Path]]:
    """A transfer job's outputs; when the robustness stage is on, its last student's weights; the tables the
    method declares (``Method.tables``: AMTML-KD's per-class teacher weights)."""
    from zoo_study.methods import get_method

    layout, keep_student = study.layout, study.cfg.robustness.enabled
    tables = [t.name for t in get_method(method).tables] if method is not None else []

    def outputs(jid: str) -> dict[str, Path]:
        out = {"summary": layout.transfer_summary(jid), "epochs": layout.transfer_epochs(jid),
               "predictions": layout.transfer_predictions(jid)}
        if keep_student:
            out["student_weights"] = layout.student_weights(jid)
        out.update({name: layout.path(name, job_id=jid) for name in tables})
        return out

    return outputs


def transfer_job(study: Any, stage: str, teachers: list[str], student: str, tconfig: dict[str, Any],
                 outputs_for: Callable[[str], dict[str, Path]]) -> Job:
    """One transfer job: its spec (models' payloads, config, data), inputs, outputs and pack key."""
    cfg, models = study.cfg, study.by_id
    unknown = [m for m in [*teachers, student] if m not in models]
    if unknown:
        raise ConfigError(f"{stage}: unknown model id(s) {unknown}; valid: {sorted(models)}")
    spec = {"student": models[student].payload(), "teachers": [models[t].payload() for t in teachers],
            "config": tconfig, "data": study.data, "device": cfg.study.device}
    job_id = job_id_for(stage, spec)
    inputs = [i for m in [student, *teachers] for i in study.model_inputs(models[m])]
    # cached eval predictions spare the job its own before-transfer passes over the eval split
    inputs += [study.rel(study.layout.predictions(m)) for m in [student, *teachers]]
    outputs = {name: study.rel(p) for name, p in outputs_for(job_id).items()}
    name = f"{tconfig['method']}/{tconfig['mode']}: {'+'.join(teachers)} -> {student}"
    pack, costs = "", {}
    if tconfig["mode"] == "single":  # single-teacher transfers of one teacher that see the same batches
        from zoo_study.transfer.config import pack_key

        shared = {k: spec[k] for k in ("teachers", "data", "device")}  # the student is the job's pack group
        pack = job_id_for(f"{stage}_pack", {**shared, "batches": list(pack_key(tconfig))})
        if cfg.ray.gpus_per_job > 0:  # sizes packs against ray.pack_gpu_memory_gb or the device's memory
            costs = _member_memory(study, models[student], models[teachers[0]], int(tconfig["batch_size"]))
    return Job(stage, spec, outputs, inputs=tuple(inputs), num_cpus=cfg.ray.cpus_per_job,
               num_gpus=cfg.ray.gpus_per_job, name=name, runtime=study.runtime, pack=pack,
               pack_group=student, **costs)


def _member_memory(study: Any, student: Any, teacher: Any, batch: int) -> dict[str, float]:
    """A packed transfer's memory fields of :class:`~pipelines.jobs.Job` (pipelines/memory.py): its student
    trained alone, the activation part of that, and the shared teacher forward. Imports torch: only
    called for GPU jobs."""
    from pipelines.memory import model_memory

    cfg = study.cfg
    g = cfg.data.generated
    num_classes = g.num_superclasses * g.classes_per_superclass if cfg.data.kind == "generated" else 1000
    s = model_memory(student, num_classes, batch)
    t = model_memory(teacher, num_classes, batch)
    return {"pack_cost": s.train, "pack_activation": s.activations, "pack_shared": t.forward}


def plan_transfer(study: Any) -> list[Job] | None:
    """The study's single-teacher transfers: every pair x its grid; None while the pairs need scores."""
    if not study.cfg.transfer.enabled:
        return []
    pairs = transfer_pairs(study)
    if pairs is None:
        return None
    jobs = []
    for (teacher, student), configs in zip(pairs, transfer_grid(study, len(pairs))):
        for tconf in configs:
            jobs.append(transfer_job(study, "transfer", [teacher], student, tconf,
                                     transfer_outputs(study, tconf["method"])))
    return jobs


def plan_multi_teacher(study: Any) -> list[Job]:
    """Per student of ``[multi_teacher]``: its grid from all teachers at once, then each teacher alone."""
    mt = study.cfg.multi_teacher
    if not mt.enabled:
        return []
    jobs = []
    grid = multi_teacher_grid(study)
    for student in mt.students:
        teachers = [t for t in mt.teachers if t != student]
        for role, tconf in grid:
            outputs = transfer_outputs(study, tconf["method"] if role == "method" else None)
            for group in ([[t] for t in teachers] if role == "alone" else [teachers]):
                jobs.append(transfer_job(study, "multi_teacher", group, student, tconf, outputs))
    return jobs


def plan_hparam(study: Any) -> list[Job] | None:
    """Every grid point on ``hparam_search.n_pairs`` pairs drawn from the scores (seed + 1); None before them."""
    cfg = study.cfg
    if not cfg.hparam_search.enabled:
        return []
    scores = study.scores()
    if scores is None:
        return None
    pairs = sample_pairs_by_delta(scores, cfg.hparam_search.n_pairs, cfg.study.seed + 1)
    return [transfer_job(study, "hparam", [teacher], student, tconf,
                         lambda jid: {"summary": study.layout.hparam_row(jid)})
            for tconf in hparam_grid(study) for teacher, student in pairs]
