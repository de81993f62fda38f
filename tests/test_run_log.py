"""A run's log is bounded (`log_limit_mb`): a run that prints far more than the limit leaves the beginning and
the end of its output in the log, never a line cut in two, one line saying what was left out, and the same in
the result's `output_cut`; the metric it prints last is read as before."""

from __future__ import annotations

import hashlib
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_autoresearch.readers.web.data import SessionView
from mcp_autoresearch.records.run_log import RunLog, live_tail

from .conftest import finished_run, make_repo, run_cli

pytestmark = pytest.mark.anyio

MARKER = re.compile(rb"^autoresearch: ([\d,]+) bytes of output left out here: the run printed ([\d,]+) bytes")


def _written(data: bytes, limit: int | None, rng: random.Random) -> tuple[bytes, RunLog]:
    """`data` written through a RunLog in pieces of random sizes, as a pipe hands them over: the file and the
    log."""
    fd, path = tempfile.mkstemp()
    try:
        log = RunLog(fd, limit)
        at = 0
        while at < len(data):
            size = rng.randrange(1, 70_000)
            log.write(data[at : at + size])
            at += size
        log.finish()
    finally:
        os.close(fd)
    out = Path(path).read_bytes()
    os.unlink(path)
    return out, log


def test_a_bounded_log_keeps_whole_lines_of_the_beginning_and_the_end_and_says_what_it_left_out() -> None:
    rng = random.Random(7)
    cut = 0
    for trial in range(300):
        lines = [
            f"L{i} ".encode() + b"x" * rng.randrange(0, 300) + b"\n" for i in range(rng.randrange(1, 3000))
        ]
        if rng.random() < 0.3:
            lines[-1] = lines[-1][:-1]  # no newline at the end
        if rng.random() < 0.2:  # one line longer than a piece
            lines.insert(rng.randrange(len(lines)), b"y" * rng.randrange(1_000, 90_000))
        data = b"".join(lines)
        limit = rng.choice([None, 1_000, 5_000, 20_000, 100_000, len(data), len(data) + 1])
        out, log = _written(data, limit, rng)
        assert hashlib.sha256(out).hexdigest() == log.sha256 and len(out) == log.size, trial
        assert log.printed == len(data), trial
        if limit is None or len(data) <= limit:
            assert out == data and log.left_out == 0 and log.summary() is None, trial
            continue
        cut += 1
        head, _, rest = out.partition(b"autoresearch: ")
        marker, _, tail = (b"autoresearch: " + rest).partition(b"\n")
        found = MARKER.match(marker)
        assert found, (trial, marker[:200])
        assert int(found.group(1).replace(b",", b"")) == log.left_out == len(data) - len(head) - len(tail)
        assert int(found.group(2).replace(b",", b"")) == len(data)
        assert data.startswith(head) and data.endswith(tail), trial
        assert head == b"" or head.endswith(b"\n"), trial  # the beginning ends with a whole line
        start = len(data) - len(tail)
        assert tail == b"" or data[start - 1 : start] == b"\n", trial  # the end starts with one
        assert len(head) <= log.head_limit and len(tail) <= log.tail_limit, trial
        assert f"log_limit_mb = {limit / 1e6:g}" in (log.summary() or "")
    assert cut > 100  # most trials went past their limit


# Numbered lines of 100 bytes; LINES of them make about 3 MB. A line cut in two would not match LINE.
LINES = 30_000
LINE = re.compile(r"^line \d{6} x{88}$")
PRINT_LINES = f"i=0; while [ $i -lt {LINES} ]; do printf 'line %06d %s\\n' $i {'x' * 88}; i=$((i+1)); done"


def log_project(tmp_path: Path, command: str, limit_mb: float, extra: str = "") -> Path:
    """A project whose run command is `command` (escaped here for TOML) and whose logs keep `limit_mb`."""
    command = command.replace("\\", "\\\\").replace('"', '\\"')
    return make_repo(
        tmp_path / "proj",
        {
            "params.sh": "K=7\n",
            "autoresearch.toml": f'target_file = "params.sh"\nrun_command = "{command}"\nmetric_name = "score"\n'
            f"log_limit_mb = {limit_mb}\nmetric_direction = 'lower_is_better'\n{extra}",
        },
    )


async def baseline_of(agent_for: Any, root: Path) -> dict[str, Any]:
    """The session's baseline, run and decided in one call: its result."""
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="t")
        result: dict[str, Any] = await agent.ok("run_experiment", description="baseline", decide=True)
        return result


async def test_a_run_printing_past_the_limit_keeps_its_metric_and_says_what_its_log_left_out(
    tmp_path: Path, agent_for: Any
) -> None:
    root = log_project(tmp_path, f'. ./params.sh; {PRINT_LINES}; echo "score: $K"', 1)
    run = await baseline_of(agent_for, root)
    assert run["status"] == "ok" and run["value"] == 7.0, run
    assert "the run: the command printed 3.0 MB, more than log_limit_mb = 1" in run["output_cut"], run
    log = Path(run["log_path"]).read_bytes()
    assert 900_000 < len(log) <= 1_000_200  # the limit, and the line that says what was left out
    lines = log.decode().splitlines()
    assert lines[0] == f"line 000000 {'x' * 88}" and lines[-1] == "score: 7"
    markers = [line for line in lines if line.startswith("autoresearch: ")]
    assert len(markers) == 1 and MARKER.match(markers[0].encode()), markers
    numbers = [int(line[5:11]) for line in lines if line.startswith("line ")]
    assert numbers == sorted(numbers) and numbers[-1] == LINES - 1
    assert all(LINE.match(line) for line in lines if line not in markers and line != "score: 7")


