"""Run jobs: skip the done ones, execute the rest (Ray or in-process), write results, record failures.

Why it is shaped like this:

* **The driver owns the filesystem.** It reads each input file once per wave, shares it through the
  backend (``ray.put``), and writes every returned output atomically (temp name + rename), the job
  record last (:mod:`pipelines.outputs`). Tasks only see bytes in and ``{output name: content}`` out, so a cluster needs no shared
  filesystem and a job killed mid-way never leaves a file that looks done.
* **Waves.** Jobs run in dependency order, one wave after another (by default one wave per stage, in
  the order stages first appear). A job reads only files of earlier waves; a job whose input is missing
  (its upstream job failed) is skipped and the reason recorded, instead of crashing inside a worker.
  One wave's submit / wait / write loop is :class:`pipelines.wave.Wave`.
* **Failures are data** (:mod:`pipelines.records`). A job that raises is written to
  ``failures/<job_id>.parquet`` and the others go on. A worker that dies is a *system* failure, retried
  up to ``max_retries`` times by the driver; an exception raised by the executor is not retried.
* **Resumable.** A second run finds every output reading back (with its table's schema) and does
  nothing; a success deletes the job's stale failure record. Ctrl-C stops submitting, keeps what already
  finished, cancels the rest and raises :class:`RunInterrupted`; a rerun does the remainder.

Backends (:mod:`pipelines.backends`): ``address="local"`` (or ``use_ray=False``) runs the very same
executors in this process, with the same outputs and failure records; anything else uses Ray.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pipelines.backends import LOCAL, RayBackend, SerialBackend, ensure_ray, record_local_session
from pipelines.jobs import Job, unique
from pipelines.records import FailureRecord, RunReport, StageCounts
from pipelines.stages import done_flags, executor_for
# RunInterrupted and largest_packs_first are re-exported: callers import them from here
from pipelines.wave import RunInterrupted, StopOnSigint, Wave, largest_packs_first  # noqa: F401
from zoo_study import store

__all__ = ["RunInterrupted", "run_jobs"]

LOG = logging.getLogger("pipelines.runner")
DEVICE_SHARE = 0.8  # of the smallest GPU's memory a pack may fill by default: the CUDA context, fragmentation


def run_jobs(
    jobs: Sequence[Job] | Sequence[Sequence[Job]],
    root: str | os.PathLike[str],
    *,
    address: str | None = None,
    use_ray: bool | None = None,
    num_cpus: int | None = None,
    max_retries: int = 2,
    max_in_flight: int | None = None,
    object_store_memory: int | None = None,
    runtime_env: Mapping[str, Any] | None = None,
    executors: Mapping[str, str | Callable] | None = None,
    pack_size: int = 1,
    pack_students: int = 1,
    pack_memory_bytes: float = 0.0,
    progress: bool = True,
    log: logging.Logger | None = None,
) -> RunReport:
    """Run every job that is not done, wave by wave, and return what happened.

    ``jobs``: a flat list (one wave per stage, stages in order of first appearance) or a list of waves.
    A wave starts only when the previous one finished. ``address``: ``None`` (local Ray, or
    ``$RAY_ADDRESS``), ``"auto"`` / ``"host:port"`` / ``"ray://..."`` (join a cluster) or ``"local"``
    (serial, no Ray; same as ``use_ray=False``). ``max_retries``: extra attempts after a worker died
    (system failures only). ``max_in_flight``: submitted-but-unfinished jobs at most (bounds the inputs
    held in the object store); default ``max(128, 4 x cluster CPUs+GPUs)``, 1 for the serial backend.
    ``executors``: ``{stage: "module:function" or function}`` merged over the stages' own (:func:`pipelines.stages.stage_executors`)
    (tests and notebooks bring their own stages this way). ``pack_size``: pending jobs with equal
    ``Job.pack`` keys run up to this many in one task (:mod:`pipelines.packs`); 1 = every job alone.
    ``pack_students``: how many pack groups (students of one teacher) one pack may span.
    ``pack_memory_bytes`` > 0: a pack's estimated memory (:func:`pipelines.memory.pack_bytes`) stays within
    it; 0: within :data:`DEVICE_SHARE` of the smallest GPU's memory, read on the GPU nodes (GPU jobs with
    estimates only). A pack that still runs out of memory is split and retried (:meth:`pipelines.wave.Wave.after_oom`).
    Raises for bad arguments (before any work), :class:`~pipelines.backends.RayUnavailable` when Ray
    cannot be reached, and :class:`RunInterrupted` on Ctrl-C (after writing what finished).
    """
    t_start = time.perf_counter()
    log = log or LOG
    root = Path(root).resolve()
    use_ray = _check_backend_args(address, use_ray, max_retries, max_in_flight)
    waves, producer = _check_waves(_as_waves(jobs))
    _check_pack_args(pack_size, pack_students, pack_memory_bytes)
    fns = _executors(waves, executors, pack_size)
    report = RunReport(root=root, backend="ray" if use_ray else "serial")
    for j in (j for w in waves for j in w):
        report.stages.setdefault(j.stage, StageCounts()).total += 1
    backend: Any = None
    budget: float | None = pack_memory_bytes or None  # detected with the first wave of packed GPU jobs
    failed: dict[str, FailureRecord] = {}
    with StopOnSigint() as stop, _timed(report, t_start):
        for wi, wave in enumerate(waves):
            if stop.requested:  # Ctrl-C between waves (while checking what is done, starting Ray)
                raise RunInterrupted(report, 0)
            todo = _not_done(wave, f"{wi + 1}/{len(waves)}", root, report, log)
            if not todo:
                continue
            if backend is None:
                backend = _start_backend(use_ray, address, root, log, num_cpus=num_cpus,
                                         object_store_memory=object_store_memory, runtime_env=runtime_env)
            if budget is None and pack_size > 1 and any(j.pack and j.num_gpus > 0 and j.pack_cost > 0 for j in todo):
                budget = _device_budget(backend, log)
            Wave(todo, root, backend, fns, producer, failed, report, max_retries, log, stop, pack_size,
                  pack_students, budget or 0.0).run(
                max_in_flight or backend.default_window(), progress, "+".join(dict.fromkeys(j.stage for j in wave)))
    report.failures = list(failed.values())  # in the order they happened
    log.info("finished in %.1f s: %d ran, %d failed, %d skipped%s", report.wall_s, report.ran, report.failed,
             report.skipped, f"; failure records in {root / 'failures'}" if report.failures else "")
    return report


def _as_waves(jobs: Sequence[Job] | Sequence[Sequence[Job]]) -> list[list[Job]]:
    """A flat list becomes one wave per stage (stages in order of first appearance); a list of lists is
    taken as the waves themselves."""
    jobs = list(jobs)
    if not jobs:
        return []
    if all(isinstance(j, Job) for j in jobs):
        by_stage: dict[str, list[Job]] = {}
        for j in jobs:
            by_stage.setdefault(j.stage, []).append(j)
        return list(by_stage.values())
    if any(isinstance(j, Job) for j in jobs) or any(isinstance(w, (str, bytes)) for w in jobs):
        raise TypeError("run_jobs takes a list of Jobs or a list of waves (lists of Jobs), not a mix")
    return [list(w) for w in jobs if len(w)]


def _check_waves(waves: list[list[Job]]) -> tuple[list[list[Job]], dict[str, tuple[int, Job]]]:
    """Validate ids/outputs across all waves and that no job reads what its own or a later wave writes.

    Returns the waves with repeated jobs dropped (first occurrence kept) and, for every output path,
    (wave index, producing job).
    """
    unique(j for w in waves for j in w)  # raises on two jobs claiming one output
    seen: set[str] = set()
    waves = [kept for w in waves if (kept := [j for j in w if not (j.job_id in seen or seen.add(j.job_id))])]
    producer = {rel: (i, job) for i, w in enumerate(waves) for job in w for rel in job.outputs.values()}
    for i, wave in enumerate(waves):
        for job in wave:
            for rel in job.inputs:
                if rel in producer and producer[rel][0] >= i:
                    other = producer[rel][1]
                    where = "the same wave" if producer[rel][0] == i else "a later wave"
                    raise ValueError(f"job {job.label} reads {rel!r}, which {other.label} writes in {where}; "
                                     f"run stage {other.stage!r} before stage {job.stage!r}")
    return waves, producer


def _check_backend_args(address: str | None, use_ray: bool | None, max_retries: int,
                        max_in_flight: int | None) -> bool:
    """Refuse bad retry / window / backend arguments before any work; return whether Ray runs the jobs."""
    if not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
    if max_in_flight is not None and (not isinstance(max_in_flight, int) or max_in_flight < 1):
        raise ValueError(f"max_in_flight must be an int >= 1, got {max_in_flight!r}")
    if use_ray is None:
        return address != LOCAL
    if use_ray and address == LOCAL:
        raise ValueError("address='local' means the serial backend; it contradicts use_ray=True")
    if not use_ray and address not in (None, LOCAL):
        raise ValueError(f"use_ray=False runs in-process; address={address!r} would be ignored")
    return use_ray


def _check_pack_args(pack_size: int, pack_students: int, pack_memory_bytes: float) -> None:
    """Refuse bad packing arguments before any work."""
    if not isinstance(pack_size, int) or pack_size < 1:
        raise ValueError(f"pack_size must be an int >= 1, got {pack_size!r}")
    if not isinstance(pack_students, int) or pack_students < 1:
        raise ValueError(f"pack_students must be an int >= 1, got {pack_students!r}")
    if not pack_memory_bytes >= 0:
        raise ValueError(f"pack_memory_bytes must be >= 0, got {pack_memory_bytes!r}")


def _executors(waves: list[list[Job]], executors: Mapping[str, str | Callable] | None,
               pack_size: int) -> dict[str, Any]:
    """Each stage's executor, resolved before any work (an unknown stage fails here, not in a worker);
    with packing, also the carriers of packed jobs (``<stage>_pack``, :mod:`pipelines.packs`)."""
    stages_run = list(dict.fromkeys(j.stage for w in waves for j in w))
    fns = {stage: executor_for(stage, executors) for stage in stages_run}
    if pack_size > 1:
        packed = {j.stage for w in waves for j in w if j.pack}
        fns.update({f"{s}_pack": executor_for(f"{s}_pack", executors) for s in packed})
    return fns


def _not_done(wave: list[Job], which: str, root: Path, report: RunReport, log: logging.Logger) -> list[Job]:
    """The jobs of ``wave`` still to run; the done ones are counted (and the failure record a crash left
    beside a finished job is removed). Logs one line: how many, and where their outputs go."""
    flags = done_flags(wave, root, log)
    todo = [j for j, d in zip(wave, flags) if not d]
    for j in (j for j, d in zip(wave, flags) if d):
        report.stages[j.stage].done_before += 1
        store.ResultsLayout(root).failure(j.job_id).unlink(missing_ok=True)  # left by a crash
    dirs = collections.Counter(str(Path(rel).parent) for j in todo for rel in j.outputs.values())
    where = ", ".join(f"{d}/ ({n})" for d, n in dirs.most_common(4)) + (" ..." if len(dirs) > 4 else "")
    log.info("wave %s [%s]: %d job(s), %d done, %d to run%s", which, ", ".join(dict.fromkeys(j.stage for j in wave)),
             len(wave), len(wave) - len(todo), len(todo), f" -> {where}" if todo else "")
    return todo


def _start_backend(use_ray: bool, address: str | None, root: Path, log: logging.Logger, *,
                   num_cpus: int | None, object_store_memory: int | None,
                   runtime_env: Mapping[str, Any] | None) -> Any:
    """The backend, started with the first wave that has work (a finished study never starts Ray)."""
    if not use_ray:
        log.info("serial backend: jobs run one by one in this process (pid %d)", os.getpid())
        return SerialBackend()
    log.info("%s", ensure_ray(address, num_cpus=num_cpus, object_store_memory=object_store_memory,
                              runtime_env=runtime_env, log=log))
    joined = address is not None or bool(os.environ.get("RAY_ADDRESS"))
    if not joined:  # a local instance: the next run stops it if this driver is killed
        record_local_session(root)
    return RayBackend(check_feasible=not joined)


def _device_budget(backend: Any, log: logging.Logger) -> float:
    """The default memory budget of a pack of GPU jobs: :data:`DEVICE_SHARE` of the smallest GPU's memory
    (0, packs bounded by their size alone, when no GPU answers)."""
    total = backend.device_memory()
    if total <= 0:
        log.warning("packs of GPU jobs: no GPU memory could be read; packs are bounded by ray.pack_size alone")
        return 0.0
    log.info("packs of GPU jobs fill at most %.1f GB (%.0f%% of the smallest GPU's %.1f GB; "
             "ray.pack_gpu_memory_gb sets it)", DEVICE_SHARE * total / 1e9, 100 * DEVICE_SHARE, total / 1e9)
    return DEVICE_SHARE * total


@contextlib.contextmanager
def _timed(report: RunReport, t_start: float) -> Any:
    try:
        yield
    finally:
        report.wall_s = time.perf_counter() - t_start
