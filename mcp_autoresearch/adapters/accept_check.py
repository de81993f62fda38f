"""Every connection to the HTTP transport checked as it is accepted, before a byte of it is read.

The checks of `http.py` (`RefuseRuns`, `RefuseOtherUsers`) come with a request's headers; a connection that sends
none holds one of the server's descriptors for as long as its client keeps it open. A run with the network on
could open connections until the server had no descriptor left: its after-run checks, git and `apply_edit`
failed until the run ended. So each accepted connection waits (reading paused) for the same checks, made for a
burst of connections at once in a worker thread (`peers.runs_holding`: /proc read once), and one refused is
answered 403 and closed (once its request is read, for a few at a time). While `MAX_WAITING` connections wait,
a new one is closed unread, and asyncio accepts at most `BACKLOG` at a time: a flood cannot hold more descriptors
than those, whoever sends it (the soft limit is commonly 1024). The request-time checks stay: a run can hand
its socket to a process that is not checked in between (see `peers.py`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, ClassVar

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from .peers import Ends, ends_of

log = logging.getLogger("mcp_autoresearch")

MAX_WAITING = 256  # connections accepted and not yet checked, beyond which a new one is closed unread
# refused connections kept for their request to be read (see `refuse`); beyond, closed at once
MAX_ANSWERED = 8
# asyncio accepts up to the listening socket's backlog in one go, a descriptor each, before any of them is
# seen here: the backlog bounds that burst (a client beyond it waits for the kernel's retry of its SYN).
BACKLOG = 64
REFUSED_WAIT_S = 2.0  # how long a refused connection is kept for its request to be read (see `refuse`)

Check = Callable[[list[Ends]], list[str | None]]  # each connection's refusal (the answer's text), or None


class Gate:
    """The connections waiting for their check, checked in batches, one batch at a time."""

    def __init__(self, check: Check) -> None:
        self.check = check
        self.waiting: list[CheckedConnection] = []
        # answered 403, kept until their request came (or `REFUSED_WAIT_S`)
        self.refused: set[CheckedConnection] = set()
        self.checking = False

    def enter(self, connection: CheckedConnection) -> None:
        if len(self.waiting) >= MAX_WAITING:
            connection.abort()  # a flood: not even checked
            return
        self.waiting.append(connection)
        if not self.checking:
            self._check_waiting()

    def _check_waiting(self) -> None:
        batch, self.waiting = self.waiting, []
        batch = [connection for connection in batch if not connection.lost]
        if not batch:
            return
        self.checking = True
        future = asyncio.get_running_loop().run_in_executor(None, self.check, [c.ends for c in batch])
        future.add_done_callback(lambda done: self._decided(batch, done))

    def _decided(self, batch: list[CheckedConnection], done: asyncio.Future[list[str | None]]) -> None:
        self.checking = False
        try:
            verdicts = done.result()
        except Exception:  # the request's own checks still apply: let the connection be read
            log.exception("checking new connections failed")
            verdicts = [None] * len(batch)
        for connection, why in zip(batch, verdicts, strict=True):
            if why is None:
                connection.admit()
            else:
                connection.refuse(why)
        if self.waiting:
            self._check_waiting()


class CheckedConnection(asyncio.Protocol):
    """uvicorn's HTTP protocol behind the gate: the connection is handed to it once its check passed. A
    subclass names its gate (`checked_protocol`)."""

    gate: ClassVar[Gate]

    def __init__(self, **uvicorn_arguments: Any) -> None:
        self.inner: asyncio.Protocol = AutoHTTPProtocol(**uvicorn_arguments)
        self.transport: asyncio.Transport | None = None
        self.admitted = False
        self.lost = False
        self.ends: Ends = (("", 0), ("", 0))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.pause_reading()
        ends = ends_of(transport.get_extra_info("peername"), transport.get_extra_info("sockname"))
        if ends is None:  # not TCP: the request's checks decide
            self.admit()
            return
        self.ends = ends
        self.gate.enter(self)

    def admit(self) -> None:
        if self.lost or self.transport is None or self.transport.is_closing():
            return
        self.admitted = True
        self.inner.connection_made(self.transport)
        self.transport.resume_reading()

    def refuse(self, why: str) -> None:
        """Answer 403 with the reason and close once the request came in: a socket closed with its request
        unread is reset, and the client would read a reset instead of the answer. Not longer than
        `REFUSED_WAIT_S`, and only `MAX_ANSWERED` at a time (a flood's connections send no request: closed at
        once)."""
        if self.lost or self.transport is None or self.transport.is_closing():
            return
        body = json.dumps({"error": why}).encode()
        head = b"HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\nconnection: close\r\n"
        self.transport.write(head + b"content-length: %d\r\n\r\n" % len(body) + body)
        if len(self.gate.refused) >= MAX_ANSWERED:
            self.transport.close()
            return
        self.gate.refused.add(self)
        asyncio.get_running_loop().call_later(REFUSED_WAIT_S, self._close)
        self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _close(self) -> None:
        self.gate.refused.discard(self)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.admitted:
            self.inner.data_received(data)
        else:  # a refused connection's request: read, then closed (with the answer sent)
            self._close()

    def eof_received(self) -> bool | None:
        if self.admitted:
            return self.inner.eof_received()
        self._close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.gate.refused.discard(self)
        if self.admitted:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.admitted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.admitted:
            self.inner.resume_writing()


def checked_protocol(check: Check) -> type[CheckedConnection]:
    """A protocol class for `uvicorn.Config(http=...)` whose connections pass `check` before they are read."""
    return type("CheckedHTTPConnection", (CheckedConnection,), {"gate": Gate(check)})
