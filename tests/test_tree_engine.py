"""The research tree through the MCP client: branch_from any logged run, a candidate judged against its parent,
the best moving only when a node beats it, and combine (clean and conflicting), on real runs and real git."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import git, make_repo, run_cli

pytestmark = pytest.mark.anyio

# Two knobs on lines far apart (so a three-way merge of a change to each is clean); lower is better.
TREE_PY = """\
A = 5

# spacer between the two knobs

B = 5
print(f"val_bpb: {A + B:.6f}")
"""


@pytest.fixture
def knobs(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "knobs", {"train.py": TREE_PY, "prepare.py": "# fixed\n"})


def target(root: Path) -> str:
    return (root / "train.py").read_text()


def branch_head(root: Path, tag: str) -> str:
    return git(root, "rev-parse", f"autoresearch/{tag}").strip()


def done_rows(root: Path) -> dict[str, dict[str, Any]]:
    lines = (root / ".autoresearch" / "autoresearch.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    return {e["details"]["run_id"]: e["details"] for e in events if e["action"] == "experiment_done"}


async def step(agent: Any, old: str, new: str, description: str) -> dict[str, Any]:
    await agent.edit(old, new)
    _run, decision = await agent.experiment(description)
    return decision


async def test_branches_from_kept_and_discarded_runs_and_the_best_moves_only_when_beaten(
    knobs: Path, agent_for: Any
) -> None:
    root = knobs
    async with agent_for(root, {"target_file": "train.py", "run_command": "python train.py"}) as agent:
        await agent.ok("start_session", tag="tr")
        _run, base = await agent.experiment("baseline")
        assert base["decision"] == "keep" and base["value"] == 10 and base["parent"] is None and base["best"]
        assert (await step(agent, "A = 5", "A = 3", "A to 3"))["best"] is True  # r2: 8
        r3 = await step(agent, "A = 3", "A = 1", "A to 1")  # r3: 6, the best
        assert r3["parent"] == "r2" and r3["best"] is True
        best = branch_head(root, "tr")
        r4 = await step(agent, "B = 5", "B = 9", "B to 9")  # r4: 10, discarded
        assert r4["decision"] == "discard" and r4["parent"] == "r3" and r4["best"] is False

        # Branch from a kept node that is no longer the best: its target comes back, it is the parent.
        await agent.edit("B = 5", "B = 6")  # an edit not yet run: kept aside, never lost
        branched = await agent.ok("branch_from", run_id="r2")
        assert branched["parent"] == "r2" and branched["value"] == 8 and branched["depth"] == 1
        assert "B = 6" in (root / branched["kept_aside"]).read_text()
        assert "A = 3" in target(root) and "B = 5" in target(root)
        assert branch_head(root, "tr") == best  # branching moves nothing in git
        r5 = await step(agent, "B = 5", "B = 4", "B to 4 on r2")  # 7: better than r2 (8), not than r3 (6)
        assert (r5["decision"], r5["parent"], r5["best"], r5["prev"]) == ("keep", "r2", False, 8)
        assert branch_head(root, "tr") == best and "not better than the best" in r5["reason"]
        assert "A = 3" in target(root) and "B = 4" in target(root)  # the node is the next parent
        assert git(root, "rev-parse", "refs/autoresearch/tr/r5").strip() == r5["commit"]
        assert (
            git(root, "rev-parse", f"{r5['commit']}^").strip()
            == git(root, "rev-parse", "refs/autoresearch/tr/r5^").strip()
        )

        # Deeper on that lineage: better than the best, so the best (and the branch) moves.
        r6 = await step(agent, "B = 4", "B = 0", "B to 0 on r5")  # 3
        assert (r6["decision"], r6["parent"], r6["best"]) == ("keep", "r5", True)
        assert branch_head(root, "tr") == r6["commit"] and git(root, "status", "--porcelain", "-uno") == ""
        assert (
            git(root, "rev-parse", "refs/autoresearch/tr/r3").strip() == best
        )  # the old best stays reachable

        # Branch from a discarded run: judged against it (10), kept as a node, the best unmoved.
        assert (await agent.ok("branch_from", run_id="r4"))["status"] == "discard"
        assert "A = 1" in target(root) and "B = 9" in target(root)
        r7 = await step(agent, "A = 1", "A = 0", "A to 0 on r4")  # 9
        assert (r7["decision"], r7["parent"], r7["best"]) == ("keep", "r4", False)
        r8 = await step(agent, "A = 0", "A = 2", "A to 2 on r7")  # 11: worse than r7, discarded
        assert (r8["decision"], r8["parent"]) == ("discard", "r7")
        assert "judged against its parent r7, not the best" in r8["reason"], r8["reason"]
        assert "A = 0" in target(root) and "B = 9" in target(root)  # back to its parent's target
        assert branch_head(root, "tr") == r6["commit"]

        # Refusals: an unknown run; a run waiting for its decision in the work tree.
        assert "no run 'r99'" in await agent.refused("branch_from", run_id="r99")
        await agent.edit("A = 0", "A = 7")
        run = await agent.until_done((await agent.ok("run_experiment", description="pending"))["run_id"])
        assert "decide run" in await agent.refused("branch_from", run_id="r2")
        await agent.ok("commit_or_reset", run_id=run["run_id"])

        rows = done_rows(root)
        assert [rows[f"r{i}"]["parent"] for i in range(1, 10)] == [
            None,
            "r1",
            "r2",
            "r3",
            "r2",
            "r5",
            "r4",
            "r7",
            "r7",
        ]
        assert [r for r in rows if rows[r]["best"]] == ["r1", "r2", "r3", "r6"]
        results = await agent.ok("query_results", limit=20)
        assert results["best"]["run_id"] == "r6"
        assert {r["run_id"]: r["parent"] for r in results["rows"]}["r5"] == "r2"
        tsv = (root / "results.tsv").read_text().splitlines()
        assert len(tsv) == 10 and all(len(line.split("\t")) == 5 for line in tsv)

    # While the target holds another node, finish says how to put the best's back.
    refused = run_cli("finish", "--project", str(root), "--land", "main")
    assert refused.returncode != 0 and "branch_from(run_id='r6')" in refused.stderr, refused.stderr
    async with agent_for(root, {"target_file": "train.py", "run_command": "python train.py"}) as agent:
        await agent.ok("start_session", tag="tr")
        back = await agent.ok("branch_from", run_id="r6")  # the best: the working tree is clean again
        assert back["parent"] == "r6" and back["depth"] == 3
        assert git(root, "status", "--porcelain", "-uno") == ""

    # The best's lineage lands like any session's: the branch holds it, commit by commit.
    landed = run_cli("finish", "--project", str(root), "--land", "main")
    assert landed.returncode == 0, landed.stderr
    lineage = git(root, "log", "--first-parent", "--format=%H", "main").split()
    assert lineage[:3] == [r6["commit"], r5["commit"], git(root, "rev-parse", f"{r5['commit']}^").strip()]


async def test_combine_merges_two_nodes_onto_the_better_and_a_conflict_names_the_lines(
    knobs: Path, agent_for: Any
) -> None:
    root = knobs
    async with agent_for(root, {"target_file": "train.py", "run_command": "python train.py"}) as agent:
        await agent.ok("start_session", tag="co")
        await agent.experiment("baseline")  # r1: 10
        await step(agent, "A = 5", "A = 3", "A to 3")  # r2: 8
        await step(agent, "A = 3", "A = 1", "A to 1")  # r3: 6
        await agent.ok("branch_from", run_id="r2")
        await step(agent, "B = 5", "B = 4", "B to 4")  # r4: 7, a node beside the best
        await agent.ok("branch_from", run_id="r2")
        await step(agent, "B = 5", "B = 9", "B to 9")  # r5: 12, discarded (r2 is 8)

        before = target(root)
        conflict = await agent.refused("combine", run_a="r4", run_b="r5")
        assert "line 5" in conflict and "r4" in conflict and "r5" in conflict
        assert target(root) == before  # nothing changed

        merged = await agent.ok("combine", run_a="r3", run_b="r4")
        assert merged["parent"] == "r3" and merged["combined"] == ["r3", "r4"]
        assert "A = 1" in target(root) and "B = 4" in target(root)
        run, decision = await agent.experiment("r3 + r4")
        assert run["value"] == 5 and run["parent"] == "r3"
        assert (decision["decision"], decision["parent"], decision["best"]) == ("keep", "r3", True)
        await step(agent, "B = 4", "B = 3", "B to 3")  # r7: a plain run after it
        rows = done_rows(root)
        assert rows["r6"]["combined"] == ["r3", "r4"] and rows["r7"]["parent"] == "r6"
        assert "combined" not in rows["r5"] and "combined" not in rows["r7"]


async def test_the_sequential_rule_judges_a_branched_candidate_against_its_parents_runs(
    tmp_path: Path, agent_for: Any
) -> None:
    """Scripted noise (test_noise's evaluator): the parent's content is re-measured in place of the candidate's,
    the candidate is kept against its parent, and becomes the best only when its runs beat the best's too."""
    from .test_noise import project, try_values

    root = project(tmp_path)
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="sq")
        await agent.experiment("baseline")  # r1: 1.0, 1.1, 0.9
        _run, r2 = await try_values(agent, "VALUES 0.5 0.52 0.48\n", "much better")
        assert r2["decision"] == "keep" and r2["best"] is True
        best_runs = (await agent.ok("query_results"))["best_runs"]

        await agent.ok("branch_from", run_id="r1")
        _run, r3 = await try_values(agent, "VALUES 0.8 0.82 0.78\n", "better than r1, not than r2")
        assert (r3["decision"], r3["parent"], r3["best"]) == ("keep", "r1", False)
        assert r3["best_values"][:3] == [1.0, 1.1, 0.9] and len(r3["best_values"]) > 3  # r1's, re-measured
        assert r3["prev"] == 1.0
        logs = sorted(p.name for p in (root / ".autoresearch" / "runs" / "sq").glob("r3-best*.log"))
        assert logs  # the parent's content ran in place of the candidate's
        after = await agent.ok("query_results")
        assert after["best"]["run_id"] == "r2" and after["best_runs"] == best_runs  # the best untouched
        assert (root / "cand.txt").read_text() == "VALUES 0.8 0.82 0.78\n"

        _run, r4 = await try_values(agent, "VALUES 0.3 0.32 0.28\n", "better than both")
        assert (r4["decision"], r4["parent"], r4["best"]) == ("keep", "r3", True)
        assert r4["best_values"][:3] == [0.8, 0.82, 0.78]
        assert (await agent.ok("query_results"))["best"]["run_id"] == "r4"
        assert git(root, "rev-parse", "autoresearch/sq").strip() == r4["commit"]


