"""The capture of a run's output: the pipe the command writes, copied into the server's log by a thread.

Only what arrived before `cut()` is kept; the sha256 of what was captured lets the caller prove later that the
log file still holds exactly that.
"""

from __future__ import annotations

import hashlib
import os
import select
import threading

CHUNK_BYTES = 1 << 20


class Capture:
    """Copies the command's output pipe into the log file on a thread, hashing it, until `cut()`."""

    def __init__(self, read_fd: int, log_fd: int) -> None:
        self.read_fd = read_fd
        self.log_fd = log_fd
        self.size = 0  # bytes written to the log (what the hash covers)
        self.dropping = False  # a write failed: output is read and dropped from then on
        self._hash = hashlib.sha256()
        os.set_blocking(read_fd, False)
        self._wake_r, self._wake_w = os.pipe()  # not inherited (PEP 446); os.pipe2 is Linux-only
        self._thread = threading.Thread(target=self._loop, name="capture", daemon=True)
        self._thread.start()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

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
            view = memoryview(data)
            while view and not self.dropping:
                try:
                    written = os.write(self.log_fd, view)
                except (
                    OSError
                ):  # a full disk: the log ends here, and the pipe is still drained (no run blocks)
                    self.dropping = True
                    break
                self._hash.update(view[:written])
                self.size += written
                view = view[written:]

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
        """Stop capturing: output that arrives from now on is not part of the run's log."""
        if self._thread.is_alive():
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
            self._thread.join()
        for fd in (self._wake_r, self._wake_w, self.read_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = self.read_fd = -1
