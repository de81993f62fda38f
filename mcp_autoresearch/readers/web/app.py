"""The web dashboard's HTTP side: the page, a small JSON API over `SessionView`, and server-sent events.

Served alone by `mcp-autoresearch dashboard --web`, or at `/` next to `/mcp` by the HTTP transport. Every
request passes the transport's Host/Origin checks (DNS rebinding). With a token, every `/api/` request needs
it, as `Authorization: Bearer <token>` or, for the event stream (EventSource cannot send headers), as
`?token=`; the page itself and its static files hold no session data and load without it, so a reload works
with the token kept in the tab's sessionStorage. Nothing here writes to the project, and access logging is
off so that a token in a URL never reaches a log.
"""

from __future__ import annotations

import hmac
import json
import logging
import sys
from pathlib import Path
from typing import Any

import anyio
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...adapters import peers
from ...adapters.host_rules import rules_for
from ...adapters.http import (
    FROM_A_RUN,
    KEEP_ALIVE_S,
    RefuseOtherUsers,
    listening_or_said,
    refusals,
    respond,
)
from ...records.state import server_pid
from ...terminal_text import printable
from .data import SessionView
from .gitdiff import commit_diff

STATIC = Path(__file__).parent / "static"
ASSETS = {  # the page's files: a fixed list, so no request path ever reaches the file system
    "index.html": "text/html; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "chart.js": "text/javascript; charset=utf-8",
    "tree.js": "text/javascript; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
}
_log = logging.getLogger(__name__)
SHOWN_HEADER = 200  # characters of a refused Host or Origin said on stderr
POLL_S = 0.25  # how often an open event stream looks at the session's files (a few stats)
HEARTBEAT_S = 15  # a comment line on an idle stream, so proxies and the browser keep it open
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"referrer-policy", b"no-referrer"),  # the address never leaves the page, token or not
    (b"x-content-type-options", b"nosniff"),
]


def _json(data: Any, status: int = 200) -> Response:
    body = json.dumps(data, allow_nan=False, separators=(",", ":"))
    return Response(body, status, media_type="application/json", headers={"cache-control": "no-store"})


def _int(request: Request, name: str, default: int) -> int:
    try:
        return int(request.query_params.get(name, default))
    except ValueError:
        return default