async def test_a_crash_branched_from_to_fix_it_is_judged_against_the_best(
    knobs: Path, agent_for: Any
) -> None:
    root = knobs
    async with agent_for(root, {"target_file": "train.py", "run_command": "python train.py"}) as agent:
        await agent.ok("start_session", tag="cr")
        await agent.experiment("baseline")  # r1: 10
        crashed = await step(agent, "B = 5", "B = 4\nraise SystemExit('typo')", "B to 4, with a typo")
        assert crashed["decision"] == "crash" and "B = 4" not in target(root)
        branched = await agent.ok("branch_from", run_id="r2")
        assert branched["status"] == "crash" and branched["value"] is None and "typo" in target(root)
        fixed = await step(agent, "\nraise SystemExit('typo')", "", "B to 4, fixed")  # 9
        # Its parent has no value: the bar is the best's (10), and beating it makes it the best.
        assert (fixed["decision"], fixed["parent"], fixed["best"], fixed["prev"]) == ("keep", "r2", True, 10)
        assert git(root, "rev-parse", "autoresearch/cr").strip() == fixed["commit"]
        assert git(root, "status", "--porcelain", "-uno") == ""
        rows = done_rows(root)
        assert (rows["r3"]["parent"], rows["r3"]["best"]) == ("r2", True)
        assert (
            git(root, "rev-parse", "refs/autoresearch/cr/r1").strip()
            == git(root, "rev-parse", f"{fixed['commit']}~2").strip()
        )


async def test_the_sequential_rule_remeasures_the_best_beside_a_candidate_branched_from_a_crash(
    tmp_path: Path, agent_for: Any
) -> None:
    """A crash has no value: the bar is the best's, so the content re-measured beside the fixed candidate is the
    best's, never the crash's."""
    from .test_noise import project, try_values

    root = project(tmp_path)
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="sc")
        await agent.experiment("baseline")  # r1: 1.0, 1.1, 0.9
        _run, crashed = await try_values(agent, "NO NUMBER 0.5\n", "a typo: no VALUES line")
        assert crashed["decision"] == "crash"
        await agent.ok("branch_from", run_id="r2")
        _run, fixed = await try_values(agent, "VALUES 0.5 0.52 0.48\n", "the typo fixed")
        assert (fixed["decision"], fixed["parent"], fixed["best"], fixed["prev"]) == ("keep", "r2", True, 1.0)
        assert len(fixed["best_values"]) > 3  # the best re-measured beside it ...
        assert set(fixed["best_values"]) <= {1.0, 1.1, 0.9}  # ... with the best's content, not the crash's
