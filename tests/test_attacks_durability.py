"""Second hostile review (hostile2b): the JSONL's durability at a restart, the faster stat-based checks, the
refs read in-process, and budgets; through the real MCP client on real git and real runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import git, make_repo

pytestmark = pytest.mark.anyio

# Two knobs; lower is better (A + B).
KNOBS_PY = """\
A = 5

# spacer between the two knobs

B = 5
print(f"val_bpb: {A + B:.6f}")
"""

CONFIG = {"target_file": "train.py", "run_command": "python train.py"}


@pytest.fixture
def knobs(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "knobs", {"train.py": KNOBS_PY, "prepare.py": "# fixed\n"})


def jsonl(root: Path) -> Path:
    return root / ".autoresearch" / "autoresearch.jsonl"


def done_rows(root: Path) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in jsonl(root).read_text().splitlines()]
    return [e["details"] for e in events if e["action"] == "experiment_done"]


@pytest.mark.parametrize("where", ["refs/tags/autoresearch/h", "refs/notes/autoresearch/h"])
async def test_head_on_a_ref_named_like_the_session_branch_is_not_taken_for_it(
    knobs: Path, agent_for: Any, where: str
) -> None:
    """The agent's shell points HEAD at a tag (or any ref outside refs/heads/) named like the session branch,
    at the branch's commit. The in-process ref reader shortened any ref to its name after `refs/<kind>/`, so
    HEAD read as on the session branch: the edit was applied and the run started, the server wrote its commit on the real branch while
    HEAD and the work tree stayed on the tag, and the run was blamed for moving the branch. It must be refused
    before it starts, naming where HEAD is."""
    root = knobs
    async with agent_for(root, CONFIG) as agent:
        await agent.ok("start_session", tag="h")
        await agent.experiment("baseline")
        branch_before = git(root, "rev-parse", "refs/heads/autoresearch/h").strip()
        git(root, "update-ref", where, branch_before)
        git(root, "symbolic-ref", "HEAD", where)
        edits = [{"old_text": "A = 5", "new_text": "A = 3"}]
        for message in (
            await agent.refused("apply_edit", edits=edits),
            await agent.refused("run_experiment", description="HEAD on a look-alike ref"),
        ):
            assert where in message and "git checkout autoresearch/h" in message, message
        assert git(root, "rev-parse", "refs/heads/autoresearch/h").strip() == branch_before
        assert [row["run_id"] for row in done_rows(root)] == ["r1"]
