"""The server as users run it: a real `mcp-autoresearch serve` subprocess over stdio, killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from mcp import Client

from mcp_autoresearch.sandbox.processes import marked_processes

from .conftest import Agent, git, run_cli, served_here, stdio_params, stdio_server_pid

pytestmark = pytest.mark.anyio

SLOW_TRAIN = """\
import time
LR = 0.5
print("training...", flush=True)
time.sleep(DELAY)
print(f"val_bpb: {abs(LR - 0.1) + 1:.6f}")
"""


def run_processes(root: Path) -> list[psutil.Process]:
    return marked_processes(str(root))


def started_run_processes(root: Path, within: float) -> list[psutil.Process]:
    """The run's processes once its command has started: the server says "running" as soon as the launcher took
    the command, and on a loaded machine the command's exec (which gives it the marker) may come later. `within`
    is how long the run lives (after that, none is the answer)."""
    deadline = time.monotonic() + within
    while not (found := run_processes(root)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def slow_project(root: Path, delay: float) -> None:
    (root / "train.py").write_text(SLOW_TRAIN.replace("DELAY", str(delay)))
    git(root, "commit", "-qam", "slow training")


async def start_long_run(client: Client) -> Agent:
    """A session whose baseline (30 s) is still running when run_experiment returns."""
    agent = Agent(client)
    await agent.ok("start_session")
    run = await agent.ok("run_experiment", description="baseline", wait_s=0.5)
    assert run["status"] == "running" and run["run_id"] == "r1"
    return agent


async def test_detect_over_stdio(ml_project: Path) -> None:
    async with Client(stdio_params(ml_project)) as client:
        assert client.server_info.name == "autoresearch"
        assert "commit_or_reset" in (client.instructions or "")
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(tools) >= {
            "detect_project",
            "start_session",
            "read_target",
            "apply_edit",
            "run_experiment",
            "wait_experiment",
            "commit_or_reset",
            "log_result",
            "query_results",
        }
        assert tools["detect_project"].annotations.read_only_hint is True
        assert tools["detect_project"].annotations.idempotent_hint is True
        assert tools["detect_project"].output_schema is not None
        # Flat arguments: every parameter is top level and described.
        for tool in tools.values():
            for name, prop in tool.input_schema.get("properties", {}).items():
                assert prop.get("description"), f"{tool.name}.{name} has no description"
        result = await client.call_tool("detect_project", {})
        assert result.structured_content["project_type"] == "ml"


async def test_run_over_stdio_needs_wait_experiment(ml_project: Path) -> None:
    """A run still going when run_experiment returns is awaited with wait_experiment, which reports progress
    with the run's last line. The run is held until a report shows that line (it prints it at once, but on a
    busy machine a report can come before it starts): it never depends on the machine's speed."""
    released = ml_project / "release.flag"
    (ml_project / "train.py").write_text(
        'import os, time\nLR = 0.5\nprint("training...", flush=True)\n'
        'while not os.path.exists("release.flag"):\n    time.sleep(0.05)\n'
        'print(f"val_bpb: {abs(LR - 0.1) + 1:.6f}")\n'
    )
    git(ml_project, "commit", "-qam", "held training")
    async with Client(stdio_params(ml_project)) as client:
        agent = Agent(client)
        await agent.ok("start_session")
        progress: list[tuple[float, float | None, str | None]] = []

        async def on_progress(p: float, total: float | None, message: str | None) -> None:
            progress.append((p, total, message))
            if message and "training..." in message:
                released.write_text("")

        first = await client.call_tool("run_experiment", {"description": "baseline", "wait_s": 0.2})
        assert first.structured_content["status"] == "running"
        try:
            result = first
            for _ in range(30):  # each call waits up to 20 s: the bound only ends a test that would hang
                result = await client.call_tool(
                    "wait_experiment",
                    {"run_id": first.structured_content["run_id"], "wait_s": 20},
                    progress_callback=on_progress,
                )
                if result.structured_content["status"] != "running":
                    break
        finally:
            released.write_text("")
        assert result.structured_content["status"] == "ok" and result.structured_content["value"] == 1.4
        shown = [report for report in progress if report[2] and "training..." in report[2]]
        assert shown, (
            f"a run longer than the progress interval reports progress with its last line: {progress}"
        )
        elapsed, total, message = shown[0]
        assert total == 600 and 0 < elapsed < 600 and message is not None and "r1" in message
        decision = await agent.ok("commit_or_reset", run_id="r1")
        assert decision["decision"] == "keep"


