"""Waiting for a run's command to end: woken the moment it exits (a pidfd) or its keeper reports the run's end,
not by polling with sleeps (elsewhere than Linux, it polls)."""

from __future__ import annotations

import os
import select
import subprocess
import time

from .launcher import Launched


def reported(popen: subprocess.Popen[bytes] | Launched) -> bool:
    """Whether the keeper reported the run's end (a command started through the launcher)."""
    return isinstance(popen, Launched) and popen.reported


class ExitWaiter:
    """Wakes up the moment a child exits (Linux pidfd), instead of polling with sleeps; elsewhere it polls."""

    def __init__(self, popen: subprocess.Popen[bytes] | Launched) -> None:
        self.popen = popen
        self.fd: int | None = None
        try:
            self.fd = os.pidfd_open(popen.pid)  # type: ignore[attr-defined]
        except (AttributeError, OSError):
            self.fd = None

    def wait(self, timeout: float) -> bool:
        """True once the process has ended, or its keeper reported the run's end (or the report's pipe closed)."""
        report = self.popen.report_fd if isinstance(self.popen, Launched) else -1
        if self.fd is None:
            end = time.monotonic() + timeout
            while self.popen.poll() is None:
                if time.monotonic() >= end:
                    return False
                time.sleep(min(0.005, max(0.0, end - time.monotonic())))
            return True
        ready, _, _ = select.select([self.fd, *([report] if report >= 0 else [])], [], [], timeout)
        return bool(ready)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
