"""The processes of a local Ray instance whose driver was killed: recorded by proof, stopped by proof.

Why: a driver killed with SIGKILL leaves some of its local Ray instance's processes behind (Ray's
``ray::DashboardAgent`` and ``RuntimeEnvAgent`` live on for about a minute, holding ~210 MB). The next
run on the same results root stops them.

How, without ever touching a process that is not ours: the driver records, in ``<root>/.zoo-study.ray``,
the PID *and start time* (``/proc/<pid>/stat`` field 22, clock ticks since boot) of itself and of every
process it started (its descendants right after ``ray.init``: GCS, raylet, the raylet's agents and
workers, the monitors), with the boot id of the machine. The next driver stops a recorded process only
when all of these hold now:

* the record was written on this host, in this boot, by a driver that is no longer running (its PID is
  gone or belongs to a process with another start time);
* the PID still runs with the recorded start time (a reused PID has another one);
* the process belongs to this user and is a Ray process of *this* Ray install: its first argument starts
  with ``ray::`` (Ray's workers and agents name themselves so) or one of its arguments lies inside the
  installed ``ray`` package (raylet, gcs_server, the Python monitors). These are constants of the
  install, never strings read from the record.

Processes started later by a verified process (a worker spawned after the record was written) are found
as its children. Nothing is ever matched against text read from the record: a forged record can at
worst name a Ray process of this user that has exactly the recorded start time. Linux only (``/proc``);
elsewhere the record is removed and nothing is stopped.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import signal
import socket
from pathlib import Path

__all__ = ["SESSION_FILE", "ProcId", "descendants", "forget_local_session", "is_ray_process", "proc_start",
           "reap_stale_session", "record_local_session"]

LOG = logging.getLogger("pipelines.ray_leftovers")
SESSION_FILE = ".zoo-study.ray"
RECORD_VERSION = 2
PROC = Path("/proc")

ProcId = tuple[int, int]  # (pid, start time in clock ticks since boot)


def proc_start(pid: int) -> int | None:
    """The start time of ``pid`` (clock ticks after boot), or None when it does not run (or no /proc)."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after the command name, which may hold spaces and ')'
    return int(fields[19]) if len(fields) > 19 else None  # field 22 of proc(5); fields[0] is field 3


def _ppid(pid: int) -> int | None:
    try:
        return int((PROC / str(pid) / "stat").read_text().rsplit(")", 1)[-1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _boot_id() -> str:
    try:
        return (PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def descendants(pid: int) -> list[ProcId]:
    """Every process below ``pid`` in the process tree, with its start time (one /proc listing)."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir() if PROC.is_dir() else ():
        if entry.name.isdigit() and (parent := _ppid(int(entry.name))) is not None:
            children.setdefault(parent, []).append(int(entry.name))
    out: list[ProcId] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if (start := proc_start(child)) is not None:
                out.append((child, start))
                todo.append(child)
    return out


def _ray_dirs() -> tuple[str, ...]:
    """The installed ``ray`` package's folder, as found and resolved (found without importing Ray)."""
    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec("ray")
        if spec is not None and spec.origin:
            here = Path(spec.origin).parent
            return tuple(dict.fromkeys([str(here) + os.sep, str(here.resolve()) + os.sep]))
    return ()


def is_ray_process(pid: int) -> bool:
    """Whether ``pid`` is one of this user's processes of the installed Ray (see the module docstring)."""
    try:
        if (PROC / str(pid)).stat().st_uid != os.getuid():
            return False
        argv = [a.decode(errors="replace") for a in (PROC / str(pid) / "cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return False
    if argv and argv[0].startswith("ray::"):
        return True
    return any(a.startswith(d) for d in _ray_dirs() for a in argv)


def record_local_session(root: Path) -> None:
    """Record this driver and the processes it started (after ``ray.init``) in ``<root>/.zoo-study.ray``."""
    from zoo_study.store import write_text_atomic

    me = os.getpid()
    record = {"version": RECORD_VERSION, "host": socket.gethostname(), "boot_id": _boot_id(),
              "driver": [me, proc_start(me)], "processes": [list(p) for p in descendants(me)]}
    try:
        write_text_atomic(json.dumps(record), Path(root) / SESSION_FILE)
    except OSError as exc:  # a full disk must not stop the run; only the clean-up after a SIGKILL is lost
        LOG.warning("could not record the Ray processes of this run in %s: %s", root, exc.strerror or exc)


def forget_local_session(root: Path) -> None:
    """Remove the record (the driver stopped its Ray instance itself)."""
    (Path(root) / SESSION_FILE).unlink(missing_ok=True)


def _read_record(path: Path) -> tuple[ProcId, list[ProcId]] | None:
    """(driver, processes) of a valid record from this host and boot; None for anything else (old or
    forged formats, another host, another boot)."""
    try:
        rec = json.loads(path.read_text())
        if rec.get("version") != RECORD_VERSION or rec.get("host") != socket.gethostname():
            return None
        if rec.get("boot_id") != _boot_id():
            return None
        driver = (int(rec["driver"][0]), int(rec["driver"][1]))
        procs = [(int(p), int(s)) for p, s in rec["processes"]]
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    return driver, procs


def _proven(procs: list[ProcId]) -> list[ProcId]:
    """The recorded processes that still run with their recorded start time and are Ray processes,
    plus the Ray processes they started since."""
    keep = [(pid, start) for pid, start in procs if pid > 1 and pid != os.getpid()
            and proc_start(pid) == start and is_ray_process(pid)]
    more = [p for parent, _ in keep for p in descendants(parent) if is_ray_process(p[0])]
    return list(dict.fromkeys(keep + more))


def _kill(pid: int, start: int) -> bool:
    """SIGKILL ``pid`` if it still has start time ``start``. Through a pidfd where the system has one, so
    the PID cannot be reused between the check and the signal."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    try:
        if proc_start(pid) != start:
            return False
        if fd is not None:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
        return True
    except OSError:
        return False
    finally:
        if fd is not None:
            os.close(fd)


def reap_stale_session(root: Path, log: logging.Logger | None = None) -> int:
    """Stop the processes of the local Ray instance of a killed driver on this root; their count.

    Call only while holding the root's lock. A record whose driver still runs is left alone; any other
    record is removed after its proven processes (module docstring) are stopped.
    """
    log = log or LOG
    path = Path(root) / SESSION_FILE
    if not path.exists():
        return 0
    parsed = _read_record(path)
    if parsed is not None and proc_start(parsed[0][0]) == parsed[0][1]:
        return 0  # its driver still runs (on another root's behalf or ours: hands off)
    killed = sum(_kill(pid, start) for pid, start in (_proven(parsed[1]) if parsed else []))
    path.unlink(missing_ok=True)
    if parsed is None:
        log.info("removed %s: not a process record of a run on this host and boot; nothing stopped", path)
    elif killed:
        log.info("stopped %d process(es) of the Ray instance left by a killed run (driver pid %d)",
                 killed, parsed[0][0])
    return killed
