"""The research tree on a large log (issue 23, item 4): how long building the tree of a 100,000-experiment
session takes, from the journal's index (what query_results(view='tree'), the briefing and the dashboard do)
and, for comparison, from every full row read back from the JSONL; then the bounded view, the briefing and the
web page's layout.

    python bench/tree_build.py [--rows 100000] [--repeat 5]

The session is a tree policy's: most runs built on the best, every fifth on another kept node.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcp_autoresearch.readers.briefing import journal_briefing
from mcp_autoresearch.readers.web.data import SessionView
from mcp_autoresearch.records.journal import Journal
from mcp_autoresearch.records.state import SessionState, load_state, save_state, set_current_tag
from mcp_autoresearch.records.tree import build_from_columns, build_tree, journal_columns, journal_tree
from mcp_autoresearch.records.tree_view import tree_view


def write_session(root: Path, rows: int, seed: int = 0) -> str:
    """A session of `rows` experiments whose rows name their parent; returns the best's run id."""
    rng = random.Random(seed)
    (root / ".autoresearch").mkdir(parents=True)
    values: dict[str, float] = {}
    kept: list[str] = []
    best = ""
    lines = []
    for i in range(1, rows + 1):
        run_id = f"r{i}"
        parent = None if not kept else (rng.choice(kept) if i % 5 == 0 else best)
        base = 1.0 if parent is None else values[parent]
        value = round(base + rng.gauss(0.015, 0.01), 6)
        status = "keep" if parent is None or value < base else ("crash" if i % 17 == 0 else "discard")
        values[run_id] = value
        if status == "keep":
            kept.append(run_id)
            best = run_id if not best or value < values[best] else best
        details = {
            "run_id": run_id,
            "parent": parent,
            "status": status,
            "run_status": "crash" if status == "crash" else "ok",
            "metric": "loss",
            "value": None if status == "crash" else value,
            "commit": f"{i:07x}",
            "full_commit": f"{i:040x}",
            "description": f"experiment {i}: change something about the optimizer schedule",
            "tag": "big",
        }
        event = {"tool": "autoresearch", "action": "experiment_done", "status": "success", "details": details}
        lines.append(json.dumps({**event, "timestamp": "2026-11-26T00:00:00.000Z"}))
    (root / ".autoresearch" / "autoresearch.jsonl").write_text("\n".join(lines) + "\n")
    state = {
        "tag": "big",
        "branch": "autoresearch/big",
        "base_commit": "0" * 40,
        "created_at": "2026-11-26T00:00:00",
        "target_file": "train.py",
        "metric_name": "loss",
        "metric_direction": "lower_is_better",
        "readonly_hashes": {},
        "run_counter": rows,
        "best": {
            "value": values[best],
            "commit": "0" * 40,
            "run_id": best,
            "description": "best",
            "nonblank_lines": 1,
        },
        "baseline_value": 1.0,
        "rules": {},
    }
    set_current_tag(root, "big")
    save_state(root, SessionState.model_validate(state))
    return best


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """The median wall time of `repeat` calls (seconds), and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        best = write_session(root, args.rows)
        journal = Journal(root / "results.tsv", root / ".autoresearch" / "autoresearch.jsonl", "big")
        load_s, _ = timed(journal.load_readonly, 1)
        index_s, tree = timed(
            lambda: build_from_columns(journal_columns(journal), best, True, 8), args.repeat
        )
        cpu = []
        for _ in range(args.repeat):  # CPU time too: wall times swing on a machine others share
            start = time.process_time()
            build_from_columns(journal_columns(journal), best, True, 8)
            cpu.append(time.process_time() - start)
        cached_s, _ = timed(
            lambda: journal_tree(journal, best, True, 8), args.repeat
        )  # built once, then kept
        full_s, _ = timed(lambda: build_tree(journal.rows, best, True, 8), 1)
        view_s, view = timed(
            lambda: tree_view(tree, 20, lambda rows: [r.description for r in journal.rows_at(rows)]),
            args.repeat,
        )
        state = load_state(root, "big")
        assert state is not None
        briefing_s, _ = timed(lambda: journal_briefing(state, journal), args.repeat)  # the tree kept
        page = SessionView(root)
        page.refresh()
        layout_s, layout = timed(lambda: (page.__setattr__("_tree", None), page.tree())[1], args.repeat)
        figures = {
            "rows": args.rows,
            "kept": journal.counts["keep"],
            "max_depth": tree.max_depth,
            "lineage": len(tree.best_lineage),
            "frontier": len(tree.frontier),
            "journal_load_s": round(load_s, 3),
            "tree_from_index_s": round(index_s, 3),
            "tree_from_index_cpu_s": round(statistics.median(cpu), 3),
            "tree_again_unchanged_s": round(cached_s, 6),
            "tree_from_full_rows_s": round(full_s, 3),
            "tree_view_s": round(view_s, 4),
            "view_json_bytes": len(view.model_dump_json()),
            "briefing_s": round(briefing_s, 3),
            "web_tree_s": round(layout_s, 3),
            "web_lanes": layout["lanes"],
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "load_average_1min": round(os.getloadavg()[0], 1),
        }
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
