"""The stdio transport on pipes, served from the event loop itself.

The SDK's `stdio_server` reads each line of stdin and writes each reply through a worker thread (anyio's
`wrap_file`): two thread hand-offs per call, on every call of the night. When stdin and stdout are pipes (how
every MCP client starts a server) this transport waits for them in the event loop instead: a line is read when
the pipe has one, a reply is written at once (on a descriptor of its own, opened non-blocking, so a client that
stops reading never blocks the loop). Anything else (a terminal, a file, a socket, no /proc) is served by the
SDK's transport, as before.

The contract is the SDK's: while serving, fd 0 reads the null device and fd 1 writes to stderr, so the server's
children and stray prints never touch the wire; both are restored at the end. A reply that cannot be encoded (a
lone surrogate) goes out with U+FFFD in its place (`surrogates.wire_json`). At the end of its input (the client
closed its end), a last line with no newline is read as a line, and the requests read are still answered for up
to `END_GRACE_S` (a one-shot client, `printf ... | mcp-autoresearch serve`, reads its answers after closing
stdin); then the session ends and cancels what is left, as the SDK's transport does at once. A request the client
cancelled (`notifications/cancelled`) is owed nothing, so the server leaves at once and ends a run itself (the
SDK's client kills a server still there 2 s after closing stdin); an id reused while its first request runs is
owed once per request; a last line over `MAX_LINE_BYTES` gets its error as one ended by a newline does.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp_types as types
from mcp.server.stdio import stdio_server
from mcp.shared._context_streams import create_context_streams
from mcp.shared.message import SessionMessage

from .surrogates import SafeWriteStream, top_level, wire_json

log = logging.getLogger("mcp_autoresearch")
INVALID_REQUEST = -32600
READ_BYTES = 1 << 16
# The longest message read (the largest edit, 4 MiB, escaped in JSON, is far below): a longer line is dropped as
# it comes, never held whole, and a request's id found at its start gets an error.
MAX_LINE_BYTES = 64 << 20
# At the end of input, how long the requests read are still answered (the SDK's client waits 2 s for a server to
# leave after closing its stdin, then terminates it: the server leaves first, having ended its runs).
END_GRACE_S = 1.0
CANCELLED = "notifications/cancelled"


@asynccontextmanager
async def stdio_streams() -> AsyncIterator[tuple[Any, Any]]:
    """(read stream, write stream) of the MCP session over this process's stdin and stdout."""
    wire = _claim_pipes()
    if wire is None:
        async with stdio_server() as (read_stream, write_stream):
            yield read_stream, SafeWriteStream(write_stream)
        return
    read_fd, write_fd, restore = wire
    incoming_writer, incoming = create_context_streams[SessionMessage | Exception](0)
    outgoing, outgoing_reader = create_context_streams[SessionMessage](0)
    owed = _Owed()

    async def pass_on(line: bytes) -> None:
        message = _message(line)
        owed.read(message)
        await incoming_writer.send(message)

    async def read_lines() -> None:
        try:
            await read_until_the_end()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the session ended first (SIGTERM): nobody reads what is left

    async def read_until_the_end() -> None:
        partial = bytearray()  # the start of the line being read (appended to as it comes: no copy per read)
        head: bytes | None = None  # the start of a line too long, while the rest of it is thrown away
        dropped = 0
        async with incoming_writer:
            while True:
                await anyio.wait_readable(read_fd)
                try:
                    chunk = os.read(read_fd, READ_BYTES)
                except OSError:
                    chunk = b""
                if not chunk:  # the client closed its end: its last line is read, what it asked answered
                    if head is not None and (refusal := too_long(head, dropped)) is not None:
                        await outgoing.send(SessionMessage(refusal))
                    elif head is None and partial.strip():
                        await pass_on(bytes(partial))
                    with anyio.move_on_after(END_GRACE_S):
                        await owed.settled()
                    return  # the session ends
                *ended, rest = chunk.split(b"\n")
                if ended and head is not None:
                    if (refusal := too_long(head, dropped + len(ended[0]))) is not None:
                        await outgoing.send(SessionMessage(refusal))
                    head, ended[0] = None, b""
                elif ended:
                    partial += ended[0]
                    if len(partial) > MAX_LINE_BYTES:  # the read that ended the line took it over the limit
                        if (refusal := too_long(bytes(partial[:4096]), len(partial))) is not None:
                            await outgoing.send(SessionMessage(refusal))
                        ended[0] = b""
                    else:
                        ended[0] = bytes(partial)
                    partial.clear()
                for line in ended:
                    if line.strip():
                        await pass_on(line)
                if head is not None:
                    dropped += len(rest)
                    continue
                partial += rest
                if len(partial) > MAX_LINE_BYTES:
                    head, dropped = bytes(partial[:4096]), len(partial)
                    partial = bytearray()

    async def write_replies() -> None:
        async with outgoing_reader:
            async for item in outgoing_reader:
                data = memoryview((wire_json(item.message) + "\n").encode("utf-8"))
                while data:
                    try:
                        data = data[os.write(write_fd, data) :]
                    except BlockingIOError:  # the pipe is full: the client reads slowly
                        await anyio.wait_writable(write_fd)
                    except OSError:  # the client is gone: nothing more can reach it
                        owed.clear()
                        return
                owed.answered(item.message)

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(read_lines)
            tasks.start_soon(write_replies)
            yield incoming, outgoing
            tasks.cancel_scope.cancel()
    finally:
        restore()


