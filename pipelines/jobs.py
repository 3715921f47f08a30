"""Job specs, content-hash ids, done detection and the executor registry.

Why this module exists: the pipeline runs hundreds of independent units of work (a model, a pair set,
a transfer) and must resume after a crash, a Ctrl-C or a config extension by doing only the missing
work. A :class:`Job` therefore names its work by *content* (a hash of its canonical spec), and its
completion by *files* (its outputs exist and read back), never by a database or a log.

What a job computes is not known here: a stage module registers an *executor* for its stage name::

    from pipelines.jobs import Job, register_executor, read_input_table

    @register_executor("predict")
    def predict_job(spec: dict, inputs: dict[str, bytes]) -> dict[str, pa.Table | bytes]:
        models = read_input_table(inputs["zoo/models/resnet18.parquet"])
        ...
        return {f"predictions/model={spec['model']}.parquet": table}

Executors are plain module-level functions. Ray workers find them by their import path
(``"module:qualname"``), so the module that defines them must be importable on every worker (it is,
when the package is installed there). Executors never touch the results root: they get the bytes of
their declared inputs and return the content of their outputs; the driver does all reads and writes.
That is what makes the same code work on a cluster without a shared filesystem.

This module does not import Ray, so planning and status work in a notebook or the CLI without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import io
import json
import time
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import pyarrow as pa
import pyarrow.parquet as pq

from zoo_study import store

__all__ = [
    "Job",
    "Executor",
    "OutputContent",
    "PlanCounts",
    "canonical_json",
    "job_id_for",
    "is_done",
    "output_reads_back",
    "plan",
    "pending",
    "format_plan",
    "register_executor",
    "register_executor_path",
    "unregister_executor",
    "executor_ref",
    "resolve_executor",
    "registered_stages",
    "read_input_table",
    "table_to_parquet_bytes",
    "JobContext",
    "current_job",
]

OutputContent = Union[pa.Table, bytes, str]
"""What an executor may return for one output path: a table (written as Parquet), raw bytes, or text
(written as UTF-8)."""

Executor = Callable[[dict, "dict[str, bytes]"], Mapping[str, OutputContent]]
"""``fn(spec, inputs) -> {relative output path: content}``; ``inputs`` maps each declared input path to
its bytes."""

ID_LENGTH = 16


# ------------------------------------------------------------------------------------------------ ids
def canonical_json(obj: Any) -> str:
    """The one JSON text of ``obj`` that ids are computed from: sorted keys, no whitespace, no NaN.

    Why strict: two specs that mean the same must hash the same (key order is irrelevant) and a spec
    that JSON cannot represent faithfully (NaN, a set, an object) must fail loudly, not hash to
    something that a later run cannot reproduce. Note that ``1`` and ``1.0`` are different JSON texts,
    so they give different ids; the config layer should type its values.
    """
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"job spec must be JSON-serialisable (str keys; str, int, finite float, bool, None, list, dict "
            f"values): {exc}"
        ) from exc


def job_id_for(stage: str, spec: Mapping[str, Any]) -> str:
    """First 16 hex digits of sha256 over ``canonical_json({stage, spec, schema_version})``.

    The schema version is part of the id so that a schema change re-runs everything instead of mixing
    old and new files under the same names.
    """
    text = canonical_json({"stage": stage, "spec": spec, "schema_version": store.SCHEMA_VERSION})
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:ID_LENGTH]


def _check_relpath(path: str, what: str) -> str:
    """Normalise a results-root relative path, refusing anything that could escape the root."""
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"{what} must be a non-empty relative path string, got {path!r}")
    if "\\" in path:
        raise ValueError(f"{what} {path!r} must use '/' separators")
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or str(p) in (".", ""):
        raise ValueError(f"{what} {path!r} must be relative to the results root, without '..'")
    return str(p)


# ------------------------------------------------------------------------------------------------ Job
@dataclass(frozen=True)
class Job:
    """One unit of work: which executor (``stage``), with what parameters (``spec``), producing which
    files (``outputs``), from which files (``inputs``), with which resources.

    ``spec`` must be JSON-serialisable; it is normalised through JSON at construction (tuples become
    lists) and the executor receives a fresh copy of that normalised dict. Do not mutate it.
    ``outputs`` and ``inputs`` are paths relative to the results root; every output existing and reading
    back marks the job done. ``name`` is a human label for logs only (not part of the id).
    """

    stage: str
    spec: Mapping[str, Any]
    outputs: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    num_cpus: float = 1
    num_gpus: float = 0
    name: str = field(default="", compare=False)
    job_id: str = field(init=False, compare=False)
    spec_json: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.stage, str) or not self.stage:
            raise ValueError(f"job stage must be a non-empty string, got {self.stage!r}")
        if not isinstance(self.spec, Mapping):
            raise ValueError(f"job spec must be a mapping, got {type(self.spec).__name__}")
        if isinstance(self.outputs, str) or isinstance(self.inputs, str):
            raise ValueError("job outputs and inputs must be sequences of paths, not a single string")
        outputs = tuple(_check_relpath(p, "job output") for p in self.outputs)
        inputs = tuple(_check_relpath(p, "job input") for p in self.inputs)
        if not outputs:
            raise ValueError(f"job of stage {self.stage!r} declares no outputs; a job without outputs is never done")
        if len(set(outputs)) != len(outputs):
            raise ValueError(f"job of stage {self.stage!r} declares duplicate outputs: {list(outputs)}")
        if set(outputs) & set(inputs):
            raise ValueError(f"job of stage {self.stage!r} reads its own outputs: {sorted(set(outputs) & set(inputs))}")
        for attr in ("num_cpus", "num_gpus"):
            value = getattr(self, attr)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ValueError(f"job {attr} must be a finite number >= 0, got {value!r}")
        spec_json = canonical_json(dict(self.spec))
        object.__setattr__(self, "spec", json.loads(spec_json))
        object.__setattr__(self, "outputs", outputs)
        object.__setattr__(self, "inputs", tuple(dict.fromkeys(inputs)))
        object.__setattr__(self, "spec_json", spec_json)
        object.__setattr__(self, "job_id", job_id_for(self.stage, self.spec))

    def __hash__(self) -> int:  # the spec is a dict, so hash by the content id
        return hash((self.job_id, self.outputs))

    @property
    def label(self) -> str:
        """Short log label: ``stage:id8`` plus the human name when there is one."""
        base = f"{self.stage}:{self.job_id[:8]}"
        return f"{base} ({self.name})" if self.name else base

    def with_resources(self, *, num_cpus: float | None = None, num_gpus: float | None = None) -> "Job":
        """The same job (same id) with other resources, e.g. GPU jobs when a GPU is present."""
        return dataclasses.replace(
            self,
            num_cpus=self.num_cpus if num_cpus is None else num_cpus,
            num_gpus=self.num_gpus if num_gpus is None else num_gpus,
        )


# --------------------------------------------------------------------------------------- done detection
def output_reads_back(path: Path) -> bool:
    """True when one output file is complete: Parquet reads back, any other file exists and is non-empty."""
    if path.suffix == ".parquet":
        return store.read_parquet_checked(path) is not None
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def is_done(job: Job, root: str | Path) -> bool:
    """True when this very job (same id) finished and every output exists and reads back.

    A truncated or corrupt Parquet file counts as not done (the job runs again and overwrites it). The
    job record (``_jobs/<job_id>.json``, written after the outputs) ties outputs whose paths do not
    contain the job id (``zoo/models/<model>.parquet``, ``predictions/model=<model>.parquet``) to the spec
    that wrote them: change a model's recipe and its jobs run again instead of reusing the old files.
    """
    root = Path(root)
    if not store.ResultsLayout(root).job_record(job.job_id).is_file():
        return False
    return all(output_reads_back(root / rel) for rel in job.outputs)


def job_record_json(job: Job) -> str:
    """What the runner stores about a finished job: enough to know which spec produced the outputs."""
    return json.dumps({"job_id": job.job_id, "stage": job.stage, "name": job.name, "spec": job.spec,
                       "outputs": list(job.outputs), "inputs": list(job.inputs),
                       "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1)


@dataclass(frozen=True)
class PlanCounts:
    """Jobs of one stage: how many in total, how many already done, how many would run."""

    total: int
    done: int
    to_run: int


def _done_flags(jobs: Sequence[Job], root: Path) -> list[bool]:
    return [is_done(j, root) for j in jobs]


def plan(jobs: Iterable[Job], root: str | Path) -> dict[str, PlanCounts]:
    """Per-stage counts (total, done, to_run), stages in order of first appearance. Reads only outputs."""
    jobs = _unique(jobs)
    flags = _done_flags(jobs, Path(root))
    counts: dict[str, list[int]] = {}
    for job, done in zip(jobs, flags):
        c = counts.setdefault(job.stage, [0, 0])
        c[0] += 1
        c[1] += int(done)
    return {stage: PlanCounts(total=t, done=d, to_run=t - d) for stage, (t, d) in counts.items()}


def pending(jobs: Iterable[Job], root: str | Path) -> list[Job]:
    """The jobs that are not done, in their given order (duplicates removed)."""
    jobs = _unique(jobs)
    return [j for j, done in zip(jobs, _done_flags(jobs, Path(root))) if not done]


def format_plan(counts: Mapping[str, PlanCounts]) -> str:
    """A small fixed-width table of :func:`plan` output, for ``--dry-run`` and logs."""
    width = max([len("stage")] + [len(s) for s in counts])
    lines = [f"{'stage':<{width}}  {'total':>7}  {'done':>7}  {'to run':>7}"]
    for stage, c in counts.items():
        lines.append(f"{stage:<{width}}  {c.total:>7}  {c.done:>7}  {c.to_run:>7}")
    return "\n".join(lines)


def _unique(jobs: Iterable[Job]) -> list[Job]:
    """Drop repeated jobs (same id and outputs); two jobs claiming one output path is an error."""
    seen: dict[str, Job] = {}
    owner: dict[str, Job] = {}
    out: list[Job] = []
    for job in jobs:
        if not isinstance(job, Job):
            raise TypeError(f"expected Job objects, got {type(job).__name__}: {job!r}")
        prev = seen.get(job.job_id)
        if prev is not None:
            if prev.outputs != job.outputs or prev.inputs != job.inputs:
                raise ValueError(
                    f"two jobs with the same id {job.job_id} (stage {job.stage!r}) declare different files: "
                    f"{prev.outputs}/{prev.inputs} vs {job.outputs}/{job.inputs}"
                )
            continue
        for rel in job.outputs:
            other = owner.get(rel)
            if other is not None:
                raise ValueError(f"output {rel!r} is claimed by two jobs: {other.label} and {job.label}")
            owner[rel] = job
        seen[job.job_id] = job
        out.append(job)
    return out


# ------------------------------------------------------------------------------------ executor registry
@dataclass
class _Entry:
    ref: str  # "module:qualname"
    fn: Callable | None  # None until imported (path registrations)


_REGISTRY: dict[str, _Entry] = {}
_RESOLVED: dict[str, Callable] = {}


def _ref_of(fn: Callable) -> str:
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname:
        raise ValueError(f"executor {fn!r} has no module/qualname; register a plain module-level function")
    return f"{module}:{qualname}"


def _importable(ref: str) -> bool:
    """Whether a worker process can import ``ref`` by name (not ``__main__``, not a local function)."""
    module, _, qualname = ref.partition(":")
    return module != "__main__" and "<locals>" not in qualname and "<lambda>" not in qualname


def register_executor(stage: str, *, replace: bool = False) -> Callable[[Callable], Callable]:
    """Decorator: make ``fn(spec, inputs) -> {output path: content}`` the executor of ``stage``.

    Registering the same function again (a module imported twice, a notebook cell re-run) is fine;
    registering a *different* function for a taken stage is an error unless ``replace=True``, because a
    silent swap would make two runs of the same job id compute different things.
    Functions defined in ``__main__`` or inside other functions work with the serial runner and are sent
    to Ray workers by value; module-level functions are sent by name.
    """
    if not isinstance(stage, str) or not stage:
        raise ValueError(f"stage must be a non-empty string, got {stage!r}")

    def decorator(fn: Callable) -> Callable:
        if not callable(fn):
            raise TypeError(f"register_executor({stage!r}) needs a function, got {fn!r}")
        _register(stage, _ref_of(fn), fn, replace)
        return fn

    return decorator


def register_executor_path(stage: str, target: str, *, replace: bool = False) -> None:
    """Register ``"package.module:function"`` for ``stage`` without importing it now.

    Why: a CLI that plans or reports need not import torch-heavy modules; the import happens where
    the job runs (in a Ray worker, or on first use by the serial runner).
    """
    module, sep, qualname = target.partition(":")
    if not sep or not module or not qualname:
        raise ValueError(f"executor target must look like 'package.module:function', got {target!r}")
    if importlib.util.find_spec(module.split(".")[0]) is None:
        raise ValueError(f"executor target {target!r}: package {module.split('.')[0]!r} is not importable")
    _register(stage, target, None, replace)


def _register(stage: str, ref: str, fn: Callable | None, replace: bool) -> None:
    prev = _REGISTRY.get(stage)
    if prev is not None and prev.ref != ref and not replace:
        raise ValueError(
            f"stage {stage!r} already has executor {prev.ref}; refusing to register {ref} "
            f"(pass replace=True to swap it)"
        )
    if prev is not None and prev.ref == ref and fn is None:
        fn = prev.fn  # a path registration after the import keeps the imported function
    _REGISTRY[stage] = _Entry(ref=ref, fn=fn)
    if fn is not None:
        _RESOLVED[ref] = fn
    else:
        _RESOLVED.pop(ref, None)


def unregister_executor(stage: str) -> None:
    """Remove a stage's executor (tests and notebooks)."""
    entry = _REGISTRY.pop(stage, None)
    if entry is not None:
        _RESOLVED.pop(entry.ref, None)


