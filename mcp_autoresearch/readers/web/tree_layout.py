"""Where the page draws each node of the research tree: x is the run's position in the session (time), y its
lane. A lane holds a chain of runs, each built on the last kept run of the chain (the greedy loop is one lane,
its discarded tries dots along it); a run started from anywhere else opens a new chain, drawn from its parent
down to its own lane. Lanes are reused once their chain has ended, so a long session stays a few lanes tall.

Pure: it lays out the rows the page already read; the tree itself (depths, lineage, frontier) comes from
records/tree.py, the same builder the tools use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ...records.tree import ResearchTree, TreeRow, build_tree

MAX_TREE_NODES = 1500  # the newest nodes the page draws; older ones are counted, not drawn


@dataclass(slots=True)
class _Chain:
    anchor: int  # the node it starts from (-1: none)
    nodes: list[int] = field(default_factory=list)
    lane: int = 0


def tree_layout(
    rows: Sequence[TreeRow],
    combined: Sequence[list[str]],
    commits: Sequence[str],
    best_run_id: str | None,
    lower_is_better: bool,
    stall_after: int,
    max_nodes: int = MAX_TREE_NODES,
    noise_sd: float = 0.0,
) -> dict[str, Any]:
    """The page's tree: the newest `max_nodes` nodes with their lanes, the chains to draw, the best lineage, and
    the frontier, near-misses and dead ends of the whole tree (counts and the newest ids). `combined` holds,
    for each row, the two runs a combine run merged (empty for any other run)."""
    tree = build_tree(rows, best_run_id, lower_is_better, stall_after, noise_sd=noise_sd)
    start = max(0, len(tree.nodes) - max_nodes)
    index = {node.run_id: i for i, node in enumerate(tree.nodes)}
    parents = [-1 if n.parent is None else index.get(n.parent, -1) for n in tree.nodes]
    chains, chain_of = _chains(tree, parents, start)
    lanes = _assign_lanes(chains)
    frontier, near = set(tree.frontier), set(tree.near_misses)
    nodes = []
    for i in range(start, len(tree.nodes)):
        node = tree.nodes[i]
        nodes.append(
            {
                "n": i + 1,
                "run_id": node.run_id,
                "parent": node.parent,
                "commit": commits[i],
                "short": commits[i][:7],
                "status": node.status,
                "run_status": node.run_status,
                "value": node.value,
                "description": node.description,
                "depth": node.depth,
                "lane": chains[chain_of[i]].lane,
                "lineage": node.on_best_lineage,
                "best": node.best,
                "frontier": i in frontier,
                "near_miss": i in near,
                "combined": combined[i],
            }
        )
    return {
        "total": len(tree.nodes),
        "shown_from": start + 1,
        "lanes": lanes,
        "max_depth": tree.max_depth,
        "nodes": nodes,
        "chains": [
            {
                "anchor": c.anchor + 1 if c.anchor >= 0 else None,
                "lane": c.lane,
                "first": c.nodes[0] + 1,
                "last": c.nodes[-1] + 1,
            }
            for c in chains
        ],
        "lineage": [i + 1 for i in tree.best_lineage if i >= start],
        "lineage_length": len(tree.best_lineage),
        "frontier": _listed(tree, tree.frontier),
        "near_misses": _listed(tree, tree.near_misses),
        "dead_ends": _listed(tree, tree.dead_ends),
    }


def _listed(tree: ResearchTree, indices: list[int], shown: int = 5) -> dict[str, Any]:
    return {"total": len(indices), "runs": tree.run_ids(indices[:shown])}


def _chains(tree: ResearchTree, parents: list[int], start: int) -> tuple[list[_Chain], dict[int, int]]:
    """Runs grouped in chains: a run joins the chain whose tip is its parent (the tip moves on to a run that is
    kept or built on); any other run starts a chain at its parent. A parent before `start` reads as none."""
    chains: list[_Chain] = []
    chain_of: dict[int, int] = {}
    at_tip: dict[int, int] = {}  # node -> the chain whose tip it is
    for i in range(start, len(tree.nodes)):
        parent = parents[i] if parents[i] >= start else -1
        chain = at_tip.get(parent, -1) if parent >= 0 else -1
        if chain < 0:
            chain = len(chains)
            chains.append(_Chain(anchor=parent))
            if parent >= 0:
                at_tip[parent] = chain  # other tries from the same parent join this chain
        chains[chain].nodes.append(i)
        chain_of[i] = chain
        node = tree.nodes[i]
        if node.status == "keep" or node.children_count > 0 or parent < 0:
            if parent >= 0 and at_tip.get(parent) == chain:
                del at_tip[parent]
            at_tip[i] = chain
    return chains, chain_of


def _assign_lanes(chains: list[_Chain]) -> int:
    """Lowest free lane for each chain, in order of start; a lane is free once its last chain has ended.
    Returns how many lanes are used."""
    ends: list[int] = []  # the last x of the chain on each lane
    for chain in chains:
        begin = chain.anchor if chain.anchor >= 0 else chain.nodes[0]
        lane = next((k for k, end in enumerate(ends) if end < begin), len(ends))
        if lane == len(ends):
            ends.append(chain.nodes[-1])
        else:
            ends[lane] = chain.nodes[-1]
        chain.lane = lane
    return len(ends)
