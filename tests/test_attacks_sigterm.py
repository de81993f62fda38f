"""SIGTERM (and SIGINT) to the stdio server, as a client or a terminal sends them: before `initialize`, during a
run that ignores SIGTERM, a run whose keeper is stopped, while the client stopped reading, twice quickly. Each
time the server leaves, its runs are ended and logged once, no process of a run is left, no traceback is
printed, and the next `start_session` finds git and the records agreeing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
import psutil
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from .conftest import GIT_ENV, resumed_here
from .helpers.ports import free_port
from .test_attacks_requests import INITIALIZE, RawStdio
from .test_attacks_stdio_pipes import CALL, _processes, _run_project, _until

WAIT = {"description": "baseline", "wait_s": 600}


class _Server(RawStdio):
    """The server over stdio, its stderr kept (a traceback there is a failure)."""

    def __init__(self, root: Path) -> None:
        env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **GIT_ENV}
        env["AUTORESEARCH_SLOTS_DIR"] = str(root.parent / "slots-home")  # never the user's slots
        self.stderr = root.parent / f"stderr-{time.monotonic_ns()}.txt"
        with self.stderr.open("wb") as err:
            self.server = subprocess.Popen(
                [sys.executable, "-m", "mcp_autoresearch", "serve", "--project", str(root)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                cwd=root,
            )

    def initialized(self) -> _Server:
        self.send(INITIALIZE)
        assert "result" in self.answer_to(0)
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return self

    def started(self, tag: str = "sig") -> _Server:
        self.initialized()
        self.send({**CALL, "id": "s", "params": {"name": "start_session", "arguments": {"tag": tag}}})
        assert "result" in self.answer_to("s")  # type: ignore[arg-type]
        return self

    def stop_reading(self) -> None:
        """Asks for answers that fill the pipe of stdout, which the client no longer reads."""
        for request_id in range(100, 400):
            self.send({"jsonrpc": "2.0", "id": request_id, "method": "tools/list"})

    def left(self) -> int:
        """The server's exit status once it left (the limit only ends a test that would otherwise hang)."""
        return self.server.wait(timeout=120)

    def errors(self) -> str:
        return self.stderr.read_text(errors="replace")


def _marker(base: int) -> str:
    return f"sleep {base + time.monotonic_ns() % 100_000}"  # its own duration tells the run's command apart


def _actions(root: Path) -> list[str]:
    lines = (root / ".autoresearch/autoresearch.jsonl").read_text().splitlines()
    return [json.loads(line)["action"] for line in lines]


def _restarted(root: Path) -> dict[str, Any]:
    """What the next server's start_session says (it resumes the session and checks git against the records).
    The next server runs in the test's process (`resumed_here`): what it finds on disk is the subject, with the
    slots folder the stopped one had."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AUTORESEARCH_SLOTS_DIR", str(root.parent / "slots-home"))
        return resumed_here(root, "sig")


def _ended_and_logged_once(server: _Server, root: Path, marker: str) -> None:
    _until(lambda: not _processes(marker), "the run's command to end")
    assert _actions(root).count("experiment_done") == 1, _actions(root)
    assert "Traceback" not in server.errors(), server.errors()
    _restarted(root)
    assert _actions(root).count("experiment_done") == 1, _actions(root)


def _start_run(
    server: _Server, marker: str, what: str = "the run's command to start"
) -> list[psutil.Process]:
    """run_experiment (request 2), waiting on it; returns once `marker`'s process runs."""
    server.send({**CALL, "id": 2, "params": {"name": "run_experiment", "arguments": WAIT}})
    found: list[psutil.Process] = _until(lambda: _processes(marker), what)
    return found


def _terminated(server: _Server, root: Path, marker: str) -> None:
    """SIGTERM; the server leaves, the run is ended and logged once."""
    server.server.terminate()
    server.left()
    _ended_and_logged_once(server, root, marker)


def test_sigterm_before_initialize_ends_the_server_quietly(tmp_path: Path) -> None:
    """Held: a SIGTERM before `initialize` ends the server (exit 0) without a traceback."""
    root = _run_project(tmp_path, "echo score: 1")
    server = _Server(root)
    try:
        server.send({"jsonrpc": "2.0", "id": 1, "method": "ping"})  # served before initialize: the loop is up
        assert server.answer_to(1)["result"] == {}
        server.server.terminate()
        assert server.left() == 0
        assert "Traceback" not in server.errors(), server.errors()
    finally:
        server.close()


