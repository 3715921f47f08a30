"""One wave of jobs: submit, wait, write, record (:class:`Wave`), for :func:`pipelines.runner.run_jobs`.

A wave's jobs only read files of earlier waves. Up to ``window`` tasks are in flight; each outcome is
settled as it arrives: outputs written atomically and the job counted, a worker's death retried, an
executor's error recorded, a pack's outputs split into its members' own outcomes, a pack that ran out of
accelerator memory split and retried. Ctrl-C (:class:`StopOnSigint`) stops submitting, keeps what
finished and raises :class:`RunInterrupted`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import signal
import threading
import traceback as _tb
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from pipelines.backends import Outcome, one_line
from pipelines.jobs import Job
from pipelines.outputs import write_outputs
from pipelines.packs import carrier_for, member_outcomes, take_pack
from pipelines.records import FailureRecord, RunReport
from zoo_study import store

__all__ = ["POLL_S", "RunInterrupted", "StopOnSigint", "Wave", "WaveInputs", "WaveRecords", "largest_packs_first"]

POLL_S = 0.5  # how often the driver looks up from waiting to notice a Ctrl-C


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run_jobs`: what had finished is written, what was in flight is cancelled."""

    def __init__(self, report: RunReport, cancelled: int):
        super().__init__(f"interrupted: {report.ran} job(s) finished, {cancelled} cancelled; rerun to resume")
        self.report = report
        self.cancelled = cancelled


