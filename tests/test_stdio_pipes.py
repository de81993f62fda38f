"""The stdio transport on pipes (`adapters/stdio_pipes.py`), spoken to raw, as a client's bytes reach it: every
request gets its answer, whatever came before it on the wire."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from mcp_autoresearch.adapters.stdio_pipes import MAX_LINE_BYTES

from .conftest import make_repo, stdio_params


def _server(tmp_path: Path) -> subprocess.Popen[bytes]:
    root = make_repo(
        tmp_path / "p",
        {"params.py": "X = 0\n", "autoresearch.toml": 'target_file = "params.py"\nrun_command = "true"\n'},
    )
    params = stdio_params(root)
    return subprocess.Popen(
        [params.command, *params.args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=params.env,
        cwd=params.cwd,
    )


def _send(proc: subprocess.Popen[bytes], message: dict[str, Any]) -> None:
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(message).encode() + b"\n")
    proc.stdin.flush()


def _answer(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    assert proc.stdout is not None
    found: dict[str, Any] = json.loads(proc.stdout.readline())
    return found


def _initialized(proc: subprocess.Popen[bytes]) -> None:
    _send(
        proc,
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"},
            },
        },
    )
    assert _answer(proc)["id"] == 1
    _send(proc, {"jsonrpc": "2.0", "method": "notifications/initialized"})


def test_a_request_over_the_size_the_server_reads_gets_an_error_and_the_next_one_its_answer(
    tmp_path: Path,
) -> None:
    """A line longer than the server reads is thrown away as it comes (never held whole), its request answered
    with an error naming the limit; a line that is not UTF-8 nor JSON is dropped; the session goes on."""
    proc = _server(tmp_path)
    try:
        _initialized(proc)
        assert proc.stdin is not None
        huge = b"A" * (MAX_LINE_BYTES + (1 << 20))
        proc.stdin.write(
            b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"read_target","arguments":{"x":"'
            + huge
            + b'"}}}\n'
        )
        proc.stdin.write(b"\xff\xfe not json\n")
        proc.stdin.flush()
        refused = _answer(proc)
        assert refused["id"] == 7 and refused["error"]["code"] == -32600
        assert "64 MiB" in refused["error"]["message"]
        _send(proc, {"jsonrpc": "2.0", "id": 8, "method": "tools/list"})
        listed = _answer(proc)
        assert listed["id"] == 8 and any(tool["name"] == "read_target" for tool in listed["result"]["tools"])
        proc.stdin.close()
        assert proc.wait(60) == 0  # the client's end closed: the server ends
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_requests_split_across_reads_and_sent_together_are_all_answered(tmp_path: Path) -> None:
    proc = _server(tmp_path)
    try:
        _initialized(proc)
        assert proc.stdin is not None
        lines = b"".join(
            json.dumps({"jsonrpc": "2.0", "id": 10 + n, "method": "tools/list"}).encode() + b"\n"
            for n in range(5)
        )
        proc.stdin.write(lines[:7])
        proc.stdin.flush()
        proc.stdin.write(lines[7:])
        proc.stdin.flush()
        assert sorted(_answer(proc)["id"] for _ in range(5)) == [10, 11, 12, 13, 14]
    finally:
        proc.kill()
        proc.wait()
