"""The research tree as the tools show it: a bounded `TreeView` of a `ResearchTree` (records/tree.py).

A session of 100,000 experiments has a tree of 100,000 nodes; an answer shows the parts an agent acts on (the
best lineage, the open frontier, the near-misses, the dead ends) and the newest nodes, each node once, and says
how many it left out. Plain types only, so the published schema nests without `$ref` (see adapters/schemas.py).
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, Field

from ..statuses import Decision
from .tree import ResearchTree

MAX_LINEAGE = 30  # nodes of the best lineage shown: the baseline and the newest part
MAX_LISTED = 20  # frontier, near-misses, dead ends shown (each)


class TreeNodeView(BaseModel):
    run_id: str
    parent: str | None = Field(
        description="The run this candidate started from (its parent node); null for the baseline."
    )
    value: float | None
    status: Decision
    run_status: str
    depth: int = Field(description="0 for the baseline; its parent's depth + 1.")
    best: bool = Field(description="True: the session's best now.")
    on_best_lineage: bool = Field(description="True: on the path from the baseline to the best.")
    children_count: int = Field(description="Runs that started from this node.")
    description: str


class TreeView(BaseModel):
    nodes_total: int = Field(description="Nodes in the tree: every logged experiment.")
    max_depth: int
    nodes: list[TreeNodeView] = Field(
        description="The nodes shown, oldest first, each once: the best lineage, the frontier, the near-misses, "
        "the dead ends and the newest nodes (query_results' limit)."
    )
    nodes_left_out: int = Field(description="Nodes of the tree not in `nodes`.")
    best_lineage: list[str] = Field(
        description="Run ids from the baseline to the best (a long one: the baseline, then its newest part)."
    )
    best_lineage_length: int
    frontier: list[str] = Field(
        description="Kept nodes nothing has started from yet, best value first: branch_from one to explore it."
    )
    frontier_total: int
    near_misses: list[str] = Field(
        description="Discarded within the noise of their own parent, newest first: worth retrying or combining."
    )
    near_misses_total: int
    dead_ends: list[str] = Field(
        description="Kept nodes whose last children (stall_after of them, at least 3) all failed, newest first."
    )
    dead_ends_total: int


Describe = Callable[[list[int]], list[str]]  # descriptions of rows, by index (read from the journal)


def bounded_lineage(lineage: list[int], limit: int = MAX_LINEAGE) -> list[int]:
    """A long lineage as the baseline and its newest part."""
    return lineage if len(lineage) <= limit else [lineage[0], *lineage[-(limit - 1) :]]


def tree_view(tree: ResearchTree, newest: int, describe: Describe | None = None) -> TreeView:
    """The bounded view: the parts an agent acts on and the `newest` nodes."""
    lineage = bounded_lineage(tree.best_lineage)
    frontier = tree.frontier[:MAX_LISTED]
    near = tree.near_misses[:MAX_LISTED]
    dead = tree.dead_ends[:MAX_LISTED]
    count = len(tree.nodes)
    recent = range(max(0, count - max(0, newest)), count)
    shown = sorted({*lineage, *frontier, *near, *dead, *recent})
    missing = [i for i in shown if not tree.nodes[i].description]
    if describe is not None and missing:
        for i, text in zip(missing, describe(missing), strict=True):
            tree.nodes[i].description = text
    return TreeView(
        nodes_total=count,
        max_depth=tree.max_depth,
        nodes=[_node(tree, i) for i in shown],
        nodes_left_out=count - len(shown),
        best_lineage=tree.run_ids(lineage),
        best_lineage_length=len(tree.best_lineage),
        frontier=tree.run_ids(frontier),
        frontier_total=len(tree.frontier),
        near_misses=tree.run_ids(near),
        near_misses_total=len(tree.near_misses),
        dead_ends=tree.run_ids(dead),
        dead_ends_total=len(tree.dead_ends),
    )


def _node(tree: ResearchTree, index: int) -> TreeNodeView:
    node = tree.nodes[index]
    return TreeNodeView(
        run_id=node.run_id,
        parent=node.parent,
        value=node.value,
        status=node.status,
        run_status=node.run_status,
        depth=node.depth,
        best=node.best,
        on_best_lineage=node.on_best_lineage,
        children_count=node.children_count,
        description=node.description,
    )


def frontier_line(tree: ResearchTree, shown: int = 3) -> str:
    """The frontier in one line, for status and the dashboard: how many, and the best few with their values."""
    if not tree.nodes:
        return "frontier: no experiments yet"
    total = len(tree.frontier)
    if total == 0:
        line = "frontier: every kept node has been built on"
    else:
        best = ", ".join(
            f"{n.run_id} {_fmt(n.value)}" for n in (tree.nodes[i] for i in tree.frontier[:shown])
        )
        more = f" (+{total - shown} more)" if total > shown else ""
        line = f"frontier: {total} kept node{'s' if total != 1 else ''} not built on yet: {best}{more}"
    if tree.dead_ends:
        line += f"; {len(tree.dead_ends)} dead end{'s' if len(tree.dead_ends) != 1 else ''}"
    return line


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"
