"""Hostile review 46d: slots, the research tree, landing and the Ray path, through the real MCP client on real
git and real runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .conftest import git, make_repo, run_cli

pytestmark = pytest.mark.anyio

# Two knobs on lines far apart; lower is better (A + B).
TREE_PY = """\
A = 5

# spacer between the two knobs

B = 5
print(f"val_bpb: {A + B:.6f}")
"""

CONFIG = {"target_file": "train.py", "run_command": "python train.py"}


async def step(agent: Any, old: str, new: str, description: str) -> dict[str, Any]:
    await agent.edit(old, new)
    _run, decision = await agent.experiment(description)
    return decision


async def test_a_branched_candidate_of_a_filtered_target_is_committed_on_its_parent_node(
    tmp_path: Path, agent_for: Any
) -> None:
    """Attack: a target git converts on its way in (here `text` in .gitattributes: not a plain file), branched
    back to the baseline while another node is the best. Must hold: the candidate's commit is built on the node
    it was branched from (its logged parent), as for a plain target and with slots; never on the best, whose
    change the candidate does not hold (the best lineage that `finish` lists and lands would name it)."""
    root = make_repo(
        tmp_path / "filtered",
        {"train.py": TREE_PY, "prepare.py": "# fixed\n", ".gitattributes": "train.py text\n"},
    )
    async with agent_for(root, CONFIG) as agent:
        await agent.ok("start_session", tag="flt")
        _run, base = await agent.experiment("baseline")  # r1: 10
        r2 = await step(agent, "A = 5", "A = 3", "A to 3")  # r2: 8, the best
        assert r2["decision"] == "keep"
        await agent.ok("branch_from", run_id="r1")
        r3 = await step(agent, "B = 5", "B = 4", "B to 4 on the baseline")  # 9: beats r1, not the best
        assert r3["parent"] == "r1" and r3["decision"] == "keep", r3
        r3_commit = git(root, "rev-parse", "refs/autoresearch/flt/r3").strip()
        base_commit = git(root, "rev-parse", "main").strip()
        assert git(root, "rev-parse", f"{r3_commit}^").strip() == base_commit
        r4 = await step(agent, "A = 5", "A = 1", "A to 1 on r3")  # 5: the new best, lineage r1 -> r3 -> r4
        assert r4["parent"] == "r3", r4
        best = git(root, "rev-parse", "autoresearch/flt").strip()
        lineage = git(root, "log", "--format=%s", f"main..{best}").splitlines()
        assert lineage == ["experiment: A to 1 on r3", "experiment: B to 4 on the baseline"], lineage
    summary = run_cli("finish", "--project", str(root), "--session", "flt")
    assert summary.returncode == 0, summary.stderr
    assert "A to 3" not in summary.stdout, summary.stdout
