"""The research tree: every measured run is a node, its parent the run its candidate started from.

Pure: it reads rows (or a journal's compact index) and says what the tree holds: each node's depth, whether it
is on the best lineage, how many children it has; the frontier (kept nodes nobody has built on yet), the
near-misses (discarded within the noise of their own parent), the dead ends (kept nodes whose last children
all failed) and the best lineage (the baseline to the best). It never reads git, never writes, and never
imports the session: the engine, the views and the stall proposals all read the same tree from here.

Rows logged before runs named their parent read as the greedy loop made them: the parent of a run is the
run that was best when it was logged (the previous kept row; none for the first).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..statuses import Decision, as_decision
from .journal import Journal
from .rows import NOT_MEASURED

MIN_DEAD_END_CHILDREN = 3  # a dead end has at least this many children, all failed
DEFAULT_STALL_AFTER = 8  # when the session's rules do not name `stall_after`


def stall_after_of(rules: dict[str, object]) -> int:
    """The session's `stall_after` (experiments without a keep that make a stall), from its frozen rules."""
    value = rules.get("stall_after")
    return (
        value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else DEFAULT_STALL_AFTER
    )


class TreeRow(Protocol):
    """What the builder needs of a logged row (`journal.Row` has it)."""

    @property
    def run_id(self) -> str: ...
    @property
    def value(self) -> float | None: ...
    @property
    def status(self) -> str: ...
    @property
    def run_status(self) -> str: ...
    @property
    def description(self) -> str: ...


@dataclass(slots=True)
class TreeNode:
    """One measured run in the tree."""

    run_id: str
    parent: str | None  # the run its candidate started from; None for the baseline (or an unknown parent)
    value: float | None
    status: Decision
    run_status: str
    depth: int  # the baseline 0, a child its parent's depth + 1
    best: bool = False  # the session's best now
    on_best_lineage: bool = False  # on the path from the baseline to the best
    children_count: int = 0
    description: str = ""  # filled for the nodes a view shows (the index does not hold it)


@dataclass(slots=True)
class ResearchTree:
    """The tree of a session. Node lists hold indices into `nodes` (run order); `best_lineage` runs from the
    baseline to the best; `frontier` is best value first; `near_misses` and `dead_ends` newest first."""

    nodes: list[TreeNode]
    best_lineage: list[int] = field(default_factory=list)
    frontier: list[int] = field(default_factory=list)
    near_misses: list[int] = field(default_factory=list)
    dead_ends: list[int] = field(default_factory=list)
    max_depth: int = 0
    _by_id: dict[str, int] | None = field(default=None, compare=False, repr=False)

    def run_ids(self, indices: Iterable[int]) -> list[str]:
        return [self.nodes[i].run_id for i in indices]

    def index_of(self, run_id: str | None) -> int | None:
        """The index of a run's node (None: not a node of this tree)."""
        if self._by_id is None:
            self._by_id = {node.run_id: i for i, node in enumerate(self.nodes)}
        return None if run_id is None else self._by_id.get(run_id)


@dataclass(slots=True)
class TreeColumns:
    """The tree's input as columns (what a journal's index holds): one entry per row, in run order. `parents`
    holds the row index of each row's parent, -1 for none."""

    run_ids: list[str]
    parents: list[int]
    values: Sequence[float | None]
    statuses: list[Decision]
    run_statuses: list[str]
    descriptions: list[str] | None = None


def build_tree(
    rows: Sequence[TreeRow],
    best_run_id: str | None,
    lower_is_better: bool,
    stall_after: int,
    *,
    noise_sd: float = 0.0,
    parents: Sequence[str | None] | None = None,
) -> ResearchTree:
    """The tree of `rows` (oldest first). Each row's parent is its `parent` attribute when it has one, else
    `parents[i]` when given, else the greedy reading (the previous kept row)."""
    index = {row.run_id: i for i, row in enumerate(rows)}
    named = list(parents) if parents is not None else [getattr(row, "parent", _UNSET) for row in rows]
    statuses = [as_decision(row.status) for row in rows]
    legacy = greedy_parents(statuses)
    columns = TreeColumns(
        run_ids=[row.run_id for row in rows],
        parents=[
            legacy[i] if parent is _UNSET else (-1 if parent is None else index.get(str(parent), -1))
            for i, parent in enumerate(named)
        ],
        values=[row.value for row in rows],
        statuses=statuses,
        run_statuses=[row.run_status for row in rows],
        descriptions=[row.description for row in rows],
    )
    return build_from_columns(columns, best_run_id, lower_is_better, stall_after, noise_sd=noise_sd)


_UNSET = object()


def greedy_parents(statuses: Sequence[str]) -> list[int]:
    """The parents of rows logged before runs named theirs: the previous kept row (-1 before the first)."""
    parents: list[int] = []
    last_keep = -1
    for i, status in enumerate(statuses):
        parents.append(last_keep)
        if status == "keep":
            last_keep = i
    return parents


def journal_columns(journal: Journal) -> TreeColumns:
    """The tree's input from the journal's in-memory index only: no row is read back from the JSONL."""
    count = len(journal)
    parent_index = journal.lineage.parent_index  # rows written before runs named theirs: the greedy reading
    return TreeColumns(
        run_ids=[journal.run_id_at(i) for i in range(count)],
        parents=[-1 if (p := parent_index(i)) is None else p for i in range(count)],
        values=[journal.value_at(i) for i in range(count)],
        statuses=[journal.status_at(i) for i in range(count)],
        run_statuses=[journal.run_status_at(i) for i in range(count)],
    )


