"""The generic job layer: ids, done detection, Ray and serial runs, resume, failures, worker death.

One local Ray instance (2 CPUs, plus one *declared* GPU so the GPU path, ``max_calls=1``, runs on a CPU
machine) is shared by the module. Executors live in ``tests/helpers/runner_executors.py`` (on the Ray
workers' path, see there), passed with ``executors=``; faults are injected through the spec (see that module).
"""

from __future__ import annotations

import dataclasses

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import runner_executors as T
from pipelines.jobs import Job, job_id_for
from pipelines.outputs import is_done, job_record_json
from pipelines.stages import count, stage_executors
from pipelines.records import read_failures, status
from pipelines.runner import run_jobs
from zoo_study import store

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(
            num_cpus=2,
            num_gpus=1,  # a declared resource only: exercises the GPU submission path without a GPU
            include_dashboard=False,
            object_store_memory=100 * 2**20,
            ignore_reinit_error=True,
        )
    yield ray
    if started:
        ray.shutdown()


def emit_jobs(n: int, start: int = 0, **extra) -> list[Job]:
    return [Job(T.EMIT, {"value": i, **extra}, {"row": f"a/v{i}.parquet"}, name=f"v{i}")
            for i in range(start, start + n)]


def sum_job(inputs: list[str], out: str = "b/sum.parquet", **extra) -> Job:
    return Job(T.SUM, {"out": out, **extra}, {"row": out}, inputs=tuple(inputs))


def run(jobs, root, executors=None, **kw):
    return run_jobs(jobs, root, progress=False, executors={**T.EXECUTORS, **(executors or {})}, **kw)


def value(root, rel: str, column: str = "value"):
    return pq.read_table(root / rel).column(column).to_pylist()[0]


# ------------------------------------------------------------------------------------------- no Ray
def test_job_id_hand_computed_stable_and_sensitive():
    text = '{"schema_version":%d,"spec":{"a":1,"b":[1,2]},"stage":"s"}' % store.SCHEMA_VERSION
    expected = hashlib.sha256(text.encode()).hexdigest()[:16]
    job = Job("s", {"b": (1, 2), "a": 1}, {"out": "x.parquet"})
    assert job.job_id == expected == job_id_for("s", {"a": 1, "b": [1, 2]})
    # key order (also nested) and files/resources/name do not matter; content and stage do
    a = Job("s", {"m": {"x": 1, "y": 2}, "k": "v"}, {"out": "x.parquet"})
    b = Job("s", {"k": "v", "m": {"y": 2, "x": 1}}, {"out": "y.parquet"}, inputs=("i.parquet",), num_cpus=4, name="n")
    assert a.job_id == b.job_id
    assert Job("s", {"m": {"x": 1, "y": 3}, "k": "v"}, {"out": "x.parquet"}).job_id != a.job_id
    assert Job("t", {"m": {"x": 1, "y": 2}, "k": "v"}, {"out": "x.parquet"}).job_id != a.job_id
    assert Job("s", {"lr": 0.1}, {"out": "x.parquet"}).job_id != Job("s", {"lr": 0.10000001}, {"out": "x.parquet"}).job_id
    # the spec is normalised and detached from the caller's dict
    spec = {"teachers": ["a"]}
    j = Job("s", spec, {"out": "x.parquet"})
    spec["teachers"].append("b")
    assert j.spec == {"teachers": ["a"]} and j.job_id == job_id_for("s", {"teachers": ["a"]})
    assert len({a, b}) == 2 and a == Job("s", {"k": "v", "m": {"y": 2, "x": 1}}, {"out": "x.parquet"})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"spec": {"x": float("nan")}}, "JSON-serialisable"),
        ({"spec": {"x": {1, 2}}}, "JSON-serialisable"),
        ({"outputs": {}}, "no outputs"),
        ({"outputs": ("a.parquet",)}, "mapping of output name -> path"),
        ({"outputs": {"a": "x.parquet", "b": "x.parquet"}}, "one path for two outputs"),
        ({"inputs": "a.parquet"}, "not a single string"),
        ({"outputs": {"out": "/abs.parquet"}}, "relative"),
        ({"outputs": {"out": "a/../../b.parquet"}}, "relative"),
        ({"inputs": ("x.parquet",)}, "reads its own outputs"),
        ({"num_gpus": -1}, "num_gpus"),
        ({"stage": ""}, "stage"),
    ],
)
def test_job_validation_names_the_bad_value(kwargs, match):
    args = {"stage": "s", "spec": {"a": 1}, "outputs": {"out": "x.parquet"}, **kwargs}
    with pytest.raises(ValueError, match=match):
        Job(**args)


