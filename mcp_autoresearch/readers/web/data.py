"""What the web page shows, read from the session's files: the state file, the JSONL log, the live run logs.

This module only reads. It never writes a file of the session, never takes the project lock (a server holds
it while it runs), and never imports the session: the JSONL format is the contract. The JSONL is read
incrementally (only complete lines, from where the last read stopped), so a refresh costs a `stat` when
nothing happened and one short read when an experiment was logged.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ...measure.holdout import holdout_summary
from ...measure.provenance import metric_provenance
from ...measure.standing import noise_sd, standing
from ...names import RUN_LOGS
from ...records.budget import budget_use
from ...records.current import current_session
from ...records.logtail import tail
from ...records.run_ids import run_number
from ...records.run_log import live_tail
from ...records.state import SessionState, current_tag, load_state, state_dir, state_path
from ...records.tree import stall_after_of
from ...setup.config import DEFAULTS
from .tree_layout import tree_layout

STATUSES = ("keep", "discard", "crash")
HEX_ID = re.compile(r"[0-9a-f]{7,40}")
MAX_POINTS = 1600  # chart points sent to the page; more experiments than this are decimated per bucket
PAGE_LIMIT = 200  # most table rows one request may ask for
LOG_TAIL_LINES = 40


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _when(stamp: str) -> datetime | None:
    """A JSONL timestamp ('...Z', UTC) or a state time (local, naive) as an aware datetime."""
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo else moment.astimezone()


@dataclass(slots=True)
class Experiment:
    """One decided experiment, as the JSONL logged it (plus the fields the noise gate may add)."""

    n: int  # 1-based position in the session
    run_id: str
    commit: str  # the full id when the log has it, else the short one
    status: str  # keep | discard | crash
    run_status: str
    value: float | None
    delta: float | None
    memory_gb: float | None
    duration_s: float | None
    description: str
    error: str | None
    timestamp: str
    spread: float | None = None
    values: list[float] | None = None
    notes: list[str] = field(default_factory=list)
    parent: str | None = None  # the run its candidate started from (see records/tree.py)
    combined: list[str] = field(default_factory=list)  # a combine run: the two runs whose targets it merged
    best: bool = False  # this decision made the run the session's best (a kept node of the tree may not be)

    def as_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "run_id": self.run_id,
            "commit": self.commit,
            "short": self.commit[:7],
            "status": self.status,
            "run_status": self.run_status,
            "value": self.value,
            "delta": self.delta,
            "memory_gb": self.memory_gb,
            "duration_s": self.duration_s,
            "description": self.description,
            "error": self.error,
            "timestamp": self.timestamp,
            "spread": self.spread,
            "values": self.values,
            "notes": self.notes,
            "parent": self.parent,
            "combined": self.combined,
            "best": self.best,
        }


def _experiment(n: int, details: dict[str, Any], timestamp: str, last_keep: str | None = None) -> Experiment:
    status = str(details.get("status", "crash"))
    values = details.get("values")
    clean = [v for v in (_number(x) for x in values) if v is not None] if isinstance(values, list) else []
    error = details.get("error_detail", details.get("error"))
    return Experiment(
        n=n,
        run_id=str(details.get("run_id", "")),
        commit=str(details.get("full_commit") or details.get("commit") or ""),
        status=status if status in STATUSES else "crash",
        run_status=str(details.get("run_status") or details.get("error") or "ok"),
        value=_number(details.get("value")),
        delta=_number(details.get("delta")),
        memory_gb=_number(details.get("memory_gb")),
        duration_s=_number(details.get("duration_s")),
        description=str(details.get("description", "")),
        error=str(error) if error else None,
        timestamp=timestamp,
        spread=_number(details.get("spread")),
        values=clean or None,
        combined=[str(c) for c in details.get("combined") or [] if isinstance(c, str)][:2],
        parent=_parent(details, last_keep),
        # whether its decision made the run the best; in a row logged before the tree, every keep did
        best=details["best"] if isinstance(details.get("best"), bool) else status == "keep",
    )


def _parent(details: dict[str, Any], last_keep: str | None) -> str | None:
    """The run a row names as its parent; a row logged before runs named theirs (or naming something that is no
    run id) reads as the journal reads it: the run that was best then, the previous keep."""
    parent = details.get("parent", last_keep)
    return _logged_id(parent) if parent is None or isinstance(parent, str) else last_keep


def _logged_id(run_id: Any) -> Any:
    """A run id as the server logs it: `r02`, the agent's spelling an older server wrote for a parent or a note,
    is `r2` (the row's own id)."""
    number = run_number(run_id) if isinstance(run_id, str) else None
    return f"r{number}" if number is not None else run_id


class SessionView:
    """A read-only, incrementally refreshed view of one session (the current one unless `tag` is given)."""

    def __init__(self, root: Path, tag: str | None = None, timeout_s: float | None = None) -> None:
        self.root = root
        self.fixed_tag = tag
        self.timeout_s = timeout_s
        self.tag: str | None = None
        self.state: SessionState | None = None
        self.error: str | None = None  # why the state could not be read, shown on the page
        self._state_print: tuple[int, int, int] | None = None
        self._branch_checked = -1.0
        self._branch_tag: str | None = None
        self._reset_log()

    def _reset_log(self) -> None:
        self.rows: list[Experiment] = []
        self._by_run: dict[str, Experiment] = {}
        self._offset = 0
        self._log_print: tuple[int, int] | None = None
        self.notes_count = 0
        self.started: datetime | None = None  # the session's first session_start
        self.counts: Counter[str] = Counter()  # by decision
        self.run_counts: Counter[str] = Counter()  # by run status, failures only
        self.memory_peak: float | None = None
        self._last_keep: str | None = None
        self._tree: tuple[tuple[Any, ...], dict[str, Any]] | None = None  # (what it was built from, the tree)

    # -- reading the files ----------------------------------------------------------------------------------
    @property
    def jsonl_path(self) -> Path:
        rules = self.state.rules if self.state is not None else {}
        return self.root / str(rules.get("jsonl_path") or DEFAULTS["jsonl_path"])

    def _current(self) -> str | None:
        """The session to show: the one asked for, else the checked-out session branch (looked up at most once
        a second: the page polls often), else the session opened last."""
        if self.fixed_tag:
            return self.fixed_tag
        now = time.monotonic()
        if now - self._branch_checked >= 1.0:
            self._branch_checked = now
            self._branch_tag = current_session(self.root)
        return self._branch_tag or current_tag(self.root)

    def signature(self) -> tuple[Any, ...]:
        """Cheap (a few stats): changes whenever anything the page shows may have changed."""
        tag = self._current()
        prints: list[Any] = [tag]
        if tag:
            prints.append(_stat(state_path(self.root, tag)))
            prints.append(_stat(self.jsonl_path))
            prints.extend(_stat(path) for path in self._live_logs())
        return tuple(prints)

    def refresh(self) -> bool:
        """Read what changed since the last call; True when anything did."""
        tag = self._current()
        changed = False
        if tag != self.tag:
            self.tag, self.state, self._state_print, self.error = tag, None, None, None
            self._reset_log()
            changed = True
        if tag is None:
            return changed
        state_print = _stat(state_path(self.root, tag))
        if state_print != self._state_print:
            self._state_print = state_print
            try:
                self.state = load_state(self.root, tag)
                self.error = None if self.state else f"no session '{tag}' in {self.root}"
            except Exception as exc:  # an unreadable state is shown, not raised: the page stays up
                self.error = str(exc)
            changed = True
        return self._read_log() or changed

    def _read_log(self) -> bool:
        path = self.jsonl_path
        try:
            st = path.stat()
        except OSError:
            if self.rows:
                self._reset_log()
                return True
            return False
        if self._log_print is not None and (st.st_ino != self._log_print[0] or st.st_size < self._offset):
            self._reset_log()  # the log was replaced or cut (a server restoring it): read it again
        self._log_print = (st.st_ino, st.st_size)
        if st.st_size == self._offset:
            return False
        marker = json.dumps(self.tag).encode()
        before = (len(self.rows), self.notes_count)
        with path.open("rb") as handle:
            handle.seek(self._offset)
            for line in handle:
                if not line.endswith(b"\n"):
                    break  # being written: read it next time
                self._offset += len(line)
                if marker in line:  # cheap filter: other sessions' lines are skipped unparsed
                    self._ingest(line)
        return (len(self.rows), self.notes_count) != before

    def _ingest(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return
        details = event.get("details") if isinstance(event, dict) else None
        if not isinstance(details, dict) or details.get("tag") != self.tag:
            return
        action, run_id = event.get("action"), _logged_id(details.get("run_id"))
        timestamp = str(event.get("timestamp", ""))
        if action == "session_start" and self.started is None:
            self.started = _when(timestamp)
        elif action == "experiment_done" and isinstance(run_id, str) and run_id not in self._by_run:
            row = _experiment(len(self.rows) + 1, details, timestamp, self._last_keep)
            if row.status == "keep":
                self._last_keep = row.run_id
            self.rows.append(row)
            self._by_run[run_id] = row
            self.counts[row.status] += 1
            if row.run_status != "ok":
                self.run_counts[row.run_status] += 1
            if row.memory_gb is not None:
                self.memory_peak = max(self.memory_peak or row.memory_gb, row.memory_gb)
        elif (
            action == "experiment_notes" and run_id in self._by_run and isinstance(details.get("notes"), str)
        ):
            self._by_run[run_id].notes.append(details["notes"])
            self.notes_count += 1

    def _live_logs(self) -> list[Path]:
        return [path for run in self._pending() for path in [self._log_of(run.run_id)] if path]

    def _pending(self) -> list[Any]:
        state = self.state
        if state is None:
            return []
        return list(state.inflight)

    def _log_of(self, run_id: str) -> Path | None:
        """The newest log of a run: `<run_id>.log`, a repeat's `<run_id>-<k>.log`, or the checks' log, or the
        latest output of one past its beginning (`live_tail`: its file shows the end only when the run ends).
        The names are built, not listed: the folder holds one log per experiment, thousands of them."""
        folder = state_dir(self.root) / RUN_LOGS / (self.tag or "")
        repeats = self.state.rules.get("repeats", 1) if self.state is not None else 1
        names = [f"{run_id}.log", f"{run_id}-checks.log"]
        names += [f"{run_id}-{k}.log" for k in range(1, min(int(repeats or 1), 100) + 1)]
        paths = [folder / name for name in names]
        paths += [live_tail(path) for path in paths]
        found = [(stamp[2], path) for path in paths if (stamp := _stat(path))]
        return max(found)[1] if found else None

    # -- what the page asks for -----------------------------------------------------------------------------
    @property
    def lower_is_better(self) -> bool:
        return self.state is None or self.state.metric_direction == "lower_is_better"

    def summary(self) -> dict[str, Any]:
        state, rows, counts = self.state, self.rows, self.counts
        best = state.best if state else None
        best_row = self._by_run.get(best.run_id) if best else None
        now = standing(state)
        baseline = now.baseline if now else (state.baseline_value if state else None)
        return {
            "tag": self.tag,
            "error": self.error,
            "metric": state.metric_name if state else None,
            "direction": state.metric_direction if state else None,
            "target": state.target_file if state else None,
            "branch": state.branch if state else None,
            "provenance": metric_provenance(state.rules).model_dump() if state else None,
            "total": len(rows),
            "counts": {s: counts.get(s, 0) for s in STATUSES},
            "run_counts": dict(self.run_counts),
            "notes": self.notes_count,
            "baseline": baseline,
            "best": None
            if best is None
            else {
                "value": now.best if now else best.value,
                "run_id": best.run_id,
                "commit": best.commit,
                "description": best.description,
                "memory_gb": best_row.memory_gb if best_row else None,
                "spread": best_row.spread if best_row else None,
            },
            "improvement": now.improvement if now else None,
            "improvement_pct": now.improvement_pct if now else None,
            "improvement_interval": list(now.interval) if now and now.interval else None,
            "keep_rate": counts.get("keep", 0) / len(rows) if rows else None,
            "per_hour": self._per_hour(),
            "memory_peak_gb": self.memory_peak,
            # how far the keeps hold on the holdout, in one line (never a holdout value)
            "holdout": holdout_summary(self.root, self.tag, state.metric_direction)
            if state and self.tag
            else None,
            # the session's budgets: used and left (runs in flight count as used); None without a state
            "budget": budget_use(state, len(rows) + len(state.inflight)).as_dict() if state else None,
        }

    def _per_hour(self) -> float | None:
        if not self.rows:
            return None
        start = self.started or _when(self.state.created_at if self.state else "")
        end = _when(self.rows[-1].timestamp)
        if start is None or end is None:
            return None
        hours = (end - start).total_seconds() / 3600
        return len(self.rows) / hours if hours > 0 else None

    def runs(self) -> list[dict[str, Any]]:
        """The runs in flight or waiting for their decision: one, or one per slot in use."""
        out = []
        now = datetime.now(UTC)
        state_slots = int(self.state.rules.get("slots") or 1) if self.state is not None else 1
        for pending in self._pending():
            started = _when(pending.started_at)
            log = self._log_of(pending.run_id)
            result = pending.result.model_dump() if pending.result is not None else {}  # a model, not a dict
            out.append(
                {
                    "run_id": pending.run_id,
                    "description": pending.description,
                    "phase": pending.phase,
                    "commit": pending.commit,
                    "is_baseline": pending.is_baseline,
                    "slot": ("all" if pending.is_baseline else pending.slot) if state_slots > 1 else None,
                    "started_at": pending.started_at,
                    "elapsed_s": (now - started).total_seconds() if started else None,
                    "duration_s": _number(result.get("duration_s")),
                    "timeout_s": self.timeout_s,
                    "result_status": result.get("status"),
                    "value": _number(result.get("value")),
                    "log_name": log.name if log else None,
                    "log_tail": tail(log, max_lines=LOG_TAIL_LINES, max_chars=6000) if log else "",
                }
            )
        return out

    def live(self) -> dict[str, Any]:
        """What the server-sent events carry: small, so it can be sent on every change."""
        return {"summary": self.summary(), "runs": self.runs()}

    def experiments(self, status: str | None, offset: int, limit: int) -> dict[str, Any]:
        """A page of rows, newest first, with this decision or run status (all when None)."""
        rows = self.rows
        if status:
            rows = [r for r in rows if r.status == status or r.run_status == status]
        limit = max(1, min(limit, PAGE_LIMIT))
        offset = max(0, offset)
        end = len(rows) - offset
        chosen = rows[max(0, end - limit) : max(0, end)]
        return {"total": len(rows), "offset": offset, "rows": [r.as_json() for r in reversed(chosen)]}

    def points(self, max_points: int = MAX_POINTS) -> dict[str, Any]:
        """The chart's data: points (decimated per bucket when there are many), the running best, crashes."""
        rows, lower = self.rows, self.lower_is_better
        xs: list[int] = []
        ys: list[float | None] = []
        kinds: list[int] = []
        buckets = max(1, max_points // 6)
        size = max(1, math.ceil(len(rows) / buckets)) if len(rows) > max_points else 1
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            if size > 1:  # a bucket: its extremes per status, in order (the page searches x by bisection)
                chunk = sorted((r for status in STATUSES for r in _pick(chunk, status)), key=lambda r: r.n)
            for r in chunk:
                xs.append(r.n)
                ys.append(None if r.status == "crash" else r.value)
                kinds.append(STATUSES.index(r.status))
        return {
            "total": len(rows),
            "decimated": size > 1,
            "x": xs,
            "y": ys,
            "k": kinds,
            "best": self._best_line(lower, max_points),
            "lower_is_better": lower,
        }

    def _best_line(self, lower: bool, max_points: int) -> list[dict[str, Any]]:
        """Where the running best (over the rows that became the best: a kept node of the tree may not have)
        changed, with the spread of its measurement when logged."""
        steps: list[dict[str, Any]] = []
        best: float | None = None
        for r in self.rows:
            if r.status != "keep" or not r.best or r.value is None:
                continue
            if best is not None and (r.value >= best if lower else r.value <= best):
                continue
            best = r.value
            step: dict[str, Any] = {"n": r.n, "v": r.value, "run_id": r.run_id}
            if r.values:
                step["lo"], step["hi"] = min(r.values), max(r.values)
            elif r.spread is not None:
                step["lo"], step["hi"] = r.value - r.spread / 2, r.value + r.spread / 2
            steps.append(step)
        if len(steps) > max_points:  # improvements are rare; thin them evenly if not, keeping the last
            stride = math.ceil(len(steps) / max_points)
            steps = steps[::stride] + ([steps[-1]] if (len(steps) - 1) % stride else [])
        return steps

    def tree(self) -> dict[str, Any]:
        """The research tree as the page draws it (tree_layout.py), rebuilt only when a row or the best changed."""
        state = self.state
        best = state.best.run_id if state and state.best else None
        key = (self.tag, len(self.rows), best)
        if self._tree is None or self._tree[0] != key:
            rules = state.rules if state else {}
            rows = self.rows[: key[1]]  # as read now (the page's other requests may read more meanwhile)
            layout = tree_layout(
                rows,
                [r.combined for r in rows],
                [r.commit for r in rows],
                best,
                self.lower_is_better,
                stall_after_of(rules),
                noise_sd=noise_sd(state),
            )
            self._tree = (key, layout)
        return self._tree[1]

    def session_commit(self, commit: str) -> str | None:
        """The id of a commit of this session (a logged experiment's or a run's in flight), or None. Only a hex
        id that names one of them is accepted, so the page cannot be used to read anything else in the repo."""
        if not HEX_ID.fullmatch(commit):
            return None
        known = [r.commit for r in self.rows] + [p.commit for p in self._pending() if p.commit]
        if self.state is not None and self.state.best is not None:
            known.append(self.state.best.commit)
        for full in known:
            if full.startswith(commit) and HEX_ID.fullmatch(full):
                return full
        return None


def _pick(bucket: list[Experiment], status: str) -> list[Experiment]:
    """What stands for a bucket's rows of one status: one crash mark, or the lowest and the highest value
    (they keep the chart's envelope when decimating)."""
    group = [r for r in bucket if r.status == status]
    with_value = [r for r in group if r.value is not None]
    if status == "crash" or not with_value:
        return group[:1]
    low = min(with_value, key=lambda r: r.value or 0.0)
    high = max(with_value, key=lambda r: r.value or 0.0)
    return [low] if low is high else sorted([low, high], key=lambda r: r.n)


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
