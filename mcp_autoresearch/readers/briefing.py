"""A compact, deterministic summary a fresh agent (or a person in the morning) can act on.

Bounded whatever the log's length: the last few experiments, the ideas tried with their outcome and notes,
and the streak of experiments since the last improvement.
"""

from __future__ import annotations

from pathlib import Path

from ..measure.provenance import metric_provenance
from ..measure.standing import best_values, standing, stored_keep_rule_line
from ..measure.standing import noise_sd as state_noise_sd
from ..names import RESULTS_TSV
from ..records.budget import budget_use
from ..records.journal import Journal
from ..records.rows import Row, one_line
from ..records.stall import stall_advice
from ..records.state import SessionState, load_state
from ..records.tree import ResearchTree, journal_tree, stall_after_of
from ..records.tree_view import bounded_lineage
from ..setup.config import DEFAULTS
from ..statuses import DECISIONS, UNFINISHED

RECENT_ROWS = 8
MAX_IDEAS = 40
MAX_CHARS = 8000
NEAR_MISSES = 5
TREE_LISTED = 5  # frontier nodes and dead ends the briefing names
TREE_LINEAGE = 8  # nodes of the best lineage the briefing names (the baseline and the newest)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.4g}"


def briefing_from(
    state: SessionState,
    rows: list[Row],
    run_command: str | None = None,
    *,
    total: int | None = None,
    counts: dict[str, int] | None = None,
    since: int | None = None,
    keep_rule: str | None = None,
    near: list[Row] | None = None,
    slots: str | None = None,
    stall: str | None = None,
    tree: ResearchTree | None = None,
) -> str:
    """`rows` are the newest experiments, oldest first (all of them, or the last few with `total`, `counts`
    and `since` describing the whole log); `stall`: the nodes to branch from after a stall (records/stall.py)."""
    direction = "lower is better" if state.metric_direction == "lower_is_better" else "higher is better"
    lines = [f"# autoresearch briefing: session {state.tag}", ""]
    lines.append(
        f"Optimising `{state.metric_name}` ({direction}) by editing only `{state.target_file}`"
        + (f"; each experiment runs `{run_command}`." if run_command else ".")
    )
    lines.append(f"Branch `{state.branch}`, started from {state.base_commit[:7]}.")
    lines.append(f"Metric source: {metric_provenance(state.rules).line()}.")
    if keep_rule:
        lines.append(keep_rule[0].upper() + keep_rule[1:] + ".")
    best, now = state.best, standing(state)
    if now is not None and best is not None:
        runs = best_values(state)  # re-measurements included: its row shows the value it was judged by
        lines.append(
            f"Baseline {_fmt(now.baseline)}. Best {_fmt(now.best)}"
            + (f" (the median of its {len(runs)} runs)" if len(set(runs)) > 1 else "")
            + f" at {best.commit[:7]} (run {best.run_id}: {one_line(best.description, 120)}); {now.text()}."
        )
    else:
        lines.append("No baseline yet: the first run must be the unmodified target.")
    if counts is None:
        counts = {status: sum(1 for r in rows if r.status == status) for status in DECISIONS}
    if since is None:
        since = 0
        for row in reversed(rows):
            if row.status == "keep":
                break
            since += 1
    total = len(rows) if total is None else total
    lines.append(
        f"Experiments: {total} (keep {counts['keep']}, discard {counts['discard']}, crash {counts['crash']}); "
        f"{since} since the last keep."
    )
    lines += _budget_lines(state, total)
    if state.pending is not None:
        lines.append(
            f"Pending: run {state.pending.run_id} ({state.pending.phase}) — decide it before editing."
        )
    if slots:
        lines.append(f"Slots: {slots}.")
    elif state.pending is None and state.inflight:
        lines.append("In flight: " + ", ".join(f"{p.run_id} ({p.phase})" for p in state.inflight) + ".")
    if rows:
        lines += _last_experiments(rows)
        if stall:
            lines += ["", "## Stalled: branch from another node", stall + "."]
        elif since >= 5:
            lines += [
                "",
                f"## Streak: {since} experiments without an improvement",
                "Change direction: try a different kind of idea, combine near-misses, or simplify.",
            ]
        if tree is not None:
            lines += tree_lines(tree)
        if near:
            lines += ["", "## Near-misses (discarded within the noise of the best: worth combining)", ""]
            lines += [
                f"- {r.run_id} {one_line(r.description, 100)} (improvement {_signed(r.evidence.estimate)})"
                for r in near
            ]
        lines += ["", "## Ideas tried (newest first; do not repeat a failed one without a new reason)", ""]
        lines += _ideas_tried(rows, total, sum(len(line) + 1 for line in lines))
    text = "\n".join(lines) + "\n"
    if len(text) > MAX_CHARS:
        text = text[: MAX_CHARS - 40].rsplit("\n", 1)[0] + "\n- … (briefing cut to stay short)\n"
    return text


def _budget_lines(state: SessionState, total: int) -> list[str]:
    """The session's budgets used and left (runs in flight count as used); nothing without a budget."""
    line = budget_use(state, total + len(state.inflight)).line()
    return [line[0].upper() + line[1:] + "."] if line else []


