"""What a run or a results root says about its jobs: per-stage counts, failure records, their printing.

Failures are data: one ``failures/<job_id>.parquet`` per failed or skipped job (error, traceback,
attempts), written by the runner and read back here by ``zoo-study status``. Reading needs neither Ray
nor torch.
"""

from __future__ import annotations

import collections
import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from pipelines.jobs import Job, PlanCounts, canonical_json, unique
from pipelines.stages import count
from zoo_study import store

__all__ = ["StageCounts", "FailureRecord", "RunReport", "StudyStatus", "read_failures", "status"]


@dataclass
class StageCounts:
    """What happened to one stage's jobs in one run. ``total = done_before + ran + failed + skipped``
    (plus the jobs an interrupted run never finished)."""

    total: int = 0
    done_before: int = 0
    ran: int = 0
    failed: int = 0
    skipped: int = 0
    retried: int = 0  # jobs that needed more than one attempt (worker death), whatever their end


@dataclass(frozen=True)
class FailureRecord:
    """One row of ``failures/<job_id>.parquet``. ``attempts == 0`` means skipped (inputs missing)."""

    job_id: str
    stage: str
    spec: dict
    error: str
    traceback: str
    attempts: int
    failed_at: _dt.datetime

    @property
    def skipped(self) -> bool:
        return self.attempts == 0

    @classmethod
    def now(cls, job: Job, error: str, traceback: str, attempts: int) -> "FailureRecord":
        at = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
        return cls(job.job_id, job.stage, dict(job.spec), error, traceback, attempts, at)

    def to_row(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "stage": self.stage,
            "spec_json": canonical_json(self.spec),  # the same text the job id was hashed from
            "error": self.error,
            "traceback": self.traceback,
            "attempts": self.attempts,
            "failed_at": self.failed_at,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "FailureRecord":
        try:
            spec = json.loads(row["spec_json"])
        except (TypeError, ValueError):
            spec = {"_unparsed": row["spec_json"]}
        return cls(
            job_id=row["job_id"],
            stage=row["stage"],
            spec=spec,
            error=row["error"],
            traceback=row["traceback"],
            attempts=int(row["attempts"]),
            failed_at=row["failed_at"],
        )

    def write(self, root: str | Path) -> Path:
        table = store.table_from_rows([self.to_row()], store.FAILURE_SCHEMA)
        path = store.ResultsLayout(root).failure(self.job_id)
        return store.write_parquet_atomic(table, path, schema=store.FAILURE_SCHEMA)


@dataclass
class RunReport:
    """Outcome of ``run_jobs``: per-stage counts, wall time, and the failure (and skip) records."""

    root: Path
    backend: str
    stages: dict[str, StageCounts] = field(default_factory=dict)
    wall_s: float = 0.0
    failures: list[FailureRecord] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no job failed or was skipped."""
        return not self.failures

    @property
    def ran(self) -> int:
        return sum(c.ran for c in self.stages.values())

    @property
    def failed(self) -> int:
        return sum(c.failed for c in self.stages.values())

    @property
    def skipped(self) -> int:
        return sum(c.skipped for c in self.stages.values())

    def summary(self) -> str:
        """A fixed-width table plus the failures, for the CLI and logs."""
        width = max([len("stage")] + [len(s) for s in self.stages])
        cols = ("total", "done", "ran", "failed", "skipped", "retried")
        lines = [f"{'stage':<{width}}" + "".join(f"  {c:>7}" for c in cols)]
        for stage, c in self.stages.items():
            values = (c.total, c.done_before, c.ran, c.failed, c.skipped, c.retried)
            lines.append(f"{stage:<{width}}" + "".join(f"  {v:>7}" for v in values))
        lines.append(f"wall time {self.wall_s:.1f} s ({self.backend}); results in {self.root}")
        for f in self.failures:
            kind = "skipped" if f.skipped else f"failed after {f.attempts} attempt(s)"
            lines.append(f"  {f.stage}:{f.job_id} {kind}: {f.error}")
        return "\n".join(lines)


@dataclass
class StudyStatus:
    """Where a study stands: per-stage plan counts and the failure records of its not-done jobs."""

    root: Path
    stages: dict[str, PlanCounts]
    failures: list[FailureRecord]  # of jobs in the given set that are not done
    other_failures: list[FailureRecord]  # records of job ids not in the given set (old configs)
    unreadable: list[Path]  # failure files that do not read back
    redo: list[str] = field(default_factory=list)  # "label: why" of jobs that look finished but are not

    def summary(self) -> str:
        width = max([len("stage")] + [len(s) for s in self.stages])
        nfail = collections.Counter(f.stage for f in self.failures if not f.skipped)
        nskip = collections.Counter(f.stage for f in self.failures if f.skipped)
        lines = [f"{'stage':<{width}}  {'total':>7}  {'done':>7}  {'to run':>7}  {'failed':>7}  {'skipped':>7}"]
        for stage, c in self.stages.items():
            lines.append(
                f"{stage:<{width}}  {c.total:>7}  {c.done:>7}  {c.to_run:>7}  {nfail[stage]:>7}  {nskip[stage]:>7}"
            )
        for f in self.failures:
            kind = "skipped" if f.skipped else f"failed x{f.attempts}"
            lines.append(f"  {f.stage}:{f.job_id} {kind} at {f.failed_at:%Y-%m-%d %H:%M}Z: {f.error}")
        lines.extend(f"  {note} (will be redone)" for note in self.redo)
        if self.other_failures:
            lines.append(f"  ({len(self.other_failures)} failure record(s) of jobs not in this study's plan)")
        if self.unreadable:
            lines.append(f"  ({len(self.unreadable)} unreadable failure file(s) in {self.root / 'failures'})")
        return "\n".join(lines)


def read_failures(root: str | Path) -> tuple[list[FailureRecord], list[Path]]:
    """Every record in ``root/failures/*.parquet`` (sorted by job id) and the files that do not read back."""
    layout = store.ResultsLayout(root)
    records: list[FailureRecord] = []
    bad: list[Path] = []
    if not layout.failures_dir.is_dir():
        return records, bad
    for path in sorted(layout.failures_dir.glob("*.parquet")):
        table = store.read_parquet_checked(path, store.FAILURE_SCHEMA)
        if table is None or table.num_rows == 0:
            bad.append(path)
            continue
        records.extend(FailureRecord.from_row(r) for r in table.to_pylist())
    return records, bad


def status(root: str | Path, jobs: Iterable[Job]) -> StudyStatus:
    """Per-stage total/done/to-run of ``jobs`` under ``root`` (:func:`pipelines.stages.count`) and the
    recorded failures. Reads only."""
    root = Path(root)
    jobs = unique(jobs)
    counted = count(jobs, root)
    order = {j.job_id: i for i, j in enumerate(jobs)}
    records, bad = read_failures(root)
    return StudyStatus(
        root=root,
        stages=counted.stages,
        failures=sorted((r for r in records if r.job_id in order and r.job_id not in counted.done_ids),
                        key=lambda r: order[r.job_id]),
        other_failures=[r for r in records if r.job_id not in order],
        unreadable=bad,
        redo=list(counted.redo),
    )