async def test_kill_9_mid_run_then_restart_records_an_interrupted_run(ml_project: Path) -> None:
    root = ml_project
    slow_project(root, 30)
    async with Client(stdio_params(root)) as client:
        agent = await start_long_run(client)
        assert started_run_processes(root, within=30), "the run should be alive"
        os.kill(stdio_server_pid(root), signal.SIGKILL)
        time.sleep(0.3)
    async with served_here(root) as agent:  # the next server: what it finds on disk is the subject
        resumed = await agent.ok("start_session")
        assert resumed["resumed"] is True
        assert any("logged as interrupted" in line for line in resumed["recovered"])
        results = await agent.ok("query_results")
        assert results["total"] == 1 and results["rows"][0]["status"] == "crash"
        assert results["rows"][0]["run_status"] == "interrupted"
        # Not a failed idea: the briefing says it may be re-run, and the run's view says how.
        briefing = resumed["briefing"]
        assert (
            "[interrupted: never finished, may be re-run] baseline" in briefing and "[crash" not in briefing
        )
        view = await agent.ok("wait_experiment", run_id="r1")
        assert view["status"] == "interrupted" and "run the baseline again" in view["next_step"]
    assert run_processes(root) == []
    assert git(root, "status", "--porcelain", "--untracked-files=no") == ""
    lines = (root / "results.tsv").read_text().splitlines()
    assert len(lines) == 2 and lines[1].split("\t")[3] == "crash"
    events = [
        json.loads(line) for line in (root / ".autoresearch/autoresearch.jsonl").read_text().splitlines()
    ]
    assert [e["action"] for e in events].count("experiment_done") == 1


async def test_kill_9_between_run_and_decision_keeps_the_pending_decision(ml_project: Path) -> None:
    root = ml_project
    async with Client(stdio_params(root)) as client:
        agent = Agent(client)
        await agent.ok("start_session")
        await agent.experiment("baseline")
        await agent.edit("LR = 0.5", "LR = 0.2")
        run = await agent.ok("run_experiment", description="lr 0.2")
        assert run["status"] == "ok" and run["would_keep"] is True
        os.kill(stdio_server_pid(root), signal.SIGKILL)
        time.sleep(0.3)
    async with served_here(root) as agent:  # the next server: what it finds on disk is the subject
        resumed = await agent.ok("start_session")
        assert resumed["pending_run"] == "r2"
        assert "decide run r2 first" in await agent.refused("apply_edit", content="x")
        decision = await agent.ok("commit_or_reset", run_id="r2")
        assert decision["decision"] == "keep" and decision["value"] == 1.1
    assert git(root, "log", "-1", "--format=%s").strip() == "experiment: lr 0.2"
    assert len((root / "results.tsv").read_text().splitlines()) == 3