def _last_experiments(rows: list[Row]) -> list[str]:
    """The table of the newest experiments."""
    lines = [
        "",
        "## Last experiments",
        "",
        "| run | status | value | delta | description |",
        "|---|---|---|---|---|",
    ]
    for row in rows[-RECENT_ROWS:]:
        status = row.status if row.run_status in ("ok", row.status) else f"{row.status} ({row.run_status})"
        lines.append(
            f"| {row.run_id} | {status} | {_fmt(row.value)} | {_signed(row.delta)} | "
            f"{one_line(row.description, 80).replace('|', '/')} |"
        )
    return lines


def _ideas_tried(rows: list[Row], total: int, used: int) -> list[str]:
    """One line per experiment, newest first, until the briefing's budget (`used`: characters so far)."""
    lines: list[str] = []
    for shown, row in enumerate(reversed(rows)):
        note = f" — notes: {one_line(' / '.join(row.notes), 160)}" if row.notes else ""
        if row.run_status in UNFINISHED:  # says nothing about the idea
            outcome = f"{row.run_status}: never finished, may be re-run"
        elif row.status == "crash":
            outcome = f"crash: {one_line(row.error or row.run_status, 60)}"
        else:
            outcome = row.status
        line = f"- [{outcome}] {one_line(row.description, 100)} {_signed(row.delta)}{note}".rstrip()
        if shown >= MAX_IDEAS or used + len(line) > MAX_CHARS - 100:
            lines.append(f"- … and {total - shown} older experiments (query_results lists them)")
            break
        lines.append(line)
        used += len(line) + 1
    return lines


def tree_lines(tree: ResearchTree) -> list[str]:
    """The research tree in a few lines: the best lineage, the open frontier, the dead ends."""
    nodes = tree.nodes

    def named(index: int) -> str:
        return f"{nodes[index].run_id} ({_fmt(nodes[index].value)})"

    lineage = bounded_lineage(tree.best_lineage, TREE_LINEAGE)
    path = [named(i) for i in lineage]
    if len(lineage) < len(tree.best_lineage):
        path.insert(1, "…")
    lines = ["", "## Research tree", ""]
    if path:
        count = len(tree.best_lineage)
        lines.append(f"- Best lineage ({count} node{'s' if count != 1 else ''}): {' → '.join(path)}.")
    frontier = tree.frontier
    if frontier:
        more = f", … ({len(frontier) - TREE_LISTED} more)" if len(frontier) > TREE_LISTED else ""
        lines.append(
            f"- Open frontier ({len(frontier)} kept node{'s' if len(frontier) != 1 else ''} not built on yet; "
            f"branch_from one to explore it): {', '.join(named(i) for i in frontier[:TREE_LISTED])}{more}."
        )
    else:
        lines.append("- Open frontier: none (every kept node has been built on).")
    if tree.dead_ends:
        dead = tree.dead_ends
        more = f", … ({len(dead) - TREE_LISTED} more)" if len(dead) > TREE_LISTED else ""
        lines.append(
            f"- Dead ends ({len(dead)}; their last children all failed, look elsewhere): "
            f"{', '.join(named(i) for i in dead[:TREE_LISTED])}{more}."
        )
    return lines


def near_misses(journal: Journal, noise_sd: float, limit: int = NEAR_MISSES, scan: int = 500) -> list[Row]:
    """Discarded experiments, newest first, whose improvement over the best they faced was better than minus one
    noise standard deviation: within the noise, so worth combining (only the last `scan` discards are read)."""
    recent = [i for i in reversed(journal.indices("discard"))][:scan]
    found = [
        row
        for row in journal.rows_at(recent)
        if row.run_status == "ok"
        and not row.evidence.regression  # a keep its re-measurement undid: it did not hold, not came close
        and (estimate := row.evidence.estimate) is not None
        and estimate >= -noise_sd
    ]
    return found[:limit]


def journal_briefing(
    state: SessionState,
    journal: Journal,
    keep_rule: str | None = None,
    noise_sd: float | None = None,
    slots: str | None = None,
) -> str:
    """The briefing from a journal's index: only the newest rows are read back from the log. The run command
    is the session's own (fixed when it started), not today's configuration."""
    total = len(journal)
    run_command = state.rules.get("run_command")
    lower = state.metric_direction == "lower_is_better"
    stall_after = stall_after_of(state.rules)
    if noise_sd is None:  # a reader without the server: the session's noise as its state holds it
        noise_sd = state_noise_sd(state)
    if keep_rule is None:  # likewise: the rule the session chose, from the settings it froze
        keep_rule = stored_keep_rule_line(state)
    tree = journal_tree(journal, state.best.run_id if state.best else None, lower, stall_after, noise_sd)
    return briefing_from(
        state,
        journal.tail(MAX_IDEAS + 1),
        run_command if isinstance(run_command, str) else None,
        total=total,
        counts={k: journal.counts.get(k, 0) for k in DECISIONS},
        since=total - 1 - journal.last_keep_index if total else 0,
        keep_rule=keep_rule,
        near=near_misses(journal, noise_sd),
        slots=slots,
        stall=stall_advice(journal, tree, lower, stall_after),
        tree=tree,
    )


def stored_briefing(root: Path, tag: str) -> str | None:
    """A session's briefing read from its files only (no git, no lock, nothing written), for a server that has
    not opened the session yet. None when there is no such session."""
    state = load_state(root, tag)
    if state is None:
        return None
    jsonl = state.rules.get("jsonl_path")
    journal = Journal(
        root / RESULTS_TSV, root / (jsonl if isinstance(jsonl, str) else DEFAULTS["jsonl_path"]), tag
    )
    journal.load_readonly()
    return journal_briefing(state, journal)