def test_done_detection_truncated_parquet_and_empty_file(tmp_path):
    job = Job("s", {}, {"table": "t.parquet", "page": "r.html"})
    assert not is_done(job, tmp_path)
    store.write_parquet_atomic(pa.table({"v": list(range(100))}), tmp_path / "t.parquet")
    (tmp_path / "r.html").write_bytes(b"")
    assert not is_done(job, tmp_path)  # empty non-Parquet file is not done
    (tmp_path / "r.html").write_text("<html/>")
    assert not is_done(job, tmp_path)  # outputs of unknown origin: no record of this job id
    store.write_text_atomic(job_record_json(job), store.ResultsLayout(tmp_path).job_record(job.job_id))
    assert is_done(job, tmp_path)
    other = Job("s", {"changed": True}, {"table": "t.parquet", "page": "r.html"})  # same paths, another spec
    assert not is_done(other, tmp_path)
    data = (tmp_path / "t.parquet").read_bytes()
    (tmp_path / "t.parquet").write_bytes(data[: len(data) // 2])
    assert not is_done(job, tmp_path)
    counts = count([job, job, Job("s", {"b": 1}, {"out": "r2.html"})], tmp_path).stages  # duplicate job counted once
    assert (counts["s"].total, counts["s"].done, counts["s"].to_run) == (2, 0, 2)
    store.write_parquet_atomic(pa.table({"v": [1]}), tmp_path / "t.parquet")  # redone
    assert is_done(job, tmp_path) and count([job], tmp_path).stages["s"].done == 1
    with pytest.raises(ValueError, match="claimed by two jobs"):
        count([Job("s", {"a": 1}, {"out": "o.parquet"}), Job("s", {"a": 2}, {"out": "o.parquet"})], tmp_path)


def test_executor_map_and_unknown_stages(tmp_path):
    executors = stage_executors()
    assert executors["transfer"] == "pipelines.executors:transfer_job" and T.EMIT not in executors
    with pytest.raises(KeyError, match="no executor for stage 'nope'"):
        run([Job("nope", {}, {"out": "x.parquet"})], tmp_path, use_ray=False)
    with pytest.raises(ValueError, match="not importable"):
        run(emit_jobs(1), tmp_path, executors={T.EMIT: "no_such_package.mod:fn"}, use_ray=False)
    assert not any(tmp_path.iterdir())  # refused before doing anything
    with pytest.raises(ValueError, match="same wave"):
        run([*emit_jobs(1), Job(T.EMIT, {"value": 5}, {"out": "a/w.parquet"}, inputs=("a/v0.parquet",))], tmp_path)


def bad_results(spec, inputs, ctx):
    if spec["kind"] == "wrong_key":
        return {"elsewhere": pa.table({"v": [1]})}
    if spec["kind"] == "wrong_type":
        return {"out": 3.14}
    if spec["kind"] == "wrong_schema":  # a table at a study table's path must have that table's columns
        return {"out": pa.table({"v": [1]})}
    return {"out": b""}


def test_serial_backend_bad_results_and_explicit_waves(tmp_path):
    kinds = {"wrong_key": "l/wrong_key.bin", "wrong_type": "l/wrong_type.bin", "empty": "l/empty.bin",
             "wrong_schema": "scores/pair_classes.parquet"}
    jobs = [Job("_test.local", {"kind": k}, {"out": rel}) for k, rel in kinds.items()]
    waves = [emit_jobs(2), [sum_job(["a/v0.parquet", "a/v1.parquet"])], jobs]
    report = run([*waves, emit_jobs(1)], tmp_path, address="local",  # a repeated job runs once
                 executors={"_test.local": bad_results})
    assert report.backend == "serial" and report.stages[T.SUM].ran == 1 and value(tmp_path, "b/sum.parquet") == 1
    assert (report.stages[T.EMIT].total, report.stages[T.EMIT].ran) == (2, 2)
    errors = {f.spec["kind"]: f.error for f in report.failures}
    assert "missing ['out']; unknown ['elsewhere']" in errors["wrong_key"]
    assert "pyarrow.Table, bytes or str, got float" in errors["wrong_type"]
    assert "empty content" in errors["empty"]
    assert "does not match its table's schema" in errors["wrong_schema"]
    assert all(e.startswith("invalid result:") for e in errors.values())
    assert not any((tmp_path / "l").glob("*")) and not (tmp_path / "scores").exists()  # nothing of them written


def pair_classes(spec, inputs, ctx):
    return {"out": pa.table({"teacher": ["a"], "student": ["b"], "class_id": [0], "pos_flips": [1],
                             "neg_flips": [spec["n"]]})}


def test_result_with_the_wrong_schema_is_redone_and_reported(tmp_path, caplog):
    job = Job("_test.pc", {"n": 2}, {"out": "scores/pair_classes.parquet"})
    run_ = lambda: run([job], tmp_path, address="local", executors={"_test.pc": pair_classes})  # noqa: E731
    assert run_().ran == 1 and is_done(job, tmp_path)
    # a readable Parquet file of another shape at the result path: not done, reported, redone
    store.write_parquet_atomic(pa.table({"teacher": ["a"], "x": [1]}), tmp_path / "scores/pair_classes.parquet")
    assert not is_done(job, tmp_path) and count([job], tmp_path).stages["_test.pc"].to_run == 1
    st = status(tmp_path, [job])
    assert st.stages["_test.pc"].to_run == 1 and "missing columns ['student'" in st.summary()
    with caplog.at_level(logging.WARNING):
        again = run_()
    assert again.ran == 1 and "scores/pair_classes.parquet does not match" in caplog.text
    assert value(tmp_path, "scores/pair_classes.parquet", "neg_flips") == 2 and run_().ran == 0


def test_each_input_is_read_and_shared_once_per_wave(tmp_path, monkeypatch):
    from pipelines import backends

    assert run(emit_jobs(2), tmp_path, use_ray=False).ok
    puts: list[int] = []
    original = backends.SerialBackend.put
    monkeypatch.setattr(backends.SerialBackend, "put", lambda self, data: puts.append(len(data)) or original(self, data))
    jobs = [sum_job(["a/v0.parquet", "a/v1.parquet"], out=f"b/s{k}.parquet") for k in range(3)]
    assert run(jobs, tmp_path, use_ray=False).ran == 3
    assert len(puts) == 2  # two distinct input files, three readers each


# ---------------------------------------------------------------------------------------------- Ray
def test_end_to_end_stage_order_and_noop_resume(ray_local, tmp_path):
    ins = [f"a/v{i}.parquet" for i in range(4)]
    jobs = emit_jobs(4) + [sum_job(ins), Job(T.EMIT, {"value": 1, "fmt": "txt"}, {"out": "c/one.txt"})]
    report = run(jobs, tmp_path)
    assert report.ok and report.backend == "ray", report.summary()
    assert {s: (c.total, c.ran) for s, c in report.stages.items()} == {T.EMIT: (5, 5), T.SUM: (1, 1)}
    # stage 2 saw all stage-1 outputs as inputs
    assert value(tmp_path, "b/sum.parquet") == 0 + 1 + 2 + 3
    assert value(tmp_path, "b/sum.parquet", "n_inputs") == 4
    assert (tmp_path / "c/one.txt").read_text().startswith("[{'job_id'")
    assert count(jobs, tmp_path).stages[T.EMIT].to_run == 0

    again = run(jobs, tmp_path)
    assert again.ran == 0 and again.stages[T.EMIT].done_before == 5 and again.stages[T.SUM].done_before == 1
    assert again.wall_s < 5.0

    serial_root = tmp_path / "serial"
    assert run(jobs, serial_root, use_ray=False).ok
    for rel in ins + ["b/sum.parquet"]:  # same results whichever backend ran them (the pid aside)
        serial, ray_ = pq.read_table(serial_root / rel), pq.read_table(tmp_path / rel)
        keep = [c for c in serial.column_names if c != "pid"]
        assert serial.select(keep).equals(ray_.select(keep))


def test_deleted_and_truncated_outputs_rerun_exactly_those_jobs(ray_local, tmp_path):
    jobs = emit_jobs(4)
    assert run(jobs, tmp_path).ran == 4
    mtimes = {i: (tmp_path / f"a/v{i}.parquet").stat().st_mtime_ns for i in range(4)}
    (tmp_path / "a/v1.parquet").unlink()
    data = (tmp_path / "a/v2.parquet").read_bytes()
    (tmp_path / "a/v2.parquet").write_bytes(data[: len(data) - 9])
    report = run(jobs, tmp_path)
    assert (report.ran, report.stages[T.EMIT].done_before) == (2, 2)
    assert all((tmp_path / f"a/v{i}.parquet").stat().st_mtime_ns == mtimes[i] for i in (0, 3))
    assert value(tmp_path, "a/v1.parquet") == 1 and value(tmp_path, "a/v2.parquet") == 2


def test_failure_is_recorded_downstream_skipped_and_cleared_on_success(ray_local, tmp_path):
    guard = tmp_path / "fixed"
    bad = Job(T.EMIT, {"value": 9, "fail_unless_exists": str(guard)}, {"out": "a/bad.parquet"}, name="bad")
    good = emit_jobs(3)
    down_bad = sum_job(["a/v0.parquet", "a/bad.parquet"], out="b/with_bad.parquet")
    down_good = sum_job(["a/v1.parquet", "a/v2.parquet"], out="b/good.parquet")
    jobs = good + [bad, down_bad, down_good]
    report = run(jobs, tmp_path)
    assert (report.ran, report.failed, report.skipped) == (4, 1, 1), report.summary()
    assert value(tmp_path, "b/good.parquet") == 3

    rec = pq.read_table(tmp_path / f"failures/{bad.job_id}.parquet").to_pylist()[0]
    assert rec["job_id"] == bad.job_id and rec["stage"] == T.EMIT and rec["attempts"] == 1
    assert rec["error"] == "ValueError: injected failure for value=9"  # one line
    assert "Traceback" in rec["traceback"] and "_faults" in rec["traceback"] and "second line" in rec["traceback"]
    assert json.loads(rec["spec_json"]) == bad.spec and rec["failed_at"] is not None
    skip = pq.read_table(tmp_path / f"failures/{down_bad.job_id}.parquet").to_pylist()[0]
    assert skip["attempts"] == 0 and "a/bad.parquet" in skip["error"] and bad.job_id[:8] in skip["error"]

    st = status(tmp_path, jobs)
    assert (st.stages[T.EMIT].to_run, st.stages[T.SUM].to_run) == (1, 1)
    assert [(f.job_id, f.skipped) for f in st.failures] == [(bad.job_id, False), (down_bad.job_id, True)]
    assert "injected failure" in st.summary()

    guard.touch()
    report = run(jobs, tmp_path)
    assert (report.ran, report.failed, report.skipped) == (2, 0, 0) and report.ok
    assert value(tmp_path, "b/with_bad.parquet") == 9
    assert read_failures(tmp_path) == ([], []) and status(tmp_path, jobs).failures == []


def test_worker_killed_mid_job_is_retried_and_study_completes(ray_local, tmp_path):
    marker = tmp_path / "killed_once"
    victim = Job(T.EMIT, {"value": 7, "crash_once_marker": str(marker)}, {"out": "a/victim.parquet"})
    jobs = emit_jobs(3) + [victim]
    report = run(jobs, tmp_path, max_retries=2)
    assert report.ok and report.ran == 4 and report.stages[T.EMIT].retried == 1, report.summary()
    assert marker.exists() and value(tmp_path, "a/victim.parquet", "attempt") == 2
    assert not (tmp_path / "failures").exists() or not any((tmp_path / "failures").iterdir())


def test_worker_that_always_dies_fails_after_max_retries(ray_local, tmp_path):
    doomed = Job(T.EMIT, {"value": 1, "always_crash": True}, {"out": "a/doomed.parquet"})
    report = run([doomed] + emit_jobs(1), tmp_path, max_retries=1)
    assert (report.ran, report.failed) == (1, 1)
    (rec,) = report.failures
    assert rec.attempts == 2 and "WorkerCrashedError" in rec.error
    assert read_failures(tmp_path)[0][0].attempts == 2


def test_gpu_jobs_get_a_fresh_worker_and_infeasible_ones_are_skipped(ray_local, tmp_path):
    gpu = [dataclasses.replace(j, num_gpus=1, num_cpus=0) for j in emit_jobs(2)]
    too_big = Job(T.EMIT, {"value": 5}, {"out": "a/big.parquet"}, num_gpus=2)
    report = run(gpu + [too_big], tmp_path)
    assert (report.ran, report.skipped) == (2, 1), report.summary()
    assert "needs 2 GPU(s)" in report.failures[0].error
    pids = {value(tmp_path, f"a/v{i}.parquet", "pid") for i in range(2)}
    assert len(pids) == 2  # max_calls=1: each GPU job ran in its own worker process


def test_executor_defined_in_a_test_runs_on_ray_by_value(ray_local, tmp_path):
    def closure(spec, inputs, ctx):
        return {"out": pa.table({"pid": [os.getpid()], "x": [spec["x"] * 2]})}

    report = run([Job("_test.closure", {"x": 21}, {"out": "z.parquet"})], tmp_path, executors={"_test.closure": closure})
    assert report.ok and value(tmp_path, "z.parquet", "x") == 42
    assert value(tmp_path, "z.parquet", "pid") != os.getpid()


# ------------------------------------------------------------------------------------------- Ctrl-C
DRIVER = textwrap.dedent("""
    import logging, sys
    from helpers import runner_executors as T
    from pipelines.jobs import Job
    from pipelines.runner import RunInterrupted, run_jobs

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("ray").setLevel(logging.WARNING)
    root, address, n, sleep = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    jobs = [Job(T.EMIT, {"value": i, "sleep": sleep}, {"row": f"a/v{i}.parquet"}) for i in range(n)]
    try:
        run_jobs(jobs, root, address=None if address == "ray" else address, num_cpus=2, executors=T.EXECUTORS,
                 progress=False, object_store_memory=80 * 2**20)
    except RunInterrupted as stop:  # what `zoo-study run` does with it
        print(stop, file=sys.stderr)
        sys.exit(130)
""")


def start_driver(root: Path, address: str, n: int, sleep: float) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "0"}
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(root), address, str(n), str(sleep)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=Path(__file__).resolve().parents[1])


