"""Waiting for a run's command to end: woken the moment it exits (a pidfd) or its keeper reports the run's end,
not by polling with sleeps (elsewhere than Linux, it polls); the run's output is copied into its log meanwhile,
as it arrives (`capture.Capture`)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence

from .capture import Capture
from .launcher import Launched
from .readiness import ready_to_read

POLL_S = 0.005  # without a pidfd: how often the process is looked at


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

    def wait(self, timeout: float, captures: Sequence[Capture] = ()) -> bool:
        """True once the process has ended, or its keeper reported the run's end (or the report's pipe closed);
        False after `timeout`. The `captures` copy what their pipes hold whenever they have something."""
        report = self.popen.report_fd if isinstance(self.popen, Launched) else -1
        ends = [self.fd, *([report] if report >= 0 else [])] if self.fd is not None else []
        end = time.monotonic() + timeout
        while True:
            if self.fd is None and self.popen.poll() is not None:
                return True
            remaining = max(0.0, end - time.monotonic())
            step = remaining if self.fd is not None else min(POLL_S, remaining)
            output = [fd for capture in captures for fd in capture.watched]
            ready = ready_to_read([*ends, *output], step)
            if any(fd in ready for fd in ends):
                return True
            for capture in captures:
                if any(fd in ready for fd in capture.watched):
                    capture.pump()
            if time.monotonic() >= end:  # output that never stops does not hold the caller past `timeout`
                return self.fd is None and self.popen.poll() is not None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
