"""Driver safety: one ``zoo-study run`` per results root, a killed driver's leftovers, bad roots and addresses.

Lock holders are other processes (``python -c``), as a second driver would be. CLI runs use a config
whose selected stage has no jobs, so they take the lock and write the run files without training.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.lock import LOCK_NAME, LockHeld, ResultsLock, check_results_root
from zoo_study import store

pytestmark = pytest.mark.timeout(180)
REPO = Path(__file__).resolve().parents[1]

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pipelines.lock import ResultsLock
    from pipelines.results_root import claim
    from zoo_study.store import temp_name

    root, hold_s = Path(sys.argv[1]), float(sys.argv[2])
    lock = ResultsLock(root).acquire()
    claim(root)
    prefix, suffix = temp_name("x.parquet")
    (root / f"{prefix}abc123{suffix}").write_bytes(b"half a file")  # as a driver killed mid-write leaves
    print("locked", flush=True)
    time.sleep(hold_s)
    lock.release()
    print("released", flush=True)
""")

CONFIG = """
[study]
name = "locktest"
results_root = "{root}"

[zoo]
embedded = ["resnet10t_w16", "mixer_p8"]
random_teachers = []

[transfer]
enabled = {transfer}

[ray]
address = "local"
"""


def hold(root: Path, seconds: float) -> subprocess.Popen:
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), str(seconds)], stdout=subprocess.PIPE,
                            text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def config(tmp_path: Path, root: Path, transfer: bool = False) -> str:
    path = tmp_path / "study.toml"
    path.write_text(CONFIG.format(root=root, transfer=str(transfer).lower()))
    return str(path)


def cli(*args: str) -> int:
    from pipelines.cli import main

    try:
        return main(list(args))
    except SystemExit as exc:
        return int(exc.code)


# ------------------------------------------------------------------------------------------ the lock
def test_second_holder_is_refused_with_the_first_named(tmp_path):
    proc = hold(tmp_path, 30)
    try:
        with pytest.raises(LockHeld) as err:
            ResultsLock(tmp_path).acquire()
        msg = str(err.value)
        assert f"pid {proc.pid} on {socket.gethostname()} since 20" in msg and "\n" not in msg
        assert err.value.holder.pid == proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_driver_is_taken_over_with_a_log_line(tmp_path, caplog):
    proc = hold(tmp_path, 30)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / LOCK_NAME).is_file()  # left behind
    with caplog.at_level(logging.WARNING, logger="pipelines.lock"):
        with ResultsLock(tmp_path):
            assert f"pid {os.getpid()}" not in caplog.text
            assert f"pid {proc.pid} on {socket.gethostname()}" in caplog.text and "no longer running" in caplog.text
    assert not (tmp_path / LOCK_NAME).exists()  # released and removed


def test_leftover_lock_of_another_host_is_refused(tmp_path):
    (tmp_path / LOCK_NAME).write_text('{"host": "elsewhere", "pid": 1, "started_at": "2020-01-01T00:00:00Z"}')
    with pytest.raises(LockHeld, match="pid 1 on elsewhere since 2020.*names another host.*remove"):
        ResultsLock(tmp_path).acquire()


def test_wait_polls_until_the_holder_releases(tmp_path):
    proc = hold(tmp_path, 1.5)
    t0 = time.perf_counter()
    with ResultsLock(tmp_path).acquire(wait=True, poll_s=0.1):
        waited = time.perf_counter() - t0
        assert proc.stdout.readline().strip() == "released"
    proc.wait()
    assert 0.5 < waited < 20


# ------------------------------------------------------------------------------------------- the CLI
def test_cli_second_driver_exits_2_naming_the_first_and_writes_nothing(tmp_path, capsys):
    root = tmp_path / "runs"
    cfg = config(tmp_path, root)
    proc = hold(root, 60)
    try:
        assert cli("run", cfg, "--stage", "transfer", "--no-progress") == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"pid {proc.pid} on {socket.gethostname()} since" in err, err
        assert not (root / "config.toml").exists()
        # reading commands take no lock
        assert cli("run", cfg, "--dry-run") == 0 and cli("status", cfg) == 0
        out = capsys.readouterr().out
        assert "zoo" in out and "to run" in out
    finally:
        proc.kill()
        proc.wait()


