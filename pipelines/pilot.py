"""Pilot transfers for ``zoo-study recommend --pilot STEPS``: a short transfer per (teacher, student) pair,
planned and run by the normal pipeline, kept apart from the study's own results.

Why this shape:
- The pilot is the study's own transfer, shortened: the root's config (``config.toml``, the resolved
  config of its last run; or ``--config``) with ``transfer.pairs = "explicit"`` for the pairs to try, the
  one method, the first seed, no variants, and about STEPS steps: the first epochs of the study's own
  transfer set when STEPS covers one of its epochs (its prefix, under a constant learning rate), else one
  epoch over a smaller stratified share (:func:`pilot_size`). The transfer planner makes the
  jobs, the runner runs them (resumable, cached by job id: a rerun with the same STEPS runs nothing).
- Its files go to ``<root>/pilot/transfers/<job_id>/`` and its spec carries ``"pilot": {"steps": STEPS}``,
  so its job ids are never the study's and the analyses, which read ``transfers/*/`` under the root,
  never see a pilot row. Its job records share ``_jobs/`` (``zoo-study prune`` lists them as stale;
  pruned, a pilot reruns).
- It holds the root's lock like ``zoo-study run``: a root in use by a running study is refused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pipelines.jobs import Job, job_id_for
from zoo_study.config import ConfigError, StudyConfig, load_config, validate_config
from zoo_study.store import TRANSFER_SUMMARY_SCHEMA, ResultsLayout, read_parquet_checked

PILOT_DIR = "pilot"
PILOT_COLUMNS = ("teacher", "student", "pilot_delta", "pilot_gain", "pilot_loss", "steps", "runtime_s")


@dataclass
class PilotPlan:
    """The pilot jobs of some pairs and what one of them trains."""

    jobs: list[Job]
    pairs: list[tuple[str, str]]  # (teacher, student)
    steps: int  # optimizer steps each pilot takes (epochs x batches per epoch)
    images: int  # transfer-set images each pilot trains on per epoch
    epochs: int
    config: StudyConfig  # the shortened study the jobs were planned from (its data step builds their images)


def study_config(root: str | Path, config: str | None = None) -> StudyConfig:
    """The study's config for pilots in ``root``: ``config`` when given, else the root's ``config.toml``;
    its results root set to ``root``. Raises ConfigError (one line) when there is neither."""
    layout = ResultsLayout(root)
    path = Path(config) if config else layout.config_file
    if config is None and not path.is_file():
        raise ConfigError(f"{str(root)!r} has no config.toml (the config of its last run); give the study's "
                          "config with --config CONFIG")
    cfg = load_config(path)
    raw = cfg.model_dump(mode="json", exclude_none=True)
    raw["study"]["results_root"] = str(root)
    return validate_config(raw)


def pilot_size(cfg: StudyConfig, steps: int) -> tuple[dict[str, float | int], int, int, int]:
    """``(transfer-set overrides, epochs, images, steps)`` of a pilot of about ``steps`` optimizer steps.

    Why this shape: a pilot should be the first steps of the study's own transfer, so its early delta is
    the real transfer's early delta. When ``steps`` covers at least one epoch of the study's transfer set,
    the pilot keeps that set (same fraction or per-class count, same subset seed: the same images) and
    trains ``round(steps / steps_per_epoch)`` of its epochs, at most the study's own ``epochs`` (a longer
    pilot would be the full transfer). With a constant learning rate (the default) that is exactly the
    transfer's prefix; a ``one_cycle`` schedule runs its own short cycle. A pilot shorter than one epoch
    trains one epoch over a smaller stratified share of ``steps x batch_size`` train images (the loader
    drops a last partial batch; when rounding per class falls short, one more image per class until it
    does not)."""
    from pipelines.estimate import data_sizes, epoch_images, transfer_images

    sizes = data_sizes(cfg)
    t = cfg.transfer
    batch = t.batch_size
    total = sum(sizes.train_per_class)
    if total == 0:
        raise ConfigError("the study's train split is empty: nothing to run a pilot on")
    own = ({"transfer_per_class": t.transfer_per_class} if t.transfer_per_class
           else {"transfer_fraction": t.transfer_fraction})
    own_images = transfer_images(own, sizes)
    per_epoch = max(1, epoch_images(own_images, batch) // batch)
    if steps >= per_epoch:
        epochs = min(max(1, round(steps / per_epoch)), t.epochs)
        return own, epochs, own_images, epochs * per_epoch
    want = steps * batch
    classes = len(sizes.train_per_class)
    for extra in range(0, total, classes):  # per-class rounding may fall short: one more image per class
        fraction = min(1.0, round((want + extra) / total, 9))
        images = transfer_images({"transfer_fraction": fraction}, sizes)
        if epoch_images(images, batch) // batch >= steps or fraction == 1.0:
            break
    return {"transfer_fraction": fraction}, 1, images, max(1, epoch_images(images, batch) // batch)


def plan_pilot(cfg: StudyConfig, method: str, pairs: list[tuple[str, str]], steps: int) -> PilotPlan:
    """The pilot jobs of ``pairs`` for ``method``: the transfer planner's jobs of a shortened study,
    outputs moved under ``pilot/``. Raises ConfigError for a model the study does not have."""
    from pipelines.study import plan_stage

    subset, epochs, images, real_steps = pilot_size(cfg, steps)
    raw = cfg.model_dump(mode="json", exclude_none=True)
    t = raw["transfer"]
    t.update(enabled=True, pairs="explicit", explicit=[list(p) for p in pairs], methods=[method],
             seeds=[cfg.transfer.seeds[0]], variants=[], method_pairs={}, replicate={}, epochs=epochs,
             eval_every=epochs)
    t.pop("transfer_per_class", None)
    t.update(subset)
    raw.setdefault("robustness", {})["enabled"] = False  # a pilot keeps no student weights
    short = validate_config(raw)
    planned = (plan_stage(short, "transfer") or []) if pairs else []
    jobs = [_as_pilot(job, steps) for job in planned]
    return PilotPlan(jobs, list(pairs), real_steps, images, epochs, short)


def _as_pilot(job: Job, steps: int) -> Job:
    """``job`` marked as a pilot (its own id) with its outputs under ``pilot/``."""
    spec = {**job.spec, "pilot": {"steps": steps}}
    new_id = job_id_for(job.stage, spec)
    outputs = {n: f"{PILOT_DIR}/{p.replace(job.job_id, new_id)}" for n, p in job.outputs.items()}
    return dataclasses.replace(job, spec=spec, outputs=outputs)


def missing_inputs(plan: PilotPlan, root: str | Path) -> list[str]:
    """Inputs of the pilot jobs not in the root (the zoo and predict stages have not run for them)."""
    root = Path(root)
    return sorted({i for j in plan.jobs for i in j.inputs if not (root / i).is_file()})


def run_pilot(cfg: StudyConfig, plan: PilotPlan, *, progress: bool = False):
    """Run the pilot jobs not yet done under the root's lock (raises LockHeld when a run holds it), after
    the data step that ``zoo-study run`` takes (the image cache of the pilots' transfer sets); returns
    the runner's report."""
    from pipelines.lock import ResultsLock
    from pipelines.prepare import prepare_study_data
    from pipelines.runner import run_jobs
    from pipelines.study import Study

    root = cfg.results_root()
    lock = ResultsLock(root)
    lock.acquire()
    try:
        prepare_study_data(Study.from_config(plan.config), {"transfer": plan.jobs})
        r = cfg.ray
        return run_jobs([plan.jobs], root, address=r.address or None, num_cpus=r.num_cpus, pack_size=r.pack_size,
                        pack_students=r.pack_students, pack_memory_bytes=r.pack_gpu_memory_gb * 1e9,
                        max_retries=r.max_retries, progress=progress)
    finally:
        lock.release()


def pilot_results(plan: PilotPlan, root: str | Path) -> pa.Table:
    """One row per finished pilot of ``plan``: its pair, early delta / gain / loss (fractions of the eval
    split), steps and seconds. A pilot that failed has no row."""
    rows = []
    for job in plan.jobs:
        path = Path(root) / job.outputs["summary"]
        table = read_parquet_checked(path, TRANSFER_SUMMARY_SCHEMA) if path.is_file() else None
        if table is None or table.num_rows == 0:
            continue
        r = table.to_pylist()[0]
        batches = max(1, r["n_train"] // r["batch_size"]) if r["n_train"] > r["batch_size"] else 1
        rows.append({"teacher": r["teacher"], "student": r["student"], "pilot_delta": r["delta_last"],
                     "pilot_gain": r["gain"], "pilot_loss": r["loss"], "steps": int(r["epochs"]) * batches,
                     "runtime_s": float(r["runtime_s"])})
    schema = pa.schema([("teacher", pa.string()), ("student", pa.string()), ("pilot_delta", pa.float64()),
                        ("pilot_gain", pa.float64()), ("pilot_loss", pa.float64()), ("steps", pa.int64()),
                        ("runtime_s", pa.float64())])
    return pa.Table.from_pylist(rows, schema=schema)
