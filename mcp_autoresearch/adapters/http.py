"""The streamable HTTP transport: loopback by default, DNS-rebinding protection on, an optional bearer token.

A server reachable over HTTP runs shell commands in the project on request, so every request must prove it
comes from the user: from this machine (Host/Origin checks), not from one of the server's own runs (whatever the
token), and with the token when one is set; without a token, from a process of the user's own (the loopback is
every user's of the machine).
"""

from __future__ import annotations

import errno
import hmac
import json
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from . import peers
from .host_rules import rules_for

if TYPE_CHECKING:  # the MCP SDK is imported where the endpoint is built, never by the page alone
    from mcp.server.mcpserver import MCPServer
    from mcp.server.transport_security import TransportSecuritySettings

    from .accept_check import Check
    from .peers import Ends


def security_for(host: str, token: str | None = None) -> TransportSecuritySettings:
    """The MCP SDK's Host and Origin checks for the endpoint, from the rules the page applies too
    (`host_rules.rules_for`)."""
    from mcp.server.transport_security import TransportSecuritySettings

    rules = rules_for(host, token)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=rules.checked,
        allowed_hosts=list(rules.hosts),
        allowed_origins=list(rules.origins),
    )


class BearerToken:
    """Refuses every HTTP request without `Authorization: Bearer <token>` (constant-time comparison).

    The refusal is RFC 6750's: 401 with a `WWW-Authenticate: Bearer` challenge, `error="invalid_token"` when a
    bearer token was sent but is wrong (no error code when none was sent, as section 3.1 asks). This server has
    no OAuth: its discovery documents (`/.well-known/...`) answer 404, so a client that starts an OAuth flow on
    a 401 stops at once instead of asking the user to sign in somewhere; such a client needs the token as a
    static header in its configuration (README, "HTTP transport")."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization") or b""
        scheme, _, credentials = header.partition(b" ")
        bearer = scheme.lower() == b"bearer"  # the scheme is case-insensitive (RFC 7235)
        if bearer and hmac.compare_digest(credentials.strip(), self.expected):
            await self.app(scope, receive, send)
        elif str(scope.get("path", "")).startswith("/.well-known/"):
            await respond(send, 404, {"error": NO_OAUTH}, [])
        elif bearer:
            challenge = f'Bearer realm="{REALM}", error="invalid_token", error_description="{WRONG_TOKEN}"'
            await respond(
                send, 401, {"error": "invalid_token", "error_description": WRONG_TOKEN}, [challenge]
            )
        else:
            await respond(send, 401, {"error": MISSING_TOKEN}, [f'Bearer realm="{REALM}"'])


class RefuseRuns:
    """Refuses every request that comes from a process of one of this server's runs, or over a socket no visible
    process holds (`peers.run_holding`): a run with the network on shares the user's loopback, and must never
    call the tools, with or without a token (with slots, it could otherwise start or decide another slot's
    experiment)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ends = peers.ends_of(scope.get("client"), scope.get("server"))
        if scope["type"] in ("http", "websocket") and ends is not None:
            why = await anyio.to_thread.run_sync(peers.run_holding, *ends)
            if why is not None:
                await respond(send, 403, {"error": FROM_A_RUN.format(why=why)}, [])
                return
        await self.app(scope, receive, send)


