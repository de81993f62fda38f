"""Odd requests and arguments from the agent: oversized or binary arguments, deeply nested or broken JSON.
Each is answered with a clear message and the server goes on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import GIT_ENV
from .helpers.attacks import (
    armed_session,  # noqa: F401 (fixtures)
    snapshot,
)

pytestmark = pytest.mark.anyio


async def test_oversized_and_binary_arguments(armed) -> None:
    agent, root, outside = armed
    before = snapshot(root, outside)
    assert "NUL" in await agent.refused("apply_edit", content="x = 1\x00\n")
    assert "limit" in await agent.refused("apply_edit", content="#" * (4 * 1024 * 1024 + 10))
    message = await agent.refused("run_experiment", description="d" * 5000)
    assert "description" in message
    assert "notes" in await agent.refused("log_result", run_id="r1", notes="n" * 9000)
    too_many = [{"old_text": f"nope{i}", "new_text": ""} for i in range(201)]
    assert "edits" in await agent.refused("apply_edit", edits=too_many)
    assert "not usable" in await agent.refused("start_session", tag="x" * 100)
    assert "no run with id" in await agent.refused("wait_experiment", run_id="../../etc")
    assert snapshot(root, outside) == before


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}


class RawStdio:
    """The server over stdio, spoken to in raw JSON-RPC lines (as a client in another language would)."""

    def __init__(self, root: Path) -> None:
        env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **GIT_ENV}
        self.server = subprocess.Popen(
            [sys.executable, "-m", "mcp_autoresearch", "serve", "--project", str(root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=root,
        )

    def send_line(self, line: bytes) -> None:
        assert self.server.stdin is not None
        self.server.stdin.write(line + b"\n")
        self.server.stdin.flush()

    def send(self, message: dict[str, Any]) -> None:
        self.send_line(json.dumps(message).encode())

    def answer_to(self, request_id: int) -> dict[str, Any]:
        """The answer to `request_id`; any other answer first means that request was dropped."""
        assert self.server.stdout is not None
        while True:
            line = self.server.stdout.readline()
            assert line, "the server closed its output"
            message = json.loads(line)
            if message.get("id") == request_id:
                return message
            assert "id" not in message, f"no answer to request {request_id}; got {message}"

    def close(self) -> None:
        self.server.kill()
        self.server.wait()


def nested(depth: int, leaf: str) -> str:
    return "[" * depth + json.dumps(leaf) + "]" * depth


@pytest.mark.parametrize("depth,leaf", [(300, "x"), (3000, "\\ud800"), (300, "\\ud800")])
def test_a_deeply_nested_request_is_answered_and_the_server_goes_on(
    ml_project: Path, depth: int, leaf: str
) -> None:
    """jiter (the SDK's parser) refuses nesting deeper than its limit; the SDK then drops the request unanswered.
    With an escaped surrogate in it, the screen re-reads it with Python's json, which raises RecursionError."""
    raw = RawStdio(ml_project)
    try:
        raw.send(INITIALIZE)
        assert "result" in raw.answer_to(0)
        raw.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        arguments = '{"description": ' + nested(depth, "").replace('""', '"' + leaf + '"') + "}"
        line = (
            '{"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "run_experiment", '
            '"arguments": ' + arguments + "}}"
        )
        raw.send_line(line.encode())
        raw.send({"jsonrpc": "2.0", "id": 6, "method": "ping"})
        answer = raw.answer_to(5)
        if leaf == "x" or depth > 1000:  # a JSON-RPC error saying why
            assert "could not be read" in answer["error"]["message"], answer
            assert "nested" in answer["error"]["message"] or "recursion" in answer["error"]["message"], answer
        else:  # Python's json reads it: the surrogate is named as before
            assert answer["result"]["isError"] is True, answer
        assert raw.answer_to(6)["result"] == {}
    finally:
        raw.close()


def test_a_request_with_invalid_json_inside_its_params_is_answered(ml_project: Path) -> None:
    """Broken JSON deep in the arguments (a truncated literal): the top level still names the request, so it is
    answered (JSON-RPC's parse error) instead of dropped; a line that is no JSON at all is skipped."""
    raw = RawStdio(ml_project)
    try:
        raw.send(INITIALIZE)
        assert "result" in raw.answer_to(0)
        raw.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        raw.send_line(
            b'{"jsonrpc": "2.0", "id": 7, "method": "tools/call", '
            b'"params": {"name": "read_target", "arguments": {"start_line": tru}}}'
        )
        raw.send_line(b"not json at all")
        raw.send({"jsonrpc": "2.0", "id": 8, "method": "ping"})
        message = raw.answer_to(7)["error"]["message"]
        assert "could not be read" in message and "as valid JSON" in message, message
        assert raw.answer_to(8)["result"] == {}
    finally:
        raw.close()
