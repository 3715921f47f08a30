"""Results-root guards for ``zoo-study run``: the root must be writable, and one driver at a time.

Why a lock: two drivers on one results root would run the same jobs twice and race on their files
(each write is atomic, but a job record could end up beside another run's outputs). ``zoo-study run``
holds ``<root>/.zoo-study.lock`` for its whole life; ``--dry-run`` and ``status`` only read and take no
lock.

How: the file is held with ``fcntl.flock`` and says who holds it (host, pid, start time). The kernel
drops a flock when its process dies, even by SIGKILL, so a lock left behind by a killed driver is free
to take: the next driver takes it over with a log line naming the dead one. A lock free to flock but
naming a driver on *another* host is refused, as that host's liveness cannot be checked from here and
some network filesystems do not share flocks between hosts (remove the file if that driver is gone).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines.results_root import refusal, remove_temp_files  # noqa: F401  (remove_temp_files: re-exported)

__all__ = ["LOCK_NAME", "LockHeld", "LockInfo", "ResultsLock", "check_results_root", "remove_temp_files"]

LOG = logging.getLogger("pipelines.lock")
LOCK_NAME = ".zoo-study.lock"


@dataclass(frozen=True)
class LockInfo:
    host: str
    pid: int
    started_at: str  # UTC, ISO 8601

    @classmethod
    def mine(cls) -> "LockInfo":
        return cls(socket.gethostname(), os.getpid(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} since {self.started_at}"

    def alive(self) -> bool | None:
        """Whether the holder still runs: None when it is on another host (cannot tell)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, another user's
            return True
        return True


class LockHeld(RuntimeError):
    """Another driver holds the results root; the message is one line naming it."""

    def __init__(self, path: Path, holder: LockInfo | None, why: str = ""):
        who = holder.describe() if holder else "another process"
        super().__init__(f"results root {path.parent} is in use by another zoo-study run ({who}){why}; "
                         f"wait for it, or pass --wait")
        self.holder = holder


def _parse(text: str) -> LockInfo | None:
    try:
        d = json.loads(text)
        return LockInfo(str(d["host"]), int(d["pid"]), str(d["started_at"]))
    except (ValueError, KeyError, TypeError):
        return None


def _read_holder(fd: int) -> LockInfo | None:
    """Who the open lock file says holds it (None: empty or not ours)."""
    os.lseek(fd, 0, os.SEEK_SET)
    return _parse(os.read(fd, 4096).decode("utf-8", "replace"))


class ResultsLock:
    """``with ResultsLock(root): ...`` holds the results root; see the module docstring."""

    def __init__(self, root: str | os.PathLike[str]):
        self.path = Path(root) / LOCK_NAME
        self._fd: int | None = None

    def _try(self, log: logging.Logger) -> tuple[str, LockInfo | None]:
        """``("taken", None)``, ``("held", holder or None)`` or ``("retry", None)`` (the file was released
        and removed between open and flock). Raises LockHeld for a leftover naming another host."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            return "held", holder
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return "retry", None
        left = _read_holder(fd)
        if left is not None:
            if left.alive() is None:
                os.close(fd)
                raise LockHeld(self.path, left, f"; its lock file is free here but names another host: if no "
                                                f"run is going on there, remove {self.path}")
            log.warning("taking over the lock of an earlier zoo-study run (%s) that is no longer running",
                        left.describe())
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(LockInfo.mine().__dict__).encode())
        os.fsync(fd)
        self._fd = fd
        return "taken", None

    def acquire(self, *, wait: bool = False, poll_s: float = 1.0, log: logging.Logger | None = None) -> "ResultsLock":
        """Take the lock, or raise :class:`LockHeld`; with ``wait``, poll until the holder is done."""
        log = log or LOG
        announced = False
        while True:
            state, holder = self._try(log)
            if state == "taken":
                return self
            if state == "retry":
                continue
            if not wait:
                raise LockHeld(self.path, holder)
            if not announced:
                who = holder.describe() if holder else "another process"
                log.warning("waiting for the results root %s: in use by %s", self.path.parent, who)
                announced = True
            time.sleep(poll_s)

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def release(self) -> None:
        """Give the lock up (the file is removed first, so a waiter retries on a new one)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding it: a waiter then retries on a new file
        finally:
            os.close(self._fd)  # drops the flock
            self._fd = None

    def __enter__(self) -> "ResultsLock":
        if self._fd is None:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_results_root(root: str | os.PathLike[str]) -> str | None:
    """Why ``root`` cannot hold results (a file, not writable, or a folder that is not ours to write: see
    :func:`pipelines.results_root.refusal`), or None. Writes nothing."""
    root = Path(root)
    probe = root
    while not probe.exists():  # the nearest existing folder is the one that must be writable
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return f"results root {root} is not a folder ({probe} is a file)"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"results root {root} is not writable ({probe}: permission denied)"
    return refusal(root)
