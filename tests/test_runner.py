"""The generic job layer: ids, done detection, Ray and serial runs, resume, failures, worker death.

One local Ray instance (2 CPUs, plus one *declared* GPU so the GPU path, ``max_calls=1``, runs on a CPU
machine) is shared by the module. Executors live in ``pipelines._testing`` so Ray workers can import
them; faults are injected through the spec (see that module).
"""

from __future__ import annotations

import hashlib
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import _testing as T
from pipelines.jobs import (
    job_record_json,
    Job,
    current_job,
    is_done,
    job_id_for,
    plan,
    register_executor,
    registered_stages,
    unregister_executor,
)
from pipelines.runner import read_failures, run_jobs, status
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
    return [Job(T.EMIT, {"value": i, **extra}, (f"a/v{i}.parquet",), name=f"v{i}") for i in range(start, start + n)]


def sum_job(inputs: list[str], out: str = "b/sum.parquet", **extra) -> Job:
    return Job(T.SUM, {"out": out, **extra}, (out,), inputs=tuple(inputs))


def run(jobs, root, **kw):
    return run_jobs(jobs, root, progress=False, **kw)


def value(root, rel: str, column: str = "value"):
    return pq.read_table(root / rel).column(column).to_pylist()[0]


# ------------------------------------------------------------------------------------------- no Ray
def test_job_id_hand_computed_stable_and_sensitive():
    text = '{"schema_version":%d,"spec":{"a":1,"b":[1,2]},"stage":"s"}' % store.SCHEMA_VERSION
    expected = hashlib.sha256(text.encode()).hexdigest()[:16]
    job = Job("s", {"b": (1, 2), "a": 1}, ("x.parquet",))
    assert job.job_id == expected == job_id_for("s", {"a": 1, "b": [1, 2]})
    # key order (also nested) and files/resources/name do not matter; content and stage do
    a = Job("s", {"m": {"x": 1, "y": 2}, "k": "v"}, ("x.parquet",))
    b = Job("s", {"k": "v", "m": {"y": 2, "x": 1}}, ("y.parquet",), inputs=("i.parquet",), num_cpus=4, name="n")
    assert a.job_id == b.job_id
    assert Job("s", {"m": {"x": 1, "y": 3}, "k": "v"}, ("x.parquet",)).job_id != a.job_id
    assert Job("t", {"m": {"x": 1, "y": 2}, "k": "v"}, ("x.parquet",)).job_id != a.job_id
    assert Job("s", {"lr": 0.1}, ("x.parquet",)).job_id != Job("s", {"lr": 0.10000001}, ("x.parquet",)).job_id
    # the spec is normalised and detached from the caller's dict
    spec = {"teachers": ["a"]}
    j = Job("s", spec, ("x.parquet",))
    spec["teachers"].append("b")
    assert j.spec == {"teachers": ["a"]} and j.job_id == job_id_for("s", {"teachers": ["a"]})
    assert len({a, b}) == 2 and a == Job("s", {"k": "v", "m": {"y": 2, "x": 1}}, ("x.parquet",))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"spec": {"x": float("nan")}}, "JSON-serialisable"),
        ({"spec": {"x": {1, 2}}}, "JSON-serialisable"),
        ({"outputs": ()}, "no outputs"),
        ({"outputs": "a.parquet"}, "not a single string"),
        ({"outputs": ("/abs.parquet",)}, "relative"),
        ({"outputs": ("a/../../b.parquet",)}, "relative"),
        ({"inputs": ("x.parquet",)}, "reads its own outputs"),
        ({"num_gpus": -1}, "num_gpus"),
        ({"stage": ""}, "stage"),
    ],
)
def test_job_validation_names_the_bad_value(kwargs, match):
    args = {"stage": "s", "spec": {"a": 1}, "outputs": ("x.parquet",), **kwargs}
    with pytest.raises(ValueError, match=match):
        Job(**args)


