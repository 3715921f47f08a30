"""Multi-node: a head and two worker nodes on this machine (``ray.cluster_utils.Cluster``), one removed
mid-stage; the run completes with nothing lost and a rerun redoes nothing. And the dataset root: resolved
on the driver and shipped with each job (not in its id), so workers started without
``ZOO_STUDY_IMAGENET`` read the driver's dataset.

The head has no CPUs, so every job runs on a worker node; the driver joins by address, as
``zoo-study run --address host:port`` does. Timings are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers import runner_executors as T
from pipelines.jobs import Job
from pipelines.runner import run_jobs

IMAGENET_ENV = "ZOO_STUDY_IMAGENET"
MB = 2**20


def _start_cluster(n_workers: int, cpus: int, gpus: int = 0):
    """A head without CPUs and ``n_workers`` worker nodes; skips where Ray cannot start one."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    t0 = time.perf_counter()
    try:
        # a lost node is noticed within ~2 s instead of Ray's default ~30 s
        quick = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_failure_threshold": 3}
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 80 * MB,
                                                          "include_dashboard": False, "_system_config": quick})
        workers = [c.add_node(num_cpus=cpus, num_gpus=gpus, object_store_memory=80 * MB, resources={f"w{i}": 1})
                   for i in range(1, n_workers + 1)]
        c.wait_for_nodes()
    except Exception as exc:  # noqa: BLE001 - no multi-node Ray here (sandbox, ports, shm): say so
        pytest.skip(f"ray.cluster_utils cannot start a local multi-node cluster here: {type(exc).__name__}: {exc}")
    print(f"\ncluster up (head + {n_workers} workers) in {time.perf_counter() - t0:.1f} s at {c.address}")
    return c, workers


def _stop_cluster(c) -> None:
    import ray

    t0 = time.perf_counter()
    ray.shutdown()
    c.shutdown()
    print(f"cluster down in {time.perf_counter() - t0:.1f} s")


@pytest.fixture
def cluster():
    c, workers = _start_cluster(2, 2)
    yield c, workers
    _stop_cluster(c)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_worker_node_removed_mid_stage_loses_nothing(cluster, tmp_path: Path):
    c, workers = cluster
    n = 12
    started = tmp_path / "started"
    started.mkdir()
    jobs = [Job(T.EMIT, {"value": i, "sleep": 2.0, "started_dir": str(started)}, {"row": f"a/v{i:02d}.parquet"},
                name=f"v{i}") for i in range(n)]
    removed: dict[str, float] = {}
    victim = workers[1].node_id

    def running_on_victim() -> bool:  # a job started on the node and not finished (each sleeps 2 s)
        for m in started.glob(f"*.{victim}"):
            value = int(m.name.split(".", 1)[0])
            if not (tmp_path / "a" / f"v{value:02d}.parquet").exists():
                return True
        return False

    def remove_when_jobs_finish() -> None:  # a node lost while it runs jobs, as a preempted VM would be
        # after the first full wave, as soon as a job is known to run on the node (robust on a busy host)
        while len(list((tmp_path / "a").glob("*.parquet"))) < 4 or not running_on_victim():
            time.sleep(0.05)
        t = time.perf_counter()
        c.remove_node(workers[1], allow_graceful=False)
        removed["at"], removed["took"] = t - t_run, time.perf_counter() - t

    killer = threading.Thread(target=remove_when_jobs_finish, daemon=True)
    t_run = time.perf_counter()
    killer.start()
    report = run_jobs(jobs, tmp_path, address=c.address, executors=T.EXECUTORS, max_retries=3, progress=False)
    wall = time.perf_counter() - t_run
    killer.join(timeout=30)
    print(report.summary())
    print(f"run: {wall:.1f} s for {n} jobs of 2 s on 2+2 CPUs; worker node removed {removed.get('at', -1):.1f} s "
          f"in (remove_node took {removed.get('took', -1):.1f} s); {report.stages[T.EMIT].retried} job(s) retried")
    assert "at" in removed, "the node was never removed"
    assert report.ok and report.ran == n, report.summary()
    assert report.stages[T.EMIT].retried >= 1  # the removed node had jobs in flight; they ran again elsewhere
    values = sorted(pq.read_table(tmp_path / j.outputs["row"]).column("value")[0].as_py() for j in jobs)
    assert values == list(range(n))  # every output reads back

    t0 = time.perf_counter()
    again = run_jobs(jobs, tmp_path, address=c.address, executors=T.EXECUTORS, progress=False)
    print(f"rerun: {time.perf_counter() - t0:.2f} s, {again.ran} ran, {again.stages[T.EMIT].done_before} done")
    assert again.ran == 0 and again.stages[T.EMIT].done_before == n


