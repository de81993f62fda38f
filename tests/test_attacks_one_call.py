"""Attacks on one call per experiment (run_experiment with edits/content and decide, wait_experiment with
decide): what a client reads in the published tool list, and two one-call requests at once, through the real
MCP client on real repositories."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from .conftest import HANG_TIMEOUT_S, git

pytestmark = pytest.mark.anyio


async def test_a_tool_that_may_decide_is_not_published_as_read_only(ml_project: Path, agent_for: Any) -> None:
    """wait_experiment(decide=true) commits or resets as commit_or_reset does: a client that runs read-only
    tools without asking the user must not be told it only reads, nor that run_experiment never resets."""
    async with agent_for(ml_project) as agent:
        tools = {tool.name: tool for tool in (await agent.client.list_tools()).tools}
    decider = tools["commit_or_reset"].annotations
    assert decider.destructive_hint is True
    for name in ("wait_experiment", "run_experiment"):
        hints = tools[name].annotations
        assert hints.read_only_hint is False, f"{name} may decide a run but says it only reads"
        assert hints.destructive_hint is True, f"{name} may reset the target as commit_or_reset does"


async def one_call(agent: Any, answers: dict[str, Any], name: str, description: str, text: str) -> None:
    answers[name] = await agent.client.call_tool(
        "run_experiment", {"description": description, "content": text, "decide": True}
    )


async def test_two_one_call_requests_at_once_run_each_its_own_edit(ml_project: Path, agent_for: Any) -> None:
    """Two run_experiment(content=..., decide=true) at once: the run that starts runs the content its own call
    wrote (never the other call's, under its description), and the other call is refused whole."""
    root = ml_project
    base_text = (root / "train.py").read_text()
    async with agent_for(root, {"time_budget": 1, "timeout": HANG_TIMEOUT_S}) as agent:
        await agent.ok("start_session", tag="race")
        await agent.ok("run_experiment", description="baseline", decide=True)
        for attempt in range(12):
            texts = {
                name: base_text.replace("LR = 0.5", f"LR = 0.{attempt}{digit}")
                for name, digit in (("A", 1), ("B", 2))
            }
            answers: dict[str, Any] = {}
            async with anyio.create_task_group() as group:
                for name in texts:
                    group.start_soon(one_call, agent, answers, name, f"{name}{attempt}", texts[name])
            for name, answer in answers.items():
                if answer.is_error:
                    continue
                run = answer.structured_content
                ran = git(root, "show", f"{run['commit']}:train.py")
                assert ran == texts[name], (
                    f"the run of {name}{attempt} ran the other call's edit: {run['edit']['diff']}"
                )
                assert run["edit"]["sha256_after"] and run["decided"] is not None
            # Leave the target as the best holds it, for the next pair (a refused call's edit stays made).
            await agent.ok("query_results")
            best = git(root, "show", "HEAD:train.py")
            if (root / "train.py").read_text() != best:
                await agent.ok("apply_edit", content=best)
