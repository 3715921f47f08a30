"""Jobs: one unit of work and its content-hash id.

Why this module exists: the pipeline runs hundreds of independent units of work (a model, a pair set,
a transfer) and must resume after a crash, a Ctrl-C or a config extension by doing only the missing
work. A :class:`Job` therefore names its work by *content* (a hash of its canonical spec), and its
completion by *files* (:mod:`pipelines.outputs`: its named outputs exist and read back with their table's
schema, and a record of its own id exists), never by a database or a log.

What a job computes is its stage's *executor* (:mod:`pipelines.stages`: ``"module:function"`` strings, so
Ray workers import executors by name and the CLI never imports torch)::

    def predict_job(spec: dict, inputs: dict[str, bytes], ctx: JobContext) -> dict[str, pa.Table]:
        models = read_input_table(inputs["zoo/models/resnet18.parquet"])
        ...
        return {"predictions": table}          # one entry per name of Job.outputs

Executors never touch the results root: they get the bytes of their declared inputs (keyed by path) and
return the content of their outputs (keyed by output *name*); the driver maps names to the paths of
``Job.outputs`` and does all reads and writes. That is what makes the same code work on a cluster
without a shared filesystem.

This module does not import Ray, so planning and status work in a notebook or the CLI without it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Callable, Iterable, Mapping, Union

import pyarrow as pa
import pyarrow.parquet as pq

from zoo_study import store

__all__ = ["Executor", "Job", "JobContext", "OutputContent", "PlanCounts", "canonical_json", "job_id_for",
           "read_input_table", "resolve_executor", "unique"]

LOG = logging.getLogger("pipelines.jobs")
ID_LENGTH = 16
# Job.runtime keys the driver fills (pipelines.study.data_runtime) and the worker reads
# (pipelines.executors._source) instead of its own environment, which on a cluster is not the driver's
RUNTIME_DATA_ROOT = "data_root"  # the study's dataset root (data.root or the driver's $ZOO_STUDY_IMAGENET)
RUNTIME_ENV_ROOT = "imagenet_env"  # the driver's $ZOO_STUDY_IMAGENET, for other data specs without a root

OutputContent = Union[pa.Table, bytes, str]
"""What an executor may return for one output: a table (written as Parquet), raw bytes, or text (UTF-8)."""

Executor = Callable[[dict, "dict[str, bytes]", "JobContext"], Mapping[str, OutputContent]]
"""``fn(spec, inputs, ctx) -> {output name: content}``; ``inputs`` maps each declared input path to its bytes."""

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
    files (``outputs``: output name -> path), from which files (``inputs``), with which resources.

    ``spec`` must be JSON-serialisable; it is normalised through JSON at construction (tuples become
    lists) and the executor receives a fresh copy of that normalised dict. Do not mutate it.
    Paths are relative to the results root; every output existing and reading back marks the job done.
    ``name`` is a human label for logs only (not part of the id, nor are files, resources and ``runtime``).
    """

    stage: str
    spec: Mapping[str, Any]
    outputs: Mapping[str, str]
    inputs: tuple[str, ...] = ()
    num_cpus: float = 1
    num_gpus: float = 0
    name: str = field(default="", compare=False)
    # settings that change how fast a job runs, never what it computes (a node-local cache folder):
    # handed to the executor as ``ctx.runtime``, not part of the id, so moving a cache reruns nothing
    runtime: Mapping[str, Any] = field(default_factory=dict, compare=False)
    # jobs of one stage with equal non-empty pack keys and inputs may run in one task (pipelines/packs.py);
    # not part of the id: packing changes how a job runs, never its result
    pack: str = field(default="", compare=False)
    # within a pack key: jobs of one group read the same inputs (a transfer's student); a pack spans up to
    # ray.pack_students groups. pack_cost: the member's estimated accelerator memory in bytes when trained
    # alone (0: unknown), of which pack_activation is activations (one member's alive at a time in a pack);
    # pack_shared: what the whole pack holds once (the shared teacher forward). See pipelines/memory.py
    pack_group: str = field(default="", compare=False)
    pack_cost: float = field(default=0.0, compare=False)
    pack_activation: float = field(default=0.0, compare=False)
    pack_shared: float = field(default=0.0, compare=False)
    job_id: str = field(init=False, compare=False)
    spec_json: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.stage, str) or not self.stage:
            raise ValueError(f"job stage must be a non-empty string, got {self.stage!r}")
        if not isinstance(self.spec, Mapping):
            raise ValueError(f"job spec must be a mapping, got {type(self.spec).__name__}")
        if not isinstance(self.outputs, Mapping):
            raise ValueError(f"job outputs must be a mapping of output name -> path, got {self.outputs!r}")
        if isinstance(self.inputs, str):
            raise ValueError("job inputs must be a sequence of paths, not a single string")
        bad = [n for n in self.outputs if not isinstance(n, str) or not n]
        if bad:
            raise ValueError(f"job output names must be non-empty strings, got {bad}")
        outputs = {n: _check_relpath(p, f"job output {n!r}") for n, p in self.outputs.items()}
        inputs = tuple(_check_relpath(p, "job input") for p in self.inputs)
        if not outputs:
            raise ValueError(f"job of stage {self.stage!r} declares no outputs; a job without outputs is never done")
        if len(set(outputs.values())) != len(outputs):
            raise ValueError(f"job of stage {self.stage!r} declares one path for two outputs: {outputs}")
        if set(outputs.values()) & set(inputs):
            raise ValueError(
                f"job of stage {self.stage!r} reads its own outputs: {sorted(set(outputs.values()) & set(inputs))}"
            )
        for attr in ("num_cpus", "num_gpus"):
            value = getattr(self, attr)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ValueError(f"job {attr} must be a finite number >= 0, got {value!r}")
        spec_json = canonical_json(dict(self.spec))
        object.__setattr__(self, "spec", json.loads(spec_json))
        object.__setattr__(self, "outputs", outputs)
        object.__setattr__(self, "inputs", tuple(dict.fromkeys(inputs)))
        object.__setattr__(self, "spec_json", spec_json)
        object.__setattr__(self, "runtime", json.loads(canonical_json(dict(self.runtime))))
        object.__setattr__(self, "job_id", job_id_for(self.stage, self.spec))

    def __hash__(self) -> int:  # the spec is a dict, so hash by the content id
        return hash((self.job_id, tuple(self.outputs.items())))

    @property
    def label(self) -> str:
        """Short log label: ``stage:id8`` plus the human name when there is one."""
        base = f"{self.stage}:{self.job_id[:8]}"
        return f"{base} ({self.name})" if self.name else base


