"""The stdio transport on pipes (`adapters/stdio_pipes.py`), fed as a careless or hostile client would: a last
message with no newline, a line far longer than one read, bytes that are no UTF-8. Each is answered as the SDK's
own transport answers it, and the server goes on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from mcp import Client

from mcp_autoresearch.adapters.stdio_pipes import MAX_LINE_BYTES

from .conftest import GIT_ENV, make_repo, stdio_params
from .test_attacks_requests import INITIALIZE, RawStdio

CALL = {"jsonrpc": "2.0", "method": "tools/call"}


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


class _PatientRawStdio(RawStdio):
    """The server with an end-of-input grace of 600 s instead of 2 s: leaving before that means it owed
    nothing more, so a test sees the server leave or hang instead of racing a clock."""

    def __init__(self, root: Path) -> None:
        env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **GIT_ENV}
        code = (
            "import sys; import mcp_autoresearch.adapters.stdio_pipes as pipes; pipes.END_GRACE_S = 600.0; "
            "from mcp_autoresearch.adapters.cli import main; sys.exit(main(sys.argv[1:]))"
        )
        self.server = subprocess.Popen(
            [sys.executable, "-c", code, "serve", "--project", str(root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=root,
        )

    def replies_after_the_end(self) -> list[dict[str, Any]]:
        """Closes stdin; every reply up to the server's exit (the limit only ends a test that would hang)."""
        out, _ = self.server.communicate(timeout=120)
        return [json.loads(line) for line in out.splitlines()]


def _run_project(tmp_path: Path, run_command: str) -> Path:
    return make_repo(
        tmp_path / "p",
        {
            "params.sh": "K=1\n",
            "autoresearch.toml": 'target_file = "params.sh"\nmetric_name = "score"\n'
            f'run_command = "{run_command}"\n',
        },
    )


def _started(raw: RawStdio) -> RawStdio:
    raw.send(INITIALIZE)
    assert "result" in raw.answer_to(0)
    raw.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    raw.send({**CALL, "id": "s", "params": {"name": "start_session", "arguments": {"tag": "eoi"}}})
    assert "result" in raw.answer_to("s")  # type: ignore[arg-type]
    return raw


def test_an_id_reused_while_its_first_request_runs_gets_both_answers_before_the_server_leaves(
    tmp_path: Path,
) -> None:
    """A careless client reuses id 5 (a run, then a ping) and closes its end: the ping's answer does not
    settle what the run is still owed (the ids were a set: the server left and the run got 'Connection
    closed')."""
    raw = _started(_PatientRawStdio(_run_project(tmp_path, "sleep 1; echo score: 1")))
    try:
        arguments = {"description": "baseline", "wait_s": 600}
        raw.send({**CALL, "id": 5, "params": {"name": "run_experiment", "arguments": arguments}})
        raw.send({"jsonrpc": "2.0", "id": 5, "method": "ping"})
        replies = raw.replies_after_the_end()
        assert [reply["id"] for reply in replies] == [5, 5] and all("result" in r for r in replies), replies
        assert any(reply["result"].get("structuredContent", {}).get("status") == "ok" for reply in replies)
    finally:
        raw.close()


def test_a_request_the_client_cancelled_is_owed_no_more_at_the_end_of_input(tmp_path: Path) -> None:
    """The client cancels its run and closes its end: the session answers a cancelled request with nothing,
    so the server leaves at once (it waited out the whole grace, and a client such as the SDK's then killed
    it before it could end and log the run itself); the run's command is ended."""
    marker = f"sleep {700 + time.monotonic_ns() % 100_000}"
    raw = _started(_PatientRawStdio(_run_project(tmp_path, marker)))
    try:
        arguments = {"description": "baseline", "wait_s": 600}
        raw.send({**CALL, "id": 2, "params": {"name": "run_experiment", "arguments": arguments}})
        _until(lambda: _processes(marker), "the run's command to start")
        raw.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2}})
        assert raw.replies_after_the_end() == []
        _until(lambda: not _processes(marker), "the run's command to end")
    finally:
        raw.close()


def test_a_last_line_over_the_limit_with_no_newline_gets_its_error(ml_project: Path) -> None:
    """A line over the size the server reads, cut by the end of input instead of a newline, is answered like
    one that ends with a newline (it was left unanswered)."""
    raw = _initialized(ml_project)
    try:
        assert raw.server.stdin is not None
        raw.server.stdin.write(b'{"jsonrpc":"2.0","id":7,"method":"ping","params":{"pad":"')
        raw.server.stdin.write(b"A" * (MAX_LINE_BYTES + 100))
        out, _ = raw.server.communicate(timeout=120)  # the limit only ends a test that would hang
        replies = [json.loads(line) for line in out.splitlines()]
        assert [reply["id"] for reply in replies] == [7] and "64 MiB" in replies[0]["error"]["message"]
    finally:
        raw.close()


