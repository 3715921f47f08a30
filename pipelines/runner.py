"""Run jobs: skip the done ones, execute the rest (Ray or in-process), write results, record failures.

Why it is shaped like this:

* **The driver owns the filesystem.** It reads each input file once per wave, shares it through the
  backend (``ray.put``), and writes every returned output atomically (temp name + rename), the job
  record last (:mod:`pipelines.outputs`). Tasks only see bytes in and ``{output name: content}`` out, so a cluster needs no shared
  filesystem and a job killed mid-way never leaves a file that looks done.
* **Waves.** Jobs run in dependency order, one wave after another (by default one wave per stage, in
  the order stages first appear). A job reads only files of earlier waves; a job whose input is missing
  (its upstream job failed) is skipped and the reason recorded, instead of crashing inside a worker.
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
import dataclasses
import logging
import os
import signal
import threading
import time
import traceback as _tb
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from pipelines.backends import (LOCAL, OOM_ERROR, Outcome, RayBackend, SerialBackend, ensure_ray, one_line,
                                record_local_session)
from pipelines.jobs import Job, unique
from pipelines.outputs import write_outputs
from pipelines.packs import carrier_for, member_outcomes, take_pack
from pipelines.records import FailureRecord, RunReport, StageCounts
from pipelines.stages import done_flags, executor_for
from zoo_study import store

__all__ = ["RunInterrupted", "run_jobs"]

LOG = logging.getLogger("pipelines.runner")
POLL_S = 0.5  # how often the driver looks up from waiting to notice a Ctrl-C
DEVICE_SHARE = 0.8  # of the smallest GPU's memory a pack may fill by default: the CUDA context, fragmentation


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run_jobs`: what had finished is written, what was in flight is cancelled."""

    def __init__(self, report: RunReport, cancelled: int):
        super().__init__(f"interrupted: {report.ran} job(s) finished, {cancelled} cancelled; rerun to resume")
        self.report = report
        self.cancelled = cancelled