class RefuseOtherUsers:
    """Without a token: refuses every request whose client socket is not this user's (`peers.stranger_holding`).
    Loopback is not one user's: any account on the machine reaches 127.0.0.1, and whoever calls the tools runs
    commands in the project as this user (the page shows its code and logs)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ends = peers.ends_of(scope.get("client"), scope.get("server"))
        if scope["type"] in ("http", "websocket"):
            why = (
                await anyio.to_thread.run_sync(peers.stranger_holding, *ends)
                if ends is not None
                else "the connection's ends are unknown (not a TCP connection)"
            )
            if why is not None:
                await respond(send, 403, {"error": FROM_A_STRANGER.format(why=why)}, [])
                return
        await self.app(scope, receive, send)


FROM_A_STRANGER = (
    "refused: {why}; without a token only the processes of the user who started the server may reach it: "
    "run the client as that user, or start the server with a token (AUTORESEARCH_TOKEN, README 'HTTP transport')"
)
FROM_A_RUN = (
    "refused: {why}; runs never call its tools (a client holds its connection while it waits for the answer)"
)
REALM = "mcp-autoresearch"
WRONG_TOKEN = "the bearer token is not the one this server was started with"
MISSING_TOKEN = "unauthorized: send 'Authorization: Bearer <token>' (the token the server was started with)"
NO_OAUTH = "this server does not use OAuth; send 'Authorization: Bearer <token>' as a static header"


async def respond(send: Send, status: int, body: dict[str, str], challenges: list[str]) -> None:
    headers = [(b"content-type", b"application/json")]
    headers += [(b"www-authenticate", challenge.encode()) for challenge in challenges]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


class PathDispatch:
    """`/mcp` (and the lifespan) to the MCP app, every other path to the dashboard page. OAuth discovery
    (`/.well-known/`) belongs to the MCP side, where the token check answers it (see BearerToken)."""

    def __init__(self, mcp: ASGIApp, page: ASGIApp) -> None:
        self.mcp = mcp
        self.page = page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        to_mcp = (
            scope["type"] == "lifespan"
            or path in ("/mcp", "/.well-known")
            or path.startswith(("/mcp/", "/.well-known/"))
        )
        await (self.mcp if to_mcp else self.page)(scope, receive, send)


def build_http_app(server: MCPServer, host: str, token: str | None, page: ASGIApp | None = None) -> ASGIApp:
    app: ASGIApp = server.streamable_http_app(host=host, transport_security=security_for(host, token))
    if token:
        app = BearerToken(app, token)
    app = app if page is None else PathDispatch(app, page)
    return RefuseRuns(app if token else RefuseOtherUsers(app))


# How long an idle connection is kept open (uvicorn's default is 5 s). A client sends its next request on a
# connection it keeps, and the MCP SDK's (httpx) keeps one 5 s: with both at 5 s, a call made after an agent had
# thought for about 5 s could go out on a connection the server was closing, and the client read no answer
# (`ReadError`), more often on a loaded machine. Kept longer here, the client closes first.
KEEP_ALIVE_S = 75


def serve_http(
    server: MCPServer, host: str, port: int, token: str | None, page: ASGIApp | None = None
) -> int:
    """Serve until stopped. The port is bound before anything is announced: a taken port is one clear line and
    exit 2 (a client must never reach another server while this one says it serves)."""
    import uvicorn

    from .accept_check import BACKLOG, checked_protocol

    app = build_http_app(server, host, token, page)
    sock = listening_or_said(host, port)
    if sock is None:
        return 2
    print(
        f"mcp-autoresearch: serving MCP over HTTP at http://{_shown(host)}:{port}/mcp"
        + (" (bearer token required)" if token else "")
        + (f", the dashboard at http://{_shown(host)}:{port}/" if page is not None else ""),
        file=sys.stderr,
        flush=True,
    )
    # No access log: the dashboard's event stream carries the token in its URL. Each connection is checked as
    # it is accepted too, before it is read (a connection that sends no request would hold a descriptor).
    config = uvicorn.Config(
        app,
        http=checked_protocol(refusals(token)),
        backlog=BACKLOG,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    with sock:
        uvicorn.Server(config).run(sockets=[sock])
    return 0


def refusals(token: str | None, server: Callable[[], int | None] | None = None) -> Check:
    """The checks of `build_http_app` that a connection can pass before its request is read, for a burst of
    connections at once: no run's, and without a token, the user's own. Each refusal is the answer's text.
    `server`: the pid of the server whose runs are refused, None when none runs (`dashboard --web` beside a
    server, as `RefuseServersRuns` asks it); default this process's runs."""

    def check(ends: list[Ends]) -> list[str | None]:
        pid = server() if server is not None else None
        holding = peers.runs_holding(ends, pid) if server is None or pid is not None else [None] * len(ends)
        runs = [FROM_A_RUN.format(why=why) if why else None for why in holding]
        if token:
            return runs
        strangers = [
            FROM_A_STRANGER.format(why=why) if why else None for why in peers.strangers_holding(ends)
        ]
        return [run or stranger for run, stranger in zip(runs, strangers, strict=True)]

    return check


def listening_or_said(host: str, port: int) -> socket.socket | None:
    """The listening socket, or None once one clear line on stderr said why there is none (a taken port)."""
    try:
        return listening_socket(host, port)
    except OSError as exc:
        why = "it is taken (another server?)" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        print(
            f"mcp-autoresearch: cannot listen on {host}:{port}: {why}; choose another --port", file=sys.stderr
        )
        return None


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port and listening (raises OSError when the port is taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: no wait after a restart
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _shown(host: str) -> str:
    return f"[{host}]" if ":" in host else host