class PageGuard:
    """Host/Origin checks on every request; the token on every API request (header, or query for SSE)."""

    def __init__(self, app: ASGIApp, host: str, token: str | None) -> None:
        self.app = app
        self.rules = rules_for(host, token)
        self.expected = token.encode() if token else None

    def _token_ok(self, request: Request) -> bool:
        if self.expected is None:
            return True
        header = request.headers.get("authorization", "")
        given = header[7:] if header.startswith("Bearer ") else request.query_params.get("token", "")
        return hmac.compare_digest(given.encode(), self.expected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        host, origin = request.headers.get("host"), request.headers.get("origin")
        refused = self.rules.refusal(host, origin)
        refusal: Response | None = None
        if refused:
            status, text = refused
            # Said on stderr as the SDK's check says it for /mcp: the user's sign of a page probing the server.
            shown = printable(((host if status == 421 else origin) or "")[:SHOWN_HEADER])
            _log.warning("%s: %s (refused by the dashboard's page)", text, shown)
            refusal = Response(text, status)
        if refusal is None and scope["path"].startswith("/api/") and not self._token_ok(request):
            refusal = JSONResponse(
                {"error": "unauthorized: open the page with ?token=<token> (or send Authorization: Bearer)"},
                401,
                headers={"www-authenticate": "Bearer"},
            )
        if request.method not in ("GET", "HEAD") and refusal is None:
            refusal = Response("the dashboard only reads", 405)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await (refusal or self.app)(scope, receive, with_headers)


class RefuseServersRuns:
    """`dashboard --web` beside a server: refuses a request from a process of that server's runs (or over a
    socket no visible process holds), as the HTTP transport does for its own page (`adapters/http.py`
    `RefuseRuns`). The runs' logs and the session's state are hidden from every run; a run with the network on
    shares the user's loopback and would otherwise read them here."""

    def __init__(self, app: ASGIApp, root: Path) -> None:
        self.app = app
        self.root = root

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ends = peers.ends_of(scope.get("client"), scope.get("server"))
        pid = server_pid(self.root) if scope["type"] == "http" else None
        if pid is not None and ends is not None:
            why = await anyio.to_thread.run_sync(peers.run_holding, *ends, pid)
            if why is not None:
                await respond(send, 403, {"error": FROM_A_RUN.format(why=why)}, [])
                return
        await self.app(scope, receive, send)


def create_app(view: SessionView, host: str, token: str | None) -> ASGIApp:
    """The page and its API for one project's session, behind the checks of `PageGuard`."""
    assets = {name: (STATIC / name).read_bytes() for name in ASSETS}

    async def page(request: Request) -> Response:
        return Response(
            assets["index.html"], media_type=ASSETS["index.html"], headers={"cache-control": "no-cache"}
        )

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS or name == "index.html":
            return Response("not found", 404)
        return Response(assets[name], media_type=ASSETS[name], headers={"cache-control": "no-cache"})

    async def summary(request: Request) -> Response:
        view.refresh()
        return _json(view.live())

    async def points(request: Request) -> Response:
        view.refresh()
        return _json(view.points(max(100, min(_int(request, "max", 1600), 5000))))

    async def experiments(request: Request) -> Response:
        view.refresh()
        status = request.query_params.get("status") or None
        page = view.experiments(status, _int(request, "offset", 0), _int(request, "limit", 50))
        return _json(page)

    async def tree(request: Request) -> Response:
        view.refresh()
        return _json(await anyio.to_thread.run_sync(view.tree))

    async def diff(request: Request) -> Response:
        view.refresh()
        commit = view.session_commit(request.path_params["commit"])
        if commit is None:
            return _json({"error": "not a commit of this session (a hex id from the experiments table)"}, 404)
        found = await anyio.to_thread.run_sync(commit_diff, view.root, commit)
        if found.error:
            return _json({"error": found.error}, 404)
        row = next((r for r in reversed(view.rows) if r.commit == commit), None)
        return _json(
            {
                "commit": commit,
                "run_id": row.run_id if row else None,
                "text": found.text,
                "truncated": found.truncated,
            }
        )

    async def events(request: Request) -> Response:
        shutdown = anyio.Event()  # set by sse-starlette when the server stops: end the stream cleanly

        async def stream() -> Any:
            last: tuple[Any, ...] | None = None
            while not shutdown.is_set():
                signature = view.signature()
                if signature != last:
                    last = signature
                    view.refresh()
                    yield {"event": "state", "data": json.dumps(view.live(), allow_nan=False), "retry": 1000}
                with anyio.move_on_after(POLL_S):
                    await shutdown.wait()

        return EventSourceResponse(
            stream(),
            ping=HEARTBEAT_S,
            headers={"cache-control": "no-store"},
            shutdown_event=shutdown,
            shutdown_grace_period=1.0,
        )

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/static/{name}", static),
            Route("/api/summary", summary),
            Route("/api/points", points),
            Route("/api/experiments", experiments),
            Route("/api/tree", tree),
            Route("/api/diff/{commit}", diff),
            Route("/api/events", events),
        ]
    )
    return PageGuard(app, host, token)


def workspace_page(root: Path, timeout_s: float | None, host: str, token: str | None) -> ASGIApp:
    """The page for the HTTP transport: the current session of the server's project."""
    return create_app(SessionView(root, None, timeout_s), host, token)


def serve_page(
    root: Path, tag: str | None, timeout_s: float | None, host: str, port: int, token: str | None
) -> int:
    """`mcp-autoresearch dashboard --web`: serve the page until interrupted. The port is bound before the
    address is announced: a taken port is one clear line and exit 2 (the user must never open another process's
    page there, with the token in its address)."""
    import uvicorn

    from ...adapters.accept_check import BACKLOG, checked_protocol

    view = SessionView(root, tag, timeout_s)
    view.refresh()
    sock = listening_or_said(host, port)
    if sock is None:
        return 2
    shown = f"[{host}]" if ":" in host else host
    where = f"http://{shown}:{port}/"
    print(f"mcp-autoresearch: dashboard of {root} at {where}", file=sys.stderr)
    if token:
        print("  open it once as <address>?token=<your token>; the tab keeps it", file=sys.stderr)
    app = create_app(view, host, token)
    app = app if token else RefuseOtherUsers(app)  # loopback is every user's of the machine
    app = RefuseServersRuns(app, root)
    # Each connection is checked as it is accepted too, before it is read, as the transport's are: a run's
    # connection that sends no request would hold one of the page's descriptors for as long as the run kept it.
    checked = checked_protocol(refusals(token, lambda: server_pid(root)))
    with sock:
        config = uvicorn.Config(
            app,
            http=checked,
            backlog=BACKLOG,
            log_level="warning",
            access_log=False,
            timeout_keep_alive=KEEP_ALIVE_S,
        )
        uvicorn.Server(config).run(sockets=[sock])
    return 0
