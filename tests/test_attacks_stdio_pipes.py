"""The stdio transport on pipes (`adapters/stdio_pipes.py`), fed as a careless or hostile client would: a last
message with no newline, a line far longer than one read, bytes that are no UTF-8. Each is answered as the SDK's
own transport answers it, and the server goes on."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from .conftest import make_repo
from .test_attacks_requests import INITIALIZE, RawStdio


def _initialized(ml_project: Path) -> RawStdio:
    raw = RawStdio(ml_project)
    raw.send(INITIALIZE)
    assert "result" in raw.answer_to(0)
    raw.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    return raw


def test_a_last_request_with_no_newline_is_answered(ml_project: Path) -> None:
    """A one-shot client (`printf ... | mcp-autoresearch serve`) may end its last line with the end of its
    output instead of a newline: it is read as a line (as the SDK's transport reads it), and answered although
    the input has ended (the SDK's session would cancel it)."""
    raw = _initialized(ml_project)
    try:
        assert raw.server.stdin is not None and raw.server.stdout is not None
        raw.server.stdin.write(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "ping"}).encode())
        raw.server.stdin.close()
        replies = [json.loads(line) for line in raw.server.stdout.read().splitlines()]
        assert {"jsonrpc": "2.0", "id": 2, "result": {}} in replies, replies
    finally:
        raw.close()


def test_a_line_longer_than_many_reads_and_bytes_that_are_no_utf8(ml_project: Path) -> None:
    """A request of several megabytes, written in pieces, arrives whole; a line with invalid UTF-8 in a string is
    read with U+FFFD in place (as the SDK does) and answered."""
    raw = _initialized(ml_project)
    try:
        assert raw.server.stdin is not None
        big = json.dumps({"jsonrpc": "2.0", "id": 3, "method": "ping", "params": {"pad": "x" * (3 << 20)}})
        for start in range(0, len(big), 1000):
            raw.server.stdin.write(big[start : start + 1000].encode())
        raw.server.stdin.write(b"\n")
        raw.server.stdin.flush()
        assert raw.answer_to(3)["result"] == {}
        raw.send_line(b'{"jsonrpc": "2.0", "id": 4, "method": "ping", "params": {"pad": "\xff\xfe\xc3"}}')
        assert raw.answer_to(4)["result"] == {}
    finally:
        raw.close()


def test_a_run_still_going_at_the_end_of_input_does_not_hold_the_server(tmp_path: Path) -> None:
    """At the end of its input the server still answers what it read for a moment (above), then leaves: a run
    still going when that moment ends is cancelled and its command ended, as when a client leaves."""
    marker = f"sleep {600 + time.monotonic_ns() % 100_000}"  # its own duration tells the run's command apart
    root = make_repo(
        tmp_path / "p",
        {
            "params.sh": "K=1\n",
            "autoresearch.toml": 'target_file = "params.sh"\nmetric_name = "score"\n'
            f'run_command = "{marker}"\n',
        },
    )
    raw = _initialized(root)
    try:
        call = {"jsonrpc": "2.0", "method": "tools/call"}
        raw.send({**call, "id": 1, "params": {"name": "start_session", "arguments": {"tag": "eoi"}}})
        assert "result" in raw.answer_to(1)
        arguments = {"description": "baseline", "wait_s": 600}
        raw.send({**call, "id": 2, "params": {"name": "run_experiment", "arguments": arguments}})

        def running() -> list[psutil.Process]:
            return [
                p for p in psutil.process_iter(["cmdline"]) if " ".join(p.info["cmdline"] or []) == marker
            ]

        _until(running, "the run's command to start")
        assert raw.server.stdin is not None
        raw.server.stdin.close()
        assert (
            raw.server.wait(timeout=120) is not None
        )  # the limit only ends a test that would otherwise hang
        _until(lambda: not running(), "the run's command to end")
    finally:
        raw.close()


def _until(condition: Callable[[], Any], what: str, limit_s: float = 120.0) -> Any:
    """Wait for `condition()` to hold (the limit only ends a test that would otherwise hang)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
