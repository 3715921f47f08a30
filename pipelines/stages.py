"""Study config -> jobs, stage by stage: zoo -> predict -> score -> transfer -> multi_teacher -> hparam -> report.

Planning is cheap (no torch import): it reads the config and, for stages that depend on earlier
results (transfer pairs drawn from the scored pairs), the Parquet files already written. Executors live
in :mod:`pipelines.executors`, found by stage name in ``pipelines.jobs.EXECUTORS`` (module paths), so Ray
workers import them lazily. Every job names its outputs (``{"summary": "transfers/<id>/summary.parquet", ...}``)
and its executor returns ``{name: table}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipelines.jobs import Job, job_id_for
from pydantic import ValidationError

from zoo_study.config import ConfigError, StudyConfig
from zoo_study.scoring.pairs import PairSelection
from zoo_study.store import ResultsLayout

STAGES = ("zoo", "predict", "score", "semantics", "transfer", "multi_teacher", "hparam", "robustness", "report")
JOB_STAGES = STAGES[:-1]  # report runs on the driver, always


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root))


# ------------------------------------------------------------------------------------------ models
@dataclass(frozen=True)
class ModelPlan:
    """One model of the study: its id and everything needed to build it in a worker."""

    model_id: str
    kind: str  # embedded | ref | random
    spec: dict[str, Any]  # recipe dict (embedded), model entry (ref), or arch/kwargs/seed (random)

    @property
    def has_weights_file(self) -> bool:
        return self.kind in ("embedded", "adapted")


def data_spec_dict(cfg: StudyConfig) -> dict[str, Any]:
    """The study's data in a job spec (and its id): what changes the pixels and the samples. Not the
    dataset root: where a machine keeps ImageNet changes no result, so the same study on another machine
    keeps its ids; the root travels in ``Job.runtime`` (:func:`data_runtime`)."""
    d = cfg.data.job_dict()
    d.pop("root", None)
    return d


def data_runtime(cfg: StudyConfig) -> dict[str, Any]:
    """``Job.runtime`` of a job that reads the study's data, resolved here on the driver: the speed-only
    data settings (the cache folder), the dataset root (``data.root`` or ``$ZOO_STUDY_IMAGENET``) and the
    driver's ``$ZOO_STUDY_IMAGENET`` for other ImageFolder specs without a root (adapt data).

    Why: on a cluster the workers are started by each node's raylet and do not see the driver's
    environment; what the driver resolved travels with every job (:func:`pipelines.executors._source`)."""
    import os

    from pipelines.jobs import RUNTIME_DATA_ROOT, RUNTIME_ENV_ROOT
    from zoo_study.data.spec import IMAGENET_ENV, resolve_data_paths

    runtime = dict(cfg.data.runtime_dict())  # the cache folder, resolved here (resolve_data_paths)
    if cfg.data.kind == "imagefolder":
        try:
            runtime[RUNTIME_DATA_ROOT] = resolve_data_paths(cfg.data)[0]
        except FileNotFoundError:  # validation says so before a run; planning (--dry-run) goes on
            pass
    if os.environ.get(IMAGENET_ENV):
        runtime[RUNTIME_ENV_ROOT] = os.environ[IMAGENET_ENV]
    return runtime


def study_models(cfg: StudyConfig) -> list[ModelPlan]:
    """Every model of the study (trained, pretrained and noise-floor), in a stable order."""
    from zoo_study.zoo.recipes import ALL_RECIPES, select_recipes

    plans: list[ModelPlan] = []
    for r in select_recipes(cfg.zoo.embedded):
        spec = json.loads(r.to_json())
        spec["epochs_scale"] = cfg.zoo.epochs_scale
        plans.append(ModelPlan(r.model_id, "embedded", spec))
    if cfg.zoo.paper_study:
        from zoo_study.zoo.catalog import paper_models

        seen = set()
        for row in paper_models():
            if row["study"] != cfg.zoo.paper_study or row["timm_name"] in seen:
                continue
            seen.add(row["timm_name"])
            entry = {"id": row["timm_name"], "source": "timm", "arch": row["timm_name"], "family": row["family"],
                     "reported_top1": float(row["reported_top1"]) if row["reported_top1"] else None}
            plans.append(ModelPlan(row["timm_name"], "ref", entry))
    for m in cfg.zoo.models:
        plans.append(ModelPlan(m.model_id, "ref", m.entry_dict()))
    by_recipe = {r.model_id: r for r in ALL_RECIPES}
    for name in cfg.zoo.random_teachers:
        if name in by_recipe:
            r = by_recipe[name]
            spec = {"arch": r.arch, "model_kwargs": dict(json.loads(r.to_json())["model_kwargs"]),
                    "data_config": r.data_config, "seed": cfg.study.seed}
        else:
            spec = {"arch": name, "model_kwargs": {}, "data_config": None, "seed": cfg.study.seed}
        plans.append(ModelPlan(f"random__{name}", "random", spec))
    plans = _adapted_plans(cfg, plans)
    ids = [p.model_id for p in plans]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ConfigError(f"model ids must be unique; repeated: {dupes}")
    return plans


def _adapted_plans(cfg: StudyConfig, plans: list[ModelPlan]) -> list[ModelPlan]:
    """Fig 9 (``zoo.adapt``): every trained model becomes one adapted to the study's data; Fig 10
    (``zoo.cross_domain``): extra models, each a zoo model fine-tuned on another domain. An adapted plan
    carries its base model's payload; its zoo job trains or loads the base, then adapts it (one job, so
    nothing within the zoo stage waits for another job)."""
    from zoo_study.data.spec import DataSpec

    z = cfg.zoo
    if z.adapt.enabled and z.cross_domain:
        raise ConfigError("zoo.adapt and zoo.cross_domain cannot be combined in one study: adapt moves the whole "
                          "zoo to the study's data, cross_domain adds models trained on other data to it")
    if z.adapt.enabled:
        out = []
        for p in plans:
            if p.kind == "random":
                out.append(p)
                continue
            spec = {"base": _model_payload(p), "settings": z.adapt.settings(), "new_head": True,
                    "pretrain_data": z.adapt.pretrain_data.job_dict() if p.kind == "embedded" else None,
                    "train_data": None, "dataset": _dataset_tag(cfg.data.job_dict())}
            out.append(ModelPlan(p.model_id, "adapted", spec))
        return out
    by_id = {p.model_id: p for p in plans}
    extra = []
    for d in z.cross_domain:
        base = by_id.get(d.model)
        if base is None or base.kind == "random":
            raise ConfigError(f"zoo.cross_domain: model {d.model!r} is not a trained model of this zoo; valid: "
                              f"{sorted(i for i, p in by_id.items() if p.kind != 'random')}")
        merged = _deep_merge(cfg.data.model_dump(mode="json"), d.data)
        try:
            other = DataSpec.model_validate(merged)
        except ValidationError as err:
            from zoo_study.transfer.config import first_error

            raise ConfigError(f"zoo.cross_domain {d.model_id!r}: data {d.data}: {first_error(err)}") from None
        if other.job_dict() == cfg.data.job_dict():
            raise ConfigError(f"zoo.cross_domain {d.model_id!r}: data {d.data} is the study's own data; name another "
                              "domain (generated.domain) or dataset root")
        spec = {"base": _model_payload(base), "settings": d.settings(), "new_head": False,
                "pretrain_data": None, "train_data": other.job_dict(), "dataset": _dataset_tag(other.job_dict())}
        extra.append(ModelPlan(d.model_id, "adapted", spec))
    return plans + extra


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _dataset_tag(data: dict) -> str:
    """A short name of a data spec for tables: ``generated[class_set=b,domain=sketch]`` or the folder root."""
    if data.get("kind", "generated") == "generated":
        g = data.get("generated", {})
        parts = [f"{k}={g[k]}" for k in ("class_set", "domain") if k in g]
        return "generated" + (f"[{','.join(parts)}]" if parts else "")
    return str(data.get("root") or "imagefolder")


def _model_inputs(plan: ModelPlan, layout: ResultsLayout) -> list[str]:
    root = layout.root
    out = [_rel(layout.model_row(plan.model_id), root)]
    if plan.has_weights_file:
        out.append(_rel(layout.weights(plan.model_id), root))
    return out


def _model_payload(plan: ModelPlan) -> dict[str, Any]:
    return {"model_id": plan.model_id, "kind": plan.kind, "spec": plan.spec}


# ------------------------------------------------------------------------------------------ planners
def plan_zoo(cfg: StudyConfig, layout: ResultsLayout) -> list[Job]:
    jobs = []
    data = data_spec_dict(cfg)
    for p in study_models(cfg):
        outputs = {"model": _rel(layout.model_row(p.model_id), layout.root)}
        if p.has_weights_file:
            outputs["weights"] = _rel(layout.weights(p.model_id), layout.root)
        jobs.append(Job("zoo", {"model": _model_payload(p), "data": data}, outputs,
                        num_cpus=cfg.ray.cpus_per_job, num_gpus=cfg.ray.gpus_per_job if p.has_weights_file else 0,
                        name=p.model_id, runtime=data_runtime(cfg)))
    return jobs


def plan_predict(cfg: StudyConfig, layout: ResultsLayout) -> list[Job]:
    jobs = []
    for p in study_models(cfg):
        spec = {"model": _model_payload(p), "data": data_spec_dict(cfg), "batch_size": cfg.predict.batch_size,
                "topk": cfg.predict.topk, "device": cfg.study.device}
        jobs.append(Job("predict", spec, {"predictions": _rel(layout.predictions(p.model_id), layout.root)},
                        inputs=tuple(_model_inputs(p, layout)), num_cpus=cfg.ray.cpus_per_job,
                        num_gpus=cfg.ray.gpus_per_job, name=p.model_id, runtime=data_runtime(cfg)))
    return jobs


def plan_score(cfg: StudyConfig, layout: ResultsLayout) -> list[Job]:
    models = study_models(cfg)
    if len([m for m in models if m.kind != "random"]) < 2:
        return []
    spec = {
        "models": [m.model_id for m in models if m.kind != "random"],
        "random_teachers": [m.model_id for m in models if m.kind == "random"],
        "pairs": cfg.score.model_dump(mode="json", include=set(PairSelection.model_fields)),
    }
    if cfg.score.pair_classes != "all":  # only then: the default spec (and job id) stays as it was
        spec["pair_classes"] = class_pairs_spec(cfg, layout)
    if cfg.data.kind == "imagefolder":  # labels may be a subset of ImageNet's ids: count the present classes
        spec["classes"] = "present"
    inputs = tuple(_rel(layout.predictions(m.model_id), layout.root) for m in models)
    outputs = {"pairs": _rel(layout.pairs, layout.root), "pair_classes": _rel(layout.pair_classes, layout.root)}
    return [Job("score", spec, outputs, inputs=inputs, num_cpus=cfg.ray.cpus_per_job, name="all pairs")]


def class_pairs_spec(cfg: StudyConfig, layout: ResultsLayout) -> dict[str, Any]:
    """Which pairs keep per-class counts (``score.pair_classes`` other than ``all``), as the score job's
    spec holds it: ``{"keep": "none"}``, or ``{"keep": "transfer_pairs"}`` with the transfer stage's pairs
    (``explicit``) or, for sampled pairs, the draw the score job repeats on its own pair table
    (``sample``: n and seed of :func:`sample_pairs_by_delta`, which the transfer planner also calls)."""
    keep = cfg.score.pair_classes
    if keep == "none":
        return {"keep": keep}
    if not cfg.transfer.enabled:
        return {"keep": keep, "explicit": []}
    if cfg.transfer.pairs == "sample":
        return {"keep": keep, "sample": {"n": cfg.transfer.n_pairs, "seed": cfg.study.seed}}
    return {"keep": keep, "explicit": [list(p) for p in transfer_pairs(cfg, layout) or []]}


def plan_semantics(cfg: StudyConfig, layout: ResultsLayout) -> list[Job]:
    """Fig 2b's tables from the score stage's: one job (class embeddings, per-pair similarities)."""
    if not cfg.semantics.enabled or not plan_score(cfg, layout):
        return []
    spec = {"data": data_spec_dict(cfg), "settings": cfg.semantics.model_dump(mode="json")}
    if cfg.score.pair_classes != "all":  # only the pairs that kept per-class counts (default id unchanged)
        spec["pair_classes"] = cfg.score.pair_classes
    inputs = (_rel(layout.pairs, layout.root), _rel(layout.pair_classes, layout.root))
    outputs = {"embeddings": _rel(layout.class_embeddings, layout.root),
               "pair_semantics": _rel(layout.pair_semantics, layout.root)}
    return [Job("semantics", spec, outputs, inputs=inputs, num_cpus=cfg.ray.cpus_per_job,
                name=f"class similarity ({cfg.semantics.encoder})", runtime=data_runtime(cfg))]


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


def transfer_pairs(cfg: StudyConfig, layout: ResultsLayout) -> list[tuple[str, str]] | None:
    """The (teacher, student) pairs of the transfer stage; None while they depend on missing scores."""
    t = cfg.transfer
    if t.pairs == "explicit":
        return [tuple(p) for p in t.explicit]
    if t.pairs == "grid":
        return [(te, st) for st in t.students for te in t.teachers if te != st]
    if t.pairs == "paper":
        from zoo_study.zoo.catalog import paper_models

        study = cfg.zoo.paper_study or "imagenet_10pct"
        rows = [r for r in paper_models() if r["study"] == study]
        students = [r["timm_name"] for r in rows if r["role"] == "student"]
        teachers = [r["timm_name"] for r in rows if r["role"] == "teacher"]
        return [(te, st) for st in students for te in teachers if te != st]
    scores = scored_pairs(layout, cfg)
    return None if scores is None else sample_pairs_by_delta(scores, t.n_pairs, cfg.study.seed)


def scored_pairs(layout: ResultsLayout, cfg: StudyConfig | None = None):
    """scores/pairs.parquet, or None while it is missing, truncated or of another schema (the score stage
    redoes such a file; planning from it would fail on a missing column). With ``cfg``: only the pairs
    of that study's models (a root shared with another study, e.g. related.toml beside the demo, may
    hold the other study's models until this study's score job runs again)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from zoo_study.store import PAIR_SCHEMA, read_parquet_checked

    table = read_parquet_checked(layout.pairs, PAIR_SCHEMA)
    if table is None or cfg is None:
        return table
    ids = pa.array([m.model_id for m in study_models(cfg)], type=pa.string())
    keep = pc.and_(pc.is_in(table.column("teacher"), value_set=ids), pc.is_in(table.column("student"), value_set=ids))
    return table.filter(keep)


