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


async def test_a_run_id_typed_with_a_leading_zero_is_recorded_as_the_run_it_names(
    ml_project: Path, agent_for: Any
) -> None:
    """`branch_from('r02')` and `log_result('r03', ...)` found runs r2 and r3 (the number is read), but the records
    kept the agent's spelling: the JSONL named the parent `r02` and the notes' run `r03`. The server's own tree
    read them back by number, but the web page (and any reader of the JSONL) did not: r3 was drawn as a second
    root and its note was lost. Every record names a run as it was logged."""
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session", tag="zeros")
        await agent.ok("run_experiment", description="baseline", decide=True)
        worse = [{"old_text": "LR = 0.5", "new_text": "LR = 0.9"}]
        await agent.ok("run_experiment", description="worse", edits=worse, decide=True)
        branched = await agent.ok("branch_from", run_id="r02")
        assert branched["parent"] == "r2"
        closer = [{"old_text": "LR = 0.9", "new_text": "LR = 0.8"}]
        run = await agent.ok("run_experiment", description="from r2", edits=closer, decide=True)
        assert run["run_id"] == "r3" and run["decided"]["parent"] == "r2"
        noted = await agent.ok("log_result", run_id="r03", notes="typed with a zero")
        assert noted["run_id"] == "r3"
        await agent.ok("branch_from", run_id="r01")
        wider = [{"old_text": "peak_vram_mb: 512.0", "new_text": "peak_vram_mb: 256.0"}]
        await agent.ok("run_experiment", description="less memory", edits=wider, decide=True)
        combined = await agent.ok("combine", run_a="r004", run_b="r03")
        assert set(combined["combined"]) == {"r3", "r4"}
        run = await agent.ok("run_experiment", description="both", decide=True)
        assert sorted(run["decided"].get("combined") or []) in ([], ["r3", "r4"])

    from mcp_autoresearch.readers.web.data import SessionView

    view = SessionView(ml_project)
    view.refresh()
    rows = {row.run_id: row for row in view.rows}
    assert rows["r3"].parent == "r2"
    assert rows["r3"].notes == ["typed with a zero"]
    nodes = {node["run_id"]: node for node in view.tree()["nodes"]}
    assert nodes["r3"]["depth"] == 2