# ------------------------------------------------------------------------------- the dataset root
def _image_tree(root: Path) -> Path:
    """root/{train,val}/{cat,dog}/: 3 + 2 tiny JPEGs per class (folder names, not WordNet ids: no timm)."""
    from PIL import Image

    for split, n in (("train", 3), ("val", 2)):
        for cls, rgb in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (20, 16), rgb).save(folder / f"img{i}.JPEG")
    return root


def _config(tmp_path: Path, *overrides: str):
    from zoo_study.config import load_config

    return load_config(None, [f"study.results_root='{tmp_path / 'results'}'", "data.kind='imagefolder'",
                              "semantics.enabled=true", *overrides])


def _semantics_job(tmp_path: Path, *overrides: str) -> Job:
    """The study's one semantics job (it reads the dataset's class names) for an ImageFolder study."""
    from pipelines.study import plan_stage

    cfg = _config(tmp_path, *overrides)
    (job,) = plan_stage(cfg, "semantics")
    return job


def _data_job(tmp_path: Path) -> Job:
    """A job that reads the study's data, with the spec and runtime the planner gives every such job."""
    from pipelines.study import data_runtime, data_spec_dict

    cfg = _config(tmp_path)
    return Job("_test.data", {"data": data_spec_dict(cfg)}, {"row": "t/row.parquet"}, runtime=data_runtime(cfg))


def test_the_dataset_root_travels_with_the_job_and_not_in_its_id(tmp_path: Path, monkeypatch):
    """Resolved on the driver (config or environment), read by the worker from the job, not from the
    worker's environment; two machines with the dataset at two paths plan the same job ids."""
    from pipelines.executors import _source
    from pipelines.jobs import JobContext

    here, there = _image_tree(tmp_path / "here"), _image_tree(tmp_path / "there")
    monkeypatch.setenv(IMAGENET_ENV, str(here))
    from_env = _semantics_job(tmp_path)
    monkeypatch.delenv(IMAGENET_ENV)
    from_config = _semantics_job(tmp_path, f"data.root='{there}'")
    assert from_env.job_id == from_config.job_id  # where the data lives is not part of a job id
    assert "root" not in from_env.spec["data"] and "root" not in from_config.spec["data"]
    # the worker (no ZOO_STUDY_IMAGENET here) reads the root each driver resolved
    for job, root in ((from_env, here), (from_config, there)):
        source = _source(job.spec["data"], JobContext.of(job))
        assert source.meta["root"] == str(root) and len(source.train) == 6 and len(source.eval) == 4


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_workers_without_the_environment_variable_read_the_drivers_dataset(tmp_path: Path, monkeypatch, caplog):
    """A head and one worker node started without ZOO_STUDY_IMAGENET (as raylets on other machines are);
    the driver has it. Every job reads the dataset the driver named."""
    monkeypatch.delenv(IMAGENET_ENV, raising=False)
    c, _ = _start_cluster(1, 1, gpus=1)  # its raylets (and so its workers) never see the variable
    try:
        data = _image_tree(tmp_path / "imagenet")
        monkeypatch.setenv(IMAGENET_ENV, str(data))  # the driver's environment only
        job = _data_job(tmp_path)

        def read_dataset(spec: dict, inputs: dict, ctx) -> dict:  # by value to the worker (a local function)
            import os

            import pyarrow as pa

            from pipelines.executors import _source

            source = _source(spec["data"], ctx)
            return {name: pa.table({"env": [os.environ.get(IMAGENET_ENV, "")], "root": [source.meta["root"]],
                                    "n": [len(source.train) + len(source.eval)]}) for name in ctx.outputs}

        report = run_jobs([job], tmp_path / "results", address=c.address, executors={job.stage: read_dataset},
                          progress=False)
        assert report.ok and report.ran == 1, report.summary()
        row = pq.read_table(tmp_path / "results" / job.outputs["row"]).to_pylist()[0]
        assert row == {"env": "", "root": str(data), "n": 10}  # the worker had no variable, yet read the data
        # the default pack budget reads each GPU node's card there: this node's GPU is Ray's resource only
        from pipelines.backends import RayBackend

        assert RayBackend(check_feasible=False).device_memory(timeout=120) == 0.0
        assert "could not read the GPUs' memory" not in caplog.text  # the probe ran on the node and answered
    finally:
        _stop_cluster(c)
