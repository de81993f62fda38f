"""The capture of a run's output: the pipe the command writes, copied into the server's log by a thread.

Only what arrived before `cut()` is kept, bounded as `records/run_log.py` says; the sha256 of what was written
lets the caller prove later that the log file still holds exactly that.
"""

from __future__ import annotations

import os
import select
import threading

from ..records.run_log import RunLog

CHUNK_BYTES = 1 << 20


class Capture:
    """Copies the command's output pipe into the log file on a thread (`RunLog`: bounded by `limit` bytes,
    hashed), until `cut()`."""

    def __init__(self, read_fd: int, log_fd: int, limit: int | None = None) -> None:
        self.read_fd = read_fd
        self.log_fd = log_fd
        self.log = RunLog(log_fd, limit)
        os.set_blocking(read_fd, False)
        self._wake_r, self._wake_w = os.pipe()  # not inherited (PEP 446); os.pipe2 is Linux-only
        self._thread = threading.Thread(target=self._loop, name="capture", daemon=True)
        self._thread.start()

    @property
    def sha256(self) -> str:
        return self.log.sha256

    @property
    def size(self) -> int:
        """Bytes in the log file (what the hash covers)."""
        return self.log.size

    def _pump(self) -> bool:
        """Copy what the pipe holds now. False at end of file (every writer has gone)."""
        while True:
            try:
                data = os.read(self.read_fd, CHUNK_BYTES)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            self.log.write(data)  # a full disk ends the log there: the pipe is still drained (no run blocks)

    def _loop(self) -> None:
        try:
            while True:
                ready, _, _ = select.select([self.read_fd, self._wake_r], [], [])
                if self.read_fd in ready and not self._pump():
                    return
                if self._wake_r in ready:
                    self._pump()  # what was written before the cut, and nothing after
                    return
        except OSError:
            return

    def cut(self) -> None:
        """Stop capturing: output that arrives from now on is not part of the run's log (which is finished: see
        `RunLog.finish`). Once; a second call does nothing."""
        if self.read_fd < 0:
            return
        if self._thread.is_alive():
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
            self._thread.join()
        self.log.finish()
        for fd in (self._wake_r, self._wake_w, self.read_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = self.read_fd = -1
