"""The pipeline's stages, one :class:`Stage` record each, in ONE list: zoo -> predict -> score -> semantics ->
transfer -> multi_teacher -> hparam -> robustness -> report.

Why one list: a stage is its name, its planner, its executor (and pack executor), the wave it runs in, the
tables it writes, its done rule and what it reads. The CLI (``--stage`` names, waves), the validator (which
stages read data or run transfers, which transfer configs to check), the runner (executors), the status
(one counting loop) and the analysis' "which stage writes this table" all read this list. Adding a stage
is one :class:`Stage` in one module: here for the study's own, :func:`register_stage` for a notebook's or a
test's (``tests/test_toy_stage.py``).

Planners take the :class:`~pipelines.study.Study` (:mod:`pipelines.plan_models`,
:mod:`pipelines.plan_transfers`); executors are ``"module:function"`` strings (:mod:`pipelines.executors`),
so Ray workers import them lazily and this module never imports torch.
"""

from __future__ import annotations

import importlib.util
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from pipelines import plan_models as pm
from pipelines import plan_transfers as pt
from pipelines.jobs import Job, PlanCounts, unique
from pipelines.outputs import check_done
from zoo_study.config import ConfigError

__all__ = ["Stage", "STAGES", "Counted", "count", "done_flags", "executor_for", "get_stage", "parse_stages",
           "register_stage", "stage_executors", "stage_groups", "stage_names", "table_stage"]

LOG = logging.getLogger("pipelines.jobs")
_EXEC = "pipelines.executors:"
Planner = Callable[[Any], "list[Job] | None"]
DoneRule = Callable[[Job, Path], "tuple[bool, str | None]"]


@dataclass(frozen=True)
class Stage:
    """One pipeline stage.

    ``planner(study) -> jobs | None`` (None: planned later, from the scores; a stage without a planner runs
    on the driver: the report). ``executor`` / ``pack_executor``: ``"module:function"`` (or a function)
    running one job / one pack of its jobs (pipelines/packs.py). Consecutive stages of one non-empty
    ``wave_group`` run as one wave (they read only earlier stages' outputs). ``tables``: the
    ``store.TABLES`` it writes. ``done(job, root) -> (done, note)``: when a job of it is done.
    ``configs(study)``: the transfer configs it will run, checked by the validator before any pair exists.
    ``reads_data`` / ``reads_images``: its jobs read the dataset (class names or images) / decoded images
    (the data step runs before it). ``reads_scores``: planned from scores/pairs.parquet, so planned again
    after the score stage ran. ``runs_transfers``: its jobs train students (map methods are probed)."""

    name: str
    planner: Planner | None
    executor: str | Callable | None = None
    pack_executor: str | Callable | None = None
    wave_group: str = ""
    tables: tuple[str, ...] = ()
    done: DoneRule = check_done
    configs: Callable[[Any], list[dict]] | None = None
    reads_data: bool = False
    reads_images: bool = False
    reads_scores: bool = False
    runs_transfers: bool = False


_TRANSFER_TABLES = ("transfers", "epochs", "transfer_predictions")  # + the methods' own tables (table_stage)
_TRANSFER = dict(pack_executor=_EXEC + "transfer_pack_job", wave_group="independent", reads_data=True,
                 reads_images=True, runs_transfers=True)

STAGES: list[Stage] = [
    Stage("zoo", pm.plan_zoo, _EXEC + "zoo_job", tables=("models",), reads_data=True),
    Stage("predict", pm.plan_predict, _EXEC + "predict_job", tables=("predictions",), reads_data=True,
          reads_images=True),
    Stage("score", pm.plan_score, _EXEC + "score_job", tables=("pairs", "pair_classes")),
    Stage("semantics", pm.plan_semantics, _EXEC + "semantics_job", wave_group="independent",
          tables=("class_embeddings", "pair_semantics"), reads_data=True),
    Stage("transfer", pt.plan_transfer, _EXEC + "transfer_job", tables=_TRANSFER_TABLES,
          configs=pt.transfer_configs, reads_scores=True, **_TRANSFER),
    Stage("multi_teacher", pt.plan_multi_teacher, _EXEC + "multi_teacher_job", tables=_TRANSFER_TABLES,
          configs=pt.multi_teacher_configs, **_TRANSFER),
    Stage("hparam", pt.plan_hparam, _EXEC + "hparam_job", tables=("hparams",), configs=pt.hparam_configs,
          reads_scores=True, **_TRANSFER),
    Stage("robustness", pm.plan_robustness, _EXEC + "robustness_job", tables=("robustness",), reads_data=True,
          reads_images=True, reads_scores=True),
    Stage("report", None),  # runs on the driver, always
]
"""The study's stages, in run order."""


def get_stage(name: str) -> Stage:
    """The stage called ``name``; ValueError naming the valid ones."""
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise ValueError(f"unknown stage {name!r}; valid: {', '.join(stage_names())}")


def stage_names(*, jobs_only: bool = False) -> list[str]:
    """Every stage name in run order (``jobs_only``: the stages that plan jobs, not the report)."""
    return [s.name for s in STAGES if s.planner is not None or not jobs_only]


