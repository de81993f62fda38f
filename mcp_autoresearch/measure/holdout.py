"""The holdout's records, and how far kept improvements hold on it (`holdout_command`, run like the evaluation
stage after every keep by `holdout_stage.run_holdout`). The readers (report, web page) read these; nothing here
runs anything.

After a keep is decided (never before: it cannot change a decision), the holdout command runs as an evaluation
stage on what the keep left in the project. Its values go only into the server's own records
(`.autoresearch/holdout/<tag>.jsonl`, a folder hidden from runs by their private view); no tool result carries
them. The views show one line from `holdout_summary`: for each kept improvement after the baseline, whether its
holdout value is better than the baseline's, and the latest keep's change on the holdout against its change on
the metric, in percent. It guards against selection overfitting; it is not a secret from an agent that has a
shell of its own (the records are files of the project).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..names import HOLDOUT, STATE_DIR
from ..records.atomic import open_own


def _records(root: Path, tag: str) -> Path:
    return root / STATE_DIR / HOLDOUT / f"{tag}.jsonl"


def record_holdout(root: Path, tag: str, record: dict[str, Any]) -> None:
    """Append one holdout record (written by `holdout_stage.run_holdout`)."""
    path = _records(root, tag)
    fd = open_own(path, os.O_WRONLY | os.O_APPEND, 0o600)  # never a link, never a FIFO's wait
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def _read(root: Path, tag: str) -> list[dict[str, Any]]:
    try:
        text = _records(root, tag).read_text()
    except OSError:
        return []
    # A decision applied again after a restart measured it again: the last counts.
    found: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            found.pop(str(record.get("run_id")), None)
            found[str(record.get("run_id"))] = record
    return list(found.values())


def _pct(new: float, old: float, lower_is_better: bool) -> float | None:
    """The improvement from `old` to `new` in percent (> 0: better)."""
    if old == 0 or not (math.isfinite(new) and math.isfinite(old)):
        return None
    change = (new - old) / abs(old) * 100
    return -change if lower_is_better else change


def holdout_summary(root: Path, tag: str, direction: str) -> str | None:
    """One line on how far the kept improvements hold on the holdout (None without holdout records), e.g.
    `holdout: kept improvements hold 3 of 4; the latest keep: +1.2% on the holdout vs +2.0% on the metric`.
    Never a holdout value itself."""
    records = _read(root, tag)
    if not records:
        return None
    lower = direction == "lower_is_better"
    base = next((r for r in records if r.get("baseline")), None)
    keeps = [r for r in records if not r.get("baseline")]
    failed = sum(1 for r in records if r.get("holdout") is None)
    tail = f" ({failed} holdout run(s) failed: see .autoresearch/holdout/)" if failed else ""
    if base is None or base.get("holdout") is None:
        return f"holdout: no baseline value on the holdout{tail}"
    measured = [r for r in keeps if r.get("holdout") is not None]
    if not measured:
        return f"holdout: measured on the baseline; no kept improvement yet{tail}"
    held = sum(1 for r in measured if (_pct(r["holdout"], base["holdout"], lower) or 0.0) > 0)
    latest = measured[-1]
    on_holdout = _pct(latest["holdout"], base["holdout"], lower)
    on_metric = _pct(latest["metric"], base["metric"], lower) if latest.get("metric") is not None else None
    if on_holdout is None or on_metric is None:
        change = ""
    else:
        change = f"; the latest keep vs the baseline: {on_holdout:+.1f}% on the holdout, {on_metric:+.1f}% on the metric"
    return f"holdout: kept improvements hold {held} of {len(measured)}{change} (+ is better){tail}"
