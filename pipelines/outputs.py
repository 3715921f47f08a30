"""The done rule, both halves: writing a job's outputs (checked, atomic, the job record last) and reading
them back to decide whether a job is done.

Why one module: "done" must mean the same when the runner writes it and when a rerun, ``zoo-study
status`` or ``--dry-run`` reads it. Written: every declared output must be returned (nothing else), a
table must match its table's schema and go to a '.parquet' path, nothing of a rejected result is
written, each file is written atomically (:mod:`zoo_study.store`), and the job record, which marks the
job done, is written last. Read: the record of this very job id exists and every output reads back with
its table's schema. A :class:`~pipelines.stages.Stage` names :func:`check_done` as its done rule.
"""

from __future__ import annotations

import fnmatch
import json
import time
from pathlib import Path
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.backends import one_line
from pipelines.jobs import Job
from zoo_study import store

__all__ = ["check_done", "checked_output", "is_done", "job_record_json", "output_problem", "schema_for_path",
           "write_outputs"]


def schema_for_path(rel: str) -> pa.Schema | None:
    """The schema of the result table at results-root relative path ``rel`` (the first of ``store.TABLES``
    whose glob matches), or None (not a study table)."""
    return next((t.schema for t in store.TABLES.values() if fnmatch.fnmatchcase(rel, t.glob)), None)


def output_problem(root: Path, rel: str) -> str | None:
    """None when the output at ``root/rel`` is complete, else what is wrong: ``"missing"``, ``"empty"``,
    ``"unreadable ..."`` or ``"does not match ..."`` (a Parquet file with the wrong columns or types)."""
    path = root / rel
    if path.suffix != ".parquet":
        try:
            return None if path.stat().st_size > 0 else "empty"
        except OSError:
            return "missing"
    schema = schema_for_path(rel)
    if store.read_parquet_checked(path, schema) is not None:
        return None
    if not path.is_file():
        return "missing"
    try:
        names = pq.read_schema(path).names
    except (OSError, pa.ArrowException, ValueError):
        return "unreadable (truncated or corrupt)"
    missing = [n for n in schema.names if n not in names] if schema is not None else []
    what = f"missing columns {missing}" if missing else "columns of the wrong type"
    return f"does not match its table's schema ({what})"


def check_done(job: Job, root: str | Path) -> tuple[bool, str | None]:
    """``(done, note)``: done when this very job (same id) finished and every output reads back with its
    table's schema. ``note`` says why a job that *looks* finished is not (an output exists but is
    truncated, corrupt or of another schema: it will be redone), else None.

    The job record (``_jobs/<job_id>.json``, written after the outputs) ties outputs whose paths do not
    contain the job id (``zoo/models/<model>.parquet``, ``predictions/model=<model>.parquet``) to the spec
    that wrote them: change a model's recipe and its jobs run again instead of reusing the old files.
    """
    root = Path(root)
    if not store.ResultsLayout(root).job_record(job.job_id).is_file():
        return False, None
    for rel in job.outputs.values():
        problem = output_problem(root, rel)
        if problem is not None:
            return False, (None if problem == "missing" else f"{rel} {problem}")
    return True, None


def is_done(job: Job, root: str | Path) -> bool:
    return check_done(job, root)[0]


def job_record_json(job: Job) -> str:
    """What the runner stores about a finished job: enough to know which spec produced the outputs."""
    return json.dumps({"job_id": job.job_id, "stage": job.stage, "name": job.name, "spec": job.spec,
                       "outputs": dict(job.outputs), "inputs": list(job.inputs),
                       "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1)


def checked_output(rel: str, content: Any) -> pa.Table | bytes:
    """One returned output, checked: a table for a '.parquet' path (with its table's schema), else bytes/str."""
    if isinstance(content, pa.Table):
        if not rel.endswith(".parquet"):
            raise ValueError(f"output {rel!r}: a table must go to a '.parquet' path")
        schema = schema_for_path(rel)
        if schema is not None:
            try:
                store.conform(content, schema)
            except (ValueError, pa.ArrowException) as exc:
                raise ValueError(f"output {rel!r} does not match its table's schema: {one_line(exc)}") from None
        return content
    if isinstance(content, (bytes, bytearray, memoryview, str)):
        data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
        if not data:
            raise ValueError(f"executor returned empty content for output {rel!r} (it would never count as done)")
        return data
    raise TypeError(f"output {rel!r}: content must be a pyarrow.Table, bytes or str, got {type(content).__name__}")


def write_outputs(job: Job, outputs: Mapping[str, Any], root: Path) -> list[str]:
    """Check an executor's ``{name: content}`` against the job's declared outputs, then write it atomically
    (nothing of a rejected result is written), the job record last."""
    missing = [n for n in job.outputs if n not in outputs]
    unknown = sorted(str(n) for n in outputs if n not in job.outputs)
    if missing or unknown:
        raise ValueError(f"executor returned outputs {sorted(map(str, outputs))}; declared {list(job.outputs)}"
                         + (f"; missing {missing}" if missing else "") + (f"; unknown {unknown}" if unknown else ""))
    items = {rel: checked_output(rel, outputs[name]) for name, rel in job.outputs.items()}
    record = store.ResultsLayout(root).job_record(job.job_id)
    record.unlink(missing_ok=True)  # outputs are being replaced: not done until the new record lands
    for rel, content in items.items():
        if isinstance(content, pa.Table):
            store.write_parquet_atomic(content, root / rel)
        else:
            store.write_bytes_atomic(content, root / rel)
    store.write_text_atomic(job_record_json(job), record)
    return list(items)
