"""SIGTERM stops ``zoo-study run`` the way Ctrl-C does (issue 22).

Before: without Ray the process died of the signal (no line, exit -15); with Ray, ``ray.init``'s own
handler and Ray's C++ signal dump ("*** SIGTERM received ...") ended it (exit -6 or 1, "some job failed").
Now: finished jobs are kept, one "interrupted" line, exit 143, no failure records.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_bad_inputs import MICRO

REPO = Path(__file__).resolve().parents[1]


def _run_and_terminate(tmp_path: Path, address: str, ready: str) -> tuple[int, str]:
    """Start a micro study's zoo stage, send SIGTERM once the log shows ``ready``, return (code, stderr)."""
    cfg = tmp_path / "micro.toml"
    cfg.write_text(MICRO.format(root=tmp_path / "runs").replace('address = "local"', f'address = "{address}"'))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", str(cfg), "--stage", "zoo", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    seen = ""
    deadline = time.monotonic() + 120
    while ready not in seen:
        line = proc.stderr.readline()
        assert line and time.monotonic() < deadline, seen + proc.communicate()[1]
        seen += line
    time.sleep(0.3)  # inside the job loop
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    return proc.returncode, seen + err


def _check(tmp_path: Path, code: int, err: str) -> None:
    assert code == 143, err
    assert "SIGTERM received" not in err and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("interrupted: ") and lines[-1].endswith("rerun to resume"), err
    assert not (tmp_path / "runs" / "failures").exists()  # nothing failed


def test_sigterm_without_ray_is_an_interruption(tmp_path):
    code, err = _run_and_terminate(tmp_path, "local", "serial backend")
    _check(tmp_path, code, err)


@pytest.mark.slow
def test_sigterm_with_ray_is_an_interruption_without_rays_signal_dump(tmp_path):
    code, err = _run_and_terminate(tmp_path, "", "Ray with")
    _check(tmp_path, code, err)