class _Owed:
    """The ids of the requests read and not answered yet, each with how many times it is owed (a careless
    client may reuse an id while its first request is still running: each request gets its answer)."""

    def __init__(self) -> None:
        self.ids: Counter[Any] = Counter()
        self._none_left = anyio.Event()
        self._client_gone = False

    def read(self, message: SessionMessage | Exception) -> None:
        if self._client_gone or not isinstance(message, SessionMessage):
            return  # once the client stopped reading, no answer can reach it: nothing is owed
        if isinstance(message.message, types.JSONRPCRequest):
            self.ids[message.message.id] += 1
        elif isinstance(message.message, types.JSONRPCNotification) and message.message.method == CANCELLED:
            # The client wants no answer to that request (the session sends none): it is owed no more.
            params = message.message.params or {}
            self._settle(params.get("requestId") if isinstance(params, dict) else None)

    def answered(self, message: Any) -> None:
        if isinstance(message, (types.JSONRPCResponse, types.JSONRPCError)):
            self._settle(message.id)

    def _settle(self, request_id: Any) -> None:
        if isinstance(request_id, bool) or not isinstance(request_id, (int, str)):
            return  # no request's id (a hostile `requestId` such as a list, or true, which equals 1)
        if self.ids.get(request_id, 0) <= 0:
            return  # never read, or answered already
        self.ids[request_id] -= 1
        if self.ids[request_id] == 0:
            del self.ids[request_id]
        if not self.ids:
            self._none_left.set()

    def clear(self) -> None:
        """The client is gone (its end of stdout closed): nothing read before or after is owed."""
        self._client_gone = True
        self.ids.clear()
        self._none_left.set()

    async def settled(self) -> None:
        """Until every request read has its answer (or was cancelled by the client)."""
        if self.ids:
            self._none_left = anyio.Event()
            await self._none_left.wait()


def _message(line: bytes) -> SessionMessage | Exception:
    """One line of the wire as the SDK's transport passes it on: the message, or why it could not be read (the
    session answers or logs that)."""
    try:
        return SessionMessage(
            types.jsonrpc_message_adapter.validate_json(line.decode("utf-8", errors="replace"), by_name=False)
        )
    except Exception as exc:
        return exc


def too_long(head: bytes, size: int) -> types.JSONRPCError | None:
    """The answer to a line over `MAX_LINE_BYTES` (`head`: its start): an error for the request whose id its
    top level names before the cut, else None (nothing to answer: it is logged). An id nested in its params, or
    a notification's or response's, names no request of this line: answering it would answer another."""
    members = top_level(head.decode("utf-8", errors="replace"), cut=True) or {}
    request_id = members.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, (int, str)) or "method" not in members:
        log.warning("dropped a message of %d bytes (over %d) that names no request id", size, MAX_LINE_BYTES)
        return None
    message = (
        f"the request is {size} bytes, over the {MAX_LINE_BYTES >> 20} MiB the server reads; nothing was done: "
        "send less at a time (apply_edit takes at most 4 MiB of content)"
    )
    return types.JSONRPCError(
        jsonrpc="2.0", id=request_id, error=types.ErrorData(code=INVALID_REQUEST, message=message)
    )


def _claim_pipes() -> tuple[int, int, Callable[[], None]] | None:
    """When fd 0 and fd 1 are pipes: (a private copy of stdin, stdout's pipe opened anew and non-blocking, a
    function that restores fd 0 and fd 1), with fd 0 on the null device and fd 1 on stderr meanwhile. None
    (nothing changed) otherwise."""
    opened: list[int] = []
    try:
        if not all(stat.S_ISFIFO(os.fstat(fd).st_mode) for fd in (0, 1)):
            return None
        saved_in = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
        opened.append(saved_in)
        saved_out = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
        opened.append(saved_out)
        # A description of its own (through /proc): O_NONBLOCK on the inherited one would reach the client too.
        write_fd = os.open(f"/proc/self/fd/{saved_out}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        opened.append(write_fd)
        if not stat.S_ISFIFO(os.fstat(write_fd).st_mode) or os.fstat(write_fd).st_ino != os.fstat(1).st_ino:
            raise OSError("stdout could not be opened anew")
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        opened.append(null)
        os.dup2(null, 0)
        os.dup2(2, 1)
    except OSError:
        if len(opened) > 3:  # fd 0 may be diverted already: it reads the wire again
            os.dup2(saved_in, 0)
        for fd in opened:
            os.close(fd)
        return None
    os.close(null)

    def restore() -> None:
        for saved, fd in ((saved_in, 0), (saved_out, 1)):
            try:
                os.dup2(saved, fd)
            except OSError:
                pass
        for fd in (saved_in, saved_out, write_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    return saved_in, write_fd, restore