def test_sigterm_during_a_run_that_ignores_sigterm(tmp_path: Path) -> None:
    """Held: a run that ignores SIGTERM is killed when its grace ends; the server leaves and logs it once."""
    marker = _marker(800)
    root = _run_project(tmp_path, f"trap '' TERM; {marker}")
    server = _Server(root).started()
    try:
        _start_run(server, marker)
        _terminated(server, root, marker)
    finally:
        server.close()


def test_sigterm_during_a_run_whose_keeper_is_stopped(tmp_path: Path) -> None:
    """Held: the run's processes above its command (its keeper, below the server's launcher) are stopped
    (SIGSTOP, as the run could): the run's process group is still killed, and the server leaves and logs the
    run once. (Stopping the launcher itself, which only a process outside the sandbox can, leaves it stopped
    for good after the server left: not covered here.)"""
    marker = _marker(900)
    root = _run_project(tmp_path, marker)
    server = _Server(root).started()
    keepers: list[psutil.Process] = []
    try:
        server.send({**CALL, "id": 2, "params": {"name": "run_experiment", "arguments": WAIT}})
        command = _until(lambda: _processes(marker), "the run's command to start")[0]
        # the run's own processes above its command, up to the server's launcher (excluded)
        for process in command.parents():
            if "forkserver.py" in " ".join(process.cmdline()) or process.pid == server.server.pid:
                break
            keepers.append(process)
        assert keepers
        for keeper in keepers:
            keeper.suspend()
        _terminated(server, root, marker)
    finally:
        server.close()
        for keeper in keepers:
            if keeper.is_running():
                keeper.kill()  # a keeper the server left (a failure above): not left stopped on the machine


def test_sigterm_while_the_client_stopped_reading(tmp_path: Path) -> None:
    """Broke: the client stopped reading (stdout full), then SIGTERM. The SDK's last answer to the cancelled
    call waited for the full pipe while the call, cancelled as if the client gave it up, ended the run: the
    run was not in flight any more when the lifespan's end stopped the runs, and was never logged (the README
    says a SIGTERM logs the runs in flight as interrupted); the reader of stdin, blocked handing a request to
    the closed session, raised a traceback."""
    marker = _marker(1000)
    root = _run_project(tmp_path, marker)
    server = _Server(root).started()
    try:
        _start_run(server, marker)
        server.stop_reading()
        _terminated(server, root, marker)
    finally:
        server.close()


def test_two_sigterms_at_once_during_a_run(tmp_path: Path) -> None:
    """Held: two SIGTERMs at once (the second may kill the server at once): no traceback, no process of the
    run left, and the run is logged once (by this server or at the next start)."""
    marker = _marker(1100)
    root = _run_project(tmp_path, marker)
    server = _Server(root).started()
    try:
        _start_run(server, marker)
        server.server.terminate()
        server.server.terminate()
        server.left()
        _until(lambda: not _processes(marker), "the run's command to end")
        assert "Traceback" not in server.errors(), server.errors()
        _restarted(root)
        assert _actions(root).count("experiment_done") == 1, _actions(root)
    finally:
        server.close()


def test_sigint_during_a_run(tmp_path: Path) -> None:
    """Held: SIGINT (Ctrl-C) to the server alone during a run: it leaves and logs the run once, quietly."""
    marker = _marker(1200)
    root = _run_project(tmp_path, marker)
    server = _Server(root).started()
    try:
        _start_run(server, marker)
        server.server.send_signal(signal.SIGINT)
        server.left()
        _ended_and_logged_once(server, root, marker)
    finally:
        server.close()


def test_sigterm_during_start_session(tmp_path: Path) -> None:
    """Broke: a SIGTERM while the session reads a request (start_session, just sent): the reader of stdin,
    handing it to a session that had ended, failed with BrokenResourceError and printed a traceback."""
    root = _run_project(tmp_path, "echo score: 1")
    server = _Server(root).initialized()
    try:
        server.send({**CALL, "id": "s", "params": {"name": "start_session", "arguments": {"tag": "sig"}}})
        server.server.terminate()
        server.left()
        assert "Traceback" not in server.errors(), server.errors()
        _restarted(root)
    finally:
        server.close()


