"""The records of a Ray job's log: the wrapper writes them (`Framed`), the server reads and verifies them
(`Unframer`). Every record is bound to the one wrapper that wrote it.

Standard library only: shipped to the workers beside `ray_wrapper.py`.

The key. The server makes a fresh Diffie-Hellman pair for every job and puts only its public half in the job's
package; the wrapper makes its own pair on the worker, writes its public half in the `begin` record, and both
derive the same key. The key (and the wrapper's private half) exists only in the wrapper's memory and the
server's: nothing secret is in the package, the environment, the entrypoint, a command line or the working
directory (Ray keeps those readable to any client of the cluster and to the job's own processes), and knowing
both public halves does not give the key.

The chain. Every line after `begin` is `<tag><record>`: the tag is the first 128 bits of
HMAC-SHA256(key, sequence number || record), numbered from 0. A line that anyone else adds (an appended
`score: -1000`, a forged `end`) has no valid tag; one copied from elsewhere has the wrong number; and a forger
who somehow holds the key still forks the chain, because the real wrapper goes on writing its own numbered
records. The server accepts the report only from a log that is one unbroken chain from `begin` to `end`, with
nothing after it; anything else marks the log tampered with (`Unframer.tampered`, the first offence).

Records: `|text` (a line of valid UTF-8 without CR), `%base64` (any other bytes, exactly; also a burst of many
lines), and `#autoresearch-ray end <json>` (the wrapper's report).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

CONTROL = "#autoresearch-ray"
RECORD_BYTES = 48 * 1024  # a longer line is forwarded in pieces
BURST_LINES = (
    8  # more complete lines than this waiting at once travel as one `%` record (Ray's tail is per line)
)
FRAGMENT_AFTER_S = 0.5  # a partial line (a progress bar) is forwarded after this long without a newline
RECENT_EVERY_S = (
    2.0  # past the head of a bounded output, how often its last bytes go to the server's progress
)
RECENT_BYTES = 1024
MAX_RECORD_CHARS = 256 * 1024  # a record is at most ~65 KB; a longer "line" is not ours
TAG_CHARS = 32  # hex characters of a record's tag (128 bits)
# RFC 3526 group 14 (2048-bit MODP, a safe prime), generator 2.
DH_PRIME = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)
DH_GENERATOR = 2


def key_pair() -> tuple[int, int]:
    """(private, public): a fresh 256-bit exponent and the generator raised to it."""
    private = int.from_bytes(os.urandom(32), "big") | 1
    return private, pow(DH_GENERATOR, private, DH_PRIME)


def shared_key(private: int, peer_public: int) -> bytes:
    """The key both ends derive; ValueError for a public value outside the group's useful range."""
    if not 1 < peer_public < DH_PRIME - 1:
        raise ValueError("public value out of range")
    secret = pow(peer_public, private, DH_PRIME)
    return hashlib.sha256(b"autoresearch-ray records\0" + secret.to_bytes(256, "big")).digest()


def tag(key: bytes, seq: int, record: bytes) -> str:
    return hmac.new(key, seq.to_bytes(8, "big") + record, hashlib.sha256).hexdigest()[:TAG_CHARS]


class Tail:
    """The last `size` bytes of a stream, held in the chunks they came in (none copied while it goes on)."""

    def __init__(self, size: int, before: bytes) -> None:
        self.size = size
        self.chunks: deque[bytes] = deque()
        self.held = 0
        self.dropped = 0
        self.before = before  # the byte before the first one held

    def add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.held += len(chunk)
        while self.chunks and self.held - len(self.chunks[0]) >= self.size:
            first = self.chunks.popleft()
            self.held -= len(first)
            self.dropped += len(first)
            self.before = first[-1:] or self.before

    def take(self) -> tuple[int, bytes]:
        """(bytes left out, the end kept: the last `size` bytes from their first whole line); (0, all) when
        nothing was left out."""
        data = b"".join(self.chunks)
        extra = max(0, len(data) - self.size)
        if not self.dropped and not extra:
            return 0, data
        before = data[extra - 1 : extra] if extra else self.before
        kept = data[extra:]
        if before != b"\n":  # from the first whole line: never a line cut in two
            kept = kept[kept.find(b"\n") + 1 :] if b"\n" in kept else b""
        return self.dropped + len(data) - len(kept), kept