def wait_for_outputs(root: Path, n: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while len(list((root / "a").glob("*.parquet"))) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the driver produced no outputs in time"
        time.sleep(0.05)


@pytest.mark.parametrize("address, sleep", [("local", 0.4), ("ray", 1.0)])
def test_ctrl_c_keeps_finished_jobs_cancels_the_rest_and_a_rerun_resumes(tmp_path, address, sleep):
    n = 8
    proc = start_driver(tmp_path, address, n, sleep)
    wait_for_outputs(tmp_path, 2, proc)
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    print(f"{address}: stopped {time.perf_counter() - t0:.2f} s after SIGINT")
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    if address == "local":
        assert len(lines) == 1, err  # one line, nothing else
    finished = len(list((tmp_path / "a").glob("*.parquet")))
    assert lines[-1].startswith(f"interrupted: {finished} job(s) finished, ") and lines[-1].endswith(
        "cancelled; rerun to resume"), err
    assert 2 <= finished < n
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "a").glob("*.parquet")}
    jobs = [Job(T.EMIT, {"value": i, "sleep": sleep}, {"row": f"a/v{i}.parquet"}) for i in range(n)]
    again = run(jobs, tmp_path, address="local")
    assert again.ok and (again.ran, again.stages[T.EMIT].done_before) == (n - finished, finished)
    assert all((tmp_path / "a" / name).stat().st_mtime_ns == m for name, m in mtimes.items())  # not redone
    assert not (tmp_path / "failures").exists()  # an interrupted job is not a failure


def test_the_shipped_packages_hold_no_test_executors():
    """Test executors live under tests/ (issue 23): the installed tool neither ships nor imports them."""
    import ast

    repo = Path(__file__).resolve().parents[1]
    assert not (repo / "pipelines" / "_testing.py").exists()
    shipped = [p for pkg in ("pipelines", "analysis", "zoo_study") for p in (repo / pkg).rglob("*.py")]
    imported = {(p.relative_to(repo).as_posix(), name)
                for p in shipped for node in ast.walk(ast.parse(p.read_text()))
                for name in ([a.name for a in node.names] if isinstance(node, ast.Import)
                             else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])}
    assert len(shipped) > 50 and ("pipelines/runner.py", "pipelines.jobs") in imported  # the walk sees imports
    assert not [(f, m) for f, m in imported if m.split(".")[0] in ("tests", "helpers") or "_testing" in m]