@pytest.mark.parametrize("answered", [False, True])
def test_sigterm_during_initialize(tmp_path: Path, answered: bool) -> None:
    """Held: a SIGTERM with `initialize` just sent, or just answered, ends the server quietly."""
    root = _run_project(tmp_path, "echo score: 1")
    server = _Server(root)
    try:
        server.send(INITIALIZE)
        if answered:
            server.answer_to(0)
        server.server.terminate()
        assert server.left() in (0, -signal.SIGTERM)
        assert "Traceback" not in server.errors(), server.errors()
    finally:
        server.close()


def test_the_end_of_input_during_a_run_logs_it_as_interrupted(tmp_path: Path) -> None:
    """Broke: a client that stopped reading closes stdin during a run: the session's end cancelled the call as
    if the client gave it up, which ended the run before the lifespan's end could log it as interrupted."""
    marker = _marker(1300)
    root = _run_project(tmp_path, marker)
    server = _Server(root).started()
    try:
        _start_run(server, marker)
        server.stop_reading()
        assert server.server.stdin is not None
        server.server.stdin.close()
        server.left()
        _ended_and_logged_once(server, root, marker)
    finally:
        server.close()


def test_sigterm_during_the_evaluation_stage(tmp_path: Path) -> None:
    """The run is over and its evaluation stage (`eval_command`) runs when the SIGTERM comes."""
    marker = _marker(1400)
    root = _run_project(tmp_path, "echo done")
    config = root / "autoresearch.toml"
    config.write_text(config.read_text() + f'eval_command = "{marker}"\n')
    subprocess.run(["git", "commit", "-qam", "eval"], cwd=root, env={**os.environ, **GIT_ENV}, check=True)
    server = _Server(root).started()
    try:
        server.send({**CALL, "id": 2, "params": {"name": "run_experiment", "arguments": WAIT}})
        _until(lambda: _processes(marker), "the evaluation stage to start")
        _terminated(server, root, marker)
    finally:
        server.close()


def test_sigterm_during_a_slot_run(tmp_path: Path) -> None:
    """With slots, run_experiment returns at once; the run in its slot is in flight when the SIGTERM comes."""
    marker = _marker(1500)
    root = _run_project(tmp_path, marker)
    config = root / "autoresearch.toml"
    config.write_text(config.read_text() + "slots = 2\n")
    subprocess.run(["git", "commit", "-qam", "slots"], cwd=root, env={**os.environ, **GIT_ENV}, check=True)
    server = _Server(root).started()
    try:
        server.send({**CALL, "id": 2, "params": {"name": "run_experiment", "arguments": WAIT}})
        assert server.answer_to(2)["result"].get("isError") is not True
        _until(lambda: _processes(marker), "the run's command to start")
        _terminated(server, root, marker)
    finally:
        server.close()


def _holding_out(tmp_path: Path, marker: str) -> tuple[_Server, Path]:
    """A server whose commit_or_reset keeps the baseline and is running the holdout stage (`holdout_command`,
    `marker`) in the call itself (the decision is made and logged before it)."""
    root = _run_project(tmp_path, "echo done")
    config = root / "autoresearch.toml"
    stages = f'eval_command = "echo score: 1"\nholdout_command = "{marker}"\neval_timeout = 3000\n'
    config.write_text(config.read_text() + stages)
    subprocess.run(["git", "commit", "-qam", "holdout"], cwd=root, env={**os.environ, **GIT_ENV}, check=True)
    server = _Server(root).started()
    server.send({**CALL, "id": 2, "params": {"name": "run_experiment", "arguments": WAIT}})
    run = server.answer_to(2)["result"]["structuredContent"]
    assert run["status"] == "ok", run
    decide = {"name": "commit_or_reset", "arguments": {"run_id": run["run_id"]}}
    server.send({**CALL, "id": 3, "params": decide})
    _until(lambda: _processes(marker), "the holdout stage to start")
    return server, root