class Framed:
    """Writes the run's output as tagged records on fd 1; `begin` must come first. Bounded (`bound`), it sends
    the output's first bytes, then at `end` a `cut <n>` record and the last bytes (the server's `RunLog` keeps
    as much, so the cluster's log of the job never holds more than the server's)."""

    def __init__(self, fd: int = 1) -> None:
        self.fd = fd
        self.pending = b""
        self.since = time.monotonic()
        self.key = b""
        self.seq = 0
        self.head_room: int | None = None  # bytes of the output still sent as they come (None: all)
        self.tail_size = 0
        self.tail: Tail | None = None  # past the head: the end, sent at `end`
        self.last = b"\n"  # the last byte sent
        self.recent_at = 0.0  # when the output's last bytes were last sent for the server's progress line

    def bound(self, head: int, tail: int) -> None:
        self.head_room, self.tail_size = head, tail

    def begin(self, server_public: int) -> None:
        """Agree on the key with the server (whose public value came in the package) and say so."""
        private, public = key_pair()
        self.key = shared_key(private, server_public)
        self._raw(f"{CONTROL} begin {public:x}")

    def _raw(self, line: str) -> None:
        data = (line + "\n").encode("utf-8", "surrogateescape")
        while data:
            data = data[os.write(self.fd, data) :]

    def _write(self, record: str) -> None:
        assert self.key, "begin() first"
        self._raw(tag(self.key, self.seq, record.encode("utf-8", "surrogateescape")) + record)
        self.seq += 1

    def _record(self, chunk: bytes) -> None:
        if chunk.endswith(b"\n") and b"\r" not in chunk:
            try:
                self._write("|" + chunk[:-1].decode("utf-8"))
                return
            except UnicodeDecodeError:
                pass
        self._write("%" + base64.b64encode(chunk).decode("ascii"))

    def data(self, chunk: bytes) -> None:
        """The run's output: sent up to the bound's head, then only held (its end) until `end`."""
        if self.tail is not None:
            self.tail.add(chunk)
            self._recent()
            return
        if self.head_room is not None:
            if len(chunk) > self.head_room:
                sent, chunk = chunk[: self.head_room], chunk[self.head_room :]
                self._frame(sent)
                self.tail = Tail(self.tail_size, self.last)
                self.tail.add(chunk)
                self._recent()
                return
            self.head_room -= len(chunk)
        self._frame(chunk)

    def _recent(self) -> None:
        """Past the head, the output's last bytes now and then: the server's progress line, never its log."""
        now = time.monotonic()
        if self.tail is None or not self.tail.chunks or now - self.recent_at < RECENT_EVERY_S:
            return
        self.recent_at = now
        chunks = self.tail.chunks
        last = ((chunks[-2] if len(chunks) > 1 else b"") + chunks[-1])[-RECENT_BYTES:]
        self._write(f"{CONTROL} recent {base64.b64encode(last).decode('ascii')}")

    def _frame(self, chunk: bytes) -> None:
        self.last = chunk[-1:] or self.last
        if chunk and not self.pending:
            self.since = time.monotonic()
        self.pending += chunk
        while True:
            if (
                self.pending.count(b"\n", 0, RECORD_BYTES) > BURST_LINES
            ):  # a burst: one record, not a line each
                end = self.pending.rfind(b"\n", 0, RECORD_BYTES) + 1
                self._write("%" + base64.b64encode(self.pending[:end]).decode("ascii"))
                self.pending = self.pending[end:]
                continue
            cut = self.pending.find(b"\n", 0, RECORD_BYTES)
            if cut < 0 and len(self.pending) < RECORD_BYTES:
                return
            end = cut + 1 if cut >= 0 else RECORD_BYTES
            self._record(self.pending[:end])
            self.pending = self.pending[end:]
            self.since = time.monotonic()

    def flush(self, idle_only: bool = False) -> None:
        if self.pending and (not idle_only or time.monotonic() - self.since >= FRAGMENT_AFTER_S):
            self._record(self.pending)
            self.pending = b""

    def end(self, report: dict[str, Any]) -> None:
        if self.tail is not None:
            left_out, kept = self.tail.take()
            self.tail = None
            if left_out:
                self.flush()
                self._write(f"{CONTROL} cut {left_out}")
            for at in range(0, len(kept), 1 << 16):
                self._frame(kept[at : at + (1 << 16)])
        self.flush()
        self._write(f"{CONTROL} end {json.dumps(report, separators=(',', ':'))}")


