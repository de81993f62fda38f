"""Where to branch from when the loop is stuck: after `stall_after` experiments without a keep, concrete nodes
of the research tree to start the next candidate from, each with its run id, why, and the exact call.

The proposals are, in order: near-misses (discarded within the noise of their parent: a variant may pass),
earlier nodes of the best lineage (a different idea from before the last steps), frontier nodes (kept, never
explored). Pure: it reads logged rows and never changes anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .journal import Journal, Row, one_line

MAX_PROPOSALS = 4
MAX_NEAR = 2  # near-misses proposed at most, so the other kinds are seen too
SCAN = 500  # newest discards read for near-misses
MAX_LINEAGE = 200  # kept rows read back for the best lineage


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


def parents_of(kept: list[Row]) -> dict[str, str | None]:
    """Each kept row's parent: the row's own `parent` where it is recorded, else (a row logged before the tree)
    the kept row before it, as the greedy loop built it."""
    parents: dict[str, str | None] = {}
    previous: str | None = None
    for row in kept:
        recorded = getattr(row, "parent", None)
        parents[row.run_id] = recorded if recorded is not None else previous
        previous = row.run_id
    return parents


def best_lineage(
    best: str, parents: Mapping[str, str | None], lookup: Callable[[str], Row | None]
) -> list[Row]:
    """The path of parents from the best back to the baseline, best first."""
    path: list[Row] = []
    seen: set[str] = set()
    current: str | None = best
    while current is not None and current not in seen and len(path) < MAX_LINEAGE:
        seen.add(current)
        row = lookup(current)
        if row is None:
            break
        path.append(row)
        current = parents.get(current, getattr(row, "parent", None))
    return path


def near_miss_proposals(
    discards: list[Row], noise_sd: float, parents: Mapping[str, str | None]
) -> list[Proposal]:
    """Discarded runs, newest first, whose improvement over their parent is above minus one noise sd."""
    found = []
    for row in discards:
        estimate = row.evidence.estimate
        if row.run_status != "ok" or estimate is None or estimate < -noise_sd:
            continue
        parent = getattr(row, "parent", None) or parents.get(row.run_id)
        against = f"its parent {parent}" if parent else "the best it faced"
        found.append(
            Proposal(
                row.run_id,
                "near-miss",
                f"near-miss ({one_line(row.description, 60)}): discarded within the noise of {against} "
                f"(improvement {estimate:+.4g}); a variant of it may pass",
            )
        )
        if len(found) == MAX_NEAR:
            break
    return found


def lineage_proposals(lineage: list[Row]) -> list[Proposal]:
    """The best's parent, and a node further back (half way to the baseline): a different idea from there."""
    steps = sorted({1, max(2, len(lineage) // 2)} & set(range(1, len(lineage))))
    return [
        Proposal(
            lineage[step].run_id,
            "lineage",
            f"on the best lineage, {step} step{'s' if step > 1 else ''} before the best (value "
            f"{_value(lineage[step].value)}): try a different idea from there",
        )
        for step in steps
    ]


def frontier_proposals(kept: list[Row], best: str, children: Mapping[str, int] | None) -> list[Proposal]:
    """Kept nodes other than the best that no run has started from yet (newest first)."""
    if children is None:
        return []
    return [
        Proposal(row.run_id, "frontier", f"kept (value {_value(row.value)}) and never explored: build on it")
        for row in reversed(kept)
        if row.run_id != best and children.get(row.run_id, 0) == 0
    ]


def proposals(
    journal: Journal, best: str, noise_sd: float, children: Mapping[str, int] | None = None
) -> list[Proposal]:
    """Up to MAX_PROPOSALS nodes to branch from, never the best itself, each once."""
    kept = journal.rows_at(journal.indices("keep")[-MAX_LINEAGE:])
    parents = parents_of(kept)
    discards = journal.rows_at(list(reversed(journal.indices("discard")))[:SCAN])
    lineage = best_lineage(best, parents, journal.get)
    found = near_miss_proposals(discards, noise_sd, parents)
    found += lineage_proposals(lineage) + frontier_proposals(kept, best, children)
    chosen: list[Proposal] = []
    for proposal in found:
        if proposal.run_id != best and all(p.run_id != proposal.run_id for p in chosen):
            chosen.append(proposal)
    return chosen[:MAX_PROPOSALS]


def stall_advice(
    journal: Journal,
    best: str | None,
    stall_after: int,
    noise_sd: float,
    children: Mapping[str, int] | None = None,
) -> str | None:
    """What next_step says after `stall_after` or more experiments without a keep (None before that)."""
    total = len(journal)
    since = total - 1 - journal.last_keep_index if total else 0
    if best is None or since < stall_after:
        return None
    found = proposals(journal, best, noise_sd, children)
    head = (
        f"{since} experiments without a keep (stall_after = {stall_after}): the best may be a local optimum. "
    )
    if not found:
        return head + "Try a different kind of idea, or simplify."
    return (
        head
        + "Branch from another node instead of editing the best again: "
        + "; ".join(p.line() for p in found)
        + ". Or combine two nodes that improved different things: combine(run_a=..., run_b=...)"
    )
