"""The HTTP transport as a user starts it (`serve --transport http`), probed with a real HTTP client."""

from __future__ import annotations

import http.client
import os
import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from .conftest import GIT_ENV, run_cli
from .helpers.ports import free_port

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "probe", "version": "1"},
    },
}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture
def http_server(ml_project: Path) -> Iterator[tuple[str, str]]:
    port, token = free_port(), "s3cret-token"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mcp_autoresearch",
            "serve",
            "--project",
            str(ml_project),
            "--transport",
            "http",
            "--port",
            str(port),
            "--token",
            token,
        ],
        env={**os.environ, **GIT_ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    assert proc.stderr is not None
    # The server says it serves only once it listens: await that line (or its exit), no polling against a clock.
    for line in iter(proc.stderr.readline, b""):
        if b"serving MCP over HTTP at" in line:
            break
    else:
        proc.kill()
        raise AssertionError(f"the server exited (rc {proc.wait()}) without serving")
    try:
        yield url, token
    finally:
        proc.terminate()
        proc.wait(10)


def test_token_is_required_on_every_request(http_server: tuple[str, str]) -> None:
    url, token = http_server
    with httpx2.Client(timeout=10) as http:
        # RFC 6750: a wrong bearer token is `invalid_token`; without one, a bare challenge (section 3.1).
        for wrong_token in ("Bearer nope", f"bearer {token}x", f"Bearer {token[:-1]}"):
            wrong = http.post(url, json=INIT, headers={**ACCEPT, "Authorization": wrong_token})
            assert wrong.status_code == 401, wrong_token
            challenge = wrong.headers["www-authenticate"]
            assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge, challenge
            assert wrong.json()["error"] == "invalid_token"
        for missing in ({}, {"Authorization": "Basic abc"}):
            refused = http.post(url, json=INIT, headers={**ACCEPT, **missing})
            assert refused.status_code == 401 and "Authorization: Bearer" in refused.text
            assert refused.headers["www-authenticate"] == 'Bearer realm="mcp-autoresearch"'
        assert http.get(url, headers={"Authorization": "Basic abc"}).status_code == 401
        # No OAuth here: discovery answers 404 at once instead of a 401 that looks like a sign-in request.
        for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-authorization-server"):
            discovery = http.get(url.removesuffix("/mcp") + path)
            assert discovery.status_code == 404 and "static header" in discovery.text
        for good_token in (f"Bearer {token}", f"bearer {token}"):
            good = http.post(url, json=INIT, headers={**ACCEPT, "Authorization": good_token})
            assert good.status_code == 200


def test_dns_rebinding_protection(http_server: tuple[str, str]) -> None:
    url, token = http_server
    auth = {**ACCEPT, "Authorization": f"Bearer {token}"}
    with httpx2.Client(timeout=10) as http:
        assert http.post(url, json=INIT, headers={**auth, "Host": "evil.example:80"}).status_code == 421
        assert http.post(url, json=INIT, headers={**auth, "Origin": "http://evil.example"}).status_code == 403
        assert (
            http.post(url, json=INIT, headers={**auth, "Origin": "http://localhost:3000"}).status_code == 200
        )


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("bound", "token"), [("127.0.0.1", None), ("::1", "t"), ("10.1.2.3", "t"), ("0.0.0.0", "t")]
)
async def test_the_pages_host_check_answers_as_the_sdks_on_the_endpoint(
    bound: str, token: str | None
) -> None:
    """The page applies the Host/Origin rules itself (`HostRules.refusal`, so that `dashboard --web` needs no MCP
    SDK); the endpoint hands the same rules to the SDK's check (`security_for`). Both answer every request
    alike."""
    from mcp.server.transport_security import TransportSecurityMiddleware
    from starlette.requests import Request

    from mcp_autoresearch.adapters.host_rules import rules_for
    from mcp_autoresearch.adapters.http import security_for

    sdk, ours = TransportSecurityMiddleware(security_for(bound, token)), rules_for(bound, token)
    hosts = [None, "", "127.0.0.1", "127.0.0.1:8000", "localhost:1", "[::1]:9", "[::1]", "10.1.2.3:80"]
    hosts += ["evil.example", "evil.example:80", "127.0.0.1.evil:80", "localhost.evil", "10.1.2.30:80"]
    origins = [
        None,
        "",
        "http://localhost:3000",
        "http://127.0.0.1",
        "https://10.1.2.3:1",
        "http://10.1.2.3:5",
    ]
    origins += ["http://evil.example", "http://localhost.evil:3", "null", "http://[::1]:80"]
    for host in hosts:
        for origin in origins:
            headers = [
                (k.encode(), v.encode()) for k, v in (("host", host), ("origin", origin)) if v is not None
            ]
            answer = await sdk.validate_request(Request({"type": "http", "headers": headers}))
            expected = None if answer is None else (answer.status_code, bytes(answer.body).decode())
            assert ours.refusal(host, origin) == expected, (bound, host, origin)


