"""Run jobs: skip the done ones, execute the rest with Ray (or in-process), write results, record failures.

Why it is shaped like this:

* **The driver owns the filesystem.** It reads each input file once, shares it with ``ray.put``, and
  writes every returned output atomically (temp name + rename). Tasks only see bytes in and tables out,
  so a cluster needs no shared filesystem and a job killed mid-way never leaves a file that looks done.
* **Waves.** Jobs run in dependency order, one wave after another (by default one wave per stage, in
  the order stages first appear). A job reads only files of earlier waves; a job whose input is missing
  (its upstream job failed) is skipped and the reason recorded, instead of crashing inside a worker.
* **Failures are data.** A job that raises is written to ``failures/<job_id>.parquet`` (error, traceback,
  attempts) and the others go on. A worker that dies (SIGKILL, OOM killer, lost node) is a *system*
  failure and is retried up to ``max_retries`` times; an exception raised by the executor is not retried
  (it would fail the same way). The retry is done by the driver (Ray's own ``max_retries`` is 0) so that
  the attempt count in the failure record is exact and every retry is logged.
* **Resumable.** A second run finds every output reading back and does nothing; a success deletes the
  job's stale failure record.

The serial backend (``address="local"`` or ``use_ray=False``) runs the very same executors in this process,
with the same outputs and failure records: for notebooks, debuggers and machines without Ray.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as _dt
import json
import logging
import os
import socket
import time
import traceback as _tb
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import pyarrow as pa

from pipelines.jobs import (
    job_record_json,
    Job,
    JobContext,
    _running,
    PlanCounts,
    _check_relpath,
    _executor_payload,
    _unique,
    canonical_json,
    executor_ref,
    is_done,
    resolve_executor,
)
from zoo_study import store

__all__ = [
    "StageCounts",
    "FailureRecord",
    "RunReport",
    "StudyStatus",
    "ensure_ray",
    "run_jobs",
    "status",
    "read_failures",
]

LOG = logging.getLogger("pipelines.runner")
LOCAL = "local"
ERROR_CHARS = 500


# --------------------------------------------------------------------------------------------- records
@dataclass
class StageCounts:
    """What happened to one stage's jobs in one run. ``total = done_before + ran + failed + skipped``."""

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


@dataclass
class RunReport:
    """Outcome of :func:`run_jobs`: per-stage counts, wall time, and the failure (and skip) records."""

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
    """Per-stage total/done/to-run of ``jobs`` under ``root`` and the recorded failures. Reads only."""
    root = Path(root)
    jobs = _unique(jobs)
    flags = [is_done(j, root) for j in jobs]
    counts: dict[str, list[int]] = {}
    done_ids = set()
    for job, done in zip(jobs, flags):
        c = counts.setdefault(job.stage, [0, 0])
        c[0] += 1
        c[1] += int(done)
        if done:
            done_ids.add(job.job_id)
    order = {j.job_id: i for i, j in enumerate(jobs)}
    records, bad = read_failures(root)
    return StudyStatus(
        root=root,
        stages={s: PlanCounts(total=t, done=d, to_run=t - d) for s, (t, d) in counts.items()},
        failures=sorted(
            (r for r in records if r.job_id in order and r.job_id not in done_ids), key=lambda r: order[r.job_id]
        ),
        other_failures=[r for r in records if r.job_id not in order],
        unreadable=bad,
    )


# ------------------------------------------------------------------------------------------ the worker
def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return msg if len(msg) <= ERROR_CHARS else msg[: ERROR_CHARS - 3] + "..."


def _where() -> str:
    return f"{socket.gethostname()} pid {os.getpid()}"


