"""Review 19: the person's work beside a running session, repositories of unusual shape, a server killed at each
step of a decision, a full disk, and the agent's arguments at their limits. Each test here failed before its
fix (or is marked xfail with the fix it needs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import anyio
import pytest

from mcp_autoresearch.vcs.repo import GIT_ENV

from .conftest import git

pytestmark = pytest.mark.anyio


async def finished_run(agent, old: str, new: str, description: str) -> dict:
    """An edit run to its end, not decided yet (the three-call loop: the decision is commit_or_reset's)."""
    await agent.edit(old, new)
    run = await agent.ok("run_experiment", description=description)
    return await agent.until_done(run["run_id"])


async def test_a_target_edited_by_hand_before_a_discard_is_kept_aside_not_reverted_unseen(
    ml_project: Path, agent_for
) -> None:
    """Between a run's end and its decision no tool writes the target: a change found there is a person's (the
    three-call loop leaves the agent's commit_or_reset to come as late as it likes). The discard put the
    parent's version back over it, and said only that the target "no longer holds this run's change": the
    person's line was gone, kept nowhere. It is kept aside, and the answer says where."""
    root = ml_project
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="hand")
        await agent.experiment("baseline")
        run = await finished_run(agent, "LR = 0.5", "LR = 0.9", "worse")
        assert run["status"] == "ok", run
        with open(root / "train.py", "a") as target:
            target.write("# the person's own line, typed while the run waited for its decision\n")
        changed = (root / "train.py").read_bytes()
        decision = await agent.ok("commit_or_reset", run_id=run["run_id"])
        assert decision["decision"] == "discard", decision
        assert "LR = 0.5" in (root / "train.py").read_text()  # the parent's version is back
        kept = [p for p in (root / ".autoresearch" / "edits").iterdir() if p.read_bytes() == changed]
        assert kept, "the person's change is lost"
        assert str(kept[0].relative_to(root)) in decision["next_step"], decision["next_step"]
        # a discard with nothing changed since the run keeps nothing
        again = await finished_run(agent, "LR = 0.5", "LR = 0.8", "worse again")
        await agent.ok("commit_or_reset", run_id=again["run_id"])
        assert len(list((root / ".autoresearch" / "edits").iterdir())) == 1


async def test_resuming_a_session_never_leaves_a_persons_detached_commits_behind(
    ml_project: Path, agent_for
) -> None:
    """Between two servers the person detaches HEAD and commits there (or stops a `git rebase -i` at an `edit`
    and amends). start_session resumed the session by checking out its branch: the person's commits were left
    reachable from no ref (git's own checkout warns of it; the server said nothing), and a rebase under way then
    went on from the session's branch. The resume is refused with what to do, and nothing is changed."""
    root = ml_project
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="t")
        await agent.experiment("baseline")
    git(root, "checkout", "-q", "--detach")
    (root / "README.md").write_text("the person's work on a detached HEAD\n")
    git(root, "commit", "-qam", "the person's detached commit")
    mine = git(root, "rev-parse", "HEAD").strip()
    async with agent_for(root) as agent:
        refused = await agent.refused("start_session", tag="t")
        assert "no branch holds" in refused and f"git branch NAME {mine[:12]}" in refused, refused
        assert git(root, "rev-parse", "HEAD").strip() == mine
        git(root, "branch", "mine", mine)  # the person follows the advice: the session resumes
        await agent.ok("start_session", tag="t")
    assert git(root, "rev-parse", "mine").strip() == mine


async def test_a_session_is_never_started_or_resumed_in_the_middle_of_a_rebase(
    ml_project: Path, agent_for
) -> None:
    """A `git rebase -i` stopped at an `edit` leaves a clean tree on a detached HEAD. start_session made its branch
    there (or, to resume, checked out its branch): `git rebase --continue` then goes on from the session's branch
    and writes the result, the session's experiments included, to the person's branch. Refused, with how to end
    the rebase."""
    root = ml_project
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="t")
        await agent.experiment("baseline")
    git(root, "checkout", "-q", "main")
    for text in ("a", "b"):
        (root / "README.md").write_text(f"{text}\n")
        git(root, "commit", "-qam", text)
    env = {**os.environ, **GIT_ENV, "GIT_SEQUENCE_EDITOR": "sed -i 1s/^pick/edit/"}
    subprocess.run(["git", "rebase", "-i", "HEAD~2"], cwd=root, env=env, check=True, capture_output=True)
    stopped = git(root, "rev-parse", "HEAD").strip()
    async with agent_for(root) as agent:
        for tag in ("t", "u"):
            refused = await agent.refused("start_session", tag=tag)
            assert "a rebase is under way" in refused and "git rebase --continue" in refused, refused
    assert git(root, "rev-parse", "HEAD").strip() == stopped
    assert "autoresearch/u" not in git(root, "branch", "--list")


# A target whose run waits for the person: it says it started, then waits until the file GO appears (in a folder
# of the user's home, outside the project the person's commit is checked on). `run_experiment` returns at once
# (`wait_s=0`): with its default wait it held the test 30 s while the run waited for the test.
WAITING = """LR = 0.9
import os, time
print("started", flush=True)
while not os.path.exists(GO):
    time.sleep(0.02)
print(f"val_bpb: {abs(LR - 0.1) + 1:.6f}")
"""


async def running_until_released(agent, root: Path, go: Path) -> dict:
    """A run started and seen running (its live log says so); the file `go` lets it end."""
    await agent.ok("apply_edit", content=f"GO = {str(go)!r}\n" + WAITING)
    run = await agent.ok("run_experiment", description="waits for the person", wait_s=0)
    log = root / run["log_path"]
    while not (log.exists() and "started" in log.read_text()):
        await anyio.sleep(0.02)
    return run


@pytest.mark.parametrize("where", ["session branch", "detached HEAD"])
async def test_a_persons_commit_made_during_a_run_is_never_left_reachable_only_from_the_reflog(
    ml_project: Path, agent_for, where: str
) -> None:
    """The person commits while a run is under way, on the session branch they did not notice was checked out,
    or on a detached HEAD. The after-run check cannot tell them from a run's: it put the branch back (or checked
    the branch out again) and named neither the commit nor how to keep it; the person's commit was reachable
    only from the reflog. The check now names the commit (`git branch NAME <id>`), and a detached HEAD holding
    commits no branch holds is left where it is."""
    root = ml_project
    signals = Path(tempfile.mkdtemp(prefix=".autoresearch-test-signals-", dir=Path.home()))
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="t")
        await agent.experiment("baseline")
        run = await running_until_released(agent, root, signals / "go")
        if where == "detached HEAD":
            git(root, "checkout", "-q", "--detach")
        (root / "README.md").write_text("the person's fix, committed during the run\n")
        git(root, "add", "README.md")
        git(root, "commit", "-qm", "the person's commit")
        mine = git(root, "rev-parse", "HEAD").strip()
        (signals / "go").write_text("")
        done = await agent.until_done(run["run_id"])
        shutil.rmtree(signals)
        assert done["status"] == "tampered", done
        reachable = git(root, "branch", "--contains", mine).strip()
        assert reachable or f"git branch NAME {mine[:12]}" in done["error"], done["error"]
        if where == "detached HEAD":
            assert git(root, "rev-parse", "HEAD").strip() == mine
