"""Review 27: the HTTP transport and the live web page, attacked by another user of the machine, a run and a
hostile page."""

from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from .conftest import run_cli
from .helpers.ports import free_port
from .helpers.serving import serving
from .test_http import INIT

STRANGER = 65534  # nobody
ROOT_ONLY = pytest.mark.skipif(
    os.geteuid() != 0, reason="a socket of another user needs root (setfsuid) here"
)


def socket_of(uid: int) -> socket.socket:
    """A TCP socket owned by `uid`, as another user's process would make it: the kernel gives a new socket its
    creator's file-system uid, which `setfsuid` changes for the calling thread alone (a thread of its own here,
    so nothing else of the test runs as that user)."""
    libc = ctypes.CDLL(None, use_errno=True)
    made: list[socket.socket] = []

    def make() -> None:
        previous = libc.setfsuid(uid)
        try:
            made.append(socket.socket())
        finally:
            libc.setfsuid(previous)

    worker = threading.Thread(target=make)
    worker.start()
    worker.join()
    return made[0]


def exchange(sock: socket.socket, port: int, method: str, path: str, body: bytes = b"") -> tuple[int, str]:
    """One raw HTTP/1.1 request over `sock` (connected here); the status and the body."""
    headers = f"Host: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
    if body:
        headers += "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
    sock.connect(("127.0.0.1", port))
    with sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\n{headers}\r\n".encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, text = answer.decode(errors="replace").partition("\r\n\r\n")
    return int(head.split(" ", 2)[1]), text


def until_listening(port: int) -> None:
    while True:  # uvicorn listens just after the dashboard's line
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            return
        except ConnectionRefusedError:
            threading.Event().wait(0.05)


# the loopback is every user's: without a token, another account of the machine called the tools
# `serve --transport http` without a token (the loopback default) let any process of the machine through while
# no run was in flight: another user's process started a session and ran commands in the project as this user
# (a run's output comes back in the tools' answers), and read the code and logs on the page. The same for
# `dashboard --web`.


@ROOT_ONLY
def test_another_user_of_the_machine_cannot_call_the_tools_or_read_the_page(ml_project: Path) -> None:
    port = free_port()
    argv = ["serve", "--project", str(ml_project), "--transport", "http", "--port", str(port)]
    for _proc in serving(argv, b"serving MCP over HTTP at"):
        status, text = exchange(socket_of(STRANGER), port, "POST", "/mcp", json.dumps(INIT).encode())
        assert status == 403 and "another user (uid 65534)" in text and "AUTORESEARCH_TOKEN" in text, text
        status, text = exchange(socket_of(STRANGER), port, "GET", "/api/summary")
        assert status == 403, text
        # the user's own processes (and root's) are let through
        status, text = exchange(socket.socket(), port, "POST", "/mcp", json.dumps(INIT).encode())
        assert status == 200, text
        status, text = exchange(socket.socket(), port, "GET", "/api/summary")
        assert status == 200, text


@ROOT_ONLY
def test_another_user_of_the_machine_cannot_read_the_dashboard(ml_project: Path) -> None:
    port = free_port()
    argv = ["dashboard", "--web", "--project", str(ml_project), "--port", str(port)]
    for _proc in serving(argv, b"dashboard of"):
        until_listening(port)
        status, text = exchange(socket_of(STRANGER), port, "GET", "/api/summary")
        assert status == 403 and "another user" in text, text
        status, text = exchange(socket.socket(), port, "GET", "/api/summary")
        assert status == 200, text


# a run reads the session live from `dashboard --web`
# The runs' logs and the session's state are hidden from every run (review 22): a run that sees them can tell its
# own re-measurement, the best to beat, the other slots' runs. The HTTP transport's page refuses a run's
# connection (`RefuseRuns`), but `dashboard --web`, a process of its own beside the server, did not: without a
# token (the loopback default) a run with the network on read the whole session from it.
READS_THE_DASHBOARD = """
import urllib.request
for path in ('/api/summary', '/api/experiments'):
    try:
        with urllib.request.urlopen('http://127.0.0.1:PORT' + path, timeout=30) as answer:
            print('READ', path, answer.status, answer.read()[:200])
    except Exception as exc:
        print('refused', path, exc)
"""


