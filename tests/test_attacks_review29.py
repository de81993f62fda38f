"""Review 29: the HTTP transport's checks of who holds a connection (`adapters/peers.py`), attacked by a run.

A connection was told by its two ports alone: every row of the kernel's TCP tables whose local port was the
client's and remote port the server's was taken for its client socket, whatever the addresses. A run that bound
its socket to another loopback address (127.0.0.2) with the server's own port as its port (127.0.0.2:PORT to
127.0.0.1:PORT) matched the server's side of the same connection too (local PORT, remote PORT), which the
server holds: the holder found first, the server, is no run, and the run's requests were let through (the tools,
with slots another slot's experiment; the session on `dashboard --web`), at accept and at request time alike."""

from __future__ import annotations

import os
import socket
import textwrap

import pytest

from mcp_autoresearch.adapters import peers

from .test_http import INIT
from .test_server_process import anyio_backend, candidate_log_over_http, http_server  # noqa: F401 (fixtures)


def _held_by_a_child(
    source: tuple[str, int], listening: socket.socket, family: int = socket.AF_INET
) -> tuple[str | None, str | None]:
    """A child of this process (a run's process, this process being the server) connects from `source`; what
    `run_holding` and `stranger_holding` say of the connection."""
    server = listening.getsockname()[:2]
    target = ("127.0.0.1" if family == socket.AF_INET else "::1", server[1])
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            held = socket.socket(family)
            held.bind(source)
            held.connect(target)
            os.write(ready_w, b"x")
            os.read(done_r, 1)
        finally:
            os._exit(0)
    try:
        os.read(ready_r, 1)
        accepted, client = listening.accept()
        with accepted:
            client, server = client[:2], accepted.getsockname()[:2]
            return peers.run_holding(client, server, os.getpid()), peers.stranger_holding(client, server)
    finally:
        os.write(done_w, b"x")
        os.waitpid(child, 0)
        for end in (ready_r, ready_w, done_r, done_w):
            os.close(end)


def test_a_run_binding_the_servers_port_on_another_loopback_address_is_still_told() -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        for source in (("127.0.0.2", 0), ("127.0.0.2", port)):
            run, stranger = _held_by_a_child(source, listening)
            assert run is not None and "runs" in run and stranger is None, (source, run, stranger)


def test_a_runs_connection_over_ipv6_and_to_a_dual_stack_socket_is_told() -> None:
    """The addresses as the tables and the socket give them: `::1` (tcp6), and an IPv4 client of a socket bound
    to `::` (its peer shown as `::ffff:127.0.0.1`, its client socket in tcp)."""
    for bound, source in ((("::1", 0), ("::1", 0)), (("::", 0), ("127.0.0.1", 0))):
        with socket.socket(socket.AF_INET6) as listening:
            listening.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            listening.bind(bound)
            listening.listen()
            family = socket.AF_INET6 if ":" in source[0] else socket.AF_INET
            run, stranger = _held_by_a_child(source, listening, family)
            assert run is not None and "runs" in run and stranger is None, (bound, run, stranger)


# the same, end to end: a run with the network on calls the tools of `serve --transport http` (no token)
CALLS_FROM_THE_SERVERS_PORT = """
import json, socket
body = json.dumps(INIT_VALUE).encode()
sock = socket.socket()
sock.bind(('127.0.0.2', PORT_VALUE))
sock.connect(('127.0.0.1', PORT_VALUE))
head = ('POST /mcp HTTP/1.1\\r\\nHost: 127.0.0.1:PORT_VALUE\\r\\nConnection: close\\r\\n'
        'Content-Type: application/json\\r\\nAccept: application/json, text/event-stream\\r\\n'
        'Content-Length: %d\\r\\n\\r\\n' % len(body))
sock.sendall(head.encode() + body)
answer = b''
while chunk := sock.recv(65536):
    answer += chunk
print('ANSWER', answer.split(b'\\r\\n', 1)[0].decode(), answer[-300:], flush=True)
"""


@pytest.mark.anyio
@pytest.mark.parametrize("http_server", ["no token"], indirect=True)
async def test_a_run_cannot_call_the_tools_from_the_servers_own_port(
    http_server: tuple[str, str, str],  # noqa: F811 (the fixture imported above)
) -> None:
    url, token, _how = http_server
    port = url.split(":")[-1].split("/")[0]
    code = CALLS_FROM_THE_SERVERS_PORT.replace("PORT_VALUE", port).replace("INIT_VALUE", repr(INIT))
    log = await candidate_log_over_http(url, token, "own-port", textwrap.dedent(code))
    assert "ANSWER HTTP/1.1 403" in log and "runs never call its tools" in log, log


def test_a_holder_that_ended_before_it_was_looked_at_is_no_one_elses() -> None:
    """The process found holding a connection's socket may end before its parents are read: that read failing
    said "not a run", so a run's process that connected and exited at once passed for someone else's (its
    connection then held one of the server's descriptors). The chain that cannot be read is now no answer."""
    import subprocess
    import sys

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    assert peers._descends_from(str(ended.pid), os.getpid()) is None
    assert peers._descends_from(str(os.getpid()), os.getppid()) is True
