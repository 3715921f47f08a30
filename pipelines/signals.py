"""SIGTERM handled like Ctrl-C by the CLI (issue 22).

Why: a batch scheduler, ``timeout`` or ``kill`` stops a run with SIGTERM. Left alone, Python dies of it
without a word (no Ray) or ``ray.init``'s handler and Ray's C++ signal dump end the run as if a job had
failed. Handed to whatever handles SIGINT at that moment instead (the runner's graceful stop during a
run, KeyboardInterrupt elsewhere), it keeps finished jobs, prints one "interrupted" line, and the exit
code (143 rather than Ctrl-C's 130) says which signal it was. ``backends.ensure_ray`` keeps this handler
across ``ray.init``.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["EXIT_INTERRUPTED", "EXIT_TERMINATED", "Termination", "TERMINATION"]

EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM)


class Termination:
    """The CLI's SIGTERM handler (see the module docstring); ``received`` picks the exit code."""

    def __init__(self) -> None:
        self.received = False
        self.previous: Any = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """Record the signal and act as if Ctrl-C had been pressed."""
        self.received = True
        on_int = signal.getsignal(signal.SIGINT)
        if callable(on_int):
            on_int(signal.SIGINT, frame)
        else:  # SIGINT ignored or left to C (a background job): stop at once
            raise KeyboardInterrupt

    def install(self) -> None:
        """Handle SIGTERM from now on (main thread only; signal handlers cannot be set elsewhere)."""
        self.received = False
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self.handle)

    def uninstall(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
            self.previous = None

    @property
    def exit_code(self) -> int:
        return EXIT_TERMINATED if self.received else EXIT_INTERRUPTED


TERMINATION = Termination()