@dataclass(frozen=True)
class JobContext:
    """What an executor gets besides its spec and inputs: the job's id (e.g. for a ``job_id`` column),
    stage, declared outputs (name -> path) and inputs, the attempt number (2 and up after a worker
    died) and the job's runtime settings: what changes where or how fast it runs, never its result
    (the cache folder, the dataset root resolved on the driver, gradient checkpointing after an OOM).
    It travels with the task, so a worker needs nothing from its own environment."""

    job_id: str
    stage: str
    outputs: dict[str, str]
    inputs: tuple[str, ...]
    attempt: int = 1
    runtime: dict[str, Any] = field(default_factory=dict)  # Job.runtime (speed-only settings)

    @classmethod
    def of(cls, job: Job, attempt: int = 1) -> "JobContext":
        return cls(job.job_id, job.stage, dict(job.outputs), job.inputs, attempt, dict(job.runtime))


@dataclass(frozen=True)
class PlanCounts:
    """Jobs of one stage: how many in total, how many already done, how many would run."""

    total: int
    done: int
    to_run: int


def unique(jobs: Iterable[Job]) -> list[Job]:
    """Drop repeated jobs (same id and files); two jobs claiming one output path is an error."""
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
        for rel in job.outputs.values():
            other = owner.get(rel)
            if other is not None:
                raise ValueError(f"output {rel!r} is claimed by two jobs: {other.label} and {job.label}")
            owner[rel] = job
        seen[job.job_id] = job
        out.append(job)
    return out


# ------------------------------------------------------------------------------------------ executors
_RESOLVED: dict[str, Callable] = {}


def resolve_executor(ref: str | Callable) -> Callable:
    """The function of ``"module:qualname"`` (imported once per process, where the job runs), or ``ref``."""
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


def read_input_table(data: bytes, schema: pa.Schema | None = None) -> pa.Table:
    """Parse the bytes of a Parquet input (as given to an executor) into a table, optionally conformed."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected the bytes of a Parquet file, got {type(data).__name__}")
    table = pq.read_table(pa.BufferReader(data))
    return store.conform(table, schema) if schema is not None else table