def test_sigterm_during_the_holdout_of_a_keep(tmp_path: Path) -> None:
    """Broke: a SIGTERM while commit_or_reset runs the holdout waited for the holdout to end (up to
    eval_timeout): it runs inside the call's worker thread, which the session's end cannot cancel, and the
    lifespan's end (which stops the runs in flight) runs only once that call returned. Now the SIGTERM cancels
    it at once: the server leaves, no process of the holdout is left, the decision stands."""
    marker = _marker(1700)
    server, root = _holding_out(tmp_path, marker)
    try:
        server.server.terminate()
        server.left()
        _until(lambda: not _processes(marker), "the holdout's command to end")
        assert _actions(root).count("experiment_done") == 1, _actions(root)
        assert "Traceback" not in server.errors(), server.errors()
        holdout = [
            json.loads(line) for line in (root / ".autoresearch/holdout/sig.jsonl").read_text().splitlines()
        ]
        assert [record["error"] for record in holdout] == ["the server was stopped"], holdout
        _restarted(root)
    finally:
        server.close()


def test_a_second_sigterm_during_the_holdout_of_a_keep_ends_the_server(tmp_path: Path) -> None:
    """Held: SIGTERMs sent again and again during the holdout (the second one kills the server at once): no
    process of the holdout is left, and the decision, logged before the holdout, stands at the next start."""
    marker = _marker(1800)
    server, root = _holding_out(tmp_path, marker)
    try:

        def terminated() -> bool:
            server.server.terminate()  # again until it leaves: the first one must reach the receiver first
            try:
                server.server.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                return False
            return True

        _until(terminated, "the server to leave")
        _until(lambda: not _processes(marker), "the holdout's command to end")
        assert _actions(root).count("experiment_done") == 1, _actions(root)
        _restarted(root)
        assert _actions(root).count("experiment_done") == 1, _actions(root)
    finally:
        server.close()


@pytest.mark.anyio
async def test_sigterm_over_http_during_a_run_ends_and_logs_it(tmp_path: Path) -> None:
    """Held (the HTTP transport's own handling, uvicorn's, unchanged): a SIGTERM while a run is in flight and
    no call waits for it: the server leaves, the run is ended and logged once, no process of it is left. (A
    call still waiting holds the server until it returns, at most wait_s: 50 s.)"""
    marker = _marker(1900)
    root = _run_project(tmp_path, marker)
    port, token = free_port(), "s3cret-token"
    command = [sys.executable, "-m", "mcp_autoresearch", "serve", "--project", str(root)]
    options = ["--transport", "http", "--port", str(port), "--token", token]
    with (root.parent / "http-stderr.txt").open("w+b") as err:
        proc = subprocess.Popen([*command, *options], env={**os.environ, **GIT_ENV}, stderr=err, cwd=root)
        try:
            _until(
                lambda: b"serving MCP over HTTP" in (root.parent / "http-stderr.txt").read_bytes(), "serving"
            )
            url = f"http://127.0.0.1:{port}/mcp"
            async with (
                httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=120) as http,
                Client(streamable_http_client(url, http_client=http)) as client,
            ):
                await client.call_tool("start_session", {"tag": "sig"})
                run = await client.call_tool("run_experiment", {"description": "baseline", "wait_s": 0})
                assert run.structured_content is not None and run.structured_content["status"] == "running"
                _until(lambda: _processes(marker), "the run's command to start")
                proc.terminate()
                proc.wait(timeout=120)  # the limit only ends a test that would otherwise hang
            _until(lambda: not _processes(marker), "the run's command to end")
            assert _actions(root).count("experiment_done") == 1, _actions(root)
            assert "Traceback" not in (root.parent / "http-stderr.txt").read_text(errors="replace")
        finally:
            proc.kill()
            proc.wait()


def test_the_end_of_input_during_the_holdout_of_a_keep(tmp_path: Path) -> None:
    """Broke: the client closes stdin while commit_or_reset runs the holdout: the server stayed until the
    holdout ended (up to eval_timeout). Now the session's end cancels it as a SIGTERM does."""
    marker = _marker(2000)
    server, root = _holding_out(tmp_path, marker)
    try:
        assert server.server.stdin is not None
        server.server.stdin.close()
        server.left()
        _until(lambda: not _processes(marker), "the holdout's command to end")
        assert _actions(root).count("experiment_done") == 1, _actions(root)
        assert "Traceback" not in server.errors(), server.errors()
    finally:
        server.close()