@pytest.mark.anyio
async def test_mcp_client_over_http_with_token(http_server: tuple[str, str]) -> None:
    url, token = http_server
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        info = await client.call_tool("detect_project", {})
        assert info.structured_content["project_type"] == "ml"
        started = await client.call_tool("start_session", {"tag": "web"})
        assert started.structured_content["branch"] == "autoresearch/web"
        run = await client.call_tool("run_experiment", {"description": "baseline"})
        assert run.structured_content["status"] == "ok"


def test_an_idle_connection_outlives_a_clients_keep_alive(http_server: tuple[str, str]) -> None:
    """A client sends its next call on the connection it keeps (the MCP SDK's httpx keeps one 5 s). The server
    closed idle connections after 5 s too (uvicorn's default), so a call made after an agent thought for about
    5 s could go out on a connection being closed: the client read no answer (`ReadError`). The server now keeps
    them longer than the clients do: an idle connection is still open when a client's 5 s have passed."""
    url, token = http_server
    address = url.split("/")[2]
    connection = http.client.HTTPConnection(address, timeout=30)
    try:
        connection.request("GET", "/mcp", headers={"Authorization": f"Bearer {token}"})
        answer = connection.getresponse()
        answer.read()
        assert answer.status < 500 and not answer.will_close, answer.status
        kept = connection.sock
        assert kept is not None
        # Awaited: the server's closing of the idle connection (end of file), or 8 s gone with it still open.
        readable, _, _ = select.select([kept], [], [], 8.0)
        closed = bool(readable) and kept.recv(1, socket.MSG_PEEK) == b""
        assert not closed, "the server closed an idle connection before a client's keep-alive of 5 s ended"
        connection.request("GET", "/mcp", headers={"Authorization": f"Bearer {token}"})
        again = connection.getresponse()
        again.read()
        assert connection.sock is kept and again.status == answer.status
    finally:
        connection.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_non_loopback_bind_without_token_is_refused(ml_project: Path) -> None:
    env_token = os.environ.pop("AUTORESEARCH_TOKEN", None)
    try:
        out = run_cli("serve", "--project", str(ml_project), "--transport", "http", "--host", "0.0.0.0")
        assert out.returncode == 2 and "without a token" in out.stderr
    finally:
        if env_token is not None:
            os.environ["AUTORESEARCH_TOKEN"] = env_token


def test_a_taken_port_is_one_clear_line_and_nothing_is_announced(ml_project: Path) -> None:
    """Issue 21.6: the server announced itself before binding; with the port taken a client reached another
    project's server. Now it binds first: a taken port is one line and exit 2."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("serve", "--project", str(ml_project), "--transport", "http", "--port", str(port))
    assert done.returncode == 2, done.stderr
    assert "serving MCP" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip() and "INFO" not in line]
    assert lines == [
        f"mcp-autoresearch: cannot listen on 127.0.0.1:{port}: it is taken (another server?); choose another --port"
    ], done.stderr
