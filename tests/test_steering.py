"""Budgets and stalls: `max_hours` and `max_experiments` refuse new runs past them (a run started before the end is
decided and logged), every view shows them used and left, a budget raised by a person lets the session go on and the agent cannot
raise one; after
`stall_after` experiments without a keep, next_step proposes concrete nodes to branch from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mcp_autoresearch.readers.web.data import SessionView
from mcp_autoresearch.records.stall import combine_hint, proposals
from mcp_autoresearch.records.tree import build_tree

from .conftest import make_repo, run_cli
from .helpers.slots import private_slots_home  # noqa: F401 (the autouse fixture `slots_home`)

pytestmark = pytest.mark.anyio

TARGET = "X = 0\n# X and Y are independent\n\nY = 0\n"
EVALUATE = """\
import runpy
ns = runpy.run_path("params.py")
print(f"score: {abs(ns['X'] - 3) + abs(ns['Y'] - 5):.6f}")
"""


def settings(**extra: Any) -> dict[str, Any]:
    return {
        "target_file": "params.py",
        "run_command": "python3 evaluate.py",
        "metric_name": "score",
        "readonly_files": ["evaluate.py"],
        "keep_rule": "greedy",
        **extra,
    }


def project(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "proj", {"params.py": TARGET, "evaluate.py": EVALUATE})


def started_hours_ago(root: Path, tag: str, hours: float) -> None:
    """Move the session's recorded start into the past, in the server's record and its public copy, while no
    server runs (what a session started that long ago holds)."""
    start = (datetime.now() - timedelta(hours=hours)).isoformat(timespec="seconds")
    for name in (f"{tag}.own.json", f"{tag}.json"):
        path = root / ".autoresearch" / "sessions" / name
        data = json.loads(path.read_text())
        data.get("state", data)["created_at"] = start
        path.write_text(json.dumps(data))


async def test_max_hours_refuses_new_runs_decides_the_one_in_flight_and_a_raised_budget_goes_on(
    tmp_path: Path, agent_for: Any
) -> None:
    root = project(tmp_path)
    async with agent_for(root, settings(max_hours=1)) as agent:
        await agent.ok("start_session", tag="t")
        await agent.experiment("baseline")
        await agent.edit("X = 0", "X = 1")
        started = await agent.ok("run_experiment", description="X = 1")
        assert (await agent.until_done(started["run_id"]))["status"] == "ok"  # finished, not yet decided
    started_hours_ago(root, "t", 2)
    async with agent_for(root, settings(max_hours=1)) as agent:
        resumed = await agent.ok("start_session", tag="t")
        assert resumed["budget"].startswith("budget: 2 h of 1 h (0 h left)"), resumed["budget"]
        # The run started before the end is decided and logged as usual.
        decision = await agent.ok("commit_or_reset", run_id="r2")
        assert decision["decision"] == "keep"
        assert "the session's budget is spent (max_hours (1 h) reached" in decision["next_step"]
        results = await agent.ok("query_results")
        assert results["total"] == 2 and results["hours_left"] == 0 and results["hours_used"] >= 2
        await agent.edit("X = 1", "X = 2")
        refused = await agent.refused("run_experiment", description="X = 2")
        assert "max_hours (1 h) reached: 2 h have passed since the session started" in refused, refused
        assert "max_hours in the configuration" in refused and "finish" in refused, refused
        assert (await agent.ok("query_results"))["total"] == 2  # nothing ran, nothing was logged
        # The agent cannot raise the person's budget.
        not_raised = await agent.refused("start_session", tag="t", max_hours=3)
        assert "max_hours is 1 h for this session. To go on, a person raises it" in not_raised, not_raised
    # A person raises it in the configuration: the next server reads it.
    async with agent_for(root, settings(max_hours=3)) as agent:
        raised = await agent.ok("start_session", tag="t")
        assert raised["budget_changed"] == ["max_hours: 1 -> 3 (from the configuration)"]
        assert (await agent.experiment("X = 2"))[1]["decision"] == "keep"
        # The agent may lower it, and the lower budget outlives the server while the configuration is unchanged.
        lowered = await agent.ok("start_session", tag="t", max_hours=2.5)
        assert lowered["budget_changed"] == ["max_hours: 3 -> 2.5 (from start_session)"]
    async with agent_for(root, settings(max_hours=3)) as agent:
        assert "of 2.5 h" in (await agent.ok("start_session", tag="t"))["budget"]
        await agent.edit("X = 2", "X = 3")
        assert (await agent.experiment("X = 3"))[1]["decision"] == "keep"


async def test_every_view_shows_the_experiment_budget_used_and_left(tmp_path: Path, agent_for: Any) -> None:
    root = project(tmp_path)
    async with agent_for(root, settings(max_experiments=4)) as agent:
        started = await agent.ok("start_session", tag="t")
        assert started["budget"] == "budget: 0 of 4 experiments (4 left)"
        await agent.experiment("baseline")
        await agent.edit("X = 0", "X = 1")
        _, first = await agent.experiment("X = 1")
        assert "experiments left" not in first["next_step"]
        await agent.edit("X = 1", "X = 2")
        _, second = await agent.experiment("X = 2")
        assert "budget: 1 of 4 experiments left" in second["next_step"], second["next_step"]
        results = await agent.ok("query_results")
        assert results["budget"] == "budget: 3 of 4 experiments (1 left)" and results["experiments_left"] == 1
        briefing = (await agent.ok("start_session", tag="t"))["briefing"]
        assert "Budget: 3 of 4 experiments (1 left)." in briefing
        await agent.edit("X = 2", "X = 3")
        _, last = await agent.experiment("X = 3")
        assert "the session's budget is spent (max_experiments (4) reached" in last["next_step"]
        await agent.edit("X = 3", "X = 4")
        refused = await agent.refused("run_experiment", description="X = 4")
        assert "max_experiments (4) reached: 4 experiments" in refused
        assert "max_experiments in the configuration" in refused
    status = run_cli("status", "--project", str(root))
    assert "Budget: 4 of 4 experiments (0 left)." in status.stdout, status.stdout + status.stderr
    dashboard = run_cli("dashboard", "--once", "--project", str(root))
    assert "budget: 4 of 4 experiments (0 left)" in dashboard.stdout, dashboard.stdout
    view = SessionView(root)
    view.refresh()
    budget = view.summary()["budget"]
    assert budget["experiments"] == 4 and budget["experiments_left"] == 0 and budget["spent"]


async def test_with_slots_the_runs_in_flight_count_towards_the_experiment_budget(
    tmp_path: Path, agent_for: Any
) -> None:
    root = project(tmp_path)
    async with agent_for(root, settings(max_experiments=3, slots=3)) as agent:
        await agent.ok("start_session", tag="t")
        await agent.experiment("baseline")
        await agent.edit("X = 0", "X = 1")
        first = await agent.ok("run_experiment", description="X = 1")  # in flight in a slot
        assert (await agent.ok("query_results"))["budget"] == "budget: 2 of 3 experiments (1 left)"
        await agent.edit("X = 0", "X = 2")
        second = await agent.ok("run_experiment", description="X = 2")
        await agent.edit("X = 0", "X = 4")
        refused = await agent.refused("run_experiment", description="X = 4")
        assert "max_experiments (3) reached: 3 experiments (counting the 2 runs in flight)" in refused, (
            refused
        )
        for run in (first, second):  # both started before the end: decided and logged as usual
            await agent.until_done(run["run_id"])
            assert (await agent.ok("commit_or_reset", run_id=run["run_id"]))["decision"] in (
                "keep",
                "discard",
            )
        assert (await agent.ok("query_results"))["total"] == 3


async def test_a_budget_raised_in_the_configuration_or_on_the_command_line_lets_the_session_go_on(
    tmp_path: Path, agent_for: Any
) -> None:
    root = project(tmp_path)
    async with agent_for(root, settings(max_experiments=1)) as agent:
        await agent.ok("start_session", tag="t")
        await agent.experiment("baseline")
        await agent.edit("X = 0", "X = 1")
        assert "max_experiments (1) reached" in await agent.refused("run_experiment", description="X = 1")
    async with agent_for(root, settings(max_experiments=5)) as agent:
        resumed = await agent.ok("start_session", tag="t")
        assert resumed["budget_changed"] == ["max_experiments: 1 -> 5 (from the configuration)"]
        assert (await agent.experiment("X = 1"))[1]["decision"] == "keep"
    detected = json.loads(run_cli("detect", "--json", "--project", str(root), "--max-hours", "2.5").stdout)
    assert detected["max_hours"] == 2.5 and detected["config_source"]["max_hours"] == "command line"
    shown = run_cli("detect", "--project", str(root), "--max-hours", "2.5").stdout
    assert "budget:       2.5 hours from the session's start (the session's)" in shown, shown


async def test_after_stall_after_experiments_without_a_keep_next_step_proposes_nodes_to_branch_from(
    tmp_path: Path, agent_for: Any
) -> None:
    root = project(tmp_path)
    async with agent_for(root, settings(stall_after=3)) as agent:
        await agent.ok("start_session", tag="t")
        await agent.experiment("baseline")  # r1: 8
        await agent.edit("X = 0", "X = 1")
        await agent.experiment("X = 1")  # r2: 7, kept
        await agent.edit("X = 1", "X = 2")
        await agent.experiment("X = 2")  # r3: 6, kept: the best
        steps = []
        for value in ("4", "9", "5"):  # r4 ties the best (a near-miss), r5 and r6 are worse
            await agent.edit("X = 2", f"X = {value}")
            _, decision = await agent.experiment(f"X = {value}")
            assert decision["decision"] == "discard", (value, decision)
            steps.append(decision["next_step"])
        assert "It was a near-miss (improvement +0, within the noise of its parent)" in steps[0], steps[0]
        assert "edit the target and run. It was a near-miss" in steps[0], steps[0]  # two sentences
        assert 'branch_from(run_id="r4") starts from it' in steps[0]
        assert "stall_after" not in steps[1]
        stalled = steps[2]
        assert "3 experiments without a keep (stall_after = 3)" in stalled, stalled
        assert 'branch_from(run_id="r4"): near-miss (X = 4)' in stalled
        assert 'branch_from(run_id="r2"): on the best lineage, 1 step before the best' in stalled
        assert 'branch_from(run_id="r1"): on the best lineage, 2 steps before the best' in stalled
        assert 'branch_from(run_id="r3")' not in stalled  # never the best itself
        assert "combine(run_a=..., run_b=...)" in stalled
        briefing = (await agent.ok("start_session", tag="t"))["briefing"]
        assert "## Stalled: branch from another node" in briefing and 'branch_from(run_id="r2")' in briefing
        # The proposal's call works as written; a node kept on that branch is told the combine call.
        await agent.ok("branch_from", run_id="r2")
        assert (root / "params.py").read_text() == TARGET.replace("X = 0", "X = 1")
        await agent.edit("Y = 0", "Y = 1")
        _, kept = await agent.experiment("Y = 1 from r2")  # r7: 6, better than its parent r2 (7)
        assert kept["decision"] == "keep" and kept["parent"] == "r2", kept
        assert (
            'The best, r3 (value 6), is on another branch: combine(run_a="r3", run_b="r7")'
            in kept["next_step"]
        )
        await agent.ok("combine", run_a="r3", run_b="r7")
        assert (root / "params.py").read_text() == TARGET.replace("X = 0", "X = 2").replace("Y = 0", "Y = 1")
        _, both = await agent.experiment("X = 2 and Y = 1")
        assert both["decision"] == "keep" and both["value"] == 5.0
        prompt = await agent.client.get_prompt("loop", {})
        text = prompt.messages[0].content.text
        assert "## The research tree" in text and "after 3 experiments without a keep" in text


@dataclass
class Node:
    """A logged row as the tree reads it, with the parent its run started from."""

    run_id: str
    parent: str | None
    value: float | None
    status: str
    run_status: str = "ok"
    description: str = ""


def test_the_proposals_and_the_combine_hint_read_the_branches_of_the_tree() -> None:
    """On a tree with two branches: a near-miss judged against its own parent, the best lineage, the frontier
    node of the other branch; after a keep, the other branch's open node is the one to combine with."""
    rows = [
        Node("r1", None, 10.0, "keep"),
        Node("r2", "r1", 8.0, "keep"),
        Node("r3", "r2", 7.0, "keep"),  # the best
        Node("r4", "r1", 9.0, "keep"),  # kept against r1 on another branch; nobody built on it
        Node("r5", "r3", 7.0, "discard"),  # equal to its parent: a near-miss
        Node("r6", "r3", 9.5, "discard"),  # worse than its parent: no near-miss
    ]
    tree = build_tree(rows, "r3", True, 8)
    found = proposals(tree, True)
    assert [(p.run_id, p.kind) for p in found] == [
        ("r5", "near-miss"),
        ("r2", "lineage"),
        ("r1", "lineage"),
        ("r4", "frontier"),
    ]
    assert (
        found[0]
        .line()
        .startswith('branch_from(run_id="r5"): near-miss: discarded within the noise of its parent r3')
    )
    hint = combine_hint(tree, "r3")  # the best: the other branch's open node
    assert hint is not None and 'combine(run_a="r4", run_b="r3")' in hint
    hint = combine_hint(tree, "r4")  # a node kept on another branch: the best first
    assert hint is not None and 'The best, r3 (value 7), is on another branch: combine(run_a="r3"' in hint
    greedy = build_tree(rows[:3], "r3", True, 8)  # one branch: nothing to combine with
    assert combine_hint(greedy, "r3") is None


