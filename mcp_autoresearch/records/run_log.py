"""A run's log file as the server writes it: bounded, so that a run printing a gigabyte costs the disk a few
megabytes, never the whole disk over a night of experiments.

Up to `limit` bytes everything is written as it comes. Past it, the file keeps the output's beginning (its first
`limit - tail` bytes, cut back to the end of its last whole line) and the last `tail` bytes are held in memory
(from the start of a line) until `finish`, which writes one line saying what was left out, then that end: the
metric a run prints last, and its last words, are always in the log. No line is ever cut in two: a number cut
at the head's end or the tail's start could read as another number (`score: 0.12` of `score: 0.1234`).

The sha256 and size cover exactly what the file holds (the beginning's hash is kept as it stood at its last
whole line, never read back from the file, which an unconfined run could have changed). A write that fails (a
full disk) ends the log there; what follows is counted and dropped. `end_from` says where the file's part of the
output's end begins when something was left out (the file's end after a failed write: none of it): a value read
before it may not be the last one the run printed, and the server's own line is no output of the run.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .atomic import atomic_write, open_regular

MB = 1_000_000
TAIL_MAX_BYTES = 8 * MB  # the end of an over-long output, held in memory until the run ends
NEWLINE = ord("\n")


def log_bounds(limit: int) -> tuple[int, int]:
    """The head and the tail a log bounded by `limit` bytes keeps of an output longer than that."""
    tail = min(limit // 2, TAIL_MAX_BYTES)
    return limit - tail, tail


class RunLog:
    """Writes one run's output into `fd` (a file opened for it, at offset 0), bounded by `limit` bytes (None: not
    bounded). Not thread-safe: one thread writes; `recent` may be read from another."""

    def __init__(self, fd: int, limit: int | None = None) -> None:
        self.fd = fd
        self.limit = limit
        self.head_limit, self.tail_limit = log_bounds(limit) if limit else (0, 0)
        self.size = 0  # bytes in the file (what the hash covers)
        self.printed = 0  # bytes the run printed
        self.failed = False  # a write failed (a full disk): output is counted and dropped from then on
        self.cutting = False  # past the head: the output goes to the tail
        self.finished = False
        self._hash = hashlib.sha256()
        self._line_end = 0  # the file's size after its last whole line
        self._hash_at_line_end = self._hash.copy()
        # The tail: a ring of `tail_limit` bytes made at the cut (one allocation, whatever the run prints), its
        # oldest byte at `_start`, `_filled` bytes of it held.
        self._ring = bytearray()
        self._start = 0
        self._filled = 0
        self._tail_at_line_start = True  # the held tail's first byte begins a line
        self.left_out = 0  # bytes of output the finished log leaves out (besides a failed write's)
        self.kept = (0, 0)  # what the finished log keeps of the output's beginning and end, in bytes
        self._recent = b""  # the output's last bytes as a Ray wrapper that holds them said (`note_recent`)
        self.end_from: int | None = None  # output left out: where the file's part of the output's end begins

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def write(self, data: bytes) -> None:
        self.printed += len(data)
        if self.failed or self.finished:
            return
        if not self.cutting:
            room = len(data) if self.limit is None else self.head_limit - self.size
            self._write_file(data[:room])
            if len(data) <= room or self.failed:
                return
            self.cutting = True
            self._tail_at_line_start = self.size == self._line_end
            data = data[room:]
        self._hold(data)

    def _write_file(self, data: bytes | memoryview, newline: int | None = None) -> None:
        """Write `data` (`newline`: the index of its last newline, -1 for none; found here when not given)."""
        view = memoryview(data)
        if newline is None:
            newline = bytes(data).rfind(b"\n") if isinstance(data, memoryview) else data.rfind(b"\n")
        while view:
            try:
                written = os.write(self.fd, view)
            except OSError:  # a full disk: the log ends here, and the output is still counted (no run blocks)
                self._fail()
                return
            done = len(data) - len(view)  # bytes of `data` written before this write
            if done <= newline < done + written:  # the last whole line of `data` is in the file now
                self._hash.update(view[: newline + 1 - done])
                self._line_end = self.size + newline + 1 - done
                self._hash_at_line_end = self._hash.copy()
                self._hash.update(view[newline + 1 - done : written])
            else:
                self._hash.update(view[:written])
            self.size += written
            view = view[written:]

    def skip(self, count: int) -> None:
        """`count` bytes of output left out before they reached this log (a Ray wrapper's cut, after the head it
        sent whole): the end that follows begins a line."""
        if count <= 0 or self.finished:
            return
        self.printed += count
        self.cutting = True
        self._start = self._filled = 0  # what was held came before the part left out: left out too
        self._tail_at_line_start = True

    def _hold(self, data: bytes) -> None:
        """Keep `data` in the tail, and only the last `tail_limit` bytes of all it held."""
        size, capacity = len(data), self.tail_limit
        if not size or not capacity:
            return
        if not self._ring:
            self._ring = bytearray(capacity)
        ring, piece = self._ring, memoryview(data)
        if (
            size >= capacity
        ):  # it fills the ring alone: the byte before what it keeps says where a line starts
            if size > capacity:
                self._tail_at_line_start = piece[size - capacity - 1] == NEWLINE
            elif self._filled:
                self._tail_at_line_start = ring[(self._start + self._filled - 1) % capacity] == NEWLINE
            ring[:] = piece[size - capacity :]
            self._start, self._filled = 0, capacity
            return
        overflow = self._filled + size - capacity
        if overflow > 0:  # the oldest bytes make room
            self._tail_at_line_start = ring[(self._start + overflow - 1) % capacity] == NEWLINE
            self._start = (self._start + overflow) % capacity
            self._filled -= overflow
        end = (self._start + self._filled) % capacity
        first = min(size, capacity - end)
        ring[end : end + first] = piece[:first]
        ring[: size - first] = piece[first:]
        self._filled += size

    def _spans(self, last: int | None = None) -> list[tuple[int, int]]:
        """Where the tail lies in the ring, oldest byte first: one or two (start, end) spans (only its `last`
        bytes)."""
        ring, filled = self._ring, self._filled
        skip = 0 if last is None else max(0, filled - last)
        if not ring or filled == skip:
            return []
        begin = (self._start + skip) % len(ring)
        end = begin + filled - skip
        return [(begin, end)] if end <= len(ring) else [(begin, len(ring)), (0, end - len(ring))]

    def _held(self, last: int | None = None) -> bytes:
        """The tail's bytes, oldest first (only its `last` bytes)."""
        return b"".join(self._ring[start:end] for start, end in self._spans(last))

    def _write_held(self, spans: list[tuple[int, int]]) -> None:
        """Write these spans of the ring, in place (no copy of the tail)."""
        ring = memoryview(self._ring)
        for start, end in spans:
            newline = self._ring.rfind(b"\n", start, end)
            self._write_file(ring[start:end], newline - start if newline >= 0 else -1)
        ring.release()

    def recent(self, limit: int = 8192) -> bytes:
        """The last bytes of the output so far, wherever they are (the file, or the tail held in memory); read
        while the run writes, they may mix two moments (a progress line, nothing more)."""
        if self.cutting and self._filled:
            return self._held(limit)
        return self._recent[-limit:]  # b"": the file's end is the output's end: read it there

    def note_recent(self, data: bytes) -> None:
        """The output's last bytes, from a Ray wrapper that holds the end of a long output until the run ends."""
        self._recent = data

    def finish(self) -> None:
        """Write what a bounded log keeps of the end: the line saying what was left out, then the tail (from its
        first whole line). After the last write; a second call does nothing."""
        if self.finished or not self.cutting or self.failed:
            return
        self.finished = True
        if self.printed == self.size + self._filled:  # nothing left out: the output fitted after all
            self._write_held(self._spans())
            self._ring = bytearray()
            return
        if self.size != self._line_end:  # the head ends inside a line: back to that line's start
            try:
                os.ftruncate(self.fd, self._line_end)
                os.lseek(self.fd, self._line_end, os.SEEK_SET)
            except OSError:
                self._fail()
                return
            self.size = self._line_end
            self._hash = self._hash_at_line_end.copy()
        spans = self._spans()
        while spans and not self._tail_at_line_start:  # from the tail's first whole line
            start, end = spans[0]
            newline = self._ring.find(b"\n", start, end)
            if newline < 0:
                spans.pop(0)
                continue
            spans[0] = (newline + 1, end)
            self._tail_at_line_start = True
        kept = sum(end - start for start, end in spans)
        self.left_out = self.printed - self.size - kept
        self.kept = (self.size, kept)
        line = (
            f"autoresearch: {self.left_out:,} bytes of output left out here: the run printed {self.printed:,} "
            f"bytes, and its log keeps the first {self.size:,} and the last {kept:,} (log_limit_mb)\n"
        )
        self._write_file(line.encode())
        if not self.failed:
            self.end_from = self.size
        self._write_held(spans)
        self._ring = bytearray()

    def _fail(self) -> None:
        """A write failed: the log ends at what the file holds, and none of the output's end is in it."""
        self.failed = True
        self.end_from = self.size

    def summary(self, what: str = "the run") -> str | None:
        """What the finished log left out, in words (None: nothing)."""
        if self.failed:
            return (
                f"{what} printed {self.printed / MB:,.1f} MB, and its log could not be written past "
                f"{self.size / MB:,.1f} MB (a full disk?): the rest, its end among it, was left out"
            )
        if self.left_out <= 0:
            return None
        return (
            f"{what} printed {self.printed / MB:,.1f} MB, more than log_limit_mb = {(self.limit or 0) / MB:g}: its "
            f"log keeps the first {self.kept[0] / MB:,.1f} MB and the last {self.kept[1] / MB:,.1f} MB, and says "
            f"where the {self.left_out / MB:,.1f} MB between them were left out"
        )


def kept_end_copy(path: Path, end_from: int) -> Path:
    """A copy, beside the log `path`, of the end it kept of a cut output (from `end_from`, `RunLog.end_from`):
    what a parser of the log may read a value from (`<run>.kept.log`, `<run>-eval.kept.log`)."""
    copy = path.with_name(path.stem + ".kept.log")
    with os.fdopen(open_regular(path), "rb") as source:
        source.seek(end_from)
        atomic_write(copy, iter(lambda: source.read(1 << 20), b""), 0o644, sync=False)
    return copy


def live_tail(path: Path) -> Path:
    """Where the latest output of a run whose log `path` is past its beginning is shown while the run prints
    (`<run>.tail.log`, `ProcessRun.live_tail`): the log's file itself shows it only at the run's end."""
    return path.with_name(path.stem + ".tail.log")
