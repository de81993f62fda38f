"""Review 24: a hostile or sloppy agent over MCP, knowing the server's source, and what a person then sees: odd
arguments (NaN, booleans for numbers, invisible characters), the prompt called wrongly. Real server through the
real MCP client, real git. Each test here failed before its fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.anyio


async def test_a_boolean_never_sets_a_budget_the_agent_cannot_raise_again(
    ml_project: Path, agent_for: Any
) -> None:
    """pydantic reads `true` as 1: `start_session(max_experiments=true)` (a sloppy agent's "yes, a budget") set a
    budget of one experiment, and `max_hours=true` one hour, which the agent can never raise again (a person
    must). A boolean where a number is meant is refused, naming the argument; so is one for a line or a wait."""
    async with agent_for(ml_project, {"isolation": "off"}) as agent:
        await agent.ok("start_session", tag="flags")
        for key in ("max_experiments", "max_hours"):
            refused = await agent.refused("start_session", tag="flags", **{key: True})
            assert key in refused and "boolean, not a number" in refused, refused
        refused = await agent.refused("read_target", start_line=True)
        assert "start_line" in refused and "boolean" in refused, refused
        refused = await agent.refused("run_experiment", description="baseline", wait_s=False)
        assert "wait_s" in refused and "boolean" in refused, refused
        # The bounds still hold, and null is still "not given".
        assert "greater than or equal to 1" in await agent.refused("read_target", start_line=0)
        assert "greater than or equal to 0" in await agent.refused(
            "run_experiment", description="b", wait_s=-1
        )
        assert (await agent.ok("read_target", start_line=None, end_line=2))["end_line"] == 2
        started = await agent.ok("start_session", tag="flags", max_experiments=3)
        assert started["budget"] == "budget: 0 of 3 experiments (3 left)"
    state = json.loads((ml_project / ".autoresearch" / "sessions" / "flags.json").read_text())
    assert state["max_experiments"] == 3 and state["max_hours"] is None