@pytest.mark.anyio
async def test_a_client_that_leaves_during_a_call_lets_the_server_end_and_log_the_run(tmp_path: Path) -> None:
    """The SDK's client, leaving while its run_experiment call waits, cancels the call, closes stdin and
    kills the server 2 s later: the server leaves at once and logs the run as stopped (it waited out the
    2 s for the cancelled call, was killed, and the run was never logged)."""
    marker = f"sleep {700 + time.monotonic_ns() % 100_000}"
    root = _run_project(tmp_path, marker)
    async with Client(stdio_params(root)) as client:
        await client.call_tool("start_session", {"tag": "leave"})
        async with anyio.create_task_group() as tasks:
            arguments = {"description": "baseline", "wait_s": 600}
            tasks.start_soon(client.call_tool, "run_experiment", arguments)
            while not _processes(marker):
                await anyio.sleep(0.02)
            tasks.cancel_scope.cancel()
    _until(lambda: not _processes(marker), "the run's command to end")
    events = (root / ".autoresearch/autoresearch.jsonl").read_text().splitlines()
    assert [json.loads(line)["action"] for line in events].count("experiment_done") == 1, events


def _processes(command: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if " ".join(p.info["cmdline"] or []) == command]


def test_a_line_over_the_limit_is_answered_only_with_its_own_top_level_id(ml_project: Path) -> None:
    """The error for a line too long goes to the request the line's top level names, read from its start: an
    id nested in its params, a notification's params, or an id cut short by the part read (123 read as 12)
    named another request, which got an error it never earned."""
    raw = _initialized(ml_project)
    try:
        assert raw.server.stdin is not None
        pad = b"A" * (MAX_LINE_BYTES + (1 << 20))
        raw.server.stdin.write(
            b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"id":3,"pad":"' + pad + b'"}}\n'
        )
        raw.server.stdin.write(
            b'{"jsonrpc":"2.0","method":"tools/call","params":{"name":"read_target","arguments":{"id":4},'
            b'"pad":"' + pad + b'"},"id":9}\n'
        )
        start = b'{"jsonrpc":"2.0","method":"ping","x":"'
        filler = b"B" * (4096 - len(start) - len(b'","id":12'))
        raw.server.stdin.write(start + filler + b'","id":123,"params":{"pad":"' + pad + b'"}}\n')
        raw.send({"jsonrpc": "2.0", "id": 11, "method": "ping"})
        assert (
            raw.answer_to(11)["result"] == {}
        )  # no answer to 3, 4, 12 (nor 9, 123: their ids come too late)
    finally:
        raw.close()


def test_a_client_that_closed_its_end_of_stdout_is_owed_nothing_at_the_end_of_input(tmp_path: Path) -> None:
    """The client closes the pipe it reads, keeps writing, then closes stdin: no answer can reach it, so the
    server leaves at once (the requests read after its writer failed were owed until the grace ran out)."""
    raw = _started(_PatientRawStdio(_run_project(tmp_path, "true")))
    try:
        assert raw.server.stdin is not None and raw.server.stdout is not None
        raw.server.stdout.close()
        raw.send({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})  # its answer meets the closed pipe
        for request_id in range(2, 12):
            raw.send({"jsonrpc": "2.0", "id": request_id, "method": "ping"})
        raw.server.stdin.close()
        assert raw.server.wait(timeout=120) == 0  # the limit only ends a test that would otherwise hang
    finally:
        raw.close()


def test_sigterm_while_a_call_is_owed_at_the_end_of_input_still_logs_the_run(tmp_path: Path) -> None:
    """A client that closes stdin while its call runs, without cancelling it, then SIGTERMs the server (the
    spec's shutdown; the SDK's client waits 2 s first): the server ends the session as at the end of its input,
    ending and logging the run, before it leaves."""
    marker = f"sleep {700 + time.monotonic_ns() % 100_000}"
    root = _run_project(tmp_path, marker)
    raw = _started(RawStdio(root))
    try:
        arguments = {"description": "baseline", "wait_s": 600}
        raw.send({**CALL, "id": 2, "params": {"name": "run_experiment", "arguments": arguments}})
        _until(lambda: _processes(marker), "the run's command to start")
        assert raw.server.stdin is not None
        raw.server.stdin.close()
        raw.server.terminate()  # what the SDK's client does when the server is still there after 2 s
        raw.server.wait(timeout=120)  # the limit only ends a test that would otherwise hang
        _until(lambda: not _processes(marker), "the run's command to end")
        events = (root / ".autoresearch/autoresearch.jsonl").read_text().splitlines()
        assert [json.loads(line)["action"] for line in events].count("experiment_done") == 1, events
    finally:
        raw.close()


def test_a_line_just_over_the_limit_is_refused_like_a_longer_one(ml_project: Path) -> None:
    """A line over the limit by less than one read, its newline in the read that takes it over, is refused
    too (its size was checked only between reads: a line up to 64 KiB over the limit was read whole)."""
    raw = _initialized(ml_project)
    try:
        start = b'{"jsonrpc":"2.0","id":7,"method":"ping","params":{"pad":"'
        end = b'"}}'
        raw.send_line(start + b"A" * (MAX_LINE_BYTES + 1 - len(start) - len(end)) + end)
        assert "64 MiB" in raw.answer_to(7)["error"]["message"]
        raw.send({"jsonrpc": "2.0", "id": 8, "method": "ping"})
        assert raw.answer_to(8)["result"] == {}
    finally:
        raw.close()
