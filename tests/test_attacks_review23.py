"""Review 23: a server killed with SIGKILL at each step of an experiment, the git set-ups a person may have,
a hand edit of the target between runs, and a cherry-pick of several commits left half done. Each test here
failed before its fix (or is marked xfail with the fix it needs)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mcp_autoresearch.vcs.repo import GIT_ENV

from .conftest import git

pytestmark = pytest.mark.anyio


def person_git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """git as the person runs it (their hooks and settings), allowed to fail."""
    return subprocess.run(["git", *args], cwd=root, env=GIT_ENV, capture_output=True, text=True)


async def test_a_cherry_pick_of_several_commits_stopped_then_committed_is_seen_as_under_way(
    ml_project: Path, agent_for
) -> None:
    """`git cherry-pick A B` stopped at A's conflict; the person resolves it and runs `git commit`. git removes
    CHERRY_PICK_HEAD, and only `.git/sequencer/` says that B is still to come: a session started there, and a
    later `git cherry-pick --continue` put B on the session's branch."""
    root = ml_project
    git(root, "checkout", "-q", "-b", "side")
    for line in ("side one", "side two"):
        (root / "README.md").write_text(f"{line}\n")
        git(root, "commit", "-q", "-am", line)
    git(root, "checkout", "-q", "main")
    (root / "README.md").write_text("main's own\n")
    git(root, "commit", "-q", "-am", "main's own")
    stopped = person_git(root, "cherry-pick", "side~1", "side")
    assert stopped.returncode != 0, stopped.stdout + stopped.stderr
    (root / "README.md").write_text("resolved\n")
    git(root, "commit", "-q", "-am", "resolved by hand")
    assert (root / ".git" / "sequencer").is_dir() and not (root / ".git" / "CHERRY_PICK_HEAD").exists()
    async with agent_for(root) as agent:
        refused = await agent.refused("start_session", tag="seq")
        assert "cherry-pick or revert of several commits" in refused, refused
        assert "git cherry-pick --continue" in refused and "Nothing was changed" in refused, refused
    assert git(root, "branch", "--list", "autoresearch/*") == ""


async def test_a_hand_edit_of_the_target_between_runs_is_kept_aside_before_an_edit_replaces_it(
    ml_project: Path, agent_for
) -> None:
    """After a decision the person edits the target by hand; the agent, which cannot know, then writes the whole
    file (`content=`). The person's version was gone, kept nowhere. It is kept in `.autoresearch/edits/`, and
    the answer says where; the edits the server itself left there (its own last edit, a decision's restore)
    keep nothing."""
    root = ml_project
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="hand")
        await agent.experiment("baseline")
        first = await agent.edit("LR = 0.5", "LR = 0.9")
        assert first.get("kept_aside") is None, first
        second = await agent.edit("LR = 0.9", "LR = 0.8")  # its own last edit: nothing to keep
        assert second.get("kept_aside") is None, second
        await agent.experiment("worse")  # discarded: the best's target is back
        with open(root / "train.py", "a") as target:
            target.write("# the person's own line, typed between two runs\n")
        by_hand = (root / "train.py").read_bytes()
        replaced = await agent.ok("apply_edit", content=(root / "train.py").read_text().replace("0.5", "0.3"))
        kept = replaced.get("kept_aside")
        assert kept and (root / kept).read_bytes() == by_hand, replaced
        assert kept.startswith(".autoresearch/edits/"), kept
        again = await agent.ok("apply_edit", content="LR = 0.3\n")
        assert again.get("kept_aside") is None, again


ATTRIBUTES = {
    "ident": "train.py ident\n",  # `$Id$` expanded on checkout, collapsed again by git's clean step
    "crlf": "train.py text=auto eol=crlf\n",
    "filter": "train.py filter=rev\n",  # a clean filter: the blob holds every line reversed
}


@pytest.mark.parametrize("attributes", list(ATTRIBUTES))
async def test_a_kept_target_with_attributes_is_committed_as_git_would_commit_it(
    ml_project: Path, agent_for, attributes: str
) -> None:
    """The server writes the candidate's blob in-process for a "plain" target. `is_plain_file` asked git about
    `filter`, `eol` and `text`, not `ident` (nor `working-tree-encoding`): a target with `$Id$` expanded by a
    checkout was committed expanded, where git commits `$Id$`, and `git status` then showed it changed. The
    kept commit holds what `git hash-object --path` (git's own clean step) makes of the file, and the tree is
    clean."""
    root = ml_project
    if attributes == "filter":
        git(root, "config", "filter.rev.clean", "rev")
        git(root, "config", "filter.rev.smudge", "rev")
    (root / ".gitattributes").write_text(ATTRIBUTES[attributes])
    (root / "train.py").write_text("# $Id$\n" + (root / "train.py").read_text())
    git(root, "add", ".gitattributes", "train.py")
    git(root, "commit", "-q", "-m", "attributes")
    (root / "train.py").unlink()
    git(root, "checkout", "--", "train.py")  # as a clone leaves it: $Id$ expanded, CRLF written
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="attr")
        await agent.experiment("baseline")
        await agent.edit("0.5", "0.3")
        _run, decision = await agent.experiment("better")
        assert decision["decision"] == "keep", decision
    expected = git(root, "hash-object", "--path", "train.py", "train.py").strip()
    assert git(root, "rev-parse", "HEAD:train.py").strip() == expected
    assert git(root, "status", "--porcelain", "--untracked-files=no") == ""
