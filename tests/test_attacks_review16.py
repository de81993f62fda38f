"""Review 16: the agent's own attacks, through its tool calls (a hostile or sloppy LLM wanting a better table), and
on the viewers that show what it wrote. Each test here failed before its fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mcp_autoresearch.readers.plot import plotting_available

from .conftest import run_cli

pytestmark = pytest.mark.anyio


@pytest.mark.skipif(not plotting_available(), reason="the plot extra (matplotlib) is not installed")
async def test_a_description_with_dollar_signs_never_breaks_the_plot(
    ml_project: Path, agent_for: Any
) -> None:
    """matplotlib reads text between two '$' as TeX: a kept run's description such as `lr $\\frac{$` (or any
    unbalanced TeX) made `mcp-autoresearch plot` fail with a traceback, and `cost $5 to $10` was drawn as math.
    The agent's text is drawn as it is."""
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session", tag="dollars")
        run = await agent.ok(
            "run_experiment", description="baseline lr $\\frac{$ cost $5 to $10", decide=True
        )
        assert run["decided"]["decision"] == "keep"
    out = ml_project.parent / "progress.png"
    plot = run_cli("plot", "--project", str(ml_project), "--out", str(out))
    assert plot.returncode == 0, plot.stderr
    assert "Traceback" not in plot.stderr
    assert out.read_bytes().startswith(b"\x89PNG")
