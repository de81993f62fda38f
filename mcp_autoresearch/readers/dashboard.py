"""A live terminal dashboard: totals, best and improvement (direction-aware), the metric's trend with kept
points and the running best, and the recent experiments. It refreshes when the JSONL grows, says honestly
whether a server holds the project and whether a run is in flight, and degrades to one print without a TTY."""

from __future__ import annotations

import fcntl
import os
import select
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from rich.cells import cell_len
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..measure.provenance import metric_provenance
from ..measure.standing import noise_sd, standing
from ..records.budget import budget_use
from ..records.journal import Journal
from ..records.rows import Row
from ..records.state import SessionState, load_state, state_dir
from ..records.tree import journal_tree, stall_after_of
from ..records.tree_view import frontier_line
from ..statuses import DECISIONS
from ..terminal_text import printable
from .report import SessionFiles, results_table

BARS = "▁▂▃▄▅▆▇█"


def server_holder(files: SessionFiles) -> str | None:
    """Who holds the project lock right now (None when no server runs): a live check, not a guess."""
    path = state_dir(files.root) / "server.lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        try:
            import json

            info = json.loads(os.pread(fd, 4096, 0) or b"{}")
            return f"pid {info.get('pid')}"
        except ValueError:
            return "running"
    finally:
        os.close(fd)


def trend(
    rows: list[Row],
    direction: str,
    width: int,
    best_before: float | None = None,
    best_now: float | None = None,
) -> Text:
    """Sparkline of the values (grey discarded, green kept, red crash) and a line of the kept marks, labelled
    with the session's best (`best_now`, every re-measurement of it counted, as the header says it; without
    it, the best of the kept rows' own values)."""
    points = rows[-width:]
    values = [r.value for r in points if r.value is not None and r.status != "crash"]
    text = Text()
    if not values:
        return Text("no values yet", style="dim")
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    lower = direction == "lower_is_better"
    best: float | None = best_before
    best_line = Text()
    for row in points:
        if row.value is None or row.status == "crash":
            text.append("x", style="red")
        else:
            level = int((row.value - low) / span * (len(BARS) - 1))
            # Taller is better whichever the direction, so progress always climbs.
            level = len(BARS) - 1 - level if lower else level
            text.append(BARS[level], style="bold green" if row.status == "keep" else "bright_black")
        if row.status == "keep" and row.value is not None:
            best = row.value if best is None else (min(best, row.value) if lower else max(best, row.value))
            best_line.append("▲", style="green")
        else:
            best_line.append(" ")
    best = best if best_now is None else best_now
    return Text.assemble(text, "\n", best_line, f"  best {best:.6g}" if best is not None else "")


def provenance_text(rules: dict[str, object]) -> Text:
    """Where the values come from; a self-reported metric stands out, with its fix."""
    found = metric_provenance(rules)
    return Text(
        f"metric source: {found.line()}", style="yellow" if found.source == "self-reported" else "dim"
    )


def budget_text(state: SessionState, total: int) -> Text:
    """The session's budgets used and left, on a line of its own (yellow when near the end or spent)."""
    use = budget_use(state, total + len(state.inflight))
    line = use.line()
    if line is None:
        return Text()
    return Text("\n" + line, style="yellow" if use.near() else "dim")


def frontier_text(state: SessionState, journal: Journal) -> Text:
    """The research tree's frontier in one line: how many kept nodes are not built on yet, the best few."""
    tree = journal_tree(
        journal,
        state.best.run_id if state.best else None,
        state.metric_direction == "lower_is_better",
        stall_after_of(state.rules),
        noise_sd(state),
    )
    return Text(frontier_line(tree), style="cyan" if tree.frontier else "dim")


