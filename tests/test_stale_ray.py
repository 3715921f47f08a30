"""A driver killed with SIGKILL may leave its local Ray instance's processes; the next run stops them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipelines.backends import SESSION_FILE, reap_stale_session

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow,
              pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds processes through /proc (Linux)")]

DRIVER = textwrap.dedent("""
    import sys
    from pipelines._testing import EMIT, EXECUTORS
    from pipelines.jobs import Job
    from pipelines.runner import run_jobs
    jobs = [Job(EMIT, {"value": i, "sleep": 60}, {"out": f"out/{i}.parquet"}) for i in range(2)]
    run_jobs(jobs, sys.argv[1], num_cpus=2, executors=EXECUTORS, progress=False)
""")


def _processes_with(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_processes_of_a_killed_driver_are_stopped_by_the_next_run(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(root)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record = root / SESSION_FILE
    deadline = time.time() + 90
    while not record.exists() and time.time() < deadline:
        time.sleep(0.5)
    assert record.exists(), "the driver never started Ray"
    time.sleep(3)  # let the tasks start
    session = json.loads(record.read_text())["session_dir"]
    assert _processes_with(session), "no Ray process names the session folder"
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    reap_stale_session(root)  # what the next `zoo-study run` on this root does first
    deadline = time.time() + 20
    while _processes_with(session) and time.time() < deadline:
        time.sleep(0.5)
    assert _processes_with(session) == [] and not record.exists()  # nothing of the killed run is left


def test_reaper_stops_leftovers_of_a_dead_driver_only(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    session = str(tmp_path / "ray" / "session_2026-12-01_00-00-00_000000_1")
    # a stand-in for a leftover Ray agent: a process whose command line names the session folder
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", f"--session-dir={session}"])
    try:
        time.sleep(0.5)
        alive_driver = {"session_dir": session, "driver_pid": os.getpid(), "host": os.uname().nodename}
        (root / SESSION_FILE).write_text(json.dumps(alive_driver))
        assert reap_stale_session(root) == 0 and leftover.poll() is None  # its driver still runs: hands off
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        (root / SESSION_FILE).write_text(json.dumps({**alive_driver, "driver_pid": dead.pid}))
        assert reap_stale_session(root) == 1
        assert leftover.wait(timeout=10) == -signal.SIGKILL and not (root / SESSION_FILE).exists()
    finally:
        if leftover.poll() is None:
            leftover.kill()
