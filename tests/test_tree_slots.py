"""The research tree with slots: runs in flight on different parents, each judged against its own parent and
never rebased; the best (and the session branch) moves only when a node beats it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import git
from .helpers.slots import private_slots_home  # noqa: F401 (the autouse fixture `slots_home`)
from .test_slots import TARGET, project, settings

pytestmark = pytest.mark.anyio


async def decide_next(agent: Any) -> dict[str, Any]:
    run = await agent.until_done()
    return await agent.ok("commit_or_reset", run_id=run["run_id"])


async def test_slots_on_two_parents_are_judged_against_each_parent_and_never_rebased(
    tmp_path: Path, agent_for: Any
) -> None:
    root = project(tmp_path)  # score |X - 3| + |Y - 5|; baseline X = 0, Y = 0: 8
    async with agent_for(root, settings()) as agent:
        await agent.ok("start_session", tag="ts")
        await agent.ok("run_experiment", description="baseline")
        assert (await decide_next(agent))["decision"] == "keep"  # r1: 8
        await agent.edit("X = 0", "X = 3")
        await agent.ok("run_experiment", description="X to 3")
        assert (await decide_next(agent))["best"] is True  # r2: 5
        await agent.edit("Y = 0", "Y = 2")
        await agent.ok("run_experiment", description="Y to 2")
        r3 = await decide_next(agent)  # r3: 3, the best
        assert r3["best"] is True

        await agent.ok("branch_from", run_id="r2")
        await agent.edit("Y = 0", "Y = 4")
        first = await agent.ok("run_experiment", description="Y to 4 on r2")  # r4: 1
        assert first["parent"] == "r2"
        assert (root / "params.py").read_text() == "X = 3\n\n\n\nY = 0\n"  # the parent's target again
        await agent.ok("branch_from", run_id="r1")
        assert (root / "params.py").read_text() == TARGET
        await agent.edit("X = 0", "X = 1")
        await agent.ok("run_experiment", description="X to 1 on r1")  # r5: 7

        decided = {}
        for _ in range(2):
            decision = await decide_next(agent)
            decided[decision["run_id"]] = decision
        r4, r5 = decided["r4"], decided["r5"]
        assert (r5["decision"], r5["parent"], r5["best"]) == ("keep", "r1", False)  # 7 < 8, not < 3
        assert (r4["decision"], r4["parent"], r4["best"]) == ("keep", "r2", True)  # 1 < 5, and < 3
        assert git(root, "rev-parse", "autoresearch/ts").strip() == r4["commit"]
        assert (root / "params.py").read_text() == TARGET  # the work tree stays on r1, where it branched
        results = await agent.ok("query_results")
        assert results["best"]["run_id"] == "r4"

    lines = (root / ".autoresearch" / "autoresearch.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert not [e for e in events if e["action"] == "experiment_rebased"]  # never rebased
    rows = {e["details"]["run_id"]: e["details"] for e in events if e["action"] == "experiment_done"}
    assert {r: (d["parent"], d["best"]) for r, d in rows.items()} == {
        "r1": (None, True),
        "r2": ("r1", True),
        "r3": ("r2", True),
        "r4": ("r2", True),
        "r5": ("r1", False),
    }
    assert all(not d.get("rebases") for d in rows.values())
