"""Check an executor's returned outputs and write them into the results root, the job record last.

Why a module of its own: this is the one place where a job's result becomes files, and the rules that
make "done" trustworthy live here: every declared output must be returned (nothing else), a table must
match its table's schema and go to a '.parquet' path, nothing of a rejected result is written, each
file is written atomically (:mod:`zoo_study.store`), and the job record, which marks the job done, is
written last. :mod:`pipelines.runner` calls :func:`write_outputs` for every finished job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pyarrow as pa

from pipelines.backends import one_line
from pipelines.jobs import Job, job_record_json, schema_for_path
from zoo_study import store

__all__ = ["checked_output", "write_outputs"]


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