def _shown(line: str) -> str:
    text = line[:80].encode("ascii", "backslashreplace").decode("ascii")
    return "".join(c if c.isprintable() else "?" for c in text) + ("..." if len(line) > 80 else "")


class Unframer:
    """The server's side: the job's log -> the run's own output (written with `write`) and the wrapper's report.

    Lines before `begin` are Ray's ("Runtime env is setting up") and are dropped. From `begin` on, every line
    must carry the next tag of the chain; the first that does not, a second `begin`, or anything after `end`,
    marks the log tampered with, and its lines are never the run's output."""

    def __init__(
        self,
        write: Callable[[bytes], None],
        server_private: int,
        skip: Callable[[int], None] | None = None,
        recent: Callable[[bytes], None] | None = None,
    ) -> None:
        self.write = write
        self.skip = skip  # told how many bytes of output the wrapper left out (a `cut` record)
        self.recent = recent  # told the output's last bytes while the wrapper holds them (a `recent` record)
        self.private = server_private
        self.buffer = ""
        self.key = b""
        self.seq = 0
        self.begun_at: float | None = None  # monotonic, when the begin record arrived
        self.report: dict[str, Any] | None = None
        self.ended = False
        self.tampered: str | None = None  # the first line that is not the wrapper's, and why
        self.received = 0  # characters of the stream consumed (to resume a dropped connection)

    @property
    def done(self) -> bool:
        return self.ended

    def feed(self, text: str) -> None:
        self.received += len(text)
        self.buffer += text
        while "\n" in self.buffer:
            line, self.buffer = self.buffer.split("\n", 1)
            self._line(line)
        if len(self.buffer) > MAX_RECORD_CHARS:
            self._reject(self.buffer, "a line longer than any record")
            self.buffer = ""

    def close(self) -> None:
        """The stream is over: a partial line after the end record was written by someone else."""
        if self.ended and self.buffer.strip():
            self._reject(self.buffer, "a line after the wrapper's end record")

    def _reject(self, line: str, why: str) -> None:
        if self.tampered is None:
            self.tampered = f"{why}: {_shown(line)!r}"

    def _line(self, line: str) -> None:
        begin = f"{CONTROL} begin "
        if not self.key:
            if line.startswith(begin):
                try:
                    self.key = shared_key(self.private, int(line[len(begin) :].strip(), 16))
                except ValueError:
                    self._reject(line, "a begin record with an invalid key")
                    return
                self.begun_at = time.monotonic()
            return
        if self.ended:
            if line.strip():
                self._reject(line, "a line after the wrapper's end record")
            return
        if line.startswith(begin):
            self._reject(line, "a second begin record")
            return
        record = line[TAG_CHARS:]
        expected = tag(self.key, self.seq, record.encode("utf-8", "surrogateescape"))
        if not hmac.compare_digest(line[:TAG_CHARS], expected):
            self._reject(line, f"a line without the wrapper's tag for record {self.seq}")
            return
        self.seq += 1
        if self.tampered is None or record.startswith(f"{CONTROL} end "):  # after a foreign line: no output
            self._record(record)

    def _record(self, record: str) -> None:
        if record.startswith("|"):
            self.write(record[1:].encode("utf-8", "surrogateescape") + b"\n")
        elif record.startswith("%"):
            try:
                self.write(base64.b64decode(record[1:], validate=True))
            except (binascii.Error, ValueError):
                pass
        elif record.startswith(f"{CONTROL} recent ") and self.recent is not None:
            try:
                self.recent(base64.b64decode(record[len(CONTROL) + 8 :], validate=True))
            except (binascii.Error, ValueError):
                pass
        elif record.startswith(f"{CONTROL} cut ") and self.skip is not None:
            count = record[len(CONTROL) + 5 :]
            if count.isdigit():
                self.skip(int(count))
        elif record.startswith(f"{CONTROL} end "):
            self.ended = True
            try:
                report = json.loads(record[len(CONTROL) + 5 :])
            except ValueError:
                report = None
            self.report = report if isinstance(report, dict) else None