_last_built: list[
    tuple[tuple[object, ...], ResearchTree]
] = []  # the last tree built, by what it was built from
_last_lock = threading.Lock()


def journal_tree(
    journal: Journal, best_run_id: str | None, lower_is_better: bool, stall_after: int, noise_sd: float = 0.0
) -> ResearchTree:
    """The tree of a journal's session, from its index (a fraction of a second on 100,000 rows). The last tree
    is kept until the journal or the question changes (the journal's seal covers every byte it has read), so
    the briefing, query_results and the dashboard asking again between experiments cost nothing."""
    key = (id(journal), journal.tag, journal.seal(), best_run_id, lower_is_better, stall_after, noise_sd)
    with _last_lock:
        if _last_built and _last_built[0][0] == key:
            return _last_built[0][1]
    tree = build_from_columns(
        journal_columns(journal), best_run_id, lower_is_better, stall_after, noise_sd=noise_sd
    )
    with _last_lock:
        _last_built[:] = [(key, tree)]
    return tree


def build_from_columns(
    columns: TreeColumns,
    best_run_id: str | None,
    lower_is_better: bool,
    stall_after: int,
    *,
    noise_sd: float = 0.0,
) -> ResearchTree:
    """The tree from its columns; parents must come before their children (a later or unknown parent reads
    as none: the node starts a tree of its own)."""
    count = len(columns.run_ids)
    parents = [p if 0 <= p < i else -1 for i, p in enumerate(columns.parents)]
    ids = columns.run_ids
    depths = [0] * count
    children: dict[int, list[int]] = {}  # only the nodes that have children
    for i, parent in enumerate(parents):
        if parent >= 0:
            depths[i] = depths[parent] + 1
            children.setdefault(parent, []).append(i)
    nodes = list(
        map(
            TreeNode,
            ids,
            [None if p < 0 else ids[p] for p in parents],
            columns.values,
            columns.statuses,
            columns.run_statuses,
            depths,
        )
    )
    if columns.descriptions is not None:
        for node, text in zip(nodes, columns.descriptions, strict=True):
            node.description = text
    tree = ResearchTree(nodes=nodes, max_depth=max(depths, default=0))
    for i, kids in children.items():
        nodes[i].children_count = len(kids)
    tree.best_lineage = _lineage(nodes, parents, best_run_id)
    for i in tree.best_lineage:
        nodes[i].on_best_lineage = True
    if tree.best_lineage:
        nodes[tree.best_lineage[-1]].best = True
    tree.frontier = _frontier(nodes, lower_is_better)
    tree.near_misses = _near_misses(nodes, parents, lower_is_better, noise_sd)
    tree.dead_ends = _dead_ends(nodes, children, stall_after)
    return tree


def _lineage(nodes: list[TreeNode], parents: list[int], best_run_id: str | None) -> list[int]:
    """The baseline to the best, by parents (the best looked up from the newest row back: it is usually
    recent)."""
    at = next(
        (i for i in range(len(nodes) - 1, -1, -1) if nodes[i].run_id == best_run_id),
        -1,
    )
    path: list[int] = []
    while at >= 0:
        path.append(at)
        at = parents[at]
    return path[::-1]


def _frontier(nodes: list[TreeNode], lower_is_better: bool) -> list[int]:
    """Kept nodes without a child yet, best value first."""
    open_nodes = [i for i, n in enumerate(nodes) if n.status == "keep" and n.children_count == 0]
    return sorted(open_nodes, key=lambda i: _rank(nodes[i].value, lower_is_better))


def _rank(value: float | None, lower_is_better: bool) -> float:
    if value is None:
        return math.inf
    return value if lower_is_better else -value


def _near_misses(
    nodes: list[TreeNode], parents: list[int], lower_is_better: bool, noise_sd: float
) -> list[int]:
    """Discarded nodes that measured fine and came within the noise of their parent (improvement over the
    parent above minus one noise sd), newest first."""
    found: list[int] = []
    for i in range(len(nodes) - 1, -1, -1):
        node, parent = nodes[i], parents[i]
        if node.status != "discard" or node.run_status != "ok" or node.value is None or parent < 0:
            continue
        base = nodes[parent].value
        if base is None:
            continue
        improvement = base - node.value if lower_is_better else node.value - base
        if improvement >= -noise_sd:
            found.append(i)
    return found


def _dead_ends(nodes: list[TreeNode], children: dict[int, list[int]], stall_after: int) -> list[int]:
    """Kept nodes whose last `stall_after` children (at least 3) were all discarded or crashed (runs the server
    cut short say nothing about the idea and do not count), newest first."""
    needed = max(MIN_DEAD_END_CHILDREN, stall_after)
    found: list[int] = []
    for i in range(len(nodes) - 1, -1, -1):
        if nodes[i].status != "keep":
            continue
        measured = [c for c in children.get(i, ()) if nodes[c].run_status not in NOT_MEASURED]
        if len(measured) >= needed and all(nodes[c].status != "keep" for c in measured[-needed:]):
            found.append(i)
    return found
