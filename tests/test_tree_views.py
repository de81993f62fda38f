"""Issue 23, item 4: seeing the research tree. The pure builder (records/tree.py) on rows as they are logged,
the journal's index, query_results(view='tree') through the MCP client, the briefing, status and dashboard."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from mcp_autoresearch.records.evidence import Evidence
from mcp_autoresearch.records.journal import Journal
from mcp_autoresearch.records.rows import Row
from mcp_autoresearch.records.tree import build_tree, journal_tree, stall_after_of
from mcp_autoresearch.records.tree_view import MAX_LINEAGE, frontier_line, tree_view

from .conftest import Agent, run_cli

pytestmark = pytest.mark.anyio


@dataclass
class R:
    run_id: str
    value: float | None
    status: str
    run_status: str = "ok"
    description: str = ""


async def make_history(agent: Agent) -> None:
    """baseline, lower LR (kept), higher LR (discarded), broken idea (crash): the greedy loop's tree."""
    await agent.ok("start_session", tag="views")
    await agent.experiment("baseline")
    await agent.edit("LR = 0.5", "LR = 0.3")
    await agent.experiment("lower LR")
    await agent.edit("LR = 0.3", "LR = 0.9")
    await agent.experiment("higher LR")
    await agent.edit("LR = 0.3", "LR = 0.3\nraise SystemExit(2)")
    await agent.experiment("broken idea")


def greedy_log() -> list[R]:
    """A greedy session as logged before runs named their parent: keeps advance the best."""
    return [
        R("r1", 1.0, "keep", description="baseline"),
        R("r2", 0.9, "keep"),
        R("r3", 0.95, "discard"),
        R("r4", 0.9, "discard"),  # equal to its parent: within the noise
        R("r5", None, "crash", "crash"),
        R("r6", 0.8, "keep"),
        R("r7", 0.85, "discard"),
    ]


def test_a_log_without_parents_reads_as_the_greedy_lineage() -> None:
    tree = build_tree(greedy_log(), "r6", True, 8)
    parents = {n.run_id: n.parent for n in tree.nodes}
    assert parents == {"r1": None, "r2": "r1", "r3": "r2", "r4": "r2", "r5": "r2", "r6": "r2", "r7": "r6"}
    assert [n.depth for n in tree.nodes] == [0, 1, 2, 2, 2, 2, 3]
    assert tree.run_ids(tree.best_lineage) == ["r1", "r2", "r6"]
    assert [n.run_id for n in tree.nodes if n.on_best_lineage] == ["r1", "r2", "r6"]
    assert [n.run_id for n in tree.nodes if n.best] == ["r6"]
    assert [n.children_count for n in tree.nodes] == [1, 4, 0, 0, 0, 1, 0]
    assert tree.frontier == []  # every kept node has a child
    assert tree.run_ids(tree.near_misses) == ["r4"]
    assert tree.dead_ends == []  # r2's last three children: a discard, a crash, then a keep
    assert tree.max_depth == 3
    assert tree.index_of("r6") == 5 and tree.index_of("r99") is None and tree.index_of(None) is None


def test_parents_named_by_the_rows_make_branches_judged_against_their_own_parent() -> None:
    rows = [
        R("r1", 1.0, "keep"),
        R("r2", 0.5, "keep"),
        R("r3", 0.99, "discard"),  # from r1: within the noise of r1, far from the best
        R("r4", 0.7, "keep"),  # from r1: kept on its own branch
        R("r5", 0.55, "discard"),  # from r2: 0.05 worse than its parent
        R("r6", 0.6, "keep"),  # from r4
    ]
    parents = [None, "r1", "r1", "r1", "r2", "r4"]
    tree = build_tree(rows, "r2", True, 8, noise_sd=0.02, parents=parents)
    assert [n.depth for n in tree.nodes] == [0, 1, 1, 1, 2, 2]
    assert tree.run_ids(tree.best_lineage) == ["r1", "r2"]
    assert tree.run_ids(tree.frontier) == ["r6"]  # r2 and r4 have children
    assert tree.run_ids(tree.near_misses) == ["r3"]  # r5 is 0.05 worse than r2: beyond the noise
    higher = build_tree(rows, "r1", False, 8, noise_sd=0.02, parents=parents)
    # higher is better: r5 beat r2 (yet was discarded), r3 lost 0.01 to r1: both within the noise, newest first
    assert higher.run_ids(higher.near_misses) == ["r5", "r3"]
    assert higher.run_ids(higher.frontier) == ["r6"]