def registered_stages() -> dict[str, str]:
    """``{stage: "module:qualname"}`` of every registered executor."""
    return {stage: e.ref for stage, e in _REGISTRY.items()}


def executor_ref(stage: str) -> str:
    """The ``"module:qualname"`` of ``stage``'s executor, or a clear error naming the registered stages."""
    entry = _REGISTRY.get(stage)
    if entry is None:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise KeyError(
            f"no executor registered for stage {stage!r} (registered: {known}); import the module that "
            f"registers it, or call register_executor_path({stage!r}, 'module:function')"
        )
    return entry.ref


def _executor_payload(stage: str) -> str | Callable:
    """What to ship to a worker: the import path when workers can import it, else the function itself."""
    ref = executor_ref(stage)
    if _importable(ref):
        return ref
    fn = _REGISTRY[stage].fn
    if fn is None:
        raise ValueError(f"executor {ref} of stage {stage!r} cannot be imported by name")
    return fn


def resolve_executor(ref: str | Callable) -> Callable:
    """The executor function for ``"module:qualname"`` (imported once per process), or ``ref`` itself."""
    if callable(ref):
        return ref
    fn = _RESOLVED.get(ref)
    if fn is not None:
        return fn
    module_name, _, qualname = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"cannot import executor module {module_name!r} of {ref!r}: {exc}") from exc
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"executor {ref!r}: {module_name} has no attribute path {qualname!r}") from None
    if not callable(obj):
        raise TypeError(f"executor {ref!r} is not callable: {obj!r}")
    _RESOLVED[ref] = obj
    return obj


