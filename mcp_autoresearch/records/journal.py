"""The experiment log: `results.tsv` for people and the JSONL for machines, in the original tool's formats.

The JSONL is the source of truth; `results.tsv` is derived from it and rebuilt whenever the two disagree (a
server killed between the two appends, or a run that rewrote the file). Appends are not fsynced one by one: the
bytes written since the JSONL's last fsync travel in the server's record of the session (`Seal.tail`), so the
record is whole with the JSONL's durable part, and a record that holds a decision row is fsynced (see
`Seal`). The JSONL itself is fsynced when it is loaded and whenever that tail reaches `SYNC_EVERY` bytes.
In memory the journal keeps a compact index of the current session (value, status codes, parent node, best
flag and the byte offset of each row's line, in arrays): 100,000 experiments cost a few MB, and full rows are
read back from the JSONL only when they are shown.

Each row names its parent node (the run its candidate started from) and whether its decision made it the
session's best. Rows written before the research tree have neither: their parent is the run that was best when
they were logged (the previous kept row), and a kept row was the best.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
from array import array
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..statuses import DECISIONS, RUN_STATUSES, Decision, RunStatus, as_decision, as_run_status
from ..terminal_text import printable
from .atomic import (
    Fingerprint,
    atomic_write,
    cut_torn_line,
    fingerprint,
    open_read,
    open_regular,
    write_at,
)
from .lineage import UNNAMED, Lineage, Unnamed, tree_keys
from .results_tsv import AUTORESEARCH_HEADER, TsvFormat, quick_tsv_size, same_tsv_size
from .rows import NOT_MEASURED, Row, finite_or_none, now_stamps, one_line, row_details, row_from_event
from .run_ids import RunIds

TSV_HEADER = AUTORESEARCH_HEADER
SYNC_EVERY = 32 * 1024  # the JSONL is fsynced when the bytes past its last fsync reach this size


@dataclass(frozen=True, slots=True)
class Seal:
    """The JSONL as the server wrote it, for its record of the session: the first `size` bytes hash to `digest`;
    the last `len(tail)` of them are `tail`, written since the JSONL's last fsync (the record carries them, so a
    record that survives an OS crash is whole even when those appends did not). `sync`: a decision (or the
    session's start) is among what it covers and no fsynced record holds it yet: the record is fsynced, and then
    `durable(size)` is called."""

    size: int
    digest: str
    tail: bytes = b""
    sync: bool = False
    durable: Callable[[int], None] | None = field(default=None, compare=False)


_ROW_CACHE = 512


class Journal:
    def __init__(
        self,
        tsv_path: Path,
        jsonl_path: Path,
        tag: str,
        results_format: str = "autoresearch",
        metric: str | None = None,
    ) -> None:
        self.tsv_path = tsv_path
        self.jsonl_path = jsonl_path
        self.tag = tag
        self.tsv_format = TsvFormat(results_format, metric)  # the shape results.tsv is written and rebuilt in
        self._tsv_size: int | None = None  # what results.tsv's size must be if nobody else wrote it
        self.mirror: Path | None = None  # the server's own copy of the JSONL, appended in step
        self.provenance: str | None = None  # where the values come from (provenance.py), on each row's record
        self.written: dict[Path, Fingerprint] = {}  # each file as this process's last append left it
        self._reset()

    def _reset(self) -> None:
        self._offset = 0  # how far the JSONL has been read
        self._tail = bytearray()  # the bytes this process appended since the JSONL's last fsync
        self._decided_to = 0  # the end of the last row that must be durable (a decision, a session's start)
        self._recorded_to = 0  # how far an fsynced record of the session covers the JSONL
        # sha256 of the JSONL's first `_offset` bytes, as read or written by this process
        self._sha = hashlib.sha256()
        self._offsets = array("q")  # byte offset of each experiment_done line
        self._values = array("d")  # the value, NaN when there is none
        self._status = bytearray()  # index into DECISIONS
        self._run_status = bytearray()  # index into RUN_STATUSES
        self._run_ids = RunIds()
        self.lineage = Lineage()  # each row's parent node and best flag
        self._notes: dict[int, list[str]] = {}
        self._cache: OrderedDict[int, Row] = OrderedDict()
        self._last_event: dict[str, Any] = {}  # the last event appended, as written
        self._best_values = array("d")  # values of rows that have one, sorted ascending
        self._best_rows = array("q")  # the row index of each of those values
        self.counts: Counter[str] = Counter()
        self.last_keep_index = -1
        self._by_content: dict[
            int, int
        ] = {}  # target sha256 (its first 64 bits) -> the last row measuring it

    # -- the index ------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._offsets)

    def index_of(self, run_id: str) -> int | None:
        return self._run_ids.index_of(run_id)

    def run_id_at(self, index: int) -> str:
        """The run id of row `index`."""
        return self._run_ids.at(index)

    def parent_at(self, index: int) -> str | None:
        """The run id of row `index`'s parent node (None for the baseline)."""
        parent = self.lineage.parent_index(index)
        return self.run_id_at(parent) if parent is not None else self.lineage.unlogged_parent(index)

    def get(self, run_id: str) -> Row | None:
        index = self.index_of(run_id)
        return None if index is None else self.row(index)

    def status_at(self, index: int) -> Decision:
        return DECISIONS[self._status[index]]

    def run_status_at(self, index: int) -> RunStatus:
        return RUN_STATUSES[self._run_status[index]]

    def value_at(self, index: int) -> float | None:
        value = self._values[index]
        return None if math.isnan(value) else value

    def indices(self, status: str | None = None) -> list[int]:
        """Row indices, oldest first, with this status (decision or run status); all when None."""
        if status is None:
            return list(range(len(self)))
        if status in DECISIONS:
            code = DECISIONS.index(status)
            return [i for i, c in enumerate(self._status) if c == code]
        if status in RUN_STATUSES:
            code = RUN_STATUSES.index(status)
            return [i for i, c in enumerate(self._run_status) if c == code]
        return []

    def best_indices(self, limit: int, lower_is_better: bool, status: str | None = None) -> list[int]:
        """Indices of the best values (crashes excluded), best first."""
        chosen: list[int] = []
        for _value, index in self._ordered(lower_is_better):
            if status is None or self.status_at(index) == status or self.run_status_at(index) == status:
                chosen.append(index)
                if len(chosen) >= limit:
                    break
        return chosen

    def best_kept_before(self, stop: int, lower_is_better: bool) -> float | None:
        """The running best (over kept rows) just before row `stop`."""
        keep = DECISIONS.index("keep")
        for value, index in self._ordered(lower_is_better):
            if index < stop and self._status[index] == keep:
                return value
        return None

    def _ordered(self, lower_is_better: bool) -> Iterator[tuple[float, int]]:
        pairs = zip(self._best_values, self._best_rows, strict=True)
        return pairs if lower_is_better else reversed(list(pairs))

    # -- full rows, read back from the file ----------------------------------------------------------------
    def row(self, index: int) -> Row:
        cached = self._cache.get(index)
        if cached is not None:
            self._cache.move_to_end(index)
            return cached
        return self.rows_at([index])[0]

    def rows_at(self, indices: list[int]) -> list[Row]:
        found: dict[int, Row] = {i: self._cache[i] for i in indices if i in self._cache}
        missing = sorted(set(indices) - set(found))
        if missing:
            with open_read(self.jsonl_path) as handle:
                for index in missing:
                    handle.seek(self._offsets[index])
                    row = row_from_event(json.loads(handle.readline()), self.tag)
                    self._fill(row, index)
                    found[index] = row
                    self._cached(index, row)
        return [found[i] for i in indices]

    def _cached(self, index: int, row: Row) -> None:
        """Row `index` held in the cache of the last `_ROW_CACHE` rows read or written (the oldest let go)."""
        self._cache[index] = row
        self._cache.move_to_end(index)
        while len(self._cache) > _ROW_CACHE:
            self._cache.popitem(last=False)

    def full_commit(self, run_id: str) -> str | None:
        """The whole commit id a row logged (its `commit` is shortened, as the original tool's)."""
        index = self.index_of(run_id)
        if index is None:
            return None
        with open_read(self.jsonl_path) as handle:
            handle.seek(self._offsets[index])
            details = json.loads(handle.readline()).get("details") or {}
        full = details.get("full_commit")
        return full if isinstance(full, str) else None

    def tail(self, count: int) -> list[Row]:
        return self.rows_at(list(range(max(0, len(self) - count), len(self))))

    def iter_rows(self) -> Iterator[Row]:
        """Every row, oldest first, streamed from the file (for exports and the TSV)."""
        for start in range(0, len(self), 1000):
            batch = list(range(start, min(start + 1000, len(self))))
            with open_read(self.jsonl_path) as handle:
                for index in batch:
                    handle.seek(self._offsets[index])
                    row = row_from_event(json.loads(handle.readline()), self.tag)
                    self._fill(row, index)
                    yield row

    @property
    def rows(self) -> list[Row]:
        """All rows as objects: for the CLI's views and exports, not for the server's hot paths."""
        return list(self.iter_rows())

    def _fill(self, row: Row, index: int) -> None:
        """What the index holds of a row beyond its line: its notes, its parent node, whether it became best."""
        row.notes = list(self._notes.get(index, ()))
        row.parent = self.parent_at(index)
        row.best = self.lineage.best_at(index)

    # -- loading and repair ---------------------------------------------------------------------------------
    def load(self) -> None:
        """Read this session's rows from the JSONL; repair a torn last line; make results.tsv agree."""
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        if self.jsonl_path.exists():
            cut_torn_line(self.jsonl_path)
        self.load_readonly()
        self._sync_loaded()
        self.reconcile_tsv(quick=True)

    def _sync_loaded(self) -> None:
        """What was read is made durable, once per load; the next record of the session is fsynced (the one on
        disk may be a save the page cache holds only)."""
        try:
            fd = open_regular(self.jsonl_path, os.O_RDONLY)
        except FileNotFoundError:
            pass
        else:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._decided_to, self._recorded_to = self._offset, -1

    def load_readonly(self) -> None:
        """Read the rows without writing anything (for the CLI's views of a live session)."""
        self._reset()
        self.refresh()

    def refresh(self) -> int:
        """Index complete lines appended since the last read. Returns how many new rows arrived."""
        before = len(self)
        try:
            handle = open_read(self.jsonl_path)
        except OSError:
            return 0
        tag_marker = json.dumps(self.tag).encode()
        with handle:
            handle.seek(self._offset)
            position = self._offset
            for line in handle:
                if not line.endswith(b"\n"):
                    break  # a line still being written: read it next time
                if tag_marker in line:  # cheap filter before parsing: other sessions' lines are skipped
                    try:
                        event = json.loads(line)
                    except ValueError:
                        event = None
                    if isinstance(event, dict):
                        self._ingest(event, position)
                self._sha.update(line)
                position += len(line)
            self._offset = position
        return len(self) - before

    def _ingest(self, event: dict[str, Any], offset: int) -> None:
        details = event.get("details")
        if not isinstance(details, dict) or details.get("tag") != self.tag:
            return
        action = event.get("action")
        run_id = details.get("run_id")
        if not isinstance(run_id, str):
            return
        if action == "experiment_done" and self.index_of(run_id) is None:
            value = finite_or_none(details.get("value"))
            status = as_decision(details.get("status", "crash"))
            run_status = as_run_status(details.get("run_status") or "ok")
            self._add(run_id, offset, value, status, run_status, *tree_keys(details, status == "keep"))
            self._remember_content(details.get("target_sha256"), run_status)
        elif action == "experiment_notes":
            index = self.index_of(run_id)
            notes = details.get("notes")
            if index is not None and isinstance(notes, str):
                self._notes.setdefault(index, []).append(printable(notes, lines=True))
                self._cache.pop(index, None)

    def _add(
        self,
        run_id: str,
        offset: int,
        value: float | None,
        status: Decision,
        run_status: RunStatus,
        parent: str | None | Unnamed = UNNAMED,
        best: bool = False,
    ) -> None:
        """Index one row. `parent` UNNAMED (a row written before the research tree): the run that was best
        when it was logged, the last kept row."""
        index = len(self)
        self._run_ids.add(run_id)
        self.lineage.add(index, parent, best, self.last_keep_index, self.index_of)
        self._offsets.append(offset)
        self._values.append(math.nan if value is None else value)
        self._status.append(DECISIONS.index(status))
        self._run_status.append(RUN_STATUSES.index(run_status))
        if value is not None and status != "crash":
            position = bisect.bisect_right(self._best_values, value)
            self._best_values.insert(position, value)
            self._best_rows.insert(position, index)
        self.counts[status] += 1
        if status == "keep":
            self.last_keep_index = index

    def tsv_lines(self) -> Iterator[str]:
        yield self.tsv_format.header()
        for row in self.iter_rows():
            yield self.tsv_format.line(row)

    def tsv_text(self) -> str:
        return "".join(self.tsv_lines())

    def reconcile_tsv(self, quick: bool = False) -> bool:
        """Rewrite results.tsv from the JSONL rows when it differs; True when it was rewritten. `quick` (on load)
        compares only the header, the row count and the last row, which is what a server killed between the
        two appends can leave wrong; a full check compares every line, streaming."""
        if quick:
            last = self.tsv_format.line(self.row(len(self) - 1)) if len(self) else None
            size = quick_tsv_size(self.tsv_path, self.tsv_format.header(), len(self), last)
            if size is not None:
                self._tsv_size = size
                return False
        size = same_tsv_size(self.tsv_path, self.tsv_lines())
        if size is not None:
            self._tsv_size = size
            return False
        self._tsv_size = atomic_write(
            self.tsv_path, (line.encode("utf-8") for line in self.tsv_lines()), 0o644
        )
        self.written.pop(self.tsv_path, None)  # rewritten whole: as it is now
        return True

    # -- appending ------------------------------------------------------------------------------------------
    def _append_jsonl(self, action: str, ok: bool, details: dict[str, Any]) -> int:
        """Append one event; returns the byte offset its line starts at."""
        local, stamp = now_stamps()
        event = {
            "tool": "autoresearch",
            "action": action,
            "status": "success" if ok else "fail",
            "details": {**details, "tag": self.tag},
            "local_time": local,
            "timestamp": stamp,
        }
        self._last_event = event
        line = (json.dumps(event, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        sync = len(self._tail) + len(line) >= SYNC_EVERY
        # At the end of the sealed bytes, not at the file's end: a line a run in flight appended after the last
        # guard would otherwise sit under this one, counted by the seal's size but not by its sha256.
        offset = self._offset
        self.written[self.jsonl_path] = write_at(self.jsonl_path, offset, line, sync=sync)
        self._offset = offset + len(line)
        self._sha.update(line)
        if sync:
            self._tail.clear()
        else:
            self._tail += line
        if self.mirror is not None:  # the server's own copy, to restore the JSONL from (ownfiles); a tail
            # lost in a crash is rebuilt from the sealed JSONL
            self.written[self.mirror] = write_at(self.mirror, offset, line, sync=False)
        return offset

    def log_session_start(self, details: dict[str, Any]) -> None:
        self._append_jsonl("session_start", True, details)
        self._decided_to = self._offset

    def log_experiment_start(
        self, run_id: str, commit: str, description: str, parent: str | None = None
    ) -> None:
        self._append_jsonl(
            "experiment_start",
            True,
            {"run_id": run_id, "commit": commit, "description": one_line(description), "parent": parent},
        )

    def log_event(self, action: str, details: dict[str, Any]) -> None:
        """A step of an experiment that is not its row (with slots: a candidate merged onto a new best)."""
        self._append_jsonl(action, True, details)

    def log_experiment_done(self, row: Row) -> None:
        """The experiment's row, in the JSONL first (the truth), then in results.tsv. Idempotent per run."""
        if self.index_of(row.run_id) is not None:
            self.reconcile_tsv()
            return
        details = row_details(row, self.provenance)
        offset = self._append_jsonl("experiment_done", row.status != "crash", details)
        self._decided_to = self._offset
        self._add(row.run_id, offset, row.value, row.status, row.run_status, row.parent, row.best)
        # The row as written is held: reading it back right after (the decision's next_step) never depends on
        # the file, which a run still in flight may have replaced by then.
        written = row_from_event(self._last_event, self.tag)
        self._fill(written, len(self) - 1)
        self._cached(len(self) - 1, written)
        self._remember_content(row.evidence.target_sha256, row.run_status)
        current = fingerprint(self.tsv_path)
        if current is not None and self._tsv_size is not None and current[0] == self._tsv_size:
            line = self.tsv_format.line(row).encode("utf-8")
            # Not fsynced: results.tsv is derived from the JSONL (durable with the record), and a row lost with the page
            # cache is written again from it when the session is next loaded (its last row is compared).
            self.written[self.tsv_path] = write_at(self.tsv_path, self._tsv_size, line, sync=False)
            self._tsv_size += len(line)
        else:
            self.reconcile_tsv()

    def _remember_content(self, sha256: object, run_status: str) -> None:
        # A run the server cut short measured nothing: its content may run again.
        key = _content_key(sha256)
        if key is not None and run_status not in NOT_MEASURED:
            self._by_content[key] = len(self) - 1

    def measured(self, sha256: str) -> Row | None:
        """The last experiment that measured this target content in this session, if any."""
        key = _content_key(sha256)
        index = None if key is None else self._by_content.get(key)
        row = None if index is None else self.row(index)
        return row if row is not None and row.evidence.target_sha256 == sha256 else None

    def add_notes(self, run_id: str, notes: str) -> list[str]:
        index = self.index_of(run_id)
        assert index is not None
        notes = printable(notes, lines=True)  # stored as it will be shown: nothing a terminal would act on
        self._append_jsonl("experiment_notes", True, {"run_id": run_id, "notes": notes})
        self._notes.setdefault(index, []).append(notes)
        self._cache.pop(index, None)
        return list(self._notes[index])

    # -- tamper evidence ------------------------------------------------------------------------------------
    def seal(self) -> Seal:
        """How many bytes of the JSONL this process vouches for, their sha256, and those not yet fsynced."""
        sync = self._decided_to > self._recorded_to
        return Seal(self._offset, self._sha.hexdigest(), bytes(self._tail), sync, self._recorded)

    def _recorded(self, size: int) -> None:
        """An fsynced record of the session covers the JSONL's first `size` bytes."""
        self._recorded_to = max(self._recorded_to, size)

    def fingerprints(self) -> tuple[Fingerprint | None, Fingerprint | None]:
        return fingerprint(self.tsv_path), fingerprint(self.jsonl_path)

    def written_print(self, path: Path | None) -> Fingerprint | None:
        """The file as this process last wrote it (from the descriptor it wrote through, so a file swapped in
        since is never taken for it); as it is now when this process has not appended to it."""
        if path is None:
            return None
        return self.written.get(path) or fingerprint(path)


def _content_key(sha256: object) -> int | None:
    try:
        return int(sha256[:16], 16) if isinstance(sha256, str) and len(sha256) == 64 else None
    except ValueError:
        return None