def test_dead_ends_need_stall_after_failed_children_and_at_least_three() -> None:
    rows = [R("r1", 1.0, "keep")] + [R(f"r{i}", 1.1, "discard") for i in range(2, 5)]
    assert build_tree(rows, "r1", True, 3).run_ids(build_tree(rows, "r1", True, 3).dead_ends) == ["r1"]
    assert build_tree(rows, "r1", True, 4).dead_ends == []  # 3 failed children, stall_after 4
    assert build_tree(rows, "r1", True, 1).dead_ends == [0]  # never fewer than 3
    cut_short = [*rows[:3], R("r4", None, "crash", "interrupted")]
    assert build_tree(cut_short, "r1", True, 3).dead_ends == []  # a run cut short says nothing


def test_a_long_lineage_and_many_nodes_are_bounded_and_say_what_they_left_out() -> None:
    rows = [R(f"r{i}", 100.0 - i, "keep", description=f"idea {i}") for i in range(1, 201)]
    tree = build_tree(rows, "r200", True, 8)
    view = tree_view(tree, newest=5)
    assert view.best_lineage_length == 200
    assert len(view.best_lineage) == MAX_LINEAGE
    assert view.best_lineage[0] == "r1" and view.best_lineage[-1] == "r200"
    assert len(view.nodes) == MAX_LINEAGE and view.nodes_left_out == 200 - MAX_LINEAGE
    assert view.frontier == ["r200"] and view.nodes[-1].best and view.nodes[-1].description == "idea 200"
    assert "frontier: 1 kept node not built on yet: r200 -100" in frontier_line(tree)


def test_stall_after_comes_from_the_sessions_rules() -> None:
    assert stall_after_of({"stall_after": 5}) == 5
    assert stall_after_of({}) == 8 and stall_after_of({"stall_after": True}) == 8


def log_rows(journal: Journal, rows: list[R], parents: list[str | None]) -> None:
    for i, (r, parent) in enumerate(zip(rows, parents, strict=True)):
        journal.log_experiment_done(
            Row(
                run_id=r.run_id,
                commit=f"{i:040x}",
                metric="loss",
                value=r.value,
                status=r.status,  # type: ignore[arg-type]
                run_status=r.run_status,  # type: ignore[arg-type]
                description=r.description or f"idea {r.run_id}",
                prev=None,
                delta=None,
                memory_gb=None,
                duration_s=None,
                error=None,
                tag="t",
                timestamp="",
                evidence=Evidence(),
                parent=parent,
            )
        )


def test_the_journal_index_gives_the_same_tree_as_the_full_rows(tmp_path: Path) -> None:
    """Rows written before runs named their parent (no "parent" key) read as the greedy loop made them; rows
    that name one are branches; the index alone gives the tree the full rows give."""
    jsonl = tmp_path / "log.jsonl"
    old = greedy_log()
    jsonl.write_text(
        "".join(
            json.dumps(
                {
                    "action": "experiment_done",
                    "details": {
                        "run_id": r.run_id,
                        "status": r.status,
                        "run_status": r.run_status,
                        "value": r.value,
                        "description": f"idea {r.run_id}",
                        "tag": "t",
                    },
                }
            )
            + "\n"
            for r in old
        )
    )
    journal = Journal(tmp_path / "results.tsv", jsonl, "t")
    journal.load()
    new = [R("r8", 0.7, "keep"), R("custom-id", 0.96, "discard"), R("r10", 0.75, "keep")]
    log_rows(journal, new, ["r6", "r2", "r2"])  # r8 built on the best; the others branch from r2
    reread = Journal(tmp_path / "results.tsv", jsonl, "t")
    reread.load_readonly()
    assert [reread.run_id_at(i) for i in range(len(reread))][-3:] == ["r8", "custom-id", "r10"]
    fast = journal_tree(reread, "r8", True, 8)
    full = build_tree(reread.rows, "r8", True, 8)
    for node in full.nodes:
        node.description = ""  # the index does not hold descriptions
    assert fast == full
    parents = {n.run_id: n.parent for n in fast.nodes}
    assert parents["r3"] == "r2" and parents["r7"] == "r6" and parents["r1"] is None  # the greedy reading
    assert parents["custom-id"] == "r2" and parents["r10"] == "r2"
    assert fast.run_ids(fast.best_lineage) == ["r1", "r2", "r6", "r8"]
    assert fast.run_ids(fast.frontier) == ["r8", "r10"]  # best value first
    assert fast.run_ids(fast.near_misses) == ["r4"]  # custom-id is 0.06 worse than r2
    view = tree_view(fast, 2, lambda rows: [r.description for r in reread.rows_at(rows)])
    assert {n.run_id: n.description for n in view.nodes}["r10"] == "idea r10"


