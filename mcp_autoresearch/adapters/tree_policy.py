"""The scripted agent's tree policy: which node to branch from, and when to combine two nodes.

A simple, readable policy over the research tree, fed with every decision the server made:
- go deeper on a keep (the kept node becomes the parent of the next candidate, as in the greedy loop);
- after `stall_after` experiments in a row without a keep, branch: in turn from a near-miss (of the discarded
  children of the best lineage's nodes, the one whose value came closest to its parent's), from an earlier node
  of the best lineage (the best's parent, then its grandparent, ...) and from a frontier node (kept, not yet
  explored);
- every `combine_every`-th time it would branch, combine the best with the best node of another lineage instead.
A node is branched from at most once, so the policy never circles back to the same place.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Node:
    run_id: str
    parent: str | None
    value: float | None
    kept: bool
    children: int = 0


@dataclass
class Branch:
    run_id: str
    why: str


@dataclass
class Combine:
    run_a: str
    run_b: str
    why: str


@dataclass
class TreePolicy:
    stall_after: int = 8  # the server's default (BENCHMARKS.md: the default of `stall_after`)
    combine_every: int = 3
    lower_is_better: bool = True
    nodes: dict[str, Node] = field(default_factory=dict)
    best: str | None = None
    current: str | None = None  # the parent of the next candidate
    stall: int = 0
    branches: int = 0
    tried: set[str] = field(default_factory=set)
    combined: set[tuple[str, str]] = field(default_factory=set)
    kinds: tuple[str, ...] = ("near-miss", "lineage", "frontier")

    def record(self, run_id: str, parent: str | None, value: float | None, kept: bool, is_best: bool) -> None:
        """One decided experiment. A keep moves on to the kept node; anything else returns to its parent."""
        self.nodes[run_id] = Node(run_id, parent, value, kept)
        if parent in self.nodes:
            self.nodes[parent].children += 1
        if is_best:
            self.best = run_id
        if kept:
            self.current, self.stall = run_id, 0
        else:
            self.current, self.stall = parent, self.stall + 1

    def moved_to(self, run_id: str) -> None:
        """The agent branched to this node (or combined onto it): it is the parent of the next candidate."""
        self.current, self.stall = run_id, 0
        self.tried.add(run_id)

    def next_move(self) -> Branch | Combine | None:
        """None while the current line still improves; else where to go next (None when nothing is left)."""
        if self.stall < self.stall_after or self.best is None:
            return None
        self.stall = 0
        self.branches += 1
        if self.combine_every and self.branches % self.combine_every == 0:
            pair = self._combine_pair()
            if pair is not None:
                return pair
        return self.branch_point()

    def branch_point(self) -> Branch | None:
        """The next node to branch from, the kinds in turn (None when every one was tried)."""
        for offset in range(len(self.kinds)):
            kind = self.kinds[(self.branches - 1 + offset) % len(self.kinds)]
            move = getattr(self, "_" + kind.replace("-", "_"))()
            if move is not None:
                return move
        return None

    def lineage(self, run_id: str | None) -> list[str]:
        """The path from this node back to the baseline, this node first."""
        path: list[str] = []
        while run_id is not None and run_id in self.nodes and run_id not in path:
            path.append(run_id)
            run_id = self.nodes[run_id].parent
        return path

    def better(self, a: float, b: float) -> bool:
        return a < b if self.lower_is_better else a > b

    def _rank(self, node: Node) -> float:
        """Smaller is better, whatever the direction (a node without a value ranks last)."""
        if node.value is None:
            return float("inf")
        return node.value if self.lower_is_better else -node.value

    def _gap(self, node: Node) -> float:
        parent = self.nodes.get(node.parent or "")
        if node.value is None or parent is None or parent.value is None:
            return float("inf")
        return abs(node.value - parent.value)

    def _near_miss(self) -> Branch | None:
        """The discarded child of a node of the best lineage that came closest to its parent (an alternative
        to the path that led to the best; not a near-miss of a near-miss)."""
        on_lineage = set(self.lineage(self.best))
        misses = [
            n
            for n in self.nodes.values()
            if not n.kept and n.value is not None and n.run_id not in self.tried and n.parent in on_lineage
        ]
        if not misses:
            return None
        node = min(misses, key=self._gap)
        parent = self.nodes[node.parent or ""]
        return Branch(
            node.run_id,
            f"a near-miss: {node.value:.6g}, discarded against its parent {parent.run_id}'s {parent.value:.6g}",
        )

    def _lineage(self) -> Branch | None:
        for run_id in self.lineage(self.best)[1:]:
            if run_id not in self.tried:
                depth = self.lineage(self.best).index(run_id)
                return Branch(run_id, f"an earlier node of the best lineage, {depth} step(s) above the best")
        return None

    def _frontier(self) -> Branch | None:
        frontier = [
            n
            for n in self.nodes.values()
            if n.kept and n.children == 0 and n.value is not None and n.run_id not in self.tried
        ]
        if not frontier:
            return None
        node = min(frontier, key=self._rank)
        return Branch(node.run_id, f"a frontier node: kept ({node.value:.6g}) and not explored yet")

    def _combine_pair(self) -> Combine | None:
        """The best and the best kept node off the best lineage (another line of ideas), if any."""
        on_lineage = set(self.lineage(self.best))
        others = [
            n
            for n in self.nodes.values()
            if n.kept
            and n.value is not None
            and n.run_id not in on_lineage
            and (self.best or "", n.run_id) not in self.combined
        ]
        if self.best is None or not others:
            return None
        other = min(others, key=self._rank)
        self.combined.add((self.best, other.run_id))
        return Combine(
            self.best, other.run_id, f"the best with {other.run_id}, the best node of another lineage"
        )