async def test_cli_detect_and_bad_arguments(ml_project: Path, tmp_path: Path) -> None:
    out = run_cli("detect", "--project", str(ml_project))
    assert out.returncode == 0 and "train.py" in out.stdout and "val_bpb" in out.stdout
    as_json = json.loads(run_cli("detect", "--project", str(ml_project), "--json").stdout)
    assert as_json["project_type"] == "ml"
    for args in (
        ["detect", "--project", str(tmp_path / "missing")],
        ["serve", "--project", "/etc/passwd"],
        ["detect", "--bogus"],
        ["nonsense"],
        ["serve", "--transport", "carrier-pigeon"],
    ):
        bad = run_cli(*args)
        assert bad.returncode == 2, args
        assert "Traceback" not in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    version = run_cli("--version")
    assert version.returncode == 0 and "mcp-autoresearch" in version.stdout
    # `detect` is for the person: a bad configuration file is an error there (`serve` starts anyway, see
    # test_serve_config.py).
    (ml_project / "CLAUDE.md").write_text("## autoresearch\n- time_budget: abc\n")
    bad_config = run_cli("detect", "--project", str(ml_project))
    assert (
        bad_config.returncode == 2 and "time_budget" in bad_config.stderr and "CLAUDE.md" in bad_config.stderr
    )


async def test_lock_files_left_by_a_killed_server_are_taken_over(ml_project: Path) -> None:
    root = ml_project
    async with Client(stdio_params(root)) as client:
        agent = Agent(client)
        await agent.ok("start_session", tag="locks")
        await agent.experiment("baseline")
        await agent.edit("LR = 0.5", "LR = 0.9")
        run = await agent.ok("run_experiment", description="worse")
        assert run["would_keep"] is False
        os.kill(stdio_server_pid(root), signal.SIGKILL)
    # What a server killed in the middle of writing refs and the index leaves behind:
    (root / ".git" / "refs" / "heads" / "autoresearch" / "locks.lock").write_text("0" * 40 + "\n")
    (root / ".git" / "refs" / "autoresearch" / "locks").mkdir(parents=True, exist_ok=True)
    (root / ".git" / "refs" / "autoresearch" / "locks" / "r2.lock").write_text("")
    (root / ".git" / "index.lock").write_text("")
    old = time.time() - 60
    for lock in root.glob(".git/**/*.lock"):
        os.utime(lock, (old, old))
    # A new server process: a lock older than its start is stale (`ref_files.stale`).
    async with Client(stdio_params(root)) as client:
        agent = Agent(client)
        await agent.ok("start_session")
        decision = await agent.ok("commit_or_reset", run_id="r2")
        assert decision["decision"] == "discard"
        await agent.edit("LR = 0.5", "LR = 0.3")
        _, kept = await agent.experiment("better")
        assert kept["decision"] == "keep"
    assert list(root.glob(".git/**/*.lock")) == []


async def test_client_cancel_kills_the_run(ml_project: Path) -> None:
    import anyio

    root = ml_project
    slow_project(root, 30)
    async with Client(stdio_params(root)) as client:
        agent = Agent(client)
        await agent.ok("start_session")
        with anyio.move_on_after(1.0):
            await client.call_tool("run_experiment", {"description": "baseline", "wait_s": 20})
        run = await agent.until_done("r1")  # the cancellation ends the run, however loaded the machine
        assert run["status"] == "cancelled" and "cancelled" in run["error"]
        # The reply and its next step agree: a cancelled run is logged and run again, not "fixed".
        assert "fix a trivial mistake" not in run["next_step"]
        assert "cancelled before it finished" in run["next_step"] and "baseline again" in run["next_step"]
        assert run_processes(root) == []
        decision = await agent.ok("commit_or_reset", run_id="r1")
        assert decision["decision"] == "crash" and "baseline again" in decision["next_step"]


async def test_server_shutdown_kills_and_logs_the_run(ml_project: Path) -> None:
    root = ml_project
    slow_project(root, 30)
    async with Client(stdio_params(root)) as client:
        await start_long_run(client)
    # Closing the client ends the server the way clients do (stdin closed, then SIGTERM).
    deadline = time.monotonic() + 15
    while run_processes(root) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert run_processes(root) == []
    rows = (root / "results.tsv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].split("\t")[3] == "crash"
    logged = json.loads(run_cli("results", "--project", str(root), "--format", "json").stdout)
    assert logged[0]["run_status"] == "interrupted" and "stopped" in logged[0]["error"]