# ------------------------------------------------------------------------------------------ job context
@dataclass(frozen=True)
class JobContext:
    """What an executor may want to know about the job it runs besides its spec: its id (e.g. for a
    ``job_id`` column or a ``transfers/<job_id>/`` path), its stage, its declared outputs and inputs, and
    the attempt number (2 and up after a worker died)."""

    job_id: str
    stage: str
    outputs: tuple[str, ...]
    inputs: tuple[str, ...]
    attempt: int = 1


_CURRENT: list[JobContext] = []


def current_job() -> JobContext:
    """The job being executed in this process; only valid inside an executor call."""
    if not _CURRENT:
        raise RuntimeError("current_job() is only available while an executor runs")
    return _CURRENT[-1]


class _running:
    """Context manager that makes ``ctx`` the :func:`current_job` for the duration of an executor call."""

    def __init__(self, ctx: JobContext):
        self.ctx = ctx

    def __enter__(self) -> JobContext:
        _CURRENT.append(self.ctx)
        return self.ctx

    def __exit__(self, *exc: object) -> None:
        _CURRENT.pop()


# ---------------------------------------------------------------------------------------- input helpers
def read_input_table(data: bytes, schema: pa.Schema | None = None) -> pa.Table:
    """Parse the bytes of a Parquet input (as given to an executor) into a table, optionally conformed."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected the bytes of a Parquet file, got {type(data).__name__}")
    table = pq.read_table(pa.BufferReader(data))
    return store.conform(table, schema) if schema is not None else table


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    """Serialise a table to Parquet bytes (tests and executors that build inputs in memory)."""
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()