def _transfer_config(cfg: StudyConfig, method: str, seed: int, *, mode: str = "single", study_part: str = "transfer",
                     epochs: int | None = None, hparams: dict[str, Any] | None = None, order: str = "given",
                     variant: dict[str, Any] | None = None) -> dict[str, Any]:
    """The resolved, validated TransferConfig of one job, as the dict its spec (and id) holds.

    A bad value (a grid point outside a parameter's range, a method that cannot run a mode) is a
    ConfigError here, at planning, naming the method and the value."""
    from zoo_study.transfer.config import TransferConfig, first_error

    t = cfg.transfer
    hp = dict(t.hparams.get(method, {}))
    hp.update(hparams or {})
    settings = {**t.settings(), "epochs": epochs or t.epochs}
    settings.update(variant or {})
    try:
        tc = TransferConfig(**settings, method=method, mode=mode, hparams=hp, seed=seed, study_part=study_part,
                            teacher_order=order,
                            variant=json.dumps(variant, sort_keys=True, separators=(",", ":")) if variant else "")
    except ValidationError as err:
        raise ConfigError(f"{study_part} job of method {method!r}: {first_error(err)}") from None
    except ValueError as err:
        raise ConfigError(f"{study_part} job of method {method!r}: {err}") from None
    return tc.to_dict()


