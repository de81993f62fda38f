"""The experiment log: `results.tsv` for people and the JSONL for machines, in the original tool's formats.

The JSONL is the source of truth; `results.tsv` is derived from it and rebuilt whenever the two disagree (a
server killed between the two appends, or a run that rewrote the file). Appends are flushed and fsynced.
Rows of the current session are kept in memory, so queries never re-read the file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

TSV_HEADER = "commit\tmetric\tvalue\tstatus\tdescription\n"
FAILED_STATUSES = ("crash", "timeout", "metric_error", "tampered", "checks_failed", "cancelled")


def now_stamps() -> tuple[str, str]:
    local = datetime.now().astimezone()
    return local.isoformat(timespec="seconds"), local.astimezone(UTC).isoformat(
        timespec="milliseconds"
    ).replace("+00:00", "Z")


def one_line(text: str, limit: int = 300) -> str:
    """Descriptions and notes as single TSV-safe lines."""
    flat = " ".join(text.replace("\t", " ").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _finite_or_none(value: Any) -> float | None:
    return value if isinstance(value, int | float) and math.isfinite(value) else None


@dataclass
class Row:
    """One decided experiment, as logged."""

    run_id: str
    commit: str
    metric: str
    value: float | None
    status: str  # keep | discard | crash
    run_status: str  # ok | crash | timeout | metric_error | tampered | checks_failed | cancelled
    description: str
    prev: float | None
    delta: float | None
    memory_gb: float | None
    duration_s: float | None
    error: str | None
    tag: str
    timestamp: str
    notes: list[str] = field(default_factory=list)

    def tsv_line(self) -> str:
        value = f"{self.value:.6f}" if self.value is not None and self.status != "crash" else "0.000000"
        return f"{self.commit[:7]}\t{self.metric}\t{value}\t{self.status}\t{one_line(self.description)}\n"


Fingerprint = tuple[int, int, int]


def fingerprint(path: Path) -> Fingerprint | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


class Journal:
    def __init__(self, tsv_path: Path, jsonl_path: Path, tag: str) -> None:
        self.tsv_path = tsv_path
        self.jsonl_path = jsonl_path
        self.tag = tag
        self.rows: list[Row] = []
        self.by_run: dict[str, Row] = {}
        self.started_runs: set[str] = set()
        self._tsv_size: int | None = None  # what results.tsv's size must be if nobody else wrote it
        self._offset = 0  # how far the JSONL has been read

    # -- loading and repair ---------------------------------------------------------------------------------
    def load(self) -> None:
        """Read this session's rows from the JSONL; repair a torn last line; make results.tsv agree."""
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        if self.jsonl_path.exists():
            self._repair_torn_tail(self.jsonl_path)
        self.load_readonly()
        self.reconcile_tsv()

    def load_readonly(self) -> None:
        """Read the rows without writing anything (for the CLI's views of a live session)."""
        self.rows, self.by_run, self.started_runs = [], {}, set()
        self._offset = 0
        self.refresh()

    def refresh(self) -> int:
        """Read complete lines appended since the last read. Returns how many new rows arrived."""
        before = len(self.rows)
        try:
            with self.jsonl_path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except OSError:
            return 0
        end = data.rfind(b"\n")
        if end < 0:
            return 0
        self._offset += end + 1
        for line in data[: end + 1].splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                self._ingest(event)
        return len(self.rows) - before

    def _ingest(self, event: dict[str, Any]) -> None:
        details = event.get("details")
        if not isinstance(details, dict) or details.get("tag") != self.tag:
            return
        action = event.get("action")
        run_id = details.get("run_id")
        if action == "experiment_start" and isinstance(run_id, str):
            self.started_runs.add(run_id)
        elif action == "experiment_done" and isinstance(run_id, str) and run_id not in self.by_run:
            row = Row(
                run_id=run_id,
                commit=str(details.get("commit", "")),
                metric=str(details.get("metric", "")),
                value=_finite_or_none(details.get("value")),
                status=str(details.get("status", "crash")),
                run_status=str(details.get("run_status") or details.get("error") or "ok"),
                description=str(details.get("description", "")),
                prev=_finite_or_none(details.get("prev")),
                delta=_finite_or_none(details.get("delta")),
                memory_gb=_finite_or_none(details.get("memory_gb")),
                duration_s=_finite_or_none(details.get("duration_s")),
                error=details.get("error"),
                tag=self.tag,
                timestamp=str(event.get("timestamp", "")),
            )
            self.rows.append(row)
            self.by_run[run_id] = row
        elif action == "experiment_notes" and isinstance(run_id, str) and run_id in self.by_run:
            notes = details.get("notes")
            if isinstance(notes, str):
                self.by_run[run_id].notes.append(notes)

    @staticmethod
    def _repair_torn_tail(path: Path) -> None:
        """A server killed mid-append leaves a line without its newline: cut it off."""
        with path.open("rb+") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            if size == 0:
                return
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return
            back = min(size, 1 << 20)
            handle.seek(size - back)
            chunk = handle.read(back)
            cut = chunk.rfind(b"\n")
            handle.truncate(size - back + cut + 1 if cut >= 0 else 0)
            handle.flush()
            os.fsync(handle.fileno())

    def tsv_text(self) -> str:
        return TSV_HEADER + "".join(row.tsv_line() for row in self.rows)

    def reconcile_tsv(self) -> bool:
        """Rewrite results.tsv from the JSONL rows when it differs. Returns True when it was rewritten."""
        expected = self.tsv_text()
        self._tsv_size = len(expected.encode("utf-8"))
        try:
            current = self.tsv_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            current = None
        if current == expected:
            return False
        _atomic_write(self.tsv_path, expected)
        return True

    # -- appending ------------------------------------------------------------------------------------------
    def _append_jsonl(self, action: str, ok: bool, details: dict[str, Any]) -> None:
        local, stamp = now_stamps()
        event = {
            "tool": "autoresearch",
            "action": action,
            "status": "success" if ok else "fail",
            "details": {**details, "tag": self.tag},
            "local_time": local,
            "timestamp": stamp,
        }
        line = json.dumps(event, ensure_ascii=False, allow_nan=False) + "\n"
        _append(self.jsonl_path, line)
        self._offset += len(line.encode("utf-8"))

    def log_session_start(self, details: dict[str, Any]) -> None:
        self._append_jsonl("session_start", True, details)

    def log_experiment_start(self, run_id: str, commit: str, description: str) -> None:
        self._append_jsonl(
            "experiment_start",
            True,
            {"run_id": run_id, "commit": commit, "description": one_line(description)},
        )
        self.started_runs.add(run_id)

    def log_experiment_done(self, row: Row) -> None:
        """The experiment's row, in the JSONL first (the truth), then in results.tsv. Idempotent per run."""
        if row.run_id in self.by_run:
            self.reconcile_tsv()
            return
        details = {
            "run_id": row.run_id,
            "status": row.status,
            "run_status": row.run_status,
            "metric": row.metric,
            "value": row.value,
            "prev": row.prev,
            "delta": row.delta,
            "commit": row.commit[:7],
            "full_commit": row.commit,
            "description": one_line(row.description),
            "memory_gb": row.memory_gb,
            "duration_s": row.duration_s,
            "error": row.error,
        }
        row.timestamp = now_stamps()[1]
        self._append_jsonl("experiment_done", row.status != "crash", details)
        self.rows.append(row)
        self.by_run[row.run_id] = row
        current = fingerprint(self.tsv_path)
        if current is not None and self._tsv_size is not None and current[0] == self._tsv_size:
            line = row.tsv_line()
            _append(self.tsv_path, line)
            self._tsv_size += len(line.encode("utf-8"))
        else:
            self.reconcile_tsv()

    def add_notes(self, run_id: str, notes: str) -> None:
        self._append_jsonl("experiment_notes", True, {"run_id": run_id, "notes": notes})
        self.by_run[run_id].notes.append(notes)

    # -- tamper evidence ------------------------------------------------------------------------------------
    def fingerprints(self) -> tuple[Fingerprint | None, Fingerprint | None]:
        return fingerprint(self.tsv_path), fingerprint(self.jsonl_path)


def _append(path: Path, text: str) -> None:
    data = text.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