def test_the_combine_hint_is_skipped_only_where_it_would_say_nothing(tmp_path: Path) -> None:
    """After a keep the hint's tree is built only when a kept node (or the best) is off the run's lineage:
    on every node of a journal with two branches, a later parent and a crash, the shortcut says "nothing to
    combine" only where the tree's hint is None, and on a greedy journal's newest keep it does."""
    from mcp_autoresearch.lifecycle.steering import all_kept_on_lineage
    from mcp_autoresearch.records.journal import Journal
    from mcp_autoresearch.records.rows import Row
    from mcp_autoresearch.records.tree import journal_tree

    def journal_of(name: str, rows: list[tuple[str, str | None, float, str]]) -> Journal:
        journal = Journal(tmp_path / f"{name}.tsv", tmp_path / f"{name}.jsonl", "t")
        journal.load()
        for run_id, parent, value, status in rows:
            run_status = "crash" if status == "crash" else "ok"
            journal.log_experiment_done(
                Row(
                    run_id,
                    "a" * 40,
                    "m",
                    value,
                    status,
                    run_status,
                    run_id,
                    None,
                    None,
                    None,
                    0.1,
                    None,
                    "t",
                    "",
                    parent=parent,
                )  # fmt: skip
            )
        return journal

    branched = journal_of(
        "branched",
        [
            ("r1", None, 10.0, "keep"),
            ("r2", "r1", 8.0, "keep"),
            ("r3", "r2", 7.0, "keep"),
            ("r4", "r3", 9.0, "discard"),
            ("r5", "r1", 9.0, "keep"),  # another branch
            ("r6", "r9", 6.0, "keep"),  # a parent not logged before it: a tree of its own
            ("r7", "r2", 0.0, "crash"),
            ("r8", "r5", 8.5, "keep"),
        ],
    )
    greedy = journal_of(
        "greedy",
        [
            ("r1", None, 10.0, "keep"),
            ("r2", "r1", 9.0, "keep"),
            ("r3", "r2", 9.5, "discard"),
            ("r4", "r2", 8.0, "keep"),
        ],
    )
    checked = 0
    for journal in (branched, greedy):
        ids = [journal.run_id_at(i) for i in range(len(journal))]
        for best in ids:
            tree = journal_tree(journal, best, True, 8)
            for run_id in ids:
                skipped = all_kept_on_lineage(journal, run_id, best)
                assert skipped == (combine_hint(tree, run_id) is None) or not skipped, (run_id, best)
                checked += skipped
    assert all_kept_on_lineage(greedy, "r4", "r4")  # the greedy loop's keep: the tree is not built
    assert not all_kept_on_lineage(greedy, "r2", "r2")  # r4, kept later, is not on r2's lineage
    assert not all_kept_on_lineage(branched, "r3", "r3")  # r5, r6 and r8 are on other branches
    assert not all_kept_on_lineage(branched, "r8", "r3")
    assert checked >= 3  # the shortcut was taken, and agreed with the tree, on several nodes
