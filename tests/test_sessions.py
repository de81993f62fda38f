"""Which session is current, and what the views say about it (issue 12, items 9, 11, 12, 13, 16, 17)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import GIT_ENV, git, run_cli

pytestmark = pytest.mark.anyio


def cli_wide(*args: str) -> str:
    """The CLI's output as a person sees it in a wide terminal (no wrapped lines)."""
    out = subprocess.run(
        [sys.executable, "-m", "mcp_autoresearch", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV, "COLUMNS": "200"},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


async def test_the_checked_out_session_branch_is_the_current_session(ml_project: Path, agent_for) -> None:
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session", tag="a")
        assert (await agent.ok("start_session", tag="b"))["branch"] == "autoresearch/b"
        back = await agent.ok("start_session", tag="a")
        assert back["tag"] == "a" and back["resumed"] is True
    assert git(ml_project, "branch", "--show-current").strip() == "autoresearch/a"
    assert "session a" in run_cli("status", "--project", str(ml_project)).stdout
    # The next server resumes the session that is checked out, and start_session() switches no branch.
    async with agent_for(ml_project) as agent:
        again = await agent.ok("start_session")
        assert again["tag"] == "a" and again["resumed"] is True
    assert git(ml_project, "branch", "--show-current").strip() == "autoresearch/a"
    # A person checks out the other session's branch: that session is the current one now.
    git(ml_project, "checkout", "-q", "autoresearch/b")
    assert "session b" in run_cli("status", "--project", str(ml_project)).stdout
    async with agent_for(ml_project) as agent:
        assert (await agent.ok("query_results"))["tag"] == "b"
        assert (await agent.ok("start_session"))["tag"] == "b"
    assert git(ml_project, "branch", "--show-current").strip() == "autoresearch/b"


async def test_views_show_the_sessions_fixed_rules(ml_project: Path, agent_for) -> None:
    """The run command given on the server's command line, not a re-detected one."""
    command = f"{sys.executable} train.py"
    async with agent_for(ml_project, {"run_command": command}) as agent:
        await agent.ok("start_session", tag="fixed")
        await agent.experiment("baseline")
        briefing = (await agent.client.read_resource("autoresearch://briefing")).contents[0].text
    assert f"runs `{command}`" in briefing
    assert f"runs `{command}`" in cli_wide("status", "--project", str(ml_project))
    assert command in cli_wide("dashboard", "--project", str(ml_project), "--once")


async def test_the_loop_prompt_of_a_fresh_server_carries_the_sessions_briefing(
    ml_project: Path, agent_for
) -> None:
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session", tag="prompted")
        await agent.experiment("baseline")
    async with agent_for(ml_project) as agent:  # a new server: no tool called yet
        prompt = (await agent.client.get_prompt("loop", {})).messages[0].content.text
        assert "No session yet" not in prompt
        assert "# autoresearch briefing: session prompted" in prompt and "[keep] baseline" in prompt


async def test_a_running_reply_gives_the_live_logs_path(ml_project: Path, agent_for) -> None:
    (ml_project / "train.py").write_text(
        # It runs until the test releases it (an untracked file): still running whatever the machine's speed.
        'import os, time\nLR = 0.5\nprint("training...", flush=True)\n'
        'while not os.path.exists("release.flag"):\n    time.sleep(0.05)\nprint("val_bpb: 1.4")\n'
    )
    git(ml_project, "commit", "-qam", "slow training")
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session")
        run = await agent.ok("run_experiment", description="baseline", wait_s=0)
        assert run["status"] == "running"
        live = Path(run["log_path"])
        assert live.is_absolute() and live.name == "r1.log"
        assert live.exists()  # `tail -f` finds it at once, even before the run's process has started
        while "training..." not in live.read_text():  # what `tail -f` shows while it runs
            run = await agent.ok("wait_experiment", run_id="r1", wait_s=0.2)
            assert run["status"] == "running"
        (ml_project / "release.flag").write_text("")
        while run["status"] == "running":
            run = await agent.ok("wait_experiment", run_id="r1")
        # The baseline also measures the noise (issue 13): a second run, equal here, and the result's log is
        # the last run's.
        assert run["status"] == "ok" and run["values"] == [1.4, 1.4]
        assert Path(run["log_path"]) == live.with_name("r1-2.log")


async def test_next_steps_after_a_decision(ml_project: Path, agent_for) -> None:
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session")
        # A baseline that produced a value and was discarded on request did produce a value.
        run = await agent.ok("run_experiment", description="baseline")
        assert run["value"] == 1.4
        discarded = await agent.ok("commit_or_reset", run_id=run["run_id"], discard=True)
        assert discarded["decision"] == "discard"
        assert "did not produce a value" not in discarded["next_step"]
        assert (
            "run_experiment(description='baseline', decide=true)" in discarded["next_step"]
        )  # the loop's step
        # After every decision, the next step names log_result (the notes are the loop's memory).
        _, kept = await agent.experiment("baseline")
        assert kept["decision"] == "keep" and f"log_result(run_id='{kept['run_id']}'" in kept["next_step"]
        await agent.edit("LR = 0.5", "LR = 0.9")
        _, worse = await agent.experiment("worse")
        assert (
            worse["decision"] == "discard" and f"log_result(run_id='{worse['run_id']}'" in worse["next_step"]
        )


async def test_advice_does_not_assume_the_agent_has_a_shell(ml_project: Path, agent_for) -> None:
    """Each refusal says which call fixes it, or that a person must (the agent may have no shell)."""
    root = ml_project
    async with agent_for(root) as agent:
        await agent.ok("start_session")
        await agent.edit("LR = 0.5", "LR = 0.2")
        message = await agent.refused("run_experiment", description="baseline")
        assert "unmodified baseline" in message and "apply_edit" in message and "git checkout" not in message
        await agent.edit("LR = 0.2", "LR = 0.5")
        await agent.experiment("baseline")
        (root / "train.py").unlink()
        for refusal in (
            await agent.refused("read_target"),
            await agent.refused("run_experiment", description="x"),
        ):
            assert "deleted" in refusal and "apply_edit(content=...)" in refusal
            assert "git checkout" not in refusal
        git(root, "checkout", "--", "train.py")
        await agent.edit("LR = 0.5", "LR = 0.3")
        (root / "README.md").write_text("changed\n")
        (root / "prepare.py").write_text("# changed\n")
        readonly = await agent.refused("run_experiment", description="x")
        assert "prepare.py" in readonly and "a person must restore" in readonly
        git(root, "checkout", "--", "prepare.py")
        others = await agent.refused("run_experiment", description="x")
        assert "README.md" in others and "a person must restore" in others
        git(root, "checkout", "--", "README.md")
        git(root, "checkout", "-q", "main")
        moved = await agent.refused("apply_edit", content="x\n")
        assert "a person must check it out again" in moved


def test_every_setting_declares_whether_a_session_keeps_it() -> None:
    """Declared on the setting itself; a key that can change what is measured is kept for the session."""
    from mcp_autoresearch.setup.config import FREE, FROZEN, FROZEN_KEYS, KEYS, ConfigValues

    for name in KEYS:
        assert ConfigValues.model_fields[name].json_schema_extra in (FROZEN, FREE), name
    # time_budget is exported into every run; the others change how long, where and with what a run measures.
    for name in ("time_budget", "checks_timeout", "slot_devices", "shared_inputs", "run_command", "timeout"):
        assert name in FROZEN_KEYS
    assert "results_format" not in FROZEN_KEYS


async def test_a_session_refuses_a_frozen_setting_changed_between_two_servers(
    ml_project: Path, agent_for
) -> None:
    async with agent_for(ml_project, {"time_budget": 30}) as agent:
        await agent.ok("start_session", tag="kept")
    async with agent_for(ml_project, {"time_budget": 60}) as agent:
        refusal = await agent.refused("start_session", tag="kept")
    assert "time_budget: 30.0 -> 60.0" in refusal and "start a new session with another tag" in refusal