def _execute_job(executor: str | Callable, spec_json: str, ctx: JobContext, *blobs: bytes) -> tuple:
    """Run one executor where the task landed. Returns a tuple, never raises for executor errors.

    ``("ok", outputs, "", where, seconds)`` or ``("error", one-line error, traceback, where, seconds)``.
    Catching here (instead of letting Ray wrap the exception) keeps the recorded traceback the
    executor's own and makes "application error" unambiguous: anything Ray raises is a system failure.
    """
    t0 = time.perf_counter()
    try:
        fn = resolve_executor(executor)
        with _running(ctx):
            result = fn(json.loads(spec_json), dict(zip(ctx.inputs, blobs)))
        if not isinstance(result, Mapping):
            raise TypeError(f"executor returned {type(result).__name__}; expected a dict of output path -> content")
        return ("ok", dict(result), "", _where(), time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - every executor error is recorded, not raised
        return ("error", _one_line(exc), _tb.format_exc(), _where(), time.perf_counter() - t0)


def _context(job: Job, attempt: int) -> JobContext:
    return JobContext(job_id=job.job_id, stage=job.stage, outputs=job.outputs, inputs=job.inputs, attempt=attempt)


@dataclass
class _Outcome:
    kind: str  # ok | error | system
    outputs: dict | None = None
    error: str = ""
    traceback: str = ""
    where: str = ""
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------- backends
class _SerialBackend:
    """Runs each submitted job in this process, one at a time, when results are awaited."""

    name = "serial"

    def __init__(self) -> None:
        self._queue: collections.OrderedDict[int, tuple] = collections.OrderedDict()
        self._next = 0

    def default_window(self) -> int:
        return 1

    def put(self, data: bytes) -> bytes:
        return data

    def submit(self, job: Job, payload: str | Callable, handles: list, attempt: int) -> int:
        self._next += 1
        self._queue[self._next] = (payload, job.spec_json, _context(job, attempt), handles)
        return self._next

    def wait(self, handles: list) -> list[tuple[Any, _Outcome]]:
        h = handles[0]
        payload, spec_json, ctx, blobs = self._queue.pop(h)
        kind, outputs_or_error, tb, where, seconds = _execute_job(payload, spec_json, ctx, *blobs)
        if kind == "ok":
            return [(h, _Outcome("ok", outputs=outputs_or_error, where=where, seconds=seconds))]
        return [(h, _Outcome("error", error=outputs_or_error, traceback=tb, where=where, seconds=seconds))]

    def cancel(self, handles: list) -> None:
        for h in handles:
            self._queue.pop(h, None)


class _RayBackend:
    """One Ray task per job; ``ray.wait`` hands back whichever finish first."""

    name = "ray"

    def __init__(self) -> None:
        import ray

        self._ray = ray
        # max_calls can only be set on the decorator, hence two remote functions. GPU tasks get a fresh
        # worker process each, so CUDA memory is returned to the device when the job ends.
        self._cpu_fn = ray.remote(max_retries=0, retry_exceptions=False)(_execute_job)
        self._gpu_fn = ray.remote(max_retries=0, retry_exceptions=False, max_calls=1)(_execute_job)
        self._node_max: dict[str, float] | None = None

    def infeasible(self, job: Job) -> str | None:
        """Why no node of a fixed-size (local) instance can ever run ``job``, or None.

        Without this a GPU job on a CPU-only machine would wait forever. Not applied when joining a
        cluster, whose autoscaler may add the missing nodes.
        """
        if self._node_max is None:
            nodes = [n.get("Resources", {}) for n in self._ray.nodes() if n.get("Alive")]
            self._node_max = {k: max((n.get(k, 0.0) for n in nodes), default=0.0) for k in ("CPU", "GPU")}
        for key, need in (("CPU", job.num_cpus), ("GPU", job.num_gpus)):
            if need > self._node_max[key]:
                return (f"needs {need:g} {key}(s) but no node of this Ray instance has more than "
                        f"{self._node_max[key]:g}; change the job's resources or join a cluster that has them")
        return None

    def default_window(self) -> int:
        res = self._ray.cluster_resources()
        return max(128, 4 * int(res.get("CPU", 0) + res.get("GPU", 0)))

    def put(self, data: bytes) -> Any:
        return self._ray.put(data)

    def submit(self, job: Job, payload: str | Callable, handles: list, attempt: int) -> Any:
        fn = self._gpu_fn if job.num_gpus > 0 else self._cpu_fn
        # refs passed as top-level arguments are resolved by Ray before the task starts
        return fn.options(num_cpus=job.num_cpus, num_gpus=job.num_gpus, name=job.label).remote(
            payload, job.spec_json, _context(job, attempt), *handles
        )

    def wait(self, handles: list) -> list[tuple[Any, _Outcome]]:
        ray = self._ray
        ready, rest = ray.wait(handles, num_returns=1)
        if rest:  # collect everything else already finished in the same turn
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        out = []
        for ref in ready:
            try:
                kind, outputs_or_error, tb, where, seconds = ray.get(ref)
            except (ray.exceptions.RayTaskError, ray.exceptions.TaskCancelledError) as exc:
                # raised outside the executor's try (e.g. argument deserialisation): not transient
                out.append((ref, _Outcome("error", error=_one_line(exc), traceback=str(exc))))
                continue
            except ray.exceptions.RayError as exc:  # worker died, node lost, object lost, OOM kill
                out.append((ref, _Outcome("system", error=_one_line(exc), traceback=str(exc))))
                continue
            if kind == "ok":
                out.append((ref, _Outcome("ok", outputs=outputs_or_error, where=where, seconds=seconds)))
            else:
                out.append((ref, _Outcome("error", error=outputs_or_error, traceback=tb, where=where, seconds=seconds)))
        return out

    def cancel(self, handles: list) -> None:
        for ref in handles:
            with contextlib.suppress(Exception):
                self._ray.cancel(ref)


# ------------------------------------------------------------------------------------------------- Ray
def ensure_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    runtime_env: Mapping[str, Any] | None = None,
    log: logging.Logger | None = None,
) -> str:
    """Start or join Ray unless it is already initialised; return a one-line description of it.

    ``address=None`` starts a local instance, unless ``RAY_ADDRESS`` is set (then Ray joins that);
    ``"auto"`` joins the cluster of this node; ``"ray://host:10001"`` uses Ray Client. ``num_cpus`` and
    ``object_store_memory`` size a *local* instance only (a cluster has its own sizes, so they are ignored
    with a warning when joining). The dashboard is off: nothing here needs it.
    """
    import ray

    log = log or LOG
    if not ray.is_initialized():
        joining = address is not None or bool(os.environ.get("RAY_ADDRESS"))
        kwargs: dict[str, Any] = {"ignore_reinit_error": True}
        if runtime_env is not None:
            kwargs["runtime_env"] = dict(runtime_env)
        if joining:
            if num_cpus is not None or object_store_memory is not None:
                log.warning("joining Ray at %s: num_cpus / object_store_memory are ignored", address or "$RAY_ADDRESS")
            ray.init(address=address, **kwargs)
        else:
            ray.init(
                num_cpus=num_cpus, object_store_memory=object_store_memory, include_dashboard=False, **kwargs
            )
    res = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return f"Ray with {nodes} node(s), {res.get('CPU', 0):g} CPU(s), {res.get('GPU', 0):g} GPU(s)"