def _transfer_job(cfg: StudyConfig, layout: ResultsLayout, models: dict[str, ModelPlan], stage: str,
                  teachers: list[str], student: str, tconfig: dict[str, Any],
                  outputs_for: Callable[[str], dict[str, Path]]) -> Job:
    from pipelines.jobs import job_id_for

    unknown = [m for m in [*teachers, student] if m not in models]
    if unknown:
        raise ConfigError(f"{stage}: unknown model id(s) {unknown}; valid: {sorted(models)}")
    spec = {
        "student": _model_payload(models[student]),
        "teachers": [_model_payload(models[t]) for t in teachers],
        "config": tconfig,
        "data": data_spec_dict(cfg),
        "device": cfg.study.device,
    }
    job_id = job_id_for(stage, spec)
    inputs = [i for m in [student, *teachers] for i in _model_inputs(models[m], layout)]
    # cached eval predictions spare the job its own before-transfer passes over the eval split
    inputs += [_rel(layout.predictions(m), layout.root) for m in [student, *teachers]]
    outputs = {name: _rel(p, layout.root) for name, p in outputs_for(job_id).items()}
    name = f"{tconfig['method']}/{tconfig['mode']}: {'+'.join(teachers)} -> {student}"
    pack, costs = "", {}
    if tconfig["mode"] == "single":  # single-teacher transfers of one teacher that see the same batches
        from zoo_study.transfer.config import pack_key

        shared = {k: spec[k] for k in ("teachers", "data", "device")}  # the student is the job's pack group
        pack = job_id_for(f"{stage}_pack", {**shared, "batches": list(pack_key(tconfig))})
        if cfg.ray.gpus_per_job > 0:  # sizes packs against ray.pack_gpu_memory_gb or the device's memory
            costs = _member_memory(cfg, models[student], models[teachers[0]], int(tconfig["batch_size"]))
    return Job(stage, spec, outputs, inputs=tuple(inputs), num_cpus=cfg.ray.cpus_per_job,
               num_gpus=cfg.ray.gpus_per_job, name=name, runtime=data_runtime(cfg), pack=pack,
               pack_group=student, **costs)


