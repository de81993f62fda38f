"""The capture of a run's output: the pipe the command writes, copied into the server's log by the thread that
supervises the run, whenever the pipe has something (`ExitWaiter.wait` watches it with the run's end).

Only what arrived before `cut()` is kept, bounded as `records/run_log.py` says; the sha256 of what was written
lets the caller prove later that the log file still holds exactly that. No thread of its own: a thread per run
cost its start, and at the run's end a wake-up and a join on the path from the command's end to its result.
"""

from __future__ import annotations

import array
import fcntl
import os
import termios

from ..records.run_log import RunLog

CHUNK_BYTES = 1 << 20
# At most this much per `pump`: processes that write faster than the copy never hold the thread that supervises
# their run (its timeout, its cancel) in the copy.
PUMP_BYTES = 8 * CHUNK_BYTES


class Capture:
    """Copies the command's output pipe into the log file (`RunLog`: bounded by `limit` bytes, hashed) each time
    its owner calls `pump` (the pipe is readable), until `cut()`."""

    def __init__(self, read_fd: int, log_fd: int, limit: int | None = None) -> None:
        self.read_fd = read_fd
        self.log_fd = log_fd
        self.log = RunLog(log_fd, limit)
        self.ended = False  # end of file: every writer has gone
        os.set_blocking(read_fd, False)

    @property
    def sha256(self) -> str:
        return self.log.sha256

    @property
    def size(self) -> int:
        """Bytes in the log file (what the hash covers)."""
        return self.log.size

    @property
    def watched(self) -> list[int]:
        """The descriptor to wait on for more output (none once it ended or was cut)."""
        return [self.read_fd] if self.read_fd >= 0 and not self.ended else []

    def pump(self, most: int = PUMP_BYTES) -> None:
        """Copy what the pipe holds now, up to `most` bytes (never blocks). At end of file, `ended`."""
        copied = 0
        while self.read_fd >= 0 and not self.ended and copied < most:
            try:
                data = os.read(self.read_fd, min(CHUNK_BYTES, most - copied))
            except BlockingIOError:
                return
            except OSError:
                self.ended = True
                return
            if not data:
                self.ended = True
                return
            copied += len(data)
            self.log.write(data)  # a full disk ends the log there: the pipe is still drained (no run blocks)

    def _held(self) -> int:
        """The bytes the pipe holds now (`PUMP_BYTES` where that cannot be asked)."""
        count = array.array("i", [0])
        try:
            fcntl.ioctl(self.read_fd, termios.FIONREAD, count)
        except OSError:
            return PUMP_BYTES
        return count[0]

    def cut(self) -> None:
        """Stop capturing: what the pipe holds now is the last of the run's log (which is finished: see
        `RunLog.finish`); output that arrives from now on is not part of it. Once; a second call does nothing."""
        if self.read_fd < 0:
            return
        self.pump(self._held())  # what the pipe holds at the cut, and nothing a process still running adds
        self.log.finish()
        try:
            os.close(self.read_fd)
        except OSError:
            pass
        self.read_fd = -1
