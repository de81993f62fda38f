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