def _member_memory(cfg: StudyConfig, plan: ModelPlan, teacher: ModelPlan, batch: int) -> dict[str, float]:
    """A packed transfer's memory fields of :class:`~pipelines.jobs.Job` (pipelines/memory.py): its student
    trained alone, the activation part of that, and the shared teacher forward. Imports torch: only
    called for GPU jobs."""
    from pipelines.memory import model_memory

    g = cfg.data.generated
    num_classes = g.num_superclasses * g.classes_per_superclass if cfg.data.kind == "generated" else 1000
    s = model_memory(plan.kind, plan.spec, num_classes, batch)
    t = model_memory(teacher.kind, teacher.spec, num_classes, batch)
    return {"pack_cost": s.train, "pack_activation": s.activations, "pack_shared": t.forward}


def _transfer_outputs(layout: ResultsLayout, keep_student: bool = False,
                      method: str | None = None) -> Callable[[str], dict[str, Path]]:
    """A transfer job's outputs; with ``keep_student`` (the robustness stage is on) its last student's
    weights; the tables the method declares (``Method.tables``: AMTML-KD's per-class teacher weights)."""
    from zoo_study.methods import get_method

    tables = [t.name for t in get_method(method).tables] if method is not None else []

    def outputs(jid: str) -> dict[str, Path]:
        out = {"summary": layout.transfer_summary(jid), "epochs": layout.transfer_epochs(jid),
               "predictions": layout.transfer_predictions(jid)}
        if keep_student:
            out["student_weights"] = layout.student_weights(jid)
        out.update({name: layout.path(name, job_id=jid) for name in tables})
        return out

    return outputs


