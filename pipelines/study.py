"""The Study: a config resolved once (its models, data spec, results layout) and every stage planned once.

Why one object: the CLI, the validator, the data step, the estimate and the status all need the same
plans. Built once (:meth:`Study.from_config`), a Study resolves the models (typed
:class:`~zoo_study.zoo.study_model.StudyModel`\\ s: their payloads go into job specs unchanged), the job
specs' data and runtime, and caches each stage's jobs (:meth:`plan`), each transfer config (resolved
and validated once: :meth:`transfer_config`) and the scores read from the results root. Stages planned from the scores are
planned again (:meth:`forget_scores`) after the score stage wrote them.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipelines.jobs import Job, canonical_json
from pipelines.stages import STAGES, get_stage, stage_names
from zoo_study.config import ConfigError, StudyConfig
from zoo_study.store import ResultsLayout
from zoo_study.zoo.study_model import AdaptedModel, EmbeddedModel, RandomModel, RefModel, StudyModel

__all__ = ["Study", "data_runtime", "data_spec_dict", "plan_stage", "scored_pairs", "study_models"]
_UNREAD = object()  # scores not read yet


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


def study_models(cfg: StudyConfig) -> list[StudyModel]:
    """Every model of the study (trained, pretrained and noise-floor), in a stable order; ConfigError on
    repeated ids."""
    from zoo_study.zoo.catalog import paper_models
    from zoo_study.zoo.recipes import ALL_RECIPES, select_recipes

    models: list[StudyModel] = []
    for r in select_recipes(cfg.zoo.embedded):
        models.append(EmbeddedModel(r.model_id, {**json.loads(r.to_json()), "epochs_scale": cfg.zoo.epochs_scale}))
    seen = set()
    for row in (paper_models() if cfg.zoo.paper_study else []):
        if row["study"] != cfg.zoo.paper_study or row["timm_name"] in seen:
            continue
        seen.add(row["timm_name"])
        models.append(RefModel(row["timm_name"], {
            "id": row["timm_name"], "source": "timm", "arch": row["timm_name"], "family": row["family"],
            "reported_top1": float(row["reported_top1"]) if row["reported_top1"] else None}))
    models += [RefModel(m.model_id, m.entry_dict()) for m in cfg.zoo.models]
    by_recipe = {r.model_id: r for r in ALL_RECIPES}
    for name in cfg.zoo.random_teachers:
        r = by_recipe.get(name)
        spec = ({"arch": r.arch, "model_kwargs": dict(json.loads(r.to_json())["model_kwargs"]),
                 "data_config": r.data_config} if r else {"arch": name, "model_kwargs": {}, "data_config": None})
        models.append(RandomModel(f"random__{name}", {**spec, "seed": cfg.study.seed}))
    models = _adapted(cfg, models)
    ids = [m.model_id for m in models]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ConfigError(f"model ids must be unique; repeated: {dupes}")
    return models


def _adapted(cfg: StudyConfig, models: list[StudyModel]) -> list[StudyModel]:
    """Fig 9 (``zoo.adapt``): every trained model becomes one adapted to the study's data; Fig 10
    (``zoo.cross_domain``): extra models, each a zoo model fine-tuned on another domain. An adapted model
    carries its base model's payload; its zoo job trains or loads the base, then adapts it (one job, so
    nothing within the zoo stage waits for another job)."""
    from zoo_study.data.spec import DataSpec
    from zoo_study.transfer.config import first_error

    z = cfg.zoo
    if z.adapt.enabled and z.cross_domain:
        raise ConfigError("zoo.adapt and zoo.cross_domain cannot be combined in one study: adapt moves the whole "
                          "zoo to the study's data, cross_domain adds models trained on other data to it")
    if z.adapt.enabled:
        return [m if not m.trained else AdaptedModel(m.model_id, {
            "base": m.payload(), "settings": z.adapt.settings(), "new_head": True,
            "pretrain_data": z.adapt.pretrain_data.job_dict() if m.has_weights_file else None,
            "train_data": None, "dataset": _dataset_tag(cfg.data.job_dict())}) for m in models]
    by_id = {m.model_id: m for m in models}
    extra: list[StudyModel] = []
    for d in z.cross_domain:
        base = by_id.get(d.model)
        if base is None or not base.trained:
            raise ConfigError(f"zoo.cross_domain: model {d.model!r} is not a trained model of this zoo; valid: "
                              f"{sorted(i for i, m in by_id.items() if m.trained)}")
        try:
            other = DataSpec.model_validate(_deep_merge(cfg.data.model_dump(mode="json"), d.data))
        except ValidationError as err:
            raise ConfigError(f"zoo.cross_domain {d.model_id!r}: data {d.data}: {first_error(err)}") from None
        if other.job_dict() == cfg.data.job_dict():
            raise ConfigError(f"zoo.cross_domain {d.model_id!r}: data {d.data} is the study's own data; name another "
                              "domain (generated.domain) or dataset root")
        extra.append(AdaptedModel(d.model_id, {"base": base.payload(), "settings": d.settings(), "new_head": False,
                                               "pretrain_data": None, "train_data": other.job_dict(),
                                               "dataset": _dataset_tag(other.job_dict())}))
    return models + extra


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


class Study:
    """A study config resolved once and planned once per stage (see the module docstring)."""

    def __init__(self, cfg: StudyConfig):
        self.cfg = cfg
        self.layout = ResultsLayout(cfg.results_root())
        self.models: list[StudyModel] = study_models(cfg)
        self.by_id: dict[str, StudyModel] = {m.model_id: m for m in self.models}
        self.data = data_spec_dict(cfg)
        self._plans: dict[str, list[Job] | None] = {}
        self._configs: dict[str, dict[str, Any]] = {}
        self._scores: Any = _UNREAD

    @classmethod
    def from_config(cls, cfg: StudyConfig) -> "Study":
        return cls(cfg)

    @cached_property
    def runtime(self) -> dict[str, Any]:
        """``Job.runtime`` of the jobs that read the study's data (:func:`data_runtime`)."""
        return data_runtime(self.cfg)

    def rel(self, path: Path) -> str:
        """A results-root path as a job names it (relative to the root)."""
        return str(path.relative_to(self.layout.root))

    def model_inputs(self, model: StudyModel) -> list[str]:
        """The files a job that builds ``model`` reads: its catalog row and, if it has one, its weights."""
        out = [self.rel(self.layout.model_row(model.model_id))]
        if model.has_weights_file:
            out.append(self.rel(self.layout.weights(model.model_id)))
        return out

    # ------------------------------------------------------------------------------------------ plans
    def plan(self, stage: str) -> list[Job] | None:
        """The jobs of one stage (planned on first use, then cached), or None while they can only be planned
        after an earlier stage ran (transfers sampled from the scores)."""
        if stage not in self._plans:
            planner = get_stage(stage).planner
            if planner is None:
                raise ValueError(f"stage {stage!r} runs on the driver and plans no jobs")
            self._plans[stage] = planner(self)
        return self._plans[stage]

    def plans(self, stages: list[str] | None = None) -> dict[str, list[Job] | None]:
        """``{stage: jobs or None}`` of the job stages among ``stages`` (default: all), in stage order."""
        out = {}
        for name in stage_names(jobs_only=True):
            if stages is None or name in stages:
                out[name] = self.plan(name)
        return out

    def forget_scores(self) -> None:
        """Drop what was planned from scores/pairs.parquet (the score stage just rewrote it)."""
        self._scores = _UNREAD
        for name in [s for s in self._plans if get_stage(s).reads_scores]:
            del self._plans[name]

    def scores(self):
        """scores/pairs.parquet restricted to this study's models (read once), or None while it is missing,
        truncated or of another schema. A root shared with another study (related.toml beside the demo)
        may hold that study's models until this study's score job runs again."""
        if self._scores is _UNREAD:
            self._scores = scored_pairs(self.layout, [m.model_id for m in self.models])
        return self._scores

    # ---------------------------------------------------------------------------------------- configs
    def transfer_config(self, method: str, seed: int, *, mode: str = "single", study_part: str = "transfer",
                        epochs: int | None = None, hparams: dict[str, Any] | None = None, order: str = "given",
                        variant: dict[str, Any] | None = None) -> dict[str, Any]:
        """The resolved, validated TransferConfig of one job, as the dict its spec (and id) holds; resolved
        once per distinct argument set. A bad value (a grid point outside a parameter's range, a method
        that cannot run a mode) is a ConfigError naming the method and the value."""
        from zoo_study.transfer.config import TransferConfig, first_error

        key = canonical_json([method, seed, mode, study_part, epochs, hparams, order, variant])
        if key in self._configs:
            return self._configs[key]
        t = self.cfg.transfer
        hp = {**t.hparams.get(method, {}), **(hparams or {})}
        settings = {**t.settings(), "epochs": epochs or t.epochs, **(variant or {})}
        try:
            tc = TransferConfig(**settings, method=method, mode=mode, hparams=hp, seed=seed, study_part=study_part,
                                teacher_order=order,
                                variant=json.dumps(variant, sort_keys=True, separators=(",", ":")) if variant else "")
        except ValidationError as err:
            raise ConfigError(f"{study_part} job of method {method!r}: {first_error(err)}") from None
        except ValueError as err:
            raise ConfigError(f"{study_part} job of method {method!r}: {err}") from None
        self._configs[key] = tc.to_dict()
        return self._configs[key]

    def transfer_configs(self) -> list[dict[str, Any]]:
        """Every transfer config the enabled transfer-like stages will run (the validator checks these), from
        the same grids the planners read; for pairs sampled from the scores, as many as asked for."""
        out: list[dict[str, Any]] = []
        for stage in STAGES:  # a loop, not a comprehension: one call less on the way to every job
            if stage.configs is not None:
                out += stage.configs(self)
        return out


def scored_pairs(layout: ResultsLayout, model_ids: list[str] | None = None):
    """scores/pairs.parquet, or None while it is missing, truncated or of another schema (the score stage
    redoes such a file; planning from it would fail on a missing column). With ``model_ids``: only the
    pairs of those models."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from zoo_study.store import PAIR_SCHEMA, read_parquet_checked

    table = read_parquet_checked(layout.pairs, PAIR_SCHEMA)
    if table is None or model_ids is None:
        return table
    ids = pa.array(model_ids, type=pa.string())
    keep = pc.and_(pc.is_in(table.column("teacher"), value_set=ids), pc.is_in(table.column("student"), value_set=ids))
    return table.filter(keep)


def plan_stage(cfg: StudyConfig, stage: str) -> list[Job] | None:
    """The jobs of one stage of ``cfg`` (a Study of its own: for one-off use; a run keeps its Study)."""
    return Study.from_config(cfg).plan(stage)