# ------------------------------------------------------------------------------------------ run_jobs
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
    _unique(j for w in waves for j in w)  # raises on two jobs claiming one output
    seen: set[str] = set()
    deduped = []
    for wave in waves:
        kept = [j for j in wave if not (j.job_id in seen or seen.add(j.job_id))]
        if kept:
            deduped.append(kept)
    waves = deduped
    producer: dict[str, tuple[int, Job]] = {}
    for i, wave in enumerate(waves):
        for job in wave:
            for rel in job.outputs:
                producer[rel] = (i, job)
    for i, wave in enumerate(waves):
        for job in wave:
            for rel in job.inputs:
                if rel in producer and producer[rel][0] >= i:
                    other = producer[rel][1]
                    where = "the same wave" if producer[rel][0] == i else "a later wave"
                    raise ValueError(
                        f"job {job.label} reads {rel!r}, which {other.label} writes in {where}; "
                        f"run stage {other.stage!r} before stage {job.stage!r}"
                    )
    return waves, producer


def _to_bytes(rel: str, content: Any) -> tuple[str, Any]:
    """Classify one returned output: ('table', Table) or ('bytes', bytes); raise on anything else."""
    if isinstance(content, pa.Table):
        if not rel.endswith(".parquet"):
            raise ValueError(f"output {rel!r}: a table must go to a '.parquet' path")
        return "table", content
    if isinstance(content, (bytes, bytearray, memoryview)):
        return "bytes", bytes(content)
    if isinstance(content, str):
        return "bytes", content.encode("utf-8")
    raise TypeError(f"output {rel!r}: content must be a pyarrow.Table, bytes or str, got {type(content).__name__}")


