"""Where to branch from when the loop is stuck: after `stall_after` experiments without a keep, concrete nodes
of the research tree (records/tree.py) to start the next candidate from, each with its run id, why, and the
exact call.

The proposals are, in order: near-misses (discarded within the noise of their parent: a variant may pass),
earlier nodes of the best lineage (a different idea from before the last steps), frontier nodes (kept, never
built on). The best itself is never proposed. Pure: it reads the tree and never changes anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .journal import Journal
from .rows import one_line
from .tree import ResearchTree, TreeNode

MAX_PROPOSALS = 4
MAX_NEAR = 2  # near-misses proposed at most, so the other kinds are seen too
MAX_FRONTIER = 2


@dataclass(frozen=True)
class Proposal:
    """One node to branch from."""

    run_id: str
    kind: str  # near-miss | lineage | frontier
    why: str

    def call(self) -> str:
        return f'branch_from(run_id="{self.run_id}")'

    def line(self) -> str:
        return f"{self.call()}: {self.why}"


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _near_misses(tree: ResearchTree, lower: bool, named: Callable[[str], str]) -> list[Proposal]:
    found = []
    for index in tree.near_misses[:MAX_NEAR]:
        node = tree.nodes[index]
        parent = _parent(tree, node)
        gain = None
        if parent is not None and parent.value is not None and node.value is not None:
            gain = parent.value - node.value if lower else node.value - parent.value
        figure = f" (improvement {gain:+.4g})" if gain is not None else ""
        found.append(
            Proposal(
                node.run_id,
                "near-miss",
                f"near-miss{named(node.run_id)}: discarded within the noise of its parent "
                f"{node.parent}{figure}; a variant of it may pass",
            )
        )
    return found


def _parent(tree: ResearchTree, node: TreeNode) -> TreeNode | None:
    if node.parent is None:
        return None
    index = tree.index_of(node.parent)
    return tree.nodes[index] if index is not None else None


def _lineage(tree: ResearchTree) -> list[Proposal]:
    """The best's parent, and a node half way back to the baseline: a different idea from there."""
    path = tree.best_lineage[::-1]  # the best first
    steps = sorted({1, max(2, len(path) // 2)} & set(range(1, len(path))))
    return [
        Proposal(
            tree.nodes[path[step]].run_id,
            "lineage",
            f"on the best lineage, {step} step{'s' if step > 1 else ''} before the best (value "
            f"{_value(tree.nodes[path[step]].value)}): try a different idea from there",
        )
        for step in steps
    ]


def _frontier(tree: ResearchTree) -> list[Proposal]:
    return [
        Proposal(
            tree.nodes[i].run_id,
            "frontier",
            f"kept (value {_value(tree.nodes[i].value)}, better than its parent) and never built on",
        )
        for i in tree.frontier
        if not tree.nodes[i].best
    ][:MAX_FRONTIER]


def proposals(tree: ResearchTree, lower: bool, named: Callable[[str], str] = lambda _: "") -> list[Proposal]:
    """Up to MAX_PROPOSALS nodes to branch from, never the best, each once. `named(run_id)`: ' (its
    description)' for a node, read only for the few proposed."""
    best = {tree.nodes[i].run_id for i in tree.best_lineage[-1:]}
    chosen: list[Proposal] = []
    for proposal in [*_near_misses(tree, lower, named), *_lineage(tree), *_frontier(tree)]:
        if proposal.run_id not in best and all(p.run_id != proposal.run_id for p in chosen):
            chosen.append(proposal)
    return chosen[:MAX_PROPOSALS]


def experiments_since_keep(journal: Journal) -> int:
    """Experiments logged since the last keep (all of them when nothing was kept)."""
    total = len(journal)
    return total - 1 - journal.last_keep_index if total else 0


def stall_advice(journal: Journal, tree: ResearchTree, lower: bool, stall_after: int) -> str | None:
    """What next_step (and the briefing) says after `stall_after` or more experiments without a keep; None
    before that, or with no best yet. Descriptions are read back only for the nodes proposed."""
    since = experiments_since_keep(journal)
    if since < stall_after or not tree.best_lineage:
        return None

    def named(run_id: str) -> str:
        row = journal.get(run_id)
        return f" ({one_line(row.description, 60)})" if row is not None and row.description else ""

    found = proposals(tree, lower, named)
    head = (
        f"{since} experiments without a keep (stall_after = {stall_after}): the best may be a local optimum. "
    )
    if not found:
        return head + "Try a different kind of idea, or simplify"
    return (
        head
        + "Branch from another node instead of editing the best again: "
        + "; ".join(p.line() for p in found)
        + ". Or combine two nodes that improved different things: combine(run_a=..., run_b=...)"
    )


def combine_hint(tree: ResearchTree, run_id: str) -> str | None:
    """After a keep: a kept node on another branch (not an ancestor of this run) may have improved something
    else; combining the two measures both changes together. The best first, else the best-valued frontier node
    (kept, nobody built on it). None when every kept node is on this run's lineage."""
    index = tree.index_of(run_id)
    if index is None:
        return None
    ancestors = set(_ancestors(tree, index))
    best = tree.best_lineage[-1:] if tree.best_lineage else []
    others = [i for i in [*best, *tree.frontier] if i != index and i not in ancestors]
    if not others:
        return None
    other = tree.nodes[others[0]]
    what = "the best" if others[0] in best else "a kept node nobody built on"
    return (
        f"{what.capitalize()}, {other.run_id} (value {_value(other.value)}), is on another branch: "
        f'combine(run_a="{other.run_id}", run_b="{run_id}") measures both changes together'
    )


def _ancestors(tree: ResearchTree, index: int) -> list[int]:
    found: list[int] = []
    parent = tree.nodes[index].parent
    while parent is not None and len(found) < len(tree.nodes):
        at = tree.index_of(parent)
        if at is None:
            break
        found.append(at)
        parent = tree.nodes[at].parent
    return found
