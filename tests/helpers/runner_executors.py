"""Trivial executors for the runner's tests and scheduling benchmark (not part of the study).

Why here, outside the shipped packages: the installed tool never imports test code. Ray workers import
executors by module path (``helpers.runner_executors:emit``), so ``tests/`` must be on their path too:
:func:`importable_by_workers` puts it on ``PYTHONPATH``, which a local Ray instance (and a driver run as a
subprocess) inherits; ``tests/conftest.py`` calls it. Stage names start with ``_test.`` so they can never
collide with real stages, and they are not in the study's map (``pipelines.stages.STAGES``): pass
``run_jobs(..., executors=EXECUTORS)`` to run them.

Behaviour is driven by the spec so that tests can inject faults into a job without changing its id:

* ``value`` (int): written into the output table.
* ``fail_unless_exists`` (path): raise ``ValueError`` while that file does not exist.
* ``crash_once_marker`` (path): on the first attempt (marker absent) create the marker and SIGKILL the
  worker process; later attempts succeed.
* ``always_crash`` (bool): SIGKILL the worker every time.
* ``sleep`` (seconds): sleep first.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pyarrow as pa

from pipelines.jobs import JobContext, read_input_table

EMIT = "_test.emit"
SUM = "_test.sum"
EXECUTORS = {EMIT: "helpers.runner_executors:emit", SUM: "helpers.runner_executors:total"}
TESTS_DIR = Path(__file__).resolve().parents[1]


def importable_by_workers() -> None:
    """Put ``tests/`` first on ``PYTHONPATH`` (once), so that processes started from now on (a local Ray
    instance's workers, a driver run as a subprocess) import this module as ``helpers.runner_executors``."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(TESTS_DIR) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), *paths])


def _faults(spec: dict) -> None:
    started = spec.get("started_dir")
    if started:  # "<value>.<node id>": which job runs where, for tests that remove a node mid-job
        try:
            import ray

            node = ray.get_runtime_context().get_node_id()
        except Exception:  # noqa: BLE001 - not under Ray
            node = "local"
        Path(started, f"{spec.get('value')}.{node}").write_text("")
    if spec.get("sleep"):
        time.sleep(float(spec["sleep"]))
    marker = spec.get("crash_once_marker")
    if marker and not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    if spec.get("always_crash"):
        os.kill(os.getpid(), signal.SIGKILL)
    guard = spec.get("fail_unless_exists")
    if guard and not os.path.exists(guard):
        raise ValueError(f"injected failure for value={spec.get('value')}\nsecond line of the message")


def _content(rel: str, table: pa.Table) -> pa.Table | bytes:
    return table if rel.endswith(".parquet") else f"{table.to_pylist()}\n".encode()


def emit(spec: dict, inputs: dict[str, bytes], ctx: JobContext) -> dict[str, pa.Table | bytes]:
    """One row ``(job_id, value, attempt, pid)`` into every declared output."""
    _faults(spec)
    table = pa.table({"job_id": [ctx.job_id], "value": [int(spec["value"])], "attempt": [ctx.attempt],
                      "pid": [os.getpid()]})
    return {name: _content(rel, table) for name, rel in ctx.outputs.items()}


def total(spec: dict, inputs: dict[str, bytes], ctx: JobContext) -> dict[str, pa.Table | bytes]:
    """Sum of ``value`` over all (Parquet) inputs, plus how many inputs it saw."""
    _faults(spec)
    values = [v for rel in ctx.inputs for v in read_input_table(inputs[rel]).column("value").to_pylist()]
    table = pa.table({"job_id": [ctx.job_id], "value": [sum(values)], "attempt": [ctx.attempt],
                      "n_inputs": [len(inputs)]})
    return {name: _content(rel, table) for name, rel in ctx.outputs.items()}