def _write_outputs(job: Job, outputs: Mapping[str, Any], root: Path) -> list[str]:
    """Validate an executor's result against the job's declared outputs and write it atomically.

    Extra files (e.g. report figures) are written first and the declared outputs last, so "all declared
    outputs read back" implies everything was written.
    """
    items: dict[str, tuple[str, Any]] = {}
    for rel, content in outputs.items():
        items[_check_relpath(rel, f"output of {job.label}")] = _to_bytes(rel, content)
    missing = [rel for rel in job.outputs if rel not in items]
    if missing:
        raise ValueError(
            f"executor returned no content for declared output(s) {missing}; it returned {sorted(items)}"
        )
    for rel in job.outputs:
        kind, content = items[rel]
        if kind == "bytes" and not content:
            raise ValueError(
                f"executor returned empty content for declared output {rel!r} (it would never count as done)"
            )
    order = [r for r in items if r not in job.outputs] + list(job.outputs)
    record = store.ResultsLayout(root).job_record(job.job_id)
    record.unlink(missing_ok=True)  # outputs are being replaced: not done until the new record lands
    for rel in order:
        kind, content = items[rel]
        if kind == "table":
            store.write_parquet_atomic(content, root / rel)
        else:
            store.write_bytes_atomic(content, root / rel)
    store.write_text_atomic(job_record_json(job), record)
    return order


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)


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
    progress: bool = True,
    log: logging.Logger | None = None,
) -> RunReport:
    """Run every job that is not done, wave by wave, and return what happened.

    ``jobs``: a flat list (one wave per stage, stages in order of first appearance) or a list of waves.
    A wave starts only when the previous one finished. ``address``: ``None`` (local Ray, or
    ``$RAY_ADDRESS``), ``"auto"`` / ``"ray://..."`` (join a cluster) or ``"local"`` (serial, no Ray; same
    as ``use_ray=False``). ``max_retries``: extra attempts after a worker died (system failures only).
    ``max_in_flight``: submitted-but-unfinished jobs at most (bounds the inputs held in the object
    store); default ``max(128, 4 x cluster CPUs+GPUs)``, 1 for the serial backend.
    Raises only for bad arguments (before any work) and on Ctrl-C (after cancelling what is in flight).
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
    payloads = {}
    for stage in dict.fromkeys(j.stage for w in waves for j in w):
        executor_ref(stage)  # clear error now, before starting Ray, for an unregistered stage
        payloads[stage] = _executor_payload(stage)

    report = RunReport(root=root, backend="ray" if use_ray else "serial")
    for w in waves:
        for j in w:
            report.stages.setdefault(j.stage, StageCounts()).total += 1
    if not waves:
        report.wall_s = time.perf_counter() - t_start
        return report

    layout = store.ResultsLayout(root)
    backend: Any = None
    failed_ids: dict[str, FailureRecord] = {}
    log.info("results root: %s", root)

    for wi, wave in enumerate(waves):
        stages = list(dict.fromkeys(j.stage for j in wave))
        flags = [is_done(j, root) for j in wave]
        todo_jobs = [j for j, d in zip(wave, flags) if not d]
        _clear_stale_failures(layout, [j for j, d in zip(wave, flags) if d])
        for j, d in zip(wave, flags):
            if d:
                report.stages[j.stage].done_before += 1
        dirs = collections.Counter(str(Path(rel).parent) for j in todo_jobs for rel in j.outputs)
        where = ", ".join(f"{d}/ ({n})" for d, n in dirs.most_common(4)) + (" ..." if len(dirs) > 4 else "")
        log.info(
            "wave %d/%d [%s]: %d job(s), %d done, %d to run%s",
            wi + 1, len(waves), ", ".join(stages), len(wave), len(wave) - len(todo_jobs), len(todo_jobs),
            f" -> {where}" if todo_jobs else "",
        )
        if not todo_jobs:
            continue
        if backend is None:
            if use_ray:
                log.info("%s", ensure_ray(address, num_cpus=num_cpus, object_store_memory=object_store_memory,
                                          runtime_env=runtime_env, log=log))
                backend = _RayBackend()
            else:
                log.info("serial backend: jobs run one by one in this process (pid %d)", os.getpid())
                backend = _SerialBackend()
        window = max_in_flight or backend.default_window()
        joined = address is not None or bool(os.environ.get("RAY_ADDRESS"))
        precheck = backend.infeasible if (use_ray and not joined) else (lambda job: None)
        _run_wave(todo_jobs, root, layout, backend, payloads, producer, failed_ids, report, window,
                  max_retries, progress, "+".join(stages), log, precheck)

    report.failures = list(failed_ids.values())  # in the order they happened
    report.wall_s = time.perf_counter() - t_start
    log.info(
        "finished in %.1f s: %d ran, %d failed, %d skipped%s",
        report.wall_s, report.ran, report.failed, report.skipped,
        f"; failure records in {layout.failures_dir}" if report.failures else "",
    )
    return report


def _clear_stale_failures(layout: store.ResultsLayout, done_jobs: list[Job]) -> None:
    """A done job has no business in failures/ (left by a crash between writing outputs and cleanup)."""
    if not done_jobs or not layout.failures_dir.is_dir():
        return
    present = {p.stem for p in layout.failures_dir.glob("*.parquet")}
    for job in done_jobs:
        if job.job_id in present:
            layout.failure(job.job_id).unlink(missing_ok=True)


def _record_failure(layout: store.ResultsLayout, rec: FailureRecord) -> None:
    table = store.table_from_rows([rec.to_row()], store.FAILURE_SCHEMA)
    store.write_parquet_atomic(table, layout.failure(rec.job_id), schema=store.FAILURE_SCHEMA)


def _run_wave(
    todo_jobs: list[Job],
    root: Path,
    layout: store.ResultsLayout,
    backend: Any,
    payloads: Mapping[str, Any],
    producer: Mapping[str, tuple[int, Job]],
    failed_ids: dict[str, FailureRecord],
    report: RunReport,
    window: int,
    max_retries: int,
    progress: bool,
    desc: str,
    log: logging.Logger,
    precheck: Callable[[Job], str | None],
) -> None:
    """Submit, wait, write, record; one wave. Mutates ``report`` and ``failed_ids``."""
    from tqdm.auto import tqdm

    inputs = _Inputs(root, backend, todo_jobs)
    todo: collections.deque[tuple[Job, int]] = collections.deque((j, 1) for j in todo_jobs)
    inflight: dict[Any, tuple[Job, int]] = {}
    retried: set[str] = set()
    wave_failed = 0

    def fail(job: Job, error: str, tb: str, attempts: int) -> None:
        nonlocal wave_failed
        wave_failed += 1
        rec = FailureRecord(job.job_id, job.stage, dict(job.spec), error, tb, attempts, _now())
        try:
            _record_failure(layout, rec)
        except OSError as exc:  # keep going: the report still carries the record
            log.error("could not write failure record of %s: %s", job.label, exc)
        failed_ids[job.job_id] = rec
        counts = report.stages[job.stage]
        if attempts == 0:
            counts.skipped += 1
            log.warning("skipped %s: %s", job.label, error)
        else:
            counts.failed += 1
            log.warning("FAILED %s after %d attempt(s): %s (record: %s)", job.label, attempts, error,
                        layout.failure(job.job_id).relative_to(root))

    def missing_reason(job: Job) -> str | None:
        missing = [rel for rel in job.inputs if not (root / rel).is_file()]
        if not missing:
            return None
        parts = []
        for rel in missing:
            prod = producer.get(rel)
            if prod is None:
                parts.append(f"{rel} (no job in this run writes it)")
            elif prod[1].job_id in failed_ids:
                parts.append(f"{rel} (its job {prod[1].label} failed: {failed_ids[prod[1].job_id].error})")
            else:
                parts.append(f"{rel} (its job {prod[1].label} did not produce it)")
        return "missing input(s): " + "; ".join(parts)

    redirect = _logging_redirect() if progress else contextlib.nullcontext()
    with redirect, tqdm(total=len(todo_jobs), desc=desc, unit="job", disable=not progress, dynamic_ncols=True) as bar:
        try:
            while todo or inflight:
                while todo and len(inflight) < window:
                    job, attempt = todo.popleft()
                    reason = precheck(job) or missing_reason(job)
                    handles = None
                    if reason is None:
                        try:
                            handles = [inputs.get(rel) for rel in job.inputs]
                        except OSError as exc:
                            reason = f"cannot read input: {exc}"
                    if reason is not None:
                        fail(job, reason, "", 0)
                        inputs.release(job)
                        bar.update(1)
                        continue
                    inflight[backend.submit(job, payloads[job.stage], handles, attempt)] = (job, attempt)
                if not inflight:
                    break
                for handle, outcome in backend.wait(list(inflight)):
                    job, attempt = inflight.pop(handle)
                    if outcome.kind == "system" and attempt <= max_retries:
                        if job.job_id not in retried:
                            retried.add(job.job_id)
                            report.stages[job.stage].retried += 1
                        log.warning("%s: %s (attempt %d of %d); retrying", job.label, outcome.error, attempt,
                                    max_retries + 1)
                        todo.appendleft((job, attempt + 1))
                        continue
                    if outcome.kind == "ok":
                        try:
                            written = _write_outputs(job, outcome.outputs or {}, root)
                        except Exception as exc:  # noqa: BLE001 - a bad result fails this job only
                            fail(job, f"invalid result: {_one_line(exc)}", _tb.format_exc(), attempt)
                        else:
                            layout.failure(job.job_id).unlink(missing_ok=True)
                            failed_ids.pop(job.job_id, None)
                            report.stages[job.stage].ran += 1
                            log.debug("done %s in %.2f s on %s -> %s", job.label, outcome.seconds, outcome.where,
                                      ", ".join(written))
                    else:
                        fail(job, outcome.error, outcome.traceback, attempt)
                    inputs.release(job)
                    bar.update(1)
                    if wave_failed:
                        bar.set_postfix(failed=wave_failed, refresh=False)
        except BaseException:
            if inflight:
                log.warning("interrupted: cancelling %d job(s) in flight; finished results are kept, rerun to "
                            "resume", len(inflight))
                backend.cancel(list(inflight))
            raise


def _logging_redirect() -> contextlib.AbstractContextManager:
    """Route console log records through tqdm.write so they do not tear the progress bar."""
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm
    except ImportError:  # pragma: no cover - very old tqdm
        return contextlib.nullcontext()
    return logging_redirect_tqdm()
