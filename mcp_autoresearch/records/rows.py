"""One logged experiment as the JSONL holds it: `Row`, its `experiment_done` details (`row_details`) and the row
read back from them (`row_from_event`), the one-line text of a description, and the log's timestamps. The
journal (journal.py) keeps the rows in order and on disk."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..statuses import Decision, RunStatus, as_decision, as_run_status
from ..terminal_text import printable
from .evidence import Evidence

NOT_MEASURED = ("cancelled", "interrupted", "disk_full")  # run statuses that say nothing about the content


def now_stamps() -> tuple[str, str]:
    local = datetime.now().astimezone()
    return local.isoformat(timespec="seconds"), local.astimezone(UTC).isoformat(
        timespec="milliseconds"
    ).replace("+00:00", "Z")


def one_line(text: str, limit: int = 300) -> str:
    """Descriptions and notes as single TSV-safe lines, with nothing a terminal would act on."""
    flat = printable(" ".join(text.replace("\t", " ").split()))
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _printable_or_none(value: Any) -> str | None:
    return None if value is None else printable(str(value), lines=True)


def finite_or_none(value: Any) -> float | None:
    return value if isinstance(value, int | float) and math.isfinite(value) else None


@dataclass(slots=True)
class Row:
    """One decided experiment, as logged."""

    run_id: str
    commit: str
    metric: str
    value: float | None
    status: Decision
    run_status: RunStatus
    description: str
    prev: float | None
    delta: float | None
    memory_gb: float | None
    duration_s: float | None
    error: str | None
    tag: str
    timestamp: str
    notes: list[str] = field(default_factory=list)
    evidence: Evidence = field(default_factory=Evidence)  # what the keep rule saw
    parent: str | None = None  # the run this candidate started from (its parent node); None: the baseline
    best: bool = False  # this decision made the run the session's best
    combined: list[str] = field(default_factory=list)  # a combine run: the two runs whose targets it merged

    def tsv_line(self) -> str:
        value = f"{self.value:.6f}" if self.value is not None and self.status != "crash" else "0.000000"
        return f"{self.commit[:7]}\t{self.metric}\t{value}\t{self.status}\t{one_line(self.description)}\n"


def row_details(row: Row, provenance: str | None) -> dict[str, Any]:
    """The row as an `experiment_done` event's details (the original tool's keys, then the server's own)."""
    return {
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
        # As the original tool logs it: the fine-grained run status of a failure in `error`.
        "error": row.run_status if row.run_status != "ok" or row.status == "crash" else None,
        "error_detail": row.error,
        **row.evidence.details(),
        **({"provenance": provenance} if provenance else {}),
        "parent": row.parent,
        "best": row.best,
        **({"combined": list(row.combined)} if row.combined else {}),
    }


def row_from_event(event: dict[str, Any], tag: str) -> Row:
    """A row as an `experiment_done` event of the JSONL logged it (anything odd in it read as harmless)."""
    details = event.get("details") or {}
    return Row(
        run_id=str(details.get("run_id", "")),
        commit=str(details.get("commit", "")),
        metric=str(details.get("metric", "")),
        value=finite_or_none(details.get("value")),
        status=as_decision(details.get("status", "crash")),
        run_status=as_run_status(details.get("run_status") or details.get("error") or "ok"),
        description=printable(str(details.get("description", ""))),
        prev=finite_or_none(details.get("prev")),
        delta=finite_or_none(details.get("delta")),
        memory_gb=finite_or_none(details.get("memory_gb")),
        duration_s=finite_or_none(details.get("duration_s")),
        error=_printable_or_none(details.get("error_detail", details.get("error"))),
        tag=tag,
        timestamp=str(event.get("timestamp", "")),
        evidence=Evidence.from_details(details),
        combined=[str(c) for c in details.get("combined") or [] if isinstance(c, str)][:2],
    )