class _StopOnSigint:
    """While active (main thread only): the first Ctrl-C asks the run to stop gracefully, a second one
    raises KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> "_StopOnSigint":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


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




class _Inputs:
    """Reads each input file once per wave, shares it via the backend, releases it after its last user."""

    def __init__(self, root: Path, backend: Any, jobs: Iterable[Job]):
        self.root = root
        self.backend = backend
        self.uses = collections.Counter(rel for j in jobs for rel in j.inputs)
        self.handles: dict[str, Any] = {}

    def get(self, rel: str) -> Any:
        h = self.handles.get(rel)
        if h is None:
            h = self.handles[rel] = self.backend.put((self.root / rel).read_bytes())
        return h

    def release(self, job: Job) -> None:
        for rel in job.inputs:
            self.uses[rel] -= 1
            if self.uses[rel] <= 0:
                self.handles.pop(rel, None)


def largest_packs_first(jobs: Sequence[Job]) -> list[Job]:
    """Jobs ordered so that the biggest packs are submitted first (stable otherwise): the long tasks start
    early and the short ones fill the cores at the end of a wave, instead of one long pack running alone."""
    sizes = collections.Counter((j.pack, j.pack_group) for j in jobs if j.pack)  # per pair (pack group)
    return sorted(jobs, key=lambda j: -sizes[j.pack, j.pack_group] if j.pack else -1)


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
    estimates only). A pack that still runs out of memory is split and retried (:meth:`_Wave.after_oom`).
    Raises for bad arguments (before any work), :class:`~pipelines.backends.RayUnavailable` when Ray
    cannot be reached, and :class:`RunInterrupted` on Ctrl-C (after writing what finished).
    """
    t_start = time.perf_counter()
    log = log or LOG
    root = Path(root).resolve()
    if not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
    if max_in_flight is not None and (not isinstance(max_in_flight, int) or max_in_flight < 1):
        raise ValueError(f"max_in_flight must be an int >= 1, got {max_in_flight!r}")
    if use_ray is None:
        use_ray = address != LOCAL
    elif use_ray and address == LOCAL:
        raise ValueError("address='local' means the serial backend; it contradicts use_ray=True")
    elif not use_ray and address not in (None, LOCAL):
        raise ValueError(f"use_ray=False runs in-process; address={address!r} would be ignored")

    waves, producer = _check_waves(_as_waves(jobs))
    if not isinstance(pack_size, int) or pack_size < 1:
        raise ValueError(f"pack_size must be an int >= 1, got {pack_size!r}")
    if not isinstance(pack_students, int) or pack_students < 1:
        raise ValueError(f"pack_students must be an int >= 1, got {pack_students!r}")
    if not pack_memory_bytes >= 0:
        raise ValueError(f"pack_memory_bytes must be >= 0, got {pack_memory_bytes!r}")
    stages_run = list(dict.fromkeys(j.stage for w in waves for j in w))
    fns = {stage: executor_for(stage, executors) for stage in stages_run}
    if pack_size > 1:  # the carriers of packed jobs (pipelines/packs.py)
        packed = {j.stage for w in waves for j in w if j.pack}
        fns.update({f"{s}_pack": executor_for(f"{s}_pack", executors) for s in packed})
    report = RunReport(root=root, backend="ray" if use_ray else "serial")
    for j in (j for w in waves for j in w):
        report.stages.setdefault(j.stage, StageCounts()).total += 1
    backend: Any = None
    budget: float | None = pack_memory_bytes or None  # detected with the first wave of packed GPU jobs
    failed: dict[str, FailureRecord] = {}
    with _StopOnSigint() as stop, _timed(report, t_start):
        for wi, wave in enumerate(waves):
            if stop.requested:  # Ctrl-C between waves (while checking what is done, starting Ray)
                raise RunInterrupted(report, 0)
            stages = list(dict.fromkeys(j.stage for j in wave))
            flags = done_flags(wave, root, log)
            todo = [j for j, d in zip(wave, flags) if not d]
            for j in (j for j, d in zip(wave, flags) if d):
                report.stages[j.stage].done_before += 1
                store.ResultsLayout(root).failure(j.job_id).unlink(missing_ok=True)  # left by a crash
            dirs = collections.Counter(str(Path(rel).parent) for j in todo for rel in j.outputs.values())
            where = ", ".join(f"{d}/ ({n})" for d, n in dirs.most_common(4)) + (" ..." if len(dirs) > 4 else "")
            log.info("wave %d/%d [%s]: %d job(s), %d done, %d to run%s", wi + 1, len(waves), ", ".join(stages),
                     len(wave), len(wave) - len(todo), len(todo), f" -> {where}" if todo else "")
            if not todo:
                continue
            if backend is None:
                if use_ray:
                    log.info("%s", ensure_ray(address, num_cpus=num_cpus, object_store_memory=object_store_memory,
                                              runtime_env=runtime_env, log=log))
                    joined = address is not None or bool(os.environ.get("RAY_ADDRESS"))
                    if not joined:  # a local instance: the next run stops it if this driver is killed
                        record_local_session(root)
                    backend = RayBackend(check_feasible=not joined)
                else:
                    log.info("serial backend: jobs run one by one in this process (pid %d)", os.getpid())
                    backend = SerialBackend()
            if budget is None and pack_size > 1 and any(j.pack and j.num_gpus > 0 and j.pack_cost > 0 for j in todo):
                budget = _device_budget(backend, log)
            _Wave(todo, root, backend, fns, producer, failed, report, max_retries, log, stop, pack_size,
                  pack_students, budget or 0.0).run(
                max_in_flight or backend.default_window(), progress, "+".join(stages))
    report.failures = list(failed.values())  # in the order they happened
    log.info("finished in %.1f s: %d ran, %d failed, %d skipped%s", report.wall_s, report.ran, report.failed,
             report.skipped, f"; failure records in {root / 'failures'}" if report.failures else "")
    return report


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