class StopOnSigint:
    """While active (main thread only): the first Ctrl-C asks the run to stop gracefully, a second one
    raises KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> "StopOnSigint":
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


class WaveInputs:
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

class WaveRecords:
    """What a wave's outcomes leave: outputs written, failure records, counts in ``report``, retries.
    Mutates ``report`` and ``failed`` (job id -> its record, shared by all waves of a run)."""

    def __init__(self, root: Path, producer: Mapping[str, tuple[int, Job]], failed: dict[str, FailureRecord],
                 report: RunReport, max_retries: int, log: logging.Logger, stop: StopOnSigint):
        self.root, self.producer, self.failed, self.report = root, producer, failed, report
        self.max_retries, self.log, self.stop = max_retries, log, stop
        self.retried: set[str] = set()
        self.n_failed = 0

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


class Wave:
    """Submit, wait, settle: one wave. What the outcomes leave is :class:`WaveRecords`' part."""

    def __init__(self, jobs: list[Job], root: Path, backend: Any, fns: Mapping[str, Any],
                 producer: Mapping[str, tuple[int, Job]], failed: dict[str, FailureRecord], report: RunReport,
                 max_retries: int, log: logging.Logger, stop: StopOnSigint, pack_size: int = 1,
                 pack_groups: int = 1, pack_memory: float = 0.0):
        self.jobs, self.root, self.backend, self.fns = jobs, root, backend, fns
        self.pack_size, self.pack_groups, self.pack_memory = pack_size, pack_groups, pack_memory
        self.failed, self.report, self.log, self.stop = failed, report, log, stop
        self.records = WaveRecords(root, producer, failed, report, max_retries, log, stop)
        self.inputs = WaveInputs(root, backend, jobs)
        self.cancelled = 0
        self.fixed: dict[str, list[Job]] = {}  # first member's id -> the group it runs with (after an OOM)
        self.todo: collections.deque[tuple[Job, int]] = collections.deque()  # (job, attempt), filled by run
        self.inflight: dict[Any, tuple[Job, int, list[Job] | None]] = {}  # handle -> (job or carrier, attempt, pack)
        self.bar: Any = None  # the progress bar, while run() runs

    def run(self, window: int, progress: bool, desc: str) -> None:
        """Keep up to ``window`` tasks in flight until every job of the wave is settled (or Ctrl-C)."""
        from tqdm.auto import tqdm

        self.todo = collections.deque((j, 1) for j in largest_packs_first(self.jobs))
        redirect = _logging_redirect() if progress else contextlib.nullcontext()
        with redirect, tqdm(total=len(self.jobs), desc=desc, unit="job", disable=not progress,
                            dynamic_ncols=True) as self.bar:
            while (self.todo or self.inflight) and not self.stop.requested:
                while self.todo and len(self.inflight) < window and not self.stop.requested:
                    self.submit(*self.todo.popleft())
                if not self.inflight:
                    break
                try:
                    self.handle(self.backend.wait(list(self.inflight), timeout=POLL_S))
                except KeyboardInterrupt:  # a second Ctrl-C, or one that reached an in-process job
                    self.stop.requested = True
            if self.stop.requested:
                self.interrupt()

    def submit(self, job: Job, attempt: int) -> None:
        """Submit ``job`` (with the pending jobs of its pack on a first attempt), or fail it at once when
        its inputs are missing or no node can run it."""
        group = self.fixed.pop(job.job_id, None)  # a part of a pack that ran out of memory
        reason = self.backend.infeasible(job) or self.records.missing_reason(job)
        handles = None
        if reason is None:
            try:
                handles = [self.inputs.get(rel) for rel in job.inputs]
            except OSError as exc:
                reason = f"cannot read input: {exc}"
        if reason is not None:
            for member in group or [job]:
                self.records.fail(member, reason, "", 0)
                self.inputs.release(member)
                self.bar.update(1)
            return
        if group is None:
            group = take_pack(job, self.todo, self.pack_size, max_groups=self.pack_groups,
                              memory_budget=self.pack_memory, ready=self.ready,
                              keep_out=self.fixed) if attempt == 1 else [job]
        if len(group) == 1:
            self.inflight[self.backend.submit(job, self.fns[job.stage], handles, attempt)] = (job, attempt, None)
        else:
            carrier = carrier_for(group)
            handles = [self.inputs.get(rel) for rel in carrier.inputs]  # every member's students
            self.inflight[self.backend.submit(carrier, self.fns[carrier.stage], handles, attempt)] = (
                carrier, attempt, group)

    def handle(self, outcomes: list) -> None:
        """Settle finished tasks: a lone job, each member of a pack, or a pack that ran out of memory."""
        for h, outcome in outcomes:
            job, attempt, group = self.inflight.pop(h)
            if outcome.kind == "oom":
                if not self.after_oom(group or [job], attempt, outcome):
                    self.settle(job, attempt, dataclasses.replace(outcome, kind="error"))
            elif group is None:
                self.settle(job, attempt, outcome)
            elif outcome.kind != "ok":  # the pack as a whole: each member gets its outcome
                for member in group:
                    self.settle(member, attempt, outcome)
            else:
                self.settle_pack(group, attempt, outcome)

    def settle_pack(self, group: list[Job], attempt: int, outcome: Outcome) -> None:
        """Split a pack's outputs into its members' own outcomes (:func:`pipelines.packs.member_outcomes`);
        a member that ran out of memory alone runs again by itself."""
        for member, own in member_outcomes(group, outcome):  # typed: pipelines/packs.py
            if own.kind == "oom":
                self.member_oom(member, attempt, own.error)
            else:
                self.settle(member, attempt, own)

    def settle(self, job: Job, attempt: int, outcome: Any) -> None:
        """One job's outcome: queued again (retry), or done (written, failed, cancelled) and counted."""
        verdict = self.records.finish(job, attempt, outcome)
        if verdict == "retry":
            self.todo.appendleft((job, attempt + 1))
            return
        if verdict == "cancelled":
            self.cancelled += 1
            self.stop.requested = True
        self.inputs.release(job)
        self.bar.update(1)
        if self.records.n_failed:
            self.bar.set_postfix(failed=self.records.n_failed, refresh=False)

    def interrupt(self) -> None:
        """Ctrl-C: keep what finished meanwhile, cancel the rest, raise :class:`RunInterrupted`."""
        with contextlib.suppress(KeyboardInterrupt):
            if self.inflight:
                self.handle(self.backend.wait(list(self.inflight), timeout=0))
        self.cancelled += sum(len(g) if g else 1 for _, _, g in self.inflight.values())
        self.backend.cancel(list(self.inflight))
        self.report.failures = list(self.failed.values())
        self.log.debug("interrupted: %d job(s) in flight cancelled", self.cancelled)
        raise RunInterrupted(self.report, self.cancelled)

    def ready(self, job: Job) -> bool:
        """Whether a job may join another's pack now: its inputs exist and can be read."""
        if self.backend.infeasible(job) or self.records.missing_reason(job):
            return False
        try:
            for rel in job.inputs:
                self.inputs.get(rel)
        except OSError:
            return False
        return True

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


def _logging_redirect() -> contextlib.AbstractContextManager:
    """Route console log records through tqdm.write so they do not tear the progress bar."""
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm
    except ImportError:  # pragma: no cover - very old tqdm
        return contextlib.nullcontext()
    return logging_redirect_tqdm()