def test_cli_wait_runs_once_the_first_driver_is_done(tmp_path, capsys):
    root = tmp_path / "runs"
    cfg = config(tmp_path, root)
    proc = hold(root, 2.0)
    t0 = time.perf_counter()
    assert cli("run", cfg, "--stage", "transfer", "--no-progress", "--wait") == 0
    assert time.perf_counter() - t0 > 1.0 and proc.wait(timeout=10) == 0
    assert proc.stdout.read().strip() == "released"
    assert (root / "config.toml").is_file() and not (root / LOCK_NAME).exists()


def test_cli_after_a_killed_driver_takes_over_and_ignores_its_temp_files(tmp_path, caplog):
    root = tmp_path / "runs"
    cfg = config(tmp_path, root)
    proc = hold(root, 60)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (root / f".x.parquet.zs-{proc.pid}-abc123.tmp").exists()
    (root / ".notes.tmp").write_bytes(b"a temp file of another program")  # not ours: kept
    with caplog.at_level(logging.INFO):
        assert cli("run", cfg, "--stage", "transfer", "--no-progress") == 0
    assert "no longer running" in caplog.text and "removed 1 temp file(s)" in caplog.text
    assert [p.name for p in root.rglob("*.tmp")] == [".notes.tmp"] and not (root / LOCK_NAME).exists()


# ------------------------------------------------------------------------------ bad roots and addresses
def test_bad_ray_address_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    root = tmp_path / "runs"
    t0 = time.perf_counter()
    assert cli("run", config(tmp_path, root), "--stage", "transfer", "--address", "nonsense:1") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot reach Ray at nonsense:1" in err, err
    assert time.perf_counter() - t0 < 30 and not root.exists()


def test_file_or_unwritable_results_root_exits_2_with_one_line(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    for root in (afile, afile / "below"):
        assert cli("run", config(tmp_path, root), "--stage", "transfer") == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "is not a folder" in err, err
    assert check_results_root(tmp_path / "new" / "deeper") is None
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() == 0:  # root ignores folder permissions: the answer a user would get stands in
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode))
    target = locked / "runs"
    try:
        assert cli("run", config(tmp_path, target), "--stage", "transfer") == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "not writable" in err, err
    finally:
        locked.chmod(0o700)


def test_scores_of_another_schema_do_not_break_planning(tmp_path, capsys):
    root = tmp_path / "runs"
    cfg = config(tmp_path, root, transfer=True)
    store.write_parquet_atomic(pa.table({"teacher": ["a"], "student": ["b"]}), root / "scores" / "pairs.parquet")
    assert cli("run", cfg, "--dry-run") == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("transfer"))
    assert "?" in line and "planned after the score stage" in line
    assert cli("status", cfg) == 0


# ------------------------------------------------------------------------------------------ Ctrl-C
MICRO = """
[study]
name = "ctrlc"
results_root = "{root}"

[data.generated]
num_superclasses = 2
classes_per_superclass = 3
image_size = 16
n_train = 240
n_eval = 120

[zoo]
embedded = ["resnet10t_w16", "mixer_p8", "convnext_atto_p2"]
epochs_scale = 0.2
random_teachers = []
"""


@pytest.mark.slow
def test_cli_ctrl_c_exits_130_with_one_line_and_a_rerun_does_the_rest(tmp_path):
    root = tmp_path / "runs"
    cfg = tmp_path / "micro.toml"
    cfg.write_text(MICRO.format(root=root))
    cmd = [sys.executable, "-m", "pipelines.cli", "run", str(cfg), "--stage", "zoo", "--address", "local",
           "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 150
    while not list((root / "zoo" / "models").glob("*.parquet")):  # the first model is trained
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and not (root / LOCK_NAME).exists()
    last = err.strip().splitlines()[-1]
    finished = list((root / "zoo" / "models").glob("*.parquet"))
    # 1 cancelled when the signal reached a job while it trained, 0 when it came between two jobs
    assert last in {f"interrupted: {len(finished)} job(s) finished, {m} cancelled; rerun to resume" for m in (0, 1)}, err
    assert [line for line in err.splitlines() if "interrupted" in line] == [last]  # said once
    before = {p.name: p.stat().st_mtime_ns for p in finished}
    assert cli("run", str(cfg), "--stage", "zoo", "--address", "local", "--no-progress") == 0
    assert len(list((root / "zoo" / "models").glob("*.parquet"))) == 3
    assert all((root / "zoo" / "models" / n).stat().st_mtime_ns == m for n, m in before.items())