@pytest.mark.anyio
async def test_a_run_cannot_read_the_session_from_the_dashboard(ml_project: Path, agent_for: Any) -> None:
    port = free_port()
    argv = ["dashboard", "--web", "--project", str(ml_project), "--port", str(port)]
    async with agent_for(ml_project, {"network": "on"}) as agent:
        await agent.ok("start_session", tag="peek")
        await agent.experiment("baseline")
        for _proc in serving(argv, b"dashboard of"):
            until_listening(port)
            status, _ = exchange(socket.socket(), port, "GET", "/api/summary")
            assert status == 200  # the user's browser reads it
            code = READS_THE_DASHBOARD.replace("PORT", str(port))
            await agent.edit("LR = 0.5", "LR = 0.4\n" + code)
            run, _ = await agent.experiment("read the dashboard")
            log = Path(run["log_path"]).read_text()
            assert "READ" not in log and log.count("refused") == 2 and "403" in log, log


# `dashboard --web` announced its address before binding it
# As `serve` did before issue 21.6: with the port taken (another user's process listening there first), it said
# "dashboard of ... at http://127.0.0.1:PORT/", and the user opened that address, `?token=` and all, on the
# other process; then uvicorn's own error line and exit status 3.


def test_dashboard_on_a_taken_port_is_one_clear_line_and_nothing_is_announced(ml_project: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("dashboard", "--web", "--project", str(ml_project), "--port", str(port))
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"mcp-autoresearch: cannot listen on 127.0.0.1:{port}: it is taken (another server?); choose another --port"
    ], done.stderr


# `--host 0.0.0.0` with a token: every client but the loopback's was refused
# A non-loopback bind needs a token, and then should serve the other machines; but the Host check allowed only the
# loopback's names for a wildcard bind (`adapters/host_rules.py` `rules_for`), so a client addressing the machine by
# its address or name got 421 "Invalid Host header" on every request: the bind the user asked for served nobody
# new. Now a wildcard bind (which the CLI allows only with a token) accepts any Host and Origin, the token being
# the check a rebinding page cannot pass.


def test_a_wildcard_bind_with_a_token_serves_a_client_that_names_the_machine(ml_project: Path) -> None:
    port, token = free_port(), "wildcard-token"
    argv = [
        "serve",
        "--project",
        str(ml_project),
        "--transport",
        "http",
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
    ]
    for _proc in serving(argv, b"serving MCP over HTTP at", token):
        body = json.dumps(INIT).encode()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            head = (
                f"POST /mcp HTTP/1.1\r\nHost: 192.0.2.7:{port}\r\nAuthorization: Bearer {token}\r\n"
                "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            sock.sendall(head.encode() + body)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_a_lock_naming_a_pid_reused_since_is_no_server(tmp_path: Path) -> None:
    """`dashboard --web` refuses the processes descending from the server named in `server.lock`. The server gone,
    its pid reused by a process started later (the user's shell, whose browser descends from it), that process
    must not be taken for the server: the user's own page would be refused."""
    import os
    import time

    from mcp_autoresearch.records.state import server_pid

    lock = tmp_path / ".autoresearch" / "server.lock"
    lock.parent.mkdir()
    lock.write_text(json.dumps({"pid": os.getpid()}))
    assert server_pid(tmp_path) == os.getpid()  # this process started before the lock was written
    old = time.time() - 3600
    later = subprocess.Popen(["sleep", "60"])
    try:
        lock.write_text(json.dumps({"pid": later.pid}))
        os.utime(lock, (old, old))  # written an hour before this process started: its pid was reused
        assert server_pid(tmp_path) is None
    finally:
        later.kill()
        later.wait()
