"""Review 26: the research tree and slots, attacked by a sloppy or hostile agent (through the MCP client) and by
the candidate's code. Each test here failed before its fix (or is a strict xfail naming the fix)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mcp_autoresearch.readers.plot import series
from mcp_autoresearch.readers.report import open_session_files
from mcp_autoresearch.readers.web.data import SessionView

from .conftest import run_cli
from .test_attacks_tree import CONFIG, knobs, step  # noqa: F401 (`knobs`: the fixture)

pytestmark = pytest.mark.anyio


async def test_finish_never_lists_a_discarded_node_of_the_best_lineage_as_a_kept_commit(
    knobs: Path,  # noqa: F811 (the fixture imported above)
    agent_for: Any,
) -> None:
    """A best built on a discarded node (branch_from a discard, then beat the best) has that discard's commit on
    its history: `finish` listed it under "kept commits" with no run id, as if it had been kept. It is named by
    its run, with its value, as the discard it was."""
    root = knobs
    async with agent_for(root, CONFIG) as agent:
        await agent.ok("start_session", tag="fs")
        await agent.experiment("baseline")  # r1: 10
        assert (await step(agent, "A = 5", "A = 3", "A to 3"))["best"]  # r2: 8
        r3 = await step(agent, "B = 5", "B = 7", "B to 7")  # r3: 10, discarded
        assert r3["decision"] == "discard"
        await agent.ok("branch_from", run_id="r3")
        r4 = await step(agent, "A = 3", "A = 0", "A to 0 on r3")  # 7: beats r3 and the best
        assert r4["best"] and r4["parent"] == "r3"
    done = run_cli("finish", "--project", str(root))
    assert done.returncode == 0, done.stderr
    listing = done.stdout[done.stdout.index("kept commits") :].split("can fast-forward")[0]
    lines = {line.split()[1]: line for line in listing.splitlines()[1:]}
    assert set(lines) == {"r2", "r3", "r4"}, listing
    assert "discard" in lines["r3"] and "10.000000" in lines["r3"], listing
    assert "discard" not in lines["r2"] + lines["r4"], listing
    assert "kept commits (2" in listing, listing  # r3 is on the way, not a kept commit


async def test_the_running_best_of_the_page_and_the_plot_is_the_sessions_best_never_a_node_that_did_not_become_it(
    knobs: Path,  # noqa: F811 (the fixture imported above)
    agent_for: Any,
) -> None:
    """A node kept against its parent that is not better than the best by min_delta stays a node, yet its value
    may be below the best's: the web page's and the PNG's "running best" took the best of every kept row and
    showed that node's value as the session's best."""
    root = knobs
    async with agent_for(root, {**CONFIG, "min_delta": 0.5}) as agent:
        await agent.ok("start_session", tag="rb")
        await agent.experiment("baseline")  # r1: 10
        assert (await step(agent, "A = 5", "A = 3", "A to 3"))["best"]  # r2: 8
        await agent.ok("branch_from", run_id="r1")
        r3 = await step(agent, "B = 5", "B = 2.7", "B to 2.7 on r1")  # 7.7: 2.3 over r1, only 0.3 over r2
        assert (r3["decision"], r3["best"], r3["parent"]) == ("keep", False, "r1"), r3
        assert (await agent.ok("query_results"))["best"]["run_id"] == "r2"
    view = SessionView(root)
    view.refresh()
    line = view.points()["best"]
    assert [s["run_id"] for s in line] == ["r1", "r2"], line
    files = open_session_files(str(root), "rb")
    drawn = series(files.journal.rows, "lower_is_better")
    assert drawn.running_best[-1][1] == 8, drawn.running_best
