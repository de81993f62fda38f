"""Hostile review 46d: slots, the research tree, landing and the Ray path, through the real MCP client on real
git and real runs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import GIT_ENV, git, make_repo, run_cli
from .test_attacks_tree import CONFIG, TREE_PY
from .test_tree_engine import step

pytestmark = pytest.mark.anyio


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


async def test_finish_never_lands_on_a_branch_the_user_is_rebasing(tmp_path: Path, agent_for: Any) -> None:
    """Attack: the user is in the middle of `git rebase -i` of main (stopped at an `edit`: HEAD detached, the
    tree clean) and runs `finish --land main`. git itself refuses to move a branch being rebased (`git branch
    -f`: "checked out"); the rebase moves it when it ends, from the tip it started on. Must hold: finish
    refuses and changes nothing, so the rebase still ends (before the fix main was moved under it, and
    `git rebase --continue` failed: "cannot lock ref ... is at X but expected Y")."""
    root = make_repo(tmp_path / "rebasing", {"train.py": TREE_PY, "prepare.py": "# fixed\n"})
    (root / "notes.md").write_text("the user's second commit\n")
    git(root, "add", "notes.md")
    git(root, "commit", "-q", "-m", "notes")
    async with agent_for(root, CONFIG) as agent:
        await agent.ok("start_session", tag="rb")
        await agent.experiment("baseline")
        assert (await step(agent, "A = 5", "A = 3", "A to 3"))["decision"] == "keep"
    git(root, "checkout", "-q", "main")
    tip = git(root, "rev-parse", "main").strip()
    editor = {**os.environ, **GIT_ENV, "GIT_SEQUENCE_EDITOR": "sed -i 's/^pick /edit /'"}
    subprocess.run(["git", "rebase", "-q", "-i", "HEAD~1"], cwd=root, env=editor, capture_output=True)
    assert (root / ".git" / "rebase-merge").is_dir()
    assert git(root, "status", "--porcelain", "--untracked-files=no") == ""
    landed = run_cli("finish", "--project", str(root), "--session", "rb", "--land", "main")
    assert landed.returncode != 0, landed.stdout
    assert "being rebased" in landed.stderr, landed.stderr
    assert git(root, "rev-parse", "main").strip() == tip
    git(root, "rebase", "--continue")
    assert git(root, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"


async def test_a_fifo_planted_as_a_worktrees_operation_file_does_not_hold_finish(
    tmp_path: Path, agent_for: Any
) -> None:
    """Attack: an unconfined run (or anything with the user's rights) plants a FIFO where git keeps a linked work
    tree's bisect start (`.git/worktrees/<name>/BISECT_START`), which `finish --land` reads to tell whether the
    branch is being bisected. Must hold: the read never waits on it (a FIFO with no writer held the old read
    forever) and the landing goes on: main moves to the best."""
    root = make_repo(tmp_path / "fifo", {"train.py": TREE_PY, "prepare.py": "# fixed\n"})
    async with agent_for(root, CONFIG) as agent:
        await agent.ok("start_session", tag="ff")
        await agent.experiment("baseline")
        assert (await step(agent, "A = 5", "A = 3", "A to 3"))["decision"] == "keep"
    best = git(root, "rev-parse", "autoresearch/ff").strip()
    git(root, "checkout", "-q", "main")
    ghost = root / ".git" / "worktrees" / "ghost"
    ghost.mkdir(parents=True)
    os.mkfifo(ghost / "BISECT_START")
    landed = run_cli("finish", "--project", str(root), "--session", "ff", "--land", "main")
    assert landed.returncode == 0, landed.stderr
    assert git(root, "rev-parse", "main").strip() == best
