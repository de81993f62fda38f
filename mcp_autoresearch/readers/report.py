"""Looking at a session from the terminal, without a server: results, status, dashboard, plot.

These read the session's files (state, JSONL) only; they never write to the project.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import AutoresearchError, ConfigError
from ..measure.holdout import holdout_summary
from ..measure.provenance import metric_provenance
from ..names import RESULTS_TSV
from ..records.current import current_session
from ..records.journal import Journal
from ..records.results_tsv import TsvFormat
from ..records.rows import Row
from ..records.state import SessionState, current_tag, load_state
from ..setup.config import DEFAULTS
from ..setup.project import check_project_root, load_project
from ..statuses import FILTERS
from .briefing import journal_briefing

if TYPE_CHECKING:
    from rich.table import Table


@dataclass
class SessionFiles:
    root: Path
    state: SessionState
    journal: Journal
    run_command: str | None


def open_session_files(project: str, tag: str | None = None) -> SessionFiles:
    root = check_project_root(project)
    tag = tag or current_session(root) or current_tag(root)
    if not tag:
        raise AutoresearchError(f"no session in {root} yet: start one from your agent (start_session)")
    state = load_state(root, tag)
    if state is None:
        raise AutoresearchError(f"no session '{tag}' in {root}")
    # The session's own rules (fixed when it started), not what the project's configuration says today.
    jsonl, run_command = state.rules.get("jsonl_path"), state.rules.get("run_command")
    if not isinstance(jsonl, str):  # a session state without rules
        try:
            jsonl = load_project(root).config.jsonl_path
        except ConfigError:
            jsonl = DEFAULTS["jsonl_path"]
    journal = Journal(root / RESULTS_TSV, root / jsonl, tag)
    journal.load_readonly()
    return SessionFiles(root, state, journal, run_command if isinstance(run_command, str) else None)


def filter_rows(rows: list[Row], status: str | None) -> list[Row]:
    if not status:
        return rows
    wanted = status.lower()
    return [r for r in rows if r.status == wanted or r.run_status == wanted]


def karpathy_tsv(rows: list[Row], metric: str) -> str:
    """karpathy/autoresearch's results.tsv columns, so its analysis.ipynb runs on our data."""
    shape = TsvFormat("karpathy", metric)
    return shape.header() + "".join(shape.line(row) for row in rows)


# Layout by width, so no column is ever squeezed to one character per line: from WIDE columns up the notes
# have a column of their own; below it they go under the description; the memory, then the delta column is left
# out where the description would get fewer than MIN_DESCRIPTION characters. The width is the terminal's, else
# $COLUMNS, else 80 (rich's rule).
WIDE = 120
MIN_DESCRIPTION = 28
DELTA_CELL, MEMORY_CELL = 12 + 3, 6 + 3  # a column's width with its borders and padding


def _optional_columns(width: int, metric_name: str) -> tuple[bool, bool]:
    """(show delta, show memory): each only while the description keeps MIN_DESCRIPTION characters."""
    left = width - 4 - sum(w + 3 for w in (5, 7, max(len(metric_name), 9), 9))  # run, commit, metric, status
    delta = left - DELTA_CELL >= MIN_DESCRIPTION
    memory = delta and left - DELTA_CELL - MEMORY_CELL >= MIN_DESCRIPTION
    return delta, memory


