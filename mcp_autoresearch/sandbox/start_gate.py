"""The server's end of a held start: a command started through the launcher is made ready (its keeper, its
view, Landlock) and then waits, right before its `exec`, for the server's word (`command.hold_for_go`).

Two uses. A run is started while the server still records it (`ProcessRun.start`, then `run`): the record says
"running" before the command can run, as crash recovery needs, and the start costs the run's path nothing. And
every run held this way is timed from the word, its start's cost left out of its wall time and of its timeout,
however long the keeper took to set it up (a setup that hangs still ends at the timeout).

The protocol, on a socket pair: the command writes "r" when it is ready, the server writes "g" to let it go.
Anything else (the server's end closed, the server gone) ends the command there, nothing run.
"""

from __future__ import annotations

import socket
import threading
import time

from .readiness import ready_to_read

READY_POLL_S = 0.5  # how often a wait for "ready" looks at a cancel


class StartGate:
    """One held start: `theirs` goes to the launcher with the request (and is closed here once sent)."""

    def __init__(self) -> None:
        self._ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._theirs: socket.socket | None = theirs

    def their_fd(self) -> int:
        assert self._theirs is not None
        return self._theirs.fileno()

    def handed(self) -> None:
        """The request carried their end: no copy stays here (the command's end then closes with the command)."""
        if self._theirs is not None:
            self._theirs.close()
            self._theirs = None

    def wait_ready(self, deadline: float, cancelled: threading.Event) -> bool:
        """Until the command says it is ready or its end closed (it failed to set up: its exit says why): True;
        False at `deadline` (monotonic) or on a cancel, its word not given."""
        while not cancelled.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if ready_to_read([self._ours.fileno()], min(left, READY_POLL_S)):
                return True
        return False

    def go(self) -> None:
        """The word to go (a command already gone takes nothing: its exit is what the run reports)."""
        try:
            self._ours.send(b"g", socket.MSG_NOSIGNAL)
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        """Our end closed: a command still waiting ends, nothing run."""
        self.handed()
        self._ours.close()