async def test_a_metric_line_at_the_cut_is_never_read_cut_in_two(tmp_path: Path, agent_for: Any) -> None:
    """The metric lines fill the log's beginning and the cut falls in one of them; the end holds none: no value
    is read, neither the digits before the cut nor a whole line of the beginning (a later value may have been
    in the part left out), and the error says why."""
    metric_lines = "i=0; while [ $i -lt 40000 ]; do echo 'score: 123456789'; i=$((i+1)); done"
    filler = f"i=0; while [ $i -lt 30000 ]; do echo 'no metric here {'y' * 80}'; i=$((i+1)); done"
    run = await baseline_of(agent_for, log_project(tmp_path, f"{metric_lines}; {filler}", 0.5))
    assert run["status"] == "metric_error" and "log_limit_mb" in run["error"], run
    assert run["output_cut"], run


async def test_a_run_past_its_log_limit_still_shows_its_latest_line_while_it_runs(
    tmp_path: Path, agent_for: Any
) -> None:
    command = (
        f"{PRINT_LINES}; echo 'waiting for the test'; while [ ! -e go ]; do sleep 0.05; done; echo 'score: 1'"
    )
    root = log_project(tmp_path, command, 1)
    go = root / "go"  # in the project: the run's view hides /tmp
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="t")
        run = await agent.ok("run_experiment", description="baseline", wait_s=0)
        while run["status"] == "running" and "waiting for the test" not in (run.get("log_tail") or ""):
            run = await agent.ok("wait_experiment", run_id=run["run_id"], wait_s=1)
        assert run["status"] == "running" and run["log_tail"] == "waiting for the test", run
        # The web page reads the files: the log's file stops at its beginning, the latest output is beside it
        # (`<run>.tail.log`, written while the run prints: awaited, as the page would).
        page = SessionView(root)
        tail = ""
        while not tail.endswith("waiting for the test"):
            await anyio.sleep(0.1)
            page.refresh()
            tail = page.runs()[0]["log_tail"]
        assert "line 029999" in tail, tail  # not the end of the log's beginning
        go.touch()
        run = await agent.until_done(run["run_id"])
    assert run["status"] == "ok" and run["value"] == 1.0 and run["output_cut"], run
    assert not live_tail(Path(run["log_path"])).exists()  # gone with the run: its log holds the end now


async def test_detect_shows_the_log_limit(tmp_path: Path, agent_for: Any) -> None:
    root = log_project(tmp_path, "echo score: 1", 2.5)
    assert "run logs:     at most 2.5 MB of a command's output kept" in run_cli("detect", cwd=root).stdout
    async with agent_for(root) as agent:
        assert (await agent.ok("detect_project"))["log_limit_mb"] == 2.5


def test_the_capture_copies_a_bounded_amount_at_a_time_and_the_cut_only_what_the_pipe_held(
    tmp_path: Path,
) -> None:
    """The thread that supervises a run copies its output as it comes, a bounded amount per turn: processes that
    write faster than the copy never hold that thread (the run's timeout, its cancel) in the copy. The cut (a
    timeout cuts before it kills the run, whose processes may still write) copies what the pipe held then."""
    from mcp_autoresearch.sandbox.capture import Capture

    read_fd, write_fd = os.pipe()
    log_fd = os.open(tmp_path / "run.log", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        capture = Capture(read_fd, log_fd)
        os.write(write_fd, b"a" * 10_000)
        capture.pump(most=4096)
        assert capture.size == 4096 and capture._held() == 10_000 - 4096
        capture.pump()
        assert capture.size == 10_000 and not capture.ended  # the writer is still there
        os.write(write_fd, b"b" * 3000)
        capture.cut()
        assert capture.size == 13_000 and capture.read_fd == -1
        assert (tmp_path / "run.log").read_bytes() == b"a" * 10_000 + b"b" * 3000
        capture.cut()  # once: a second cut does nothing
    finally:
        os.close(write_fd)
        os.close(log_fd)


def test_processes_that_never_stop_writing_are_stopped_at_the_timeout(tmp_path: Path) -> None:
    """Six processes print as fast as they can, for ever: the thread that copies their output is the one that
    supervises the run, and it still stops the run at its timeout (the log bounded meanwhile)."""
    from mcp_autoresearch.session.workspace import Workspace

    flood = "for i in 1 2 3 4 5 6; do yes 0123456789012345678901234567890123456789 & done; wait"
    config = (
        f'target_file = "params.sh"\nrun_command = "{flood}"\nmetric_name = "score"\ntimeout = 3\n'
        "log_limit_mb = 1\n"
    )
    root = make_repo(tmp_path / "flood", {"params.sh": "K=1\n", "autoresearch.toml": config})
    workspace = Workspace(root)
    try:
        workspace.start_session("flood")
        session = workspace.session
        run_id = finished_run(session, "baseline")
        view = session.view(run_id)
        assert view.status == "timeout", view
        assert (root / ".autoresearch" / "runs" / "flood" / f"{run_id}.log").stat().st_size <= 1 << 20
    finally:
        workspace.shutdown()
