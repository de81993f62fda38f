"""Parallel slots (issue 14): several experiments in flight, each in a checkout of its own, decided one at a time
against the best at the time of the decision, through the same tools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import git, make_repo

pytestmark = pytest.mark.anyio

# The metric is |X - 3| + |Y - 5|, printed after a short sleep; edits to X and Y merge cleanly.
TARGET = "X = 0\n\n\n\nY = 0\n"
EVALUATE = """\
import runpy, time, os
time.sleep(float(os.environ.get("SLEEP", "0.3")))
ns = runpy.run_path("params.py")
print(f"score: {abs(ns['X'] - 3) + abs(ns['Y'] - 5):.6f}")
print("slot", os.environ.get("AUTORESEARCH_SLOT"), "devices", os.environ.get("CUDA_VISIBLE_DEVICES"))
"""


@pytest.fixture(autouse=True)
def slots_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "slots-home"
    monkeypatch.setenv("AUTORESEARCH_SLOTS_DIR", str(home))
    return home


def project(tmp_path: Path) -> Path:
    root = make_repo(tmp_path / "proj", {"params.py": TARGET, "evaluate.py": EVALUATE})
    (root / "user_notes.txt").write_text("mine\n")
    return root


def settings(**extra: Any) -> dict[str, Any]:
    return {
        "target_file": "params.py",
        "run_command": "python3 evaluate.py",
        "metric_name": "score",
        "readonly_files": ["evaluate.py"],
        "keep_rule": "greedy",
        "slots": 2,
        "slot_devices": ["0", "1"],
        **extra,
    }


async def wait_first(agent: Any) -> dict[str, Any]:
    run = await agent.ok("wait_experiment")
    while run["status"] == "running":
        run = await agent.ok("wait_experiment")
    return run


async def test_two_slots_keep_merge_and_rerun(tmp_path: Path, agent_for: Any, slots_home: Path) -> None:
    root = project(tmp_path)
    async with agent_for(root, settings()) as agent:
        started = await agent.ok("start_session", tag="s1")
        assert started["slots"].startswith("2 slots (local)")
        base = await agent.ok("run_experiment", description="baseline")
        assert base["status"] == "running" and base["slot"] is None
        run = await wait_first(agent)
        assert run["run_id"] == base["run_id"] and run["status"] == "ok" and run["value"] == 8.0
        assert run["values"] == [8.0, 8.0]  # one run per slot, at once
        decision = await agent.ok("commit_or_reset")
        assert decision["decision"] == "keep"
        head = git(root, "rev-parse", "HEAD").strip()

        await agent.edit("X = 0", "X = 3")
        first = await agent.ok("run_experiment", description="X to 3")
        assert first["status"] == "running" and first["slot"] == 0
        assert (root / "params.py").read_text() == TARGET  # back at the best for the next idea
        await agent.edit("Y = 0", "Y = 5")
        second = await agent.ok("run_experiment", description="Y to 5")
        assert second["slot"] == 1
        refused = await agent.refused("run_experiment", description="third")
        assert "all 2 slots are in use" in refused
        assert git(root, "rev-parse", "HEAD").strip() == head  # nothing moves while they run

        done = [await wait_first(agent)]
        decided = await agent.ok("commit_or_reset", run_id=done[0]["run_id"])
        assert decided["decision"] == "keep"
        other = second if done[0]["run_id"] == first["run_id"] else first
        run = await agent.ok("wait_experiment", run_id=other["run_id"])
        while run["status"] == "running":
            run = await agent.ok("wait_experiment", run_id=other["run_id"])
        again = await agent.ok("commit_or_reset", run_id=other["run_id"])
        assert again["decision"] == "rerun", again  # built on the old best: merged onto the new one
        run = await agent.ok("wait_experiment", run_id=other["run_id"])
        while run["status"] == "running":
            run = await agent.ok("wait_experiment", run_id=other["run_id"])
        assert run["value"] == 0.0
        final = await agent.ok("commit_or_reset", run_id=other["run_id"])
        assert final["decision"] == "keep"
        assert (root / "params.py").read_text() == "X = 3\n\n\n\nY = 5\n"
        assert git(root, "status", "--porcelain", "--untracked-files=no") == ""
        results = await agent.ok("query_results")
        assert results["total"] == 3 and results["best"]["value"] == 0.0

    tsv = (root / "results.tsv").read_text().splitlines()
    assert len(tsv) == 4 and [line.split("\t")[3] for line in tsv[1:]] == ["keep", "keep", "keep"]
    events = [json.loads(line) for line in (root / ".autoresearch/autoresearch.jsonl").read_text().splitlines()]
    rows = [e["details"] for e in events if e["action"] == "experiment_done"]
    assert [r.get("slot") for r in rows][0] is None and all(isinstance(r["slot"], int) for r in rows[1:])
    assert [r.get("rebases") for r in rows] == [None, None, 1]
    rebased = [e["details"] for e in events if e["action"] == "experiment_rebased"]
    assert len(rebased) == 1 and rebased[0]["run_id"] == other["run_id"]
    assert (root / "user_notes.txt").read_text() == "mine\n"
