"""After a change that was not kept (a crash, failed checks, a discard), `next_step` says that the target no longer
holds it, what it holds, and how to get that version back: an agent told only "fix it and run again" patched a
file that had lost its change. Single runs and slots alike."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from .conftest import git, make_repo
from .helpers.slots import private_slots_home  # noqa: F401 (the autouse fixture `slots_home`)

pytestmark = pytest.mark.anyio

TARGET = "X = 0\nY = 0\n"
EVALUATE = """\
import runpy
ns = runpy.run_path("params.py")
if ns["X"] == 9:
    raise SystemExit("X must not be 9")
print(f"score: {abs(ns['X'] - 3) + abs(ns['Y'] - 5):.6f}")
"""
CHECK = """\
import runpy
assert runpy.run_path("params.py")["Y"] != 7, "Y must not be 7"
"""


def settings(slots: int) -> dict[str, Any]:
    return {
        "target_file": "params.py",
        "run_command": "python3 evaluate.py",
        "checks_command": "python3 check.py",
        "metric_name": "score",
        "readonly_files": ["evaluate.py", "check.py"],
        "keep_rule": "greedy",
        "slots": slots,
    }


def check_reverted(root: Path, decision: dict[str, Any], failed_content: str, baseline_run: str) -> None:
    step = decision["next_step"]
    assert "params.py" in step and f"the best kept ({baseline_run}" in step, step
    assert "no longer holds this run's change" in step or "never was in params.py" in step, step
    assert (root / "params.py").read_text() == TARGET  # what it says the target holds
    shown = re.search(r"`git show ([0-9a-f]{7}):params.py`", step)
    assert shown, step
    # The command it gives prints the version that failed.
    assert git(root, "show", f"{shown.group(1)}:params.py") == failed_content
    assert "apply_edit(content=...)" in step


@pytest.mark.parametrize("slots", [1, 2])
async def test_a_crash_and_failed_checks_say_the_target_was_reverted(
    tmp_path: Path, agent_for: Any, slots: int
) -> None:
    root = make_repo(tmp_path / "proj", {"params.py": TARGET, "evaluate.py": EVALUATE, "check.py": CHECK})
    async with agent_for(root, settings(slots)) as agent:
        await agent.ok("start_session", tag="t")
        await agent.ok("run_experiment", description="baseline")
        baseline = await agent.until_done()
        await agent.ok("commit_or_reset", run_id=baseline["run_id"])
        for old, new, status in [("X = 0", "X = 9", "crash"), ("Y = 0", "Y = 7", "checks_failed")]:
            await agent.edit(old, new)
            started = await agent.ok("run_experiment", description=f"{new}")
            run = await agent.until_done(started["run_id"])
            assert run["status"] == status, run
            assert "the target then goes back to the best kept version" in run["next_step"], run["next_step"]
            decision = await agent.ok("commit_or_reset", run_id=run["run_id"])
            assert decision["decision"] == "crash"
            why = "exit code 1" if status == "crash" else status  # what went wrong, never "a crash (crash)"
            assert decision["next_step"].startswith(f"logged as a crash ({why}); "), decision["next_step"]
            check_reverted(root, decision, TARGET.replace(old, new), baseline["run_id"])
