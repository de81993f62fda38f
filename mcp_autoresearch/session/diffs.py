"""The diff apply_edit shows: bounded in size and in the work it costs, whatever the edit.

The lines both versions share at their start and at their end are skipped in linear time, and difflib compares
only the changed region, and only when that region is at most `MAX_DIFF_LINES` lines on each side: difflib's
work grows faster than linearly with the region and with repeated lines (3 MB of shuffled lines once took 43 s).
A larger change is summarized instead: which lines changed, and how many. The text is cut at `MAX_DIFF_CHARS`.
Nothing here reads or writes a file.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

MAX_DIFF_LINES = 2000  # changed lines on either side that difflib may compare; above, a summary
MAX_DIFF_CHARS = 4000  # the diff's text is cut here
CONTEXT = 3  # unchanged lines shown around a change, as `diff -u`
_BLOCK = 256  # lines compared at once when looking for the shared start and end

_HUNK = re.compile(r"^@@ -(\d+)(,\d+)? \+(\d+)(,\d+)? @@$")


@dataclass(frozen=True)
class Diff:
    text: str
    added: int  # lines added (summarized: the new lines of the changed region)
    removed: int  # lines removed (summarized: the old lines of the changed region)
    summarized: bool


def bounded_diff(before: str, after: str, path: str) -> Diff:
    """A unified diff of `before` -> `after`, or a summary of the change when it is too large to compare."""
    old, new = before.splitlines(), after.splitlines()
    head = _common_head(old, new)
    tail = _common_tail(old, new, head)
    old_end, new_end = len(old) - tail, len(new) - tail
    changed_old, changed_new = old_end - head, new_end - head
    if changed_old > MAX_DIFF_LINES or changed_new > MAX_DIFF_LINES:
        text = (
            f"diff not computed: {_span(head, old_end)} of {path} ({changed_old} lines) became "
            f"{_span(head, new_end)} ({changed_new} lines); a diff is shown when at most {MAX_DIFF_LINES} "
            "lines change on each side. read_target shows the new content."
        )
        return Diff(text, added=changed_new, removed=changed_old, summarized=True)
    start = max(0, head - CONTEXT)
    lines = [
        _shift(line, start)
        for line in difflib.unified_diff(
            old[start : old_end + CONTEXT],
            new[start : new_end + CONTEXT],
            f"a/{path}",
            f"b/{path}",
            lineterm="",
        )
    ]
    added = sum(1 for line in lines if line.startswith("+") and not line.startswith("+++"))
    removed = sum(1 for line in lines if line.startswith("-") and not line.startswith("---"))
    text = "\n".join(lines)
    if len(text) > MAX_DIFF_CHARS:
        text = text[:MAX_DIFF_CHARS] + f"\n… (diff cut at {MAX_DIFF_CHARS} characters)"
    return Diff(text, added=added, removed=removed, summarized=False)


def _common_head(old: list[str], new: list[str]) -> int:
    """Lines shared at the start, compared a block at a time (list comparison runs in C)."""
    count, limit = 0, min(len(old), len(new))
    while count < limit and old[count : count + _BLOCK] == new[count : count + _BLOCK]:
        count += _BLOCK
    count = min(count, limit)
    while count < limit and old[count] == new[count]:
        count += 1
    return count


def _common_tail(old: list[str], new: list[str], head: int) -> int:
    """Lines shared at the end, never overlapping the shared head."""
    limit = min(len(old), len(new)) - head
    count = 0
    while (
        count + _BLOCK <= limit
        and old[len(old) - count - _BLOCK : len(old) - count]
        == new[len(new) - count - _BLOCK : len(new) - count]
    ):
        count += _BLOCK
    while count < limit and old[-1 - count] == new[-1 - count]:
        count += 1
    return count


def _span(start: int, end: int) -> str:
    return f"lines {start + 1}-{end}" if end > start else f"nothing after line {start}"


def _shift(line: str, offset: int) -> str:
    """A hunk header of the compared slice, renumbered for the whole file."""
    match = _HUNK.match(line) if offset and line.startswith("@@ ") else None
    if match is None:
        return line
    old_start, old_len, new_start, new_len = match.groups()
    return f"@@ -{int(old_start) + offset}{old_len or ''} +{int(new_start) + offset}{new_len or ''} @@"
