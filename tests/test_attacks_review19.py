"""Review 19: the person's work beside a running session, repositories of unusual shape, a server killed at each
step of a decision, a full disk, and the agent's arguments at their limits. Each test here failed before its
fix (or is marked xfail with the fix it needs)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
