"""The scripted agent's tree policy (which node to branch from, when to combine) and the benchmark that compares
it with the greedy loop (`bench/tree_search.py`, run small)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import anyio

from mcp_autoresearch.adapters.tree_policy import Branch, Combine, TreePolicy

BENCH = Path(__file__).resolve().parent.parent / "bench" / "tree_search.py"


def grown(policy: TreePolicy) -> TreePolicy:
    """r1 baseline 10; r2 kept 8; r3 kept 7 (the best); r4 discarded 7.5, r5 discarded 9 (children of r3)."""
    policy.record("r1", None, 10.0, kept=True, is_best=True)
    policy.record("r2", "r1", 8.0, kept=True, is_best=True)
    policy.record("r3", "r2", 7.0, kept=True, is_best=True)
    policy.record("r4", "r3", 7.5, kept=False, is_best=False)
    policy.record("r5", "r3", 9.0, kept=False, is_best=False)
    return policy


def test_it_goes_deeper_while_keeping_and_branches_after_a_stall() -> None:
    policy = TreePolicy(stall_after=3)
    policy.record("r1", None, 10.0, kept=True, is_best=True)
    policy.record("r2", "r1", 8.0, kept=True, is_best=True)
    assert policy.current == "r2" and policy.next_move() is None
    policy.record("r3", "r2", 9.0, kept=False, is_best=False)
    policy.record("r4", "r2", 8.5, kept=False, is_best=False)
    assert policy.current == "r2" and policy.next_move() is None  # two discards: not stalled yet
    policy.record("r5", "r2", 8.1, kept=False, is_best=False)
    move = policy.next_move()
    # The near-miss first: r5 came closest to its parent.
    assert isinstance(move, Branch) and move.run_id == "r5" and "near-miss" in move.why
    policy.moved_to(move.run_id)
    assert policy.current == "r5" and policy.stall == 0


def test_branch_points_take_turns_and_are_never_repeated() -> None:
    policy = grown(TreePolicy(stall_after=2, combine_every=0))
    seen = []
    for _ in range(4):
        policy.stall = policy.stall_after
        move = policy.next_move()
        assert isinstance(move, Branch)
        seen.append(move.run_id)
        policy.moved_to(move.run_id)
    # A near-miss (r4, closest to its parent), the best's parent (r2); no frontier node is left unexplored, so
    # the next near-miss (r5); then the next node up the best lineage (r1).
    assert seen == ["r4", "r2", "r5", "r1"], seen
    policy.stall = policy.stall_after
    assert policy.next_move() is None  # every branch point was tried


def test_it_combines_the_best_with_another_lineage() -> None:
    policy = grown(TreePolicy(stall_after=2, combine_every=1))
    policy.record("r6", "r1", 8.5, kept=True, is_best=False)  # another line of ideas from the baseline
    policy.stall = 2
    move = policy.next_move()
    assert isinstance(move, Combine) and (move.run_a, move.run_b) == ("r3", "r6")
    policy.stall = 2
    assert not isinstance(policy.next_move(), Combine)  # the same pair is not combined twice


def test_higher_is_better() -> None:
    policy = TreePolicy(stall_after=1, lower_is_better=False)
    policy.record("r1", None, 1.0, kept=True, is_best=True)
    policy.record("r2", "r1", 2.0, kept=True, is_best=True)
    policy.record("r3", "r1", 1.5, kept=True, is_best=False)
    policy.record("r4", "r2", 0.0, kept=False, is_best=False)
    assert policy.better(2.0, 1.0) and not policy.better(1.0, 2.0)
    policy.kinds = ("frontier",)
    move = policy.next_move()
    assert isinstance(move, Branch) and move.run_id == "r3"  # r2 has a child; r3 (1.5) has none


def test_the_tree_search_bench_runs(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("tree_search", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["tree_search"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    start = module.true_value("X = 2.6\nY = -3.3\nZ = 1.7\n")
    argv = ["--seeds", "1", "--experiments", "8", "--stall-after", "1", "--jobs", "1"]
    tallies = anyio.run(module.main, argv)
    for policy in ("greedy", "tree"):
        (outcome,) = tallies[policy].outcomes
        assert outcome.experiments == 8
        assert outcome.final_true <= start and outcome.best_kept_true <= outcome.final_true
        assert 0 <= outcome.false_keeps <= outcome.keeps
    assert tallies["greedy"].outcomes[0].branches == 0
    assert tallies["tree"].outcomes[0].branches >= 1  # one discard is a stall: it branched


def test_a_near_miss_is_an_alternative_to_the_best_lineage_never_a_miss_of_a_side_branch() -> None:
    policy = grown(TreePolicy(stall_after=1, combine_every=0))
    policy.record(
        "r6", "r4", 7.51, kept=False, is_best=False
    )  # a near-miss of the near-miss r4: closer still
    move = policy.next_move()
    assert isinstance(move, Branch) and move.run_id == "r4"  # r6's parent r4 is not on the best lineage


def test_a_content_measured_before_is_not_an_experiment(tmp_path: Path) -> None:
    """The scripted agent proposes a content the session measured: nothing runs, the target goes back, and the
    agent goes on to another idea (it neither decides an old run nor stops)."""
    from mcp import Client

    from mcp_autoresearch.adapters.scripted_agent import Proposal, ScriptedAgent
    from mcp_autoresearch.adapters.server import create_server
    from mcp_autoresearch.session.workspace import Workspace

    from .conftest import make_repo

    root = make_repo(
        tmp_path / "proj",
        {
            "params.py": "X = 3\n",
            "evaluate.py": "import runpy\nprint(f\"score: {abs(runpy.run_path('params.py')['X'] - 1)}\")\n",
            "autoresearch.toml": f'target_file = "params.py"\nrun_command = "{sys.executable} evaluate.py"\n'
            'metric_name = "score"\nmetric_direction = "lower_is_better"\nreadonly_files = ["evaluate.py"]\n',
        },
    )
    values = iter(["9", "9", "2"])  # 9: worse (discarded); 9 again: measured before; 2: better

    def proposer(content: str, _rng: object) -> Proposal:
        return Proposal(content.strip(), f"X = {next(values)}", "X")

    async def main() -> object:
        async with Client(create_server(Workspace(root))) as client:
            return await ScriptedAgent(client, log=lambda _line: None, proposer=proposer).loop(2, 1, "t")

    summary = anyio.run(main)
    assert summary.experiments == 3  # the baseline, X = 9 (discard), X = 2 (keep)
    assert summary.decisions == {"keep": 2, "discard": 1}
    assert (root / "params.py").read_text() == "X = 2\n"