def test_done_detection_truncated_parquet_and_empty_file(tmp_path):
    job = Job("s", {}, ("t.parquet", "r.html"))
    assert not is_done(job, tmp_path)
    store.write_parquet_atomic(pa.table({"v": list(range(100))}), tmp_path / "t.parquet")
    (tmp_path / "r.html").write_bytes(b"")
    assert not is_done(job, tmp_path)  # empty non-Parquet file is not done
    (tmp_path / "r.html").write_text("<html/>")
    assert not is_done(job, tmp_path)  # outputs of unknown origin: no record of this job id
    store.write_text_atomic(job_record_json(job), store.ResultsLayout(tmp_path).job_record(job.job_id))
    assert is_done(job, tmp_path)
    other = Job("s", {"changed": True}, ("t.parquet", "r.html"))  # same paths, another spec
    assert not is_done(other, tmp_path)
    data = (tmp_path / "t.parquet").read_bytes()
    (tmp_path / "t.parquet").write_bytes(data[: len(data) // 2])
    assert not is_done(job, tmp_path)
    counts = plan([job, job, Job("s", {"b": 1}, ("r2.html",))], tmp_path)  # duplicate job counted once
    assert (counts["s"].total, counts["s"].done, counts["s"].to_run) == (2, 0, 2)
    store.write_parquet_atomic(pa.table({"v": [1]}), tmp_path / "t.parquet")  # redone
    assert is_done(job, tmp_path) and plan([job], tmp_path)["s"].done == 1
    with pytest.raises(ValueError, match="claimed by two jobs"):
        plan([Job("s", {"a": 1}, ("o.parquet",)), Job("s", {"a": 2}, ("o.parquet",))], tmp_path)


def test_registry_refuses_silent_swaps_and_unknown_stages(tmp_path):
    assert registered_stages()[T.EMIT] == "pipelines._testing:emit"
    register_executor(T.EMIT)(T.emit)  # same function again (re-import): fine
    with pytest.raises(ValueError, match="already has executor"):
        register_executor(T.EMIT)(T.total)
    with pytest.raises(KeyError, match="no executor registered for stage 'nope'"):
        run([Job("nope", {}, ("x.parquet",))], tmp_path, use_ray=False)
    assert not any(tmp_path.iterdir())  # refused before doing anything
    with pytest.raises(ValueError, match="same wave"):
        run([*emit_jobs(1), Job(T.EMIT, {"value": 5}, ("a/w.parquet",), inputs=("a/v0.parquet",))], tmp_path)


def test_serial_backend_bad_results_and_explicit_waves(tmp_path):
    @register_executor("_test.local", replace=True)
    def bad(spec, inputs):
        ctx = current_job()
        if spec["kind"] == "wrong_key":
            return {"elsewhere.parquet": pa.table({"v": [1]})}
        if spec["kind"] == "wrong_type":
            return {ctx.outputs[0]: 3.14}
        return {ctx.outputs[0]: b""}

    try:
        jobs = [Job("_test.local", {"kind": k}, (f"l/{k}.bin",)) for k in ("wrong_key", "wrong_type", "empty")]
        waves = [emit_jobs(2), [sum_job(["a/v0.parquet", "a/v1.parquet"])], jobs]
        report = run([*waves, emit_jobs(1)], tmp_path, address="local")  # a repeated job runs once
    finally:
        unregister_executor("_test.local")
    assert report.backend == "serial" and report.stages[T.SUM].ran == 1 and value(tmp_path, "b/sum.parquet") == 1
    assert (report.stages[T.EMIT].total, report.stages[T.EMIT].ran) == (2, 2)
    errors = {f.spec["kind"]: f.error for f in report.failures}
    assert "declared output(s) ['l/wrong_key.bin']" in errors["wrong_key"]
    assert "pyarrow.Table, bytes or str, got float" in errors["wrong_type"]
    assert "empty content" in errors["empty"]
    assert all(e.startswith("invalid result:") for e in errors.values())
    assert not (tmp_path / "elsewhere.parquet").exists()  # nothing of a rejected result is written


def test_each_input_is_read_and_shared_once_per_wave(tmp_path, monkeypatch):
    from pipelines import runner

    assert run(emit_jobs(2), tmp_path, use_ray=False).ok
    puts: list[int] = []
    original = runner._SerialBackend.put
    monkeypatch.setattr(runner._SerialBackend, "put", lambda self, data: puts.append(len(data)) or original(self, data))
    jobs = [sum_job(["a/v0.parquet", "a/v1.parquet"], out=f"b/s{k}.parquet") for k in range(3)]
    assert run(jobs, tmp_path, use_ray=False).ran == 3
    assert len(puts) == 2  # two distinct input files, three readers each


# ---------------------------------------------------------------------------------------------- Ray
def test_end_to_end_stage_order_and_noop_resume(ray_local, tmp_path):
    ins = [f"a/v{i}.parquet" for i in range(4)]
    jobs = emit_jobs(4) + [sum_job(ins), Job(T.EMIT, {"value": 1, "fmt": "txt"}, ("c/one.txt",))]
    report = run(jobs, tmp_path)
    assert report.ok and report.backend == "ray", report.summary()
    assert {s: (c.total, c.ran) for s, c in report.stages.items()} == {T.EMIT: (5, 5), T.SUM: (1, 1)}
    # stage 2 saw all stage-1 outputs as inputs
    assert value(tmp_path, "b/sum.parquet") == 0 + 1 + 2 + 3
    assert value(tmp_path, "b/sum.parquet", "n_inputs") == 4
    assert (tmp_path / "c/one.txt").read_text().startswith("[{'job_id'")
    assert plan(jobs, tmp_path)[T.EMIT].to_run == 0

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
    bad = Job(T.EMIT, {"value": 9, "fail_unless_exists": str(guard)}, ("a/bad.parquet",), name="bad")
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
    victim = Job(T.EMIT, {"value": 7, "crash_once_marker": str(marker)}, ("a/victim.parquet",))
    jobs = emit_jobs(3) + [victim]
    report = run(jobs, tmp_path, max_retries=2)
    assert report.ok and report.ran == 4 and report.stages[T.EMIT].retried == 1, report.summary()
    assert marker.exists() and value(tmp_path, "a/victim.parquet", "attempt") == 2
    assert not (tmp_path / "failures").exists() or not any((tmp_path / "failures").iterdir())


def test_worker_that_always_dies_fails_after_max_retries(ray_local, tmp_path):
    doomed = Job(T.EMIT, {"value": 1, "always_crash": True}, ("a/doomed.parquet",))
    report = run([doomed] + emit_jobs(1), tmp_path, max_retries=1)
    assert (report.ran, report.failed) == (1, 1)
    (rec,) = report.failures
    assert rec.attempts == 2 and "WorkerCrashedError" in rec.error
    assert read_failures(tmp_path)[0][0].attempts == 2


def test_gpu_jobs_get_a_fresh_worker_and_infeasible_ones_are_skipped(ray_local, tmp_path):
    gpu = [j.with_resources(num_gpus=1, num_cpus=0) for j in emit_jobs(2)]
    too_big = Job(T.EMIT, {"value": 5}, ("a/big.parquet",), num_gpus=2)
    report = run(gpu + [too_big], tmp_path)
    assert (report.ran, report.skipped) == (2, 1), report.summary()
    assert "needs 2 GPU(s)" in report.failures[0].error
    pids = {value(tmp_path, f"a/v{i}.parquet", "pid") for i in range(2)}
    assert len(pids) == 2  # max_calls=1: each GPU job ran in its own worker process


def test_executor_defined_in_a_test_runs_on_ray_by_value(ray_local, tmp_path):
    @register_executor("_test.closure", replace=True)
    def closure(spec, inputs):
        return {current_job().outputs[0]: pa.table({"pid": [os.getpid()], "x": [spec["x"] * 2]})}

    try:
        report = run([Job("_test.closure", {"x": 21}, ("z.parquet",))], tmp_path)
    finally:
        unregister_executor("_test.closure")
    assert report.ok and value(tmp_path, "z.parquet", "x") == 42
    assert value(tmp_path, "z.parquet", "pid") != os.getpid()