def results_table(files: SessionFiles, rows: list[Row], notes: bool = True, width: int = WIDE) -> Table:
    from rich.table import Table
    from rich.text import Text

    state = files.state
    wide = width >= WIDE
    show_delta, show_memory = _optional_columns(width, state.metric_name)
    table = Table(
        title=f"session {state.tag}: {state.metric_name} "
        f"({'lower' if state.metric_direction == 'lower_is_better' else 'higher'} is better)",
        caption=Text(f"metric source: {metric_provenance(state.rules).line()}"),  # Text: '[' is not markup
        caption_justify="left",  # a paragraph, read from its start (centred, its lines began anywhere)
    )
    fixed = [("run", "right"), ("commit", "left"), (state.metric_name, "right")]
    fixed += [("delta", "right")] if show_delta else []
    fixed += [("status", "left")]
    fixed += [("mem GB", "right")] if show_memory else []
    for column, justify in fixed:
        table.add_column(column, justify="left" if justify == "left" else "right", no_wrap=True)
    table.add_column("description" if wide or not notes else "description / notes", ratio=2, overflow="fold")
    if notes and wide:
        table.add_column("notes", ratio=1, overflow="fold")
    colours = {"keep": "green", "discard": "bright_black", "crash": "red"}
    for row in rows:
        status = row.status if row.run_status in ("ok", row.status) else f"{row.status} ({row.run_status})"
        cells = [row.run_id, row.commit[:7], "-" if row.value is None else f"{row.value:.6f}"]
        cells += ["" if row.delta is None else f"{row.delta:+.6g}"] if show_delta else []
        cells += [f"[{colours.get(row.status, 'white')}]{status}[/]"]
        cells += ["" if row.memory_gb is None else f"{row.memory_gb:.2f}"] if show_memory else []
        noted = " / ".join(row.notes)
        # Text, not a string: rich would read '[link=...]' in the agent's text as markup (an OSC 8 hyperlink).
        if notes and wide:
            table.add_row(*cells, Text(row.description), Text(noted))
        elif notes and noted:
            table.add_row(*cells, Text.assemble(row.description, "\n", ("notes: " + noted, "dim")))
        else:
            table.add_row(*cells, Text(row.description))
    return table


# Exit code when the reader of our output went away (`results | head`): what a tool killed by SIGPIPE returns.
CLOSED_PIPE = 141


def run(args: argparse.Namespace) -> int:
    try:
        code = _run(args)
        sys.stdout.flush()  # a closed pipe shows here rather than as a traceback at exit
        return code
    except BrokenPipeError:
        # Stop quietly, as other command-line tools do; stdout goes to /dev/null so the exit flush is silent.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return CLOSED_PIPE


def check_status(status: str | None) -> str | None:
    """A `--status` filter, normalised; an unknown one is an error naming the valid ones (not an empty table)."""
    if status is None:
        return None
    wanted = status.strip().lower()
    if wanted not in FILTERS:
        raise ConfigError(f"--status {status!r} is not a status; use one of: {', '.join(FILTERS)}")
    return wanted


def _run(args: argparse.Namespace) -> int:
    if getattr(args, "status", None) is not None:
        args.status = check_status(args.status)
    files = open_session_files(args.project, getattr(args, "session", None))
    if args.command == "results":
        rows = filter_rows(files.journal.rows, args.status)
        if args.format == "tsv":
            sys.stdout.write(
                files.journal.tsv_text()
                if not args.status
                else "".join([files.journal.tsv_text().splitlines(True)[0]] + [r.tsv_line() for r in rows])
            )
        elif args.format == "json":
            print(json.dumps([asdict(r) for r in rows], indent=2))
        elif args.format == "karpathy":
            sys.stdout.write(karpathy_tsv(rows, files.state.metric_name))
        else:
            from rich.console import Console

            console = Console()
            console.print(results_table(files, rows, width=console.width))
        return 0
    if args.command == "status":
        sys.stdout.write(journal_briefing(files.state, files.journal))
        held = holdout_summary(files.root, files.state.tag, files.state.metric_direction)
        if held:
            sys.stdout.write(f"\n{held[0].upper()}{held[1:]}.\n")
        return 0
    if args.command == "plot":
        from .plot import write_png

        out = Path(args.out)
        write_png(files.journal.rows, files.state.metric_name, files.state.metric_direction, out)
        print(f"wrote {out} ({out.stat().st_size} bytes, {len(files.journal.rows)} experiments)")
        return 0
    raise AutoresearchError(f"unknown command {args.command}")