def method_pair_indices(n_pairs: int, k: int | None) -> set[int]:
    """Which of ``n_pairs`` pairs (in delta_acc order when sampled) a method with ``k`` pairs runs on:
    ``k`` indices spread evenly from the first to the last, so a claim's subset spans the whole range
    of delta_acc; every pair when ``k`` is None or not smaller."""
    if k is None or k >= n_pairs:
        return set(range(n_pairs))
    return {int(i) for i in np.linspace(0, n_pairs - 1, k).round()}


def plan_transfer(cfg: StudyConfig, layout: ResultsLayout) -> list[Job] | None:
    if not cfg.transfer.enabled:
        return []
    pairs = transfer_pairs(cfg, layout)
    if pairs is None:
        return None
    models = {m.model_id: m for m in study_models(cfg)}
    t = cfg.transfer
    rep = t.replicate
    jobs = []
    for i, (teacher, student) in enumerate(pairs):
        for method in t.methods:
            if i not in method_pair_indices(len(pairs), t.method_pairs.get(method)):
                continue
            seeds = list(t.seeds)
            if i < rep.n_pairs and (not rep.methods or method in rep.methods):  # extra seeds on the first pairs
                seeds += [s for s in rep.seeds if s not in seeds]
            for seed in seeds:
                for variant in [None, *t.variants]:  # the study's settings, then each variant of them
                    jobs.append(_transfer_job(cfg, layout, models, "transfer", [teacher], student,
                                              _transfer_config(cfg, method, seed, variant=variant),
                                              _transfer_outputs(layout, cfg.robustness.enabled, method)))
    return jobs


