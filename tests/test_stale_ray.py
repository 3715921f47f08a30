"""A driver killed with SIGKILL may leave its local Ray instance's processes; the next run stops them, and
only them: processes are proven by PID and start time, never found by matching command lines."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipelines.backends import SESSION_FILE, reap_stale_session
from pipelines.ray_leftovers import descendants, is_ray_process, proc_start

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds processes through /proc (Linux)")]

DRIVER = textwrap.dedent("""
    import sys
    from helpers.runner_executors import EMIT, EXECUTORS
    from pipelines.jobs import Job
    from pipelines.runner import run_jobs
    jobs = [Job(EMIT, {"value": i, "sleep": 60}, {"out": f"out/{i}.parquet"}) for i in range(2)]
    run_jobs(jobs, sys.argv[1], num_cpus=2, executors=EXECUTORS, progress=False)
""")


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _record(root: Path, driver: tuple[int, int | None], procs: list[tuple[int, int | None]]) -> None:
    (root / SESSION_FILE).write_text(json.dumps({"version": 2, "host": socket.gethostname(), "boot_id": _boot_id(),
                                                 "driver": list(driver), "processes": [list(p) for p in procs]}))


def _dead_driver() -> tuple[int, int]:
    """A PID and start time of a process that has exited (what a SIGKILLed driver leaves in the record)."""
    gone = subprocess.Popen(["sleep", "0.2"])
    start = proc_start(gone.pid)
    gone.wait()
    return gone.pid, start


@pytest.fixture
def victim():
    """An unrelated process of this user that no clean-up may touch."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "MARKER_victim"])
    time.sleep(0.3)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture
def fake_agent():
    """A stand-in for a leftover Ray agent: a process that names itself ``ray::...`` as Ray's agents do."""
    proc = subprocess.Popen(["bash", "-c", 'exec -a "ray::DashboardAgent" sleep 120'])
    deadline = time.time() + 10
    while not is_ray_process(proc.pid) and time.time() < deadline:
        time.sleep(0.05)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_old_record_with_a_command_line_marker_kills_nothing(tmp_path, victim):
    """The record of issue 22: a string that the old clean-up matched against every command line."""
    (tmp_path / SESSION_FILE).write_text(json.dumps({"session_dir": "MARKER", "driver_pid": 999999,
                                                     "host": socket.gethostname()}))
    assert reap_stale_session(tmp_path) == 0
    time.sleep(0.3)
    assert victim.poll() is None and not (tmp_path / SESSION_FILE).exists()


def test_forged_record_with_a_wrong_start_time_kills_nothing(tmp_path, victim, fake_agent):
    for proc in (victim, fake_agent):  # a Ray-looking process is no exception without its start time
        _record(tmp_path, _dead_driver(), [(proc.pid, proc_start(proc.pid) + 1)])
        assert reap_stale_session(tmp_path) == 0
    time.sleep(0.3)
    assert victim.poll() is None and fake_agent.poll() is None


def test_forged_record_naming_a_process_that_is_not_ray_kills_nothing(tmp_path, victim):
    """Even with its exact start time (anyone can read it in /proc), a process that is not Ray is left alone."""
    _record(tmp_path, _dead_driver(), [(victim.pid, proc_start(victim.pid)), (os.getpid(), proc_start(os.getpid()))])
    assert reap_stale_session(tmp_path) == 0
    time.sleep(0.3)
    assert victim.poll() is None


def test_record_of_another_boot_or_host_kills_nothing(tmp_path, fake_agent):
    for key, value in (("boot_id", "another-boot"), ("host", "another-host")):
        _record(tmp_path, _dead_driver(), [(fake_agent.pid, proc_start(fake_agent.pid))])
        rec = json.loads((tmp_path / SESSION_FILE).read_text())
        (tmp_path / SESSION_FILE).write_text(json.dumps({**rec, key: value}))
        assert reap_stale_session(tmp_path) == 0
    assert fake_agent.poll() is None


def test_recorded_processes_of_a_dead_driver_only_are_stopped(tmp_path, victim, fake_agent):
    agent = (fake_agent.pid, proc_start(fake_agent.pid))
    _record(tmp_path, (os.getpid(), proc_start(os.getpid())), [agent])
    assert reap_stale_session(tmp_path) == 0 and fake_agent.poll() is None  # its driver still runs: hands off
    assert (tmp_path / SESSION_FILE).exists()
    _record(tmp_path, _dead_driver(), [agent, (victim.pid, proc_start(victim.pid))])
    assert reap_stale_session(tmp_path) == 1
    assert fake_agent.wait(timeout=10) == -signal.SIGKILL and not (tmp_path / SESSION_FILE).exists()
    assert victim.poll() is None


@pytest.mark.slow
def test_processes_of_a_killed_driver_are_stopped_by_the_next_run(tmp_path):
    """A real local Ray instance: after SIGKILL of its driver, every process it started is stopped,
    ``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent`` included (their command lines name no session)."""
    root = tmp_path / "root"
    root.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(root)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record = root / SESSION_FILE
    deadline = time.time() + 90
    while not record.exists() and time.time() < deadline:
        time.sleep(0.5)
    assert record.exists(), "the driver never started Ray"
    time.sleep(3)  # let the tasks start
    started = descendants(driver.pid)
    names = {Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode() for pid, _ in started}
    assert {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names, names
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    reap_stale_session(root)  # what the next `zoo-study run` on this root does first
    deadline = time.time() + 20

    def alive() -> list[int]:
        return [pid for pid, start in started if proc_start(pid) == start]

    while alive() and time.time() < deadline:
        time.sleep(0.5)
    assert alive() == [] and not record.exists()  # nothing of the killed run is left


def test_a_run_after_a_forged_record_kills_no_unrelated_process(tmp_path, victim, capsys):
    """Issue 22's reproduction through the CLI: a record naming a command-line marker, then a run."""
    from pipelines.cli import main

    root = tmp_path / "root"
    root.mkdir()
    (root / SESSION_FILE).write_text(json.dumps({"session_dir": "MARKER", "driver_pid": 999999,
                                                 "host": socket.gethostname()}))
    cfg = tmp_path / "study.toml"
    cfg.write_text(f'[study]\nname = "forged"\nresults_root = "{root}"\n[zoo]\nembedded = ["resnet10t_w16", '
                   '"mixer_p8"]\nrandom_teachers = []\n[transfer]\nenabled = false\n[ray]\naddress = "local"\n')
    assert main(["run", str(cfg), "--stage", "transfer", "--no-progress"]) == 0
    time.sleep(0.3)
    assert victim.poll() is None and not (root / SESSION_FILE).exists()
    assert "stopped" not in capsys.readouterr().err
