"""What a decision's next_step adds to the step itself, so the agent does not get stuck nor run past its budget:
a near-miss worth a retry, the nodes to branch from after `stall_after` experiments without a keep
(records/stall.py), and the budget when it is near its end or spent (records/budget.py)."""

from __future__ import annotations

from ..measure.standing import noise_sd
from ..records.budget import budget_use
from ..records.journal import Journal
from ..records.stall import combine_hint, experiments_since_keep, stall_advice
from ..records.state import Pending
from ..records.tree import journal_tree, stall_after_of
from ..session.context import SessionCore


def steer(core: SessionCore, pending: Pending, step: str) -> str:
    """`step` (what to do after this decision), with what helps choose where to go next."""
    budget = budget_use(core.state, len(core.journal) + len(core.state.inflight))
    if budget.spent() is not None:
        return _sentences(step, [budget.near()])
    sd = noise_sd(core.state)
    extra = [near_miss_line(core, pending, sd), combine_line(core, pending, sd), stall_line(core, sd)]
    extra.append(budget.near())
    return _sentences(step, extra)


def _sentences(step: str, extra: list[str | None]) -> str:
    """`step`, then each line of `extra` there is, each a sentence of its own."""
    lines = [f"{line}." for line in extra if line]
    if lines and not step.endswith((".", ":", ")")):
        step += "."
    return " ".join([step, *lines])


def near_miss_line(core: SessionCore, pending: Pending, noise_sd: float) -> str | None:
    """A discard within the noise of its parent: say it may be worth a retry later, and how."""
    row = core.journal.get(pending.run_id)
    if row is None or row.status != "discard" or row.run_status != "ok" or pending.is_baseline:
        return None
    if row.evidence.regression:  # kept, then its re-measurement showed it worse: it did not hold
        return None
    estimate = row.evidence.estimate
    if estimate is None or estimate < -noise_sd:
        return None
    return (
        f"It was a near-miss (improvement {estimate:+.4g}, within the noise of its parent): a variant of it may "
        f'pass; branch_from(run_id="{row.run_id}") starts from it'
    )


def stall_line(core: SessionCore, noise_sd: float) -> str | None:
    """After `stall_after` experiments without a keep: the nodes to branch from (the tree is built only then)."""
    stall_after = stall_after_of(core.state.rules)
    best = core.state.best
    if best is None or experiments_since_keep(core.journal) < stall_after:
        return None
    lower = core.state.metric_direction == "lower_is_better"
    tree = journal_tree(core.journal, best.run_id, lower, stall_after, noise_sd)
    return stall_advice(core.journal, tree, lower, stall_after)


def combine_line(core: SessionCore, pending: Pending, noise_sd: float) -> str | None:
    """After a keep, when another branch holds a kept node nobody built on: the call that combines the two."""
    row = core.journal.get(pending.run_id)
    best = core.state.best
    if row is None or row.status != "keep" or pending.is_baseline or best is None:
        return None
    if all_kept_on_lineage(core.journal, row.run_id, best.run_id):
        return None  # what combine_hint would find without a tree: the greedy loop's case, every keep
    stall_after = stall_after_of(core.state.rules)
    lower = core.state.metric_direction == "lower_is_better"
    return combine_hint(journal_tree(core.journal, best.run_id, lower, stall_after, noise_sd), row.run_id)


def all_kept_on_lineage(journal: Journal, run_id: str, best_run_id: str) -> bool:
    """Every kept row, and the best, is `run_id` or one of its ancestors: then no node is on another branch
    and `combine_hint` says nothing, so its tree (a pass over the whole journal) need not be built. Parents as
    the tree reads them: a parent logged after its child is none."""
    at = journal.index_of(run_id)
    lineage: set[int] = set()
    while at is not None and at not in lineage:
        lineage.add(at)
        parent = journal.lineage.parent_index(at)
        at = parent if parent is not None and 0 <= parent < at else None
    best = journal.index_of(best_run_id)
    return bool(lineage) and (best is None or best in lineage) and lineage.issuperset(journal.indices("keep"))