def test_the_last_tree_is_reused_until_the_journal_changes(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "results.tsv", tmp_path / "log.jsonl", "t")
    journal.load()
    log_rows(journal, [R("r1", 1.0, "keep"), R("r2", 0.9, "keep")], [None, "r1"])
    first = journal_tree(journal, "r2", True, 8)
    assert journal_tree(journal, "r2", True, 8) is first  # nothing changed: the same tree
    assert journal_tree(journal, "r2", True, 3) is not first  # another question
    log_rows(journal, [R("r3", 0.95, "discard")], ["r1"])
    again = journal_tree(journal, "r2", True, 8)
    assert len(again.nodes) == 3 and again.nodes[2].parent == "r1"


async def test_query_results_returns_the_tree_through_the_mcp_client(ml_project: Path, agent_for) -> None:
    """A real tree: the greedy loop, then branch_from the baseline and a keep on that branch (better than its
    parent, not than the best): a node of its own, the open frontier, off the best lineage."""
    async with agent_for(ml_project) as agent:
        await make_history(agent)  # baseline, lower LR (kept), higher LR (discarded), broken idea (crash)
        plain = await agent.ok("query_results")
        assert plain.get("tree") is None and len(plain["rows"]) == 4
        result = await agent.ok("query_results", view="tree", limit=2)
        tree = result["tree"]
        assert result["rows"] == []
        assert tree["nodes_total"] == 4 and tree["best_lineage"] == ["r1", "r2"]
        nodes = {n["run_id"]: n for n in tree["nodes"]}
        assert set(nodes) == {"r1", "r2", "r3", "r4"}  # the lineage and the newest two
        assert nodes["r3"]["parent"] == "r2" and nodes["r3"]["depth"] == 2
        assert nodes["r2"]["best"] and nodes["r2"]["children_count"] == 2
        assert nodes["r3"]["description"] == "higher LR"
        assert tree["frontier"] == [] and tree["dead_ends"] == []

        await agent.ok("branch_from", run_id="r1")  # the baseline's LR = 0.5 (1.4)
        await agent.edit("LR = 0.5", "LR = 0.4")
        _, kept = await agent.experiment("LR 0.4 from the baseline")  # 1.3: better than r1, not than r2 (1.2)
        assert kept["decision"] == "keep"
        tree = (await agent.ok("query_results", view="tree", limit=1))["tree"]
        nodes = {n["run_id"]: n for n in tree["nodes"]}
        assert nodes["r5"]["parent"] == "r1" and nodes["r5"]["depth"] == 1
        assert not nodes["r5"]["best"] and not nodes["r5"]["on_best_lineage"]
        assert tree["best_lineage"] == ["r1", "r2"] and tree["frontier"] == ["r5"]
        assert nodes["r1"]["children_count"] == 2
        briefing = (await agent.client.read_resource("autoresearch://briefing")).contents[0].text
        assert "## Research tree" in briefing
        assert "Best lineage (2 nodes): r1 (1.4) → r2 (1.2)." in briefing
        assert (
            "Open frontier (1 kept node not built on yet; branch_from one to explore it): r5 (1.3)."
            in briefing
        )


async def test_status_and_dashboard_show_the_frontier(ml_project: Path, agent_for) -> None:
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session", tag="views")
        await agent.experiment("baseline")
        await agent.edit("LR = 0.5", "LR = 0.3")
        await agent.experiment("lower LR")
    status = run_cli("status", "--project", str(ml_project))
    assert status.returncode == 0, status.stderr
    assert (
        "Open frontier (1 kept node not built on yet; branch_from one to explore it): r2 (" in status.stdout
    )
    assert "Best lineage (2 nodes): r1 (" in status.stdout
    dashboard = run_cli("dashboard", "--project", str(ml_project), "--once")
    assert dashboard.returncode == 0, dashboard.stderr
    assert "frontier: 1 kept node not built on yet: r2" in dashboard.stdout