@contextmanager
def register_stage(stage: Stage, *, before: str = "report") -> Iterator[Stage]:
    """Add ``stage`` to the list (before ``before``) while the ``with`` block runs: a notebook's or a test's
    stage is planned, run, counted and shown like the study's own, and gone afterwards."""
    if any(s.name == stage.name for s in STAGES):
        raise ValueError(f"stage {stage.name!r} exists already")
    STAGES.insert(stage_names().index(before), stage)
    try:
        yield stage
    finally:
        STAGES.remove(stage)


def parse_stages(text: str | None) -> list[str]:
    """'--stage score,transfer' -> ordered list; None = all stages."""
    names = stage_names()
    if text is None:
        return names
    wanted = [s.strip() for s in text.split(",") if s.strip()]
    if not wanted:  # `--stage ''` (an unset shell variable) must not mean every stage
        raise ConfigError(f"--stage {text!r} names no stage; valid: a comma-separated subset of {', '.join(names)}")
    bad = [s for s in wanted if s not in names]
    if bad:
        raise ConfigError(f"unknown stage(s) {bad}; valid: {', '.join(names)}")
    return [s for s in names if s in wanted]


def stage_groups(stages: Sequence[str]) -> list[list[str]]:
    """Consecutive stages of one wave group merged into one group (one wave); every other stage alone. A
    core freed by one stage's last job then takes the next stage's work instead of idling."""
    groups: list[list[str]] = []
    for name in stages:
        group = get_stage(name).wave_group
        if groups and group and get_stage(groups[-1][-1]).wave_group == group:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups


def table_stage(table: str) -> str:
    """The first stage that writes result table ``table`` (``"any"``: every stage's failures); a method's own
    table (``Method.tables``, e.g. AMTML-KD's teacher weights) is written by the transfer stages."""
    from zoo_study.methods.registry import method_tables

    stage = next((s.name for s in STAGES if table in s.tables), None)
    if stage is None and table in {t.name for t in method_tables()}:
        return "transfer"
    return stage or "any"


# ------------------------------------------------------------------------------------------ executors
def stage_executors() -> dict[str, str | Callable]:
    """``{stage: executor}`` of every stage, and ``{"<stage>_pack": pack executor}`` of those that pack."""
    out = {s.name: s.executor for s in STAGES if s.executor is not None}
    out.update({f"{s.name}_pack": s.pack_executor for s in STAGES if s.pack_executor is not None})
    return out


def executor_for(stage: str, executors: Mapping[str, str | Callable] | None = None) -> str | Callable:
    """The executor of ``stage`` (``"module:function"`` or a function) from ``executors`` over the stages'
    own (:func:`stage_executors`), checked enough for a clear error on the driver before anything runs."""
    table = {**stage_executors(), **(executors or {})}
    ref = table.get(stage)
    if ref is None:
        raise KeyError(f"no executor for stage {stage!r} (known: {', '.join(sorted(table))}); "
                       f"pass run_jobs(..., executors={{{stage!r}: 'module:function'}})")
    if callable(ref):
        return ref
    module, sep, qualname = str(ref).partition(":")
    if not sep or not module or not qualname:
        raise ValueError(f"executor of stage {stage!r} must look like 'package.module:function', got {ref!r}")
    if importlib.util.find_spec(module.split(".")[0]) is None:
        raise ValueError(f"executor {ref!r} of stage {stage!r}: package {module.split('.')[0]!r} is not importable")
    return ref


# ----------------------------------------------------------------------------------------------- done
def _done_rule(stage: str) -> DoneRule:
    return next((s.done for s in STAGES if s.name == stage), check_done)


def done_flags(jobs: Sequence[Job], root: str | Path, log: logging.Logger | None = None) -> list[bool]:
    """Each job's stage's done rule; every note is logged as a warning (the job will be redone)."""
    flags = []
    for job in jobs:
        done, note = _done_rule(job.stage)(job, Path(root))
        if note:
            (log or LOG).warning("%s looks finished but %s; it will be redone", job.label, note)
        flags.append(done)
    return flags


@dataclass(frozen=True)
class Counted:
    """Per-stage counts of a set of jobs, which are done, and why some that look finished are not."""

    stages: dict[str, PlanCounts]
    done_ids: frozenset[str]
    redo: list[str]  # "label: why"


def count(jobs: Iterable[Job], root: str | Path) -> Counted:
    """The one counting loop (``--dry-run``, ``zoo-study status``): per stage, in order of first appearance,
    total / done / to run, by each stage's done rule. Reads only outputs."""
    totals: dict[str, list[int]] = {}
    done_ids, redo = set(), []
    for job in unique(jobs):
        done, note = _done_rule(job.stage)(job, Path(root))
        c = totals.setdefault(job.stage, [0, 0])
        c[0] += 1
        c[1] += int(done)
        if done:
            done_ids.add(job.job_id)
        if note:
            redo.append(f"{job.label}: {note}")
    stages = {s: PlanCounts(total=t, done=d, to_run=t - d) for s, (t, d) in totals.items()}
    return Counted(stages, frozenset(done_ids), redo)
