"""One call per experiment over the HTTP transport (`serve --transport http`): run_experiment(edits, decide=true)
through the real MCP client over HTTP, and a client that goes away in the middle of such a call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from .conftest import git
from .test_attacks_one_call_outcomes import edits, text_says_all
from .test_http import ACCEPT, INIT, http_server  # noqa: F401 (the fixture)

pytestmark = pytest.mark.anyio

# A run that waits until the test lets it end (a file `go` in the project), so that it is surely in flight when
# the client leaves, and surely ends whatever the server does with it.
WAITS = "import os, time\nwhile not os.path.exists('go'):\n    time.sleep(0.05)\n"


def _done_rows(root: Path) -> list[dict[str, Any]]:
    lines = (root / ".autoresearch" / "autoresearch.jsonl").read_text().splitlines()
    return [e["details"] for e in map(json.loads, lines) if e["action"] == "experiment_done"]


def _leave_mid_call(url: str, token: str, content: str, end_session: bool) -> None:
    """A raw client: initialize, then run_experiment(content, decide=true) with a progress token; it reads the
    answer's stream until the first progress notification (the run is in flight), then closes the connection
    (`end_session`: first ends its MCP session with DELETE, as a client that shuts down does)."""
    auth = {**ACCEPT, "Authorization": f"Bearer {token}"}
    with httpx2.Client(timeout=60) as http:
        init = http.post(url, json=INIT, headers=auth)
        session = {"mcp-session-id": init.headers["mcp-session-id"], **auth}
        http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {
                "name": "run_experiment",
                "arguments": {"description": "waits", "content": content, "decide": True, "wait_s": 300},
                "_meta": {"progressToken": "p"},
            },
        }
        with http.stream("POST", url, json=call, headers=session) as answer:
            for line in answer.iter_lines():
                if line.startswith("data:") and '"notifications/progress"' in line:
                    if end_session:
                        assert http.delete(url, headers=session).status_code in (200, 204)
                    return  # leaves: the stream and the connection are closed
                assert '"result"' not in line, f"answered before the run was in flight: {line}"
    raise AssertionError("no progress before the stream ended")


async def test_one_call_over_http_and_a_client_that_leaves_mid_call(
    http_server: tuple[str, str],  # noqa: F811
    ml_project: Path,
) -> None:
    url, token = http_server
    root = ml_project
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        await client.call_tool("start_session", {"tag": "web"})
        base = text_says_all(
            await client.call_tool("run_experiment", {"description": "baseline", "decide": True})
        )
        assert base["decided"]["decision"] == "keep"
        kept = text_says_all(
            await client.call_tool(
                "run_experiment",
                {"description": "LR 0.3", "edits": edits("LR = 0.5", "LR = 0.3"), "decide": True},
            )
        )
        assert kept["decided"]["decision"] == "keep" and kept["value"] == 1.2
        best = (root / "train.py").read_text()

    for n, (end_session, lr) in enumerate(((False, "0.2"), (True, "0.1"))):
        run_id = f"r{3 + 2 * n}"
        (root / "go").unlink(missing_ok=True)
        waits = best.replace(f"LR = {0.3 - n / 10:.1f}", f"LR = {lr}")  # better than the best
        _leave_mid_call(url, token, waits if WAITS in waits else waits + WAITS, end_session)
        (root / "go").write_text("")
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http,
            Client(streamable_http_client(url, http_client=http)) as client,
        ):
            run = text_says_all(await client.call_tool("wait_experiment", {"run_id": run_id, "decide": True}))
            while run["status"] == "running":
                run = text_says_all(
                    await client.call_tool("wait_experiment", {"run_id": run_id, "decide": True})
                )
            assert (run["status"], run["decided"]["decision"]) in (("ok", "keep"), ("cancelled", "crash")), (
                run
            )
            again = await client.call_tool("commit_or_reset", {"run_id": run_id})
            assert again.structured_content["reason"] == "already decided"
            best = (root / "train.py").read_text()
            width = f"WIDTH = {5 + n}"
            nxt = text_says_all(
                await client.call_tool(
                    "run_experiment",
                    {"description": width, "edits": edits("WIDTH = 4", width), "decide": True},
                )
            )
            assert nxt["status"] == "ok" and nxt["decided"] is not None
            best = (root / "train.py").read_text()
    rows = _done_rows(root)
    assert [row["run_id"] for row in rows] == ["r1", "r2", "r3", "r4", "r5", "r6"]  # each logged once
    best_row = [row for row in rows if row["best"]][-1]
    assert git(root, "rev-parse", "autoresearch/web").strip() == best_row["full_commit"]