class _Wave:
    """Submit, wait, write, record: one wave. Mutates ``report`` and ``failed``."""

    def __init__(self, jobs: list[Job], root: Path, backend: Any, fns: Mapping[str, Any],
                 producer: Mapping[str, tuple[int, Job]], failed: dict[str, FailureRecord], report: RunReport,
                 max_retries: int, log: logging.Logger, stop: _StopOnSigint, pack_size: int = 1,
                 pack_groups: int = 1, pack_memory: float = 0.0):
        self.jobs, self.root, self.backend, self.fns = jobs, root, backend, fns
        self.pack_size, self.pack_groups, self.pack_memory = pack_size, pack_groups, pack_memory
        self.producer, self.failed, self.report = producer, failed, report
        self.max_retries, self.log, self.stop = max_retries, log, stop
        self.inputs = _Inputs(root, backend, jobs)
        self.retried: set[str] = set()
        self.n_failed = 0
        self.fixed: dict[str, list[Job]] = {}  # first member's id -> the group it runs with (after an OOM)
        self.todo: collections.deque[tuple[Job, int]] = collections.deque()  # (job, attempt), filled by run

    def fail(self, job: Job, error: str, tb: str, attempts: int) -> None:
        self.n_failed += 1
        rec = FailureRecord.now(job, error, tb, attempts)
        try:
            path = rec.write(self.root).relative_to(self.root)
        except OSError as exc:  # keep going: the report still carries the record
            path = "none"
            self.log.error("could not write failure record of %s: %s", job.label, exc)
        self.failed[job.job_id] = rec
        counts = self.report.stages[job.stage]
        if attempts == 0:
            counts.skipped += 1
            self.log.warning("skipped %s: %s", job.label, error)
        else:
            counts.failed += 1
            self.log.warning("FAILED %s after %d attempt(s): %s (record: %s)", job.label, attempts, error, path)

    def ready(self, job: Job) -> bool:
        """Whether a job may join another's pack now: its inputs exist and can be read."""
        if self.backend.infeasible(job) or self.missing_reason(job):
            return False
        try:
            for rel in job.inputs:
                self.inputs.get(rel)
        except OSError:
            return False
        return True

    def missing_reason(self, job: Job) -> str | None:
        parts = []
        for rel in (rel for rel in job.inputs if not (self.root / rel).is_file()):
            prod = self.producer.get(rel)
            if prod is None:
                parts.append(f"{rel} (no job in this run writes it)")
            elif prod[1].job_id in self.failed:
                parts.append(f"{rel} (its job {prod[1].label} failed: {self.failed[prod[1].job_id].error})")
            else:
                parts.append(f"{rel} (its job {prod[1].label} did not produce it)")
        return "missing input(s): " + "; ".join(parts) if parts else None

    def finish(self, job: Job, attempt: int, outcome: Any) -> str:
        """Handle one outcome: 'done' (written, failed or skipped), 'retry' or 'cancelled'."""
        if outcome.kind == "cancelled" or (outcome.kind == "system" and self.stop.requested):
            return "cancelled"
        if outcome.kind == "system":
            if attempt > self.max_retries:
                self.fail(job, outcome.error, outcome.traceback, attempt)
                return "done"
            if job.job_id not in self.retried:
                self.retried.add(job.job_id)
                self.report.stages[job.stage].retried += 1
            self.log.warning("%s: %s (attempt %d of %d); retrying", job.label, outcome.error, attempt,
                             self.max_retries + 1)
            return "retry"
        if outcome.kind == "error":
            self.fail(job, outcome.error, outcome.traceback, attempt)
            return "done"
        try:
            written = write_outputs(job, outcome.outputs or {}, self.root)
        except Exception as exc:  # noqa: BLE001 - a bad result fails this job only
            self.fail(job, f"invalid result: {one_line(exc)}", _tb.format_exc(), attempt)
            return "done"
        store.ResultsLayout(self.root).failure(job.job_id).unlink(missing_ok=True)
        self.failed.pop(job.job_id, None)
        self.report.stages[job.stage].ran += 1
        self.log.debug("done %s in %.2f s on %s -> %s", job.label, outcome.seconds, outcome.where, ", ".join(written))
        return "done"

    def after_oom(self, group: list[Job], attempt: int, outcome: Outcome) -> bool:
        """Queue, to run next, what replaces ``group``, which ran out of accelerator memory: a pack in two
        halves (each half again on its own OOM, down to single jobs), a single job once more with gradient
        checkpointing (``Job.runtime["grad_checkpointing"]``, the executor applies timm's
        ``set_grad_checkpointing``). False when a checkpointed job still does not fit (it then fails).

        Why not an error: which packs fit is an estimate (:mod:`pipelines.memory`), and a lost pack is up
        to ``ray.pack_size`` transfers. Splitting changes no result (a member's numbers are the same packed
        or alone); runtime settings are not part of a job id."""
        if len(group) > 1:
            half = (len(group) + 1) // 2
            parts = [group[:half], group[half:]]
            self.log.warning("%d packed job(s) (%s ...) ran out of accelerator memory (%s); retrying as packs of %s",
                             len(group), group[0].label, outcome.error, " and ".join(str(len(p)) for p in parts))
        elif not group[0].runtime.get("grad_checkpointing"):
            job = group[0]
            parts = [[dataclasses.replace(job, runtime={**job.runtime, "grad_checkpointing": True})]]
            self.log.warning("%s ran out of accelerator memory (%s); retrying alone with gradient checkpointing",
                             job.label, outcome.error)
        else:
            return False
        for part in reversed(parts):  # next in line, in order
            self.fixed[part[0].job_id] = part
            self.todo.appendleft((part[0], attempt))
        return True

    def member_oom(self, member: Job, attempt: int, error: str) -> None:
        """One member's own OOM, its pack having gone on (the others' results are kept): it runs alone next."""
        self.log.warning("%s ran out of accelerator memory in a pack (%s); retrying alone", member.label, error)
        self.fixed[member.job_id] = [member]
        self.todo.appendleft((member, attempt))

    def run(self, window: int, progress: bool, desc: str) -> None:
        from tqdm.auto import tqdm

        todo = self.todo = collections.deque((j, 1) for j in largest_packs_first(self.jobs))
        inflight: dict[Any, tuple[Job, int, list[Job] | None]] = {}
        cancelled = 0
        redirect = _logging_redirect() if progress else contextlib.nullcontext()
        with redirect, tqdm(total=len(self.jobs), desc=desc, unit="job", disable=not progress,
                            dynamic_ncols=True) as bar:

            def settle(job: Job, attempt: int, outcome: Any) -> None:
                nonlocal cancelled
                verdict = self.finish(job, attempt, outcome)
                if verdict == "retry":
                    todo.appendleft((job, attempt + 1))
                    return
                if verdict == "cancelled":
                    cancelled += 1
                    self.stop.requested = True
                self.inputs.release(job)
                bar.update(1)
                if self.n_failed:
                    bar.set_postfix(failed=self.n_failed, refresh=False)

            def handle(outcomes: list) -> None:
                for h, outcome in outcomes:
                    job, attempt, group = inflight.pop(h)
                    if outcome.kind == "oom":
                        if not self.after_oom(group or [job], attempt, outcome):
                            settle(job, attempt, dataclasses.replace(outcome, kind="error"))
                    elif group is None:
                        settle(job, attempt, outcome)
                    elif outcome.kind != "ok":  # the pack as a whole: each member gets its outcome
                        for member in group:
                            settle(member, attempt, outcome)
                    else:
                        for member, outputs, error, tb in member_outcomes(group, outcome.outputs or {}):
                            if outputs is None and error.startswith(OOM_ERROR):
                                self.member_oom(member, attempt, error)
                                continue
                            settle(member, attempt, Outcome("ok" if outputs is not None else "error", outputs=outputs,
                                                            error=error, traceback=tb, where=outcome.where,
                                                            seconds=outcome.seconds))

            while (todo or inflight) and not self.stop.requested:
                while todo and len(inflight) < window and not self.stop.requested:
                    job, attempt = todo.popleft()
                    group = self.fixed.pop(job.job_id, None)  # a part of a pack that ran out of memory
                    reason = self.backend.infeasible(job) or self.missing_reason(job)
                    handles = None
                    if reason is None:
                        try:
                            handles = [self.inputs.get(rel) for rel in job.inputs]
                        except OSError as exc:
                            reason = f"cannot read input: {exc}"
                    if reason is not None:
                        for member in group or [job]:
                            self.fail(member, reason, "", 0)
                            self.inputs.release(member)
                            bar.update(1)
                        continue
                    if group is None:
                        group = take_pack(job, todo, self.pack_size, max_groups=self.pack_groups,
                                          memory_budget=self.pack_memory, ready=self.ready,
                                          keep_out=self.fixed) if attempt == 1 else [job]
                    if len(group) == 1:
                        inflight[self.backend.submit(job, self.fns[job.stage], handles, attempt)] = (job, attempt, None)
                    else:
                        carrier = carrier_for(group)
                        handles = [self.inputs.get(rel) for rel in carrier.inputs]  # every member's students
                        inflight[self.backend.submit(carrier, self.fns[carrier.stage], handles, attempt)] = (
                            carrier, attempt, group)
                if not inflight:
                    break
                try:
                    handle(self.backend.wait(list(inflight), timeout=POLL_S))
                except KeyboardInterrupt:  # a second Ctrl-C, or one that reached an in-process job
                    self.stop.requested = True
            if self.stop.requested:
                with contextlib.suppress(KeyboardInterrupt):
                    if inflight:  # keep what finished meanwhile, cancel the rest
                        handle(self.backend.wait(list(inflight), timeout=0))
                cancelled += sum(len(g) if g else 1 for _, _, g in inflight.values())
                self.backend.cancel(list(inflight))
                self.report.failures = list(self.failed.values())
                self.log.debug("interrupted: %d job(s) in flight cancelled", cancelled)
                raise RunInterrupted(self.report, cancelled)


def _logging_redirect() -> contextlib.AbstractContextManager:
    """Route console log records through tqdm.write so they do not tear the progress bar."""
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm
    except ImportError:  # pragma: no cover - very old tqdm
        return contextlib.nullcontext()
    return logging_redirect_tqdm()