def plan_multi_teacher(cfg: StudyConfig, layout: ResultsLayout) -> list[Job]:
    mt = cfg.multi_teacher
    if not mt.enabled:
        return []
    models = {m.model_id: m for m in study_models(cfg)}
    jobs = []
    for student in mt.students:
        teachers = [t for t in mt.teachers if t != student]
        for mode in mt.modes:
            tconf = _transfer_config(cfg, mt.method, cfg.transfer.seeds[0], mode=mode, study_part="multi_teacher",
                                     epochs=mt.epochs, order=mt.order)
            jobs.append(_transfer_job(cfg, layout, models, "multi_teacher", teachers, student, tconf,
                                      _transfer_outputs(layout, cfg.robustness.enabled)))
        for method in mt.parallel_methods:  # other multi-teacher objectives, from all teachers at once
            for variant in [None, *cfg.transfer.variants]:  # with the study's transfer variants, like singles
                tconf = _transfer_config(cfg, method, cfg.transfer.seeds[0], mode="parallel",
                                         study_part="multi_teacher", epochs=mt.epochs, order=mt.order, variant=variant)
                jobs.append(_transfer_job(cfg, layout, models, "multi_teacher", teachers, student, tconf,
                                          _transfer_outputs(layout, cfg.robustness.enabled, method)))
        if mt.single_baselines:  # each teacher alone, same method and epochs: what the modes must beat
            for teacher in teachers:
                # study_part multi_teacher: Tab 4's baselines, kept apart from the study's own transfers
                tconf = _transfer_config(cfg, mt.method, cfg.transfer.seeds[0], epochs=mt.epochs,
                                         study_part="multi_teacher")
                jobs.append(_transfer_job(cfg, layout, models, "multi_teacher", [teacher], student, tconf,
                                          _transfer_outputs(layout, cfg.robustness.enabled)))
    return jobs