def render(files: SessionFiles, status_filter: str | None, width: int = 100) -> Group:
    state = load_state(files.root, files.state.tag) or files.state
    journal = files.journal
    counts = {s: journal.counts.get(s, 0) for s in DECISIONS}
    total = len(journal)
    span = max(10, width - 6)
    direction = "lower is better" if state.metric_direction == "lower_is_better" else "higher is better"
    holder = server_holder(files)
    live = Text()
    if holder is None:
        live.append("server: not running", style="yellow")
    else:
        live.append(f"server: running ({holder})", style="green")
    if state.pending is not None:
        live.append(
            f" | run {state.pending.run_id} {state.pending.phase} since {state.pending.started_at[11:19]}",
            style="cyan",
        )
    for entry in (p for p in state.inflight if p.placement == "slots"):  # one per run in flight or waiting
        where = "all slots" if entry.is_baseline else f"slot {entry.slot}"
        live.append(f" | {entry.run_id} {entry.phase} ({where})", style="cyan")
    live.append(f" | updated {datetime.now().strftime('%H:%M:%S')}", style="dim")

    totals = Table.grid(padding=(0, 3))
    for _ in range(6):
        totals.add_column()
    keep_rate = f"{counts['keep'] / total * 100:.0f}%" if total else "-"
    best = state.best
    totals.add_row(
        f"total [bold]{total}[/]",
        f"keep [green]{counts['keep']}[/]",
        f"discard [bright_black]{counts['discard']}[/]",
        f"crash [red]{counts['crash']}[/]",
        f"keep rate {keep_rate}",
        f"best [bold green]{best.value:.6g}[/]" if best else "best -",
    )
    summary = Text()
    now = standing(state)
    if best is not None and now is not None:
        summary.append(
            f"baseline {now.baseline:.6g} → best {now.best:.6g}: {now.text()} at {best.commit[:7]} ({printable(best.description)})"
        )
    else:
        summary.append("no baseline yet", style="dim")
    summary.append_text(budget_text(state, total))

    recent = journal.rows_at(journal.indices(status_filter)[-15:])
    rules = Text(f"each experiment runs: {files.run_command}", style="dim") if files.run_command else Text()
    title = f"autoresearch · {state.tag} · {state.metric_name} ({direction})"
    target = f"{title} · {printable(state.target_file)}"
    # The target in the title where it fits whole (the panel's border cuts a longer title short), else a line;
    # measured in columns (a wide character takes two), as the border cuts it.
    fits = cell_len(target) <= width - 6
    target_line = [] if fits else [Text(f"target: {printable(state.target_file)}", style="dim")]
    header = Panel(
        Group(
            live,
            totals,
            summary,
            frontier_text(state, journal),
            *target_line,
            rules,
            provenance_text(state.rules),
        ),
        title=target if fits else title,
    )
    lower = state.metric_direction == "lower_is_better"
    window_start = max(0, total - span)
    chart = Panel(
        trend(
            journal.tail(span),
            state.metric_direction,
            span,
            journal.best_kept_before(window_start, lower),
            best.value if best is not None else None,
        ),
        title="trend (taller is better; ▲ kept)",
    )
    table = results_table(files, list(reversed(recent)), width=width)
    table.title = "recent experiments" + (f" (status {status_filter})" if status_filter else "")
    table.caption = None  # the header says where the values come from
    return Group(header, chart, table)


@contextmanager
def _cbreak() -> Iterator[None]:
    """Single key presses without echo (so 'q' quits), restored whatever happens."""
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run_dashboard(files: SessionFiles, status_filter: str | None, interval: float, once: bool) -> int:
    console = Console()
    if once or not (sys.stdout.isatty() and sys.stdin.isatty()):
        console.print(render(files, status_filter, console.width))
        return 0
    from rich.live import Live

    interval = max(0.2, interval)
    try:
        with (
            _cbreak(),
            Live(
                render(files, status_filter, console.width), console=console, screen=False, auto_refresh=False
            ) as live,
        ):
            last = 0.0
            while True:
                ready, _, _ = select.select([sys.stdin], [], [], 0.2)
                if ready and sys.stdin.read(1).lower() == "q":
                    break
                if files.journal.refresh() or time.monotonic() - last >= interval:
                    live.update(render(files, status_filter, console.width), refresh=True)
                    last = time.monotonic()
    except KeyboardInterrupt:
        pass
    console.print("[dim]dashboard closed[/]")
    return 0
