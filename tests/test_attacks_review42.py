"""Review 42: the dashboard's page applies the Host/Origin rules itself (`adapters/host_rules.py`, no MCP SDK in
`dashboard --web`), and the endpoint still hands them to the SDK's check. Real `dashboard --web` and
`serve --transport http` processes, spoken to over raw sockets (what a rebinding page, another local user or a
run's process can send, header by header)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from .conftest import make_repo
from .helpers.ports import free_port
from .web_support import start_process, stop_process, synthetic_session

# (what, the request's head with {port} for the port; Connection: close on each, so the answer ends the stream)
ODD = [
    ("a rebinding page's Host", "GET /api/summary HTTP/1.1\r\nHost: evil.example:{port}\r\n"),
    ("no Host at all (HTTP/1.0)", "GET /api/summary HTTP/1.0\r\n"),
    ("an empty Host", "GET /api/summary HTTP/1.1\r\nHost: \r\n"),
    ("the loopback's name with a trailing dot", "GET /api/summary HTTP/1.1\r\nHost: localhost.:{port}\r\n"),
    ("upper case", "GET /api/summary HTTP/1.1\r\nHost: LOCALHOST:{port}\r\n"),
    ("IPv6 loopback spelt out", "GET /api/summary HTTP/1.1\r\nHost: [0:0:0:0:0:0:0:1]:{port}\r\n"),
    ("an IPv4-mapped IPv6 loopback", "GET /api/summary HTTP/1.1\r\nHost: [::ffff:127.0.0.1]:{port}\r\n"),
    (
        "absolute-form target, bad Host",
        "GET http://127.0.0.1:{port}/api/summary HTTP/1.1\r\nHost: evil.example\r\n",
    ),
    (
        "Origin null (a sandboxed frame)",
        "GET /api/summary HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: null\r\n",
    ),
    (
        "another site's Origin",
        "GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://evil.example\r\n",
    ),
    (
        "a loopback Referer, bad Host",
        "GET /api/summary HTTP/1.1\r\nHost: evil.example\r\nReferer: http://127.0.0.1/\r\n",
    ),
    ("HEAD", "HEAD /api/summary HTTP/1.1\r\nHost: evil.example\r\n"),
    (
        "a body on GET",
        "GET /api/experiments HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    ),
    (
        "a websocket upgrade",
        "GET /api/events HTTP/1.1\r\nHost: evil.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
    ),
    (
        "two Hosts, the good one first",
        "GET /api/summary HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n",
    ),
    (
        "two Hosts, the bad one first",
        "GET /api/summary HTTP/1.1\r\nHost: evil.example\r\nHost: 127.0.0.1\r\n",
    ),
]


def _ask(port: int, head: str) -> bytes:
    """One request over a raw socket; the whole answer (the server closes after it)."""
    text = head.replace("{port}", str(port))
    if "\r\n\r\n" not in text:
        text += "Connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(text.encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


@pytest.fixture
def session_root(tmp_path: Path) -> Path:
    root = make_repo(tmp_path / "p", {"train.py": "LR = 1\n"})
    synthetic_session(root, 5)
    return root


def test_the_page_alone_refuses_every_odd_host_and_origin_and_shows_no_data(session_root: Path) -> None:
    """Held: `dashboard --web` (no token, loopback) answers the odd requests a rebinding page, another local
    process or a run could send with a refusal (421/403, or h11's 400 for two Hosts), never 200, and no answer
    holds the session's data; the plain request is answered (the check is not simply closed)."""
    port = free_port()
    proc = start_process(["dashboard", "--web", "--project", str(session_root), "--port", str(port)], port)
    try:
        plain = _ask(port, "GET /api/summary HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n")
        assert _status(plain) == 200 and b'"big"' in plain, plain[:300]
        for what, head in ODD:
            answer = _ask(port, head)
            assert _status(answer) in (400, 403, 421), (what, answer[:300])
            assert b'"big"' not in answer and b"total" not in answer, (what, answer[:300])
    finally:
        stop_process(proc)


def test_the_page_next_to_mcp_refuses_as_the_endpoint_does(ml_project: Path) -> None:
    """Held: `serve --transport http` (no token): for each odd request, the page (`/api/summary`, its own rules)
    and the endpoint (`/mcp`, the SDK's check built from the same rules) refuse alike, with the same status."""
    port = free_port()
    proc = start_process(
        ["serve", "--transport", "http", "--project", str(ml_project), "--port", str(port)], port
    )
    try:
        for what, head in ODD:
            if "HTTP/1.0" in head or "Upgrade" in head or "Content-Length" in head:
                continue  # the page's own request forms; /mcp answers those on other grounds
            page = _status(_ask(port, head))
            endpoint = _status(
                _ask(port, head.replace("/api/summary", "/mcp").replace("/api/events", "/mcp"))
            )
            assert page == endpoint and page in (400, 403, 421), (what, page, endpoint)
    finally:
        stop_process(proc)


# --- 1. The page's refusals are no longer said anywhere ---------------------------------------------------------
# Before a9d51b1 the page refused through the SDK's `TransportSecurityMiddleware`, which logs each refusal
# (`Invalid Host header: evil.example`, `Invalid Origin header: null`, `Missing Host header in request`): uvicorn
# configures only its own loggers, so Python's last-resort handler put the line on the dashboard's stderr, and
# `serve --transport http` (logging.basicConfig at --log-level WARNING) logged the page's refusals as it logs the
# endpoint's. `HostRules.refusal` answers the same status but says nothing: a DNS-rebinding page probing
# `dashboard --web` (or the page at `/` beside `/mcp`) now leaves no trace, while the same probe at `/mcp` of the
# same process is logged. The refused answers are unchanged; the user's only sign of an attack is gone.
# Fixed: `PageGuard` says each refusal on stderr (the header shown escaped and bounded).


@pytest.mark.parametrize("serving", ["dashboard --web", "serve --transport http"])
def test_a_refused_rebinding_request_to_the_page_is_said_on_stderr(
    ml_project: Path, session_root: Path, serving: str
) -> None:
    """A request with another site's Host refused by the page is said on the server's stderr, as the SDK's
    check said it before (and still says it for `/mcp`)."""
    port = free_port()
    if serving == "dashboard --web":
        args = ["dashboard", "--web", "--project", str(session_root), "--port", str(port)]
    else:
        args = ["serve", "--transport", "http", "--project", str(ml_project), "--port", str(port)]
    proc = start_process(args, port)
    try:
        refused = _ask(port, "GET /api/summary HTTP/1.1\r\nHost: rebound-page.example:{port}\r\n")
        assert _status(refused) == 421, refused[:300]
        if serving != "dashboard --web":  # the endpoint beside it: said (held)
            assert _status(_ask(port, "GET /mcp HTTP/1.1\r\nHost: rebound-mcp.example:{port}\r\n")) == 421
    finally:
        stderr = stop_process(proc)
    if serving != "dashboard --web":
        assert "Invalid Host header: rebound-mcp.example" in stderr, stderr
    assert "Invalid Host header: rebound-page.example" in stderr, stderr