def plan_hparam(cfg: StudyConfig, layout: ResultsLayout) -> list[Job] | None:
    hs = cfg.hparam_search
    if not hs.enabled:
        return []
    scores = scored_pairs(layout, cfg)
    if scores is None:
        return None
    from zoo_study.methods import default_grid
    from zoo_study.methods.grids import grid_points

    pairs = sample_pairs_by_delta(scores, hs.n_pairs, cfg.study.seed + 1)
    models = {m.model_id: m for m in study_models(cfg)}
    jobs = []
    for method in hs.methods:
        grid = hs.grid or default_grid(method)  # the config checked that one exists
        for point in grid_points(grid):
            for teacher, student in pairs:
                tconf = _transfer_config(cfg, method, cfg.transfer.seeds[0], study_part="hparam", epochs=hs.epochs,
                                         hparams=point)
                jobs.append(_transfer_job(cfg, layout, models, "hparam", [teacher], student, tconf,
                                          lambda jid: {"summary": layout.hparam_row(jid)}))
    return jobs


def plan_robustness(cfg: StudyConfig, layout: ResultsLayout) -> list[Job] | None:
    """One job per student of the study's transfers (the zoo model, before any transfer) and one per
    transfer job of the selected methods (its kept last student); None while the transfers are unplanned."""
    rb = cfg.robustness
    if not rb.enabled:
        return []
    transfers = plan_transfer(cfg, layout)
    if transfers is None:
        return None
    models = {m.model_id: m for m in study_models(cfg)}
    settings = rb.model_dump(mode="json", exclude={"enabled", "methods"})
    data = data_spec_dict(cfg)
    jobs: list[Job] = []

    def add(student: str, transfer: Job | None) -> None:
        spec = {"model": _model_payload(models[student]), "transfer_id": transfer.job_id if transfer else None,
                "data": data, "settings": settings, "device": cfg.study.device}
        inputs = list(_model_inputs(models[student], layout))
        if transfer is not None:
            inputs.append(transfer.outputs["student_weights"])
        job_id = job_id_for("robustness", spec)
        name = f"{student} after {transfer.name}" if transfer is not None else f"{student} (before transfer)"
        jobs.append(Job("robustness", spec, {"robustness": _rel(layout.robustness_row(job_id), layout.root)},
                        inputs=tuple(inputs), num_cpus=cfg.ray.cpus_per_job, num_gpus=cfg.ray.gpus_per_job,
                        name=name, runtime=data_runtime(cfg)))

    chosen = [j for j in transfers + plan_multi_teacher(cfg, layout)
              if not rb.methods or j.spec["config"]["method"] in rb.methods]
    for student in dict.fromkeys(j.spec["student"]["model_id"] for j in chosen):
        add(student, None)
    for j in chosen:
        add(j.spec["student"]["model_id"], j)
    return jobs


PLANNERS: dict[str, Callable[[StudyConfig, ResultsLayout], list[Job] | None]] = {
    "zoo": plan_zoo,
    "predict": plan_predict,
    "score": plan_score,
    "semantics": plan_semantics,
    "transfer": plan_transfer,
    "multi_teacher": plan_multi_teacher,
    "hparam": plan_hparam,
    "robustness": plan_robustness,
}


def plan_stage(cfg: StudyConfig, stage: str) -> list[Job] | None:
    """The jobs of one stage, or None when they can only be planned after an earlier stage ran."""
    if stage not in PLANNERS:
        raise ValueError(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}")
    return PLANNERS[stage](cfg, ResultsLayout(cfg.results_root()))


def parse_stages(text: str | None) -> list[str]:
    """'--stage score,transfer' -> ordered list; None = all stages."""
    if text is None:
        return list(STAGES)
    wanted = [s.strip() for s in text.split(",") if s.strip()]
    if not wanted:  # `--stage ''` (an unset shell variable) must not mean every stage
        raise ConfigError(f"--stage {text!r} names no stage; valid: a comma-separated subset of {', '.join(STAGES)}")
    bad = [s for s in wanted if s not in STAGES]
    if bad:
        raise ConfigError(f"unknown stage(s) {bad}; valid: {', '.join(STAGES)}")
    return [s for s in STAGES if s in wanted]
