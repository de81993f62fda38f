"""Review 32: the run's output copied by the thread that supervises it (no capture thread), and run_experiment's
quick wait (`QUICK_WAIT_S`), attacked as a run's code and as a client would. Real processes, the real keeper,
the real MCP client. A test that found a hole is a strict xfail naming it."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_autoresearch.adapters.run_tools import QUICK_WAIT_S
from mcp_autoresearch.sandbox.process_run import ProcessRun

from .conftest import make_repo
from .test_confinement import _experiment

MB = 1_000_000


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cancel_once(run: ProcessRun, ready: Path, at_least: int = 1) -> threading.Thread:
    """A thread that cancels `run` once the file `ready` holds `at_least` bytes (the run is writing)."""

    def watch() -> None:
        while not (ready.is_file() and ready.stat().st_size >= at_least):
            threading.Event().wait(0.002)
        run.cancel("review32")

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


# -- output as a weapon against supervision ---------------------------------------------------------------------

FLOOD_FOREVER = (
    "for i in 1 2 3 4; do yes 0123456789abcdef & done; "
    "python3 -c \"import os\nwhile True: os.write(1, b'y' * (4 << 20))\" & "  # huge single writes, no newline
    "python3 -c \"import os\nwhile True: os.write(1, b'z')\" & "  # many tiny writes
    "wait"
)


def test_a_cancel_stops_a_flood_from_many_processes_and_the_log_is_what_the_server_vouches_for(
    tmp_path: Path,
) -> None:
    """Six processes write for ever (lines, 4 MiB writes without a newline, one byte at a time) into the pipe that
    the supervising thread copies: a cancel still stops the run, and the bounded log file holds exactly the bytes
    the capture hashed (size and sha256), within `log_limit`, its live tail removed."""
    log = tmp_path / "logs" / "r1.log"
    tail = tmp_path / "logs" / "r1.tail.log"
    run = ProcessRun(
        FLOOD_FOREVER,
        tmp_path,
        log,
        timeout_s=120,
        log_limit=MB,
        live_tail=tail,
        progress_every_s=0.05,
    )
    watcher = _cancel_once(run, log, 1000)
    result = run.run()
    watcher.join()
    assert result.status == "cancelled", result
    assert (
        result.captured_bytes == log.stat().st_size <= MB + 200
    )  # the limit, and the line saying what was cut
    assert result.captured_sha256 == _sha(log)
    assert result.output_cut and "log_limit_mb" in log.read_text(errors="replace")
    assert not tail.exists()


def test_every_byte_printed_before_the_end_is_kept_however_it_was_written(tmp_path: Path) -> None:
    """Before it exits, the command writes 3 MiB in one write without a newline, 20,000 one-byte writes, closes its
    stdout and writes to stderr only, and leaves a process holding the pipe open (it never writes): the run ends
    when the command exits (not at the timeout, not at the pipe's end of file), and the log holds exactly every
    byte printed, in order, the sha256 the server vouches for."""
    script = (
        "import os, subprocess, sys\n"
        "subprocess.Popen(['sleep', '600'], stdout=1, stderr=2, start_new_session=True)\n"
        "os.write(1, b'a' * (3 << 20))\n"
        "for _ in range(20000):\n"
        "    os.write(1, b'b')\n"
        "os.write(1, b'\\nscore: 7')\n"
        "os.close(1)\n"
        "os.write(2, b'|stderr only|' * 1000)\n"
    )
    (tmp_path / "w.py").write_text(script)
    log = tmp_path / "logs" / "r1.log"
    marker = (
        f"review32-{os.getpid()}-{id(tmp_path)}"  # as the server marks its runs: the leftover is found by it
    )
    result = ProcessRun("python3 w.py", tmp_path, log, timeout_s=60, run_marker=marker).run()
    assert result.status == "exited" and result.exit_code == 0, result
    expected = b"a" * (3 << 20) + b"b" * 20000 + b"\nscore: 7" + b"|stderr only|" * 1000
    assert log.read_bytes() == expected
    assert result.captured_sha256 == hashlib.sha256(expected).hexdigest() and result.captured_bytes == len(
        expected
    )
    assert result.leftovers_killed >= 1  # the sleep holding the pipe was found and ended


def test_a_stderr_flood_in_the_evaluation_stage_does_not_hold_its_timeout_nor_reach_the_metrics_log(
    tmp_path: Path,
) -> None:
    """The evaluation stage reads the metric from stdout only (stderr on a pipe and log of its own): four
    processes flood stderr for ever, after a single stdout line. The timeout still stops the run; stdout's log is
    exactly that line; stderr's log is bounded and holds what its capture hashed."""
    flood = "echo 'score: 1'; for i in 1 2 3 4; do yes 'score: 0.0001' >&2 & done; wait"
    log = tmp_path / "logs" / "r1-eval.log"
    err = tmp_path / "logs" / "r1-eval.stderr.log"
    result = ProcessRun(flood, tmp_path, log, timeout_s=1.5, stderr_log=err, log_limit=MB).run()
    assert result.status == "timeout", result
    assert log.read_bytes() == b"score: 1\n"
    assert result.captured_sha256 == _sha(log)
    assert 0 < err.stat().st_size <= MB + 200
    assert result.output_cut and "its stderr" in result.output_cut


def test_a_metric_printed_after_the_end_by_processes_that_flood_the_pipe_is_not_read(tmp_path: Path) -> None:
    """Confined (the real keeper): the command prints its value and exits while four processes it left flood the
    pipe and, once the command is gone, print a better value. The supervising thread, busy copying their flood,
    still ends the run at the command's end: the better value is never in the log, the run's value is its own."""
    root = make_repo(tmp_path / "p", {"t.py": "x = 1\n"})
    late = "p=$PPID; while kill -0 $p 2>/dev/null; do echo flood; done; echo score: 0.0001"
    command = f"for i in 1 2 3 4; do sh -c '{late}' & done; echo score: 5"
    result = _experiment(root, command, log_limit_mb=1).run()
    assert result.status == "ok" and result.value == 5.0, result
    assert "0.0001" not in Path(result.log_path).read_text(errors="replace")


def test_progress_reports_go_on_while_a_run_floods_without_a_newline(tmp_path: Path) -> None:
    """A run writes for ever without a newline: the supervising thread, which now also copies, still reports
    progress (bounded last lines), and its timeout still ends the run."""
    lines: list[str] = []
    enough = threading.Event()

    def progressed(_elapsed: float, _limit: float, line: str) -> None:
        lines.append(line)
        if len(lines) >= 3:
            enough.set()

    log = tmp_path / "logs" / "r1.log"
    run = ProcessRun(
        "python3 -c \"import os\nwhile True: os.write(1, b'q' * 65536)\"",
        tmp_path,
        log,
        timeout_s=120,
        log_limit=MB,
        on_progress=progressed,
        progress_every_s=0.05,
    )

    def cancel_after_progress() -> None:
        enough.wait(60)
        run.cancel("review32")

    thread = threading.Thread(target=cancel_after_progress, daemon=True)
    thread.start()
    result = run.run()
    thread.join()
    assert enough.is_set() and result.status == "cancelled", (len(lines), result)
    assert all(len(line) <= 200 for line in lines)
    assert result.captured_sha256 == _sha(log)


# -- the quick wait ---------------------------------------------------------------------------------------------

SLOW_BASELINE = "import time\nprint('score: 1', flush=True)\ntime.sleep(600)\n"
QUICK_CONFIG = {"target_file": "t.py", "run_command": "python3 t.py", "metric_name": "score", "timeout": 6}


@pytest.mark.anyio
@pytest.mark.parametrize(
    "wait_s",
    # QUICK_WAIT_S: the whole wait spent in run_experiment's first trip, whose cancel reached _await_run after its
    # deadline, where nothing cancelled the run (found by this review, fixed: a checkpoint before the loop).
    [QUICK_WAIT_S, 1.0],
    ids=["wait_s=QUICK_WAIT_S", "wait_s=1"],
)
async def test_a_client_giving_up_during_the_quick_wait_cancels_the_run(
    tmp_path: Path, agent_for: Any, wait_s: float
) -> None:
    """The client gives up run_experiment the moment its run's log appears (the server's first trip to a worker
    thread still waits `QUICK_WAIT_S` for it): the run must be cancelled, as a call given up later cancels it, not
    left to run to its timeout with nobody told. Whatever `wait_s` the call asked for."""
    root = make_repo(tmp_path / "p", {"t.py": SLOW_BASELINE})
    log = root / ".autoresearch" / "runs" / "q" / "r1.log"
    async with agent_for(root, QUICK_CONFIG) as agent:
        await agent.ok("start_session", tag="q")
        answered: list[Any] = []
        with anyio.CancelScope() as scope:

            async def give_up_once_started() -> None:
                while not log.is_file():
                    await anyio.sleep(0.002)
                scope.cancel()

            async with anyio.create_task_group() as group:
                group.start_soon(give_up_once_started)
                answered.append(
                    await agent.client.call_tool(
                        "run_experiment", {"description": "baseline", "wait_s": wait_s}
                    )
                )
                group.cancel_scope.cancel()
        if answered:
            await agent.until_done("r1")
            pytest.skip("the call answered before its cancellation reached the server (a slow machine)")
        run = await agent.until_done("r1")
        assert run["status"] == "cancelled", run


@pytest.mark.anyio
async def test_a_one_call_run_decided_in_the_quick_trip_is_decided_once(
    tmp_path: Path, agent_for: Any
) -> None:
    """A run that ends within the quick wait is decided in that trip (decide=true): asking again with
    wait_experiment(decide=true) and commit_or_reset returns the same decision, and results.tsv has one row."""
    root = make_repo(tmp_path / "p", {"t.py": "print('score: 1')\n"})
    async with agent_for(root, {**QUICK_CONFIG, "timeout": 60}) as agent:
        await agent.ok("start_session", tag="d")
        first = await agent.ok("run_experiment", description="baseline", decide=True)
        assert first["status"] == "ok" and first["decided"]["decision"] == "keep", first
        again = await agent.ok("wait_experiment", run_id="r1", decide=True)
        assert again["decided"]["decision"] == "keep" and again["decided"]["reason"] == "already decided"
        assert first["decided"]["commit"].startswith(again["decided"]["commit"])
        await agent.client.call_tool("commit_or_reset", {"run_id": "r1"})
    rows = (root / "results.tsv").read_text().splitlines()[1:]
    assert len(rows) == 1, rows
