"""Turning raw output into text an agent can read: bounded, no ANSI escapes, no binary garbage."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..terminal_text import printable
from .atomic import open_regular

# CSI sequences (colours, cursor moves), OSC sequences (titles, links), and other two-byte escapes.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
TAIL_READ_BYTES = 64 * 1024


def clean_text(raw: bytes) -> str:
    """Decode leniently, drop escapes, keep only what a carriage-return progress bar finally showed."""
    text = raw.decode("utf-8", errors="replace")
    text = _ANSI.sub("", text)
    lines = []
    for line in text.split("\n"):
        if "\r" in line:
            parts = [part for part in line.split("\r") if part]
            line = parts[-1] if parts else ""
        lines.append(printable(line, mark="\ufffd"))  # what is left that a terminal would act on
    return "\n".join(lines)


def read_tail_bytes(path: Path, limit: int = TAIL_READ_BYTES) -> bytes:
    try:
        with os.fdopen(open_regular(path), "rb") as handle:  # a FIFO left there must not block
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read(limit)
    except OSError:
        return b""


def tail(path: Path, max_lines: int = 30, max_chars: int = 2000, max_line_chars: int = 300) -> str:
    """The last lines of a log, cleaned and bounded (at most `max_chars` characters in all)."""
    text = clean_text(read_tail_bytes(path))
    lines = text.rstrip("\n").split("\n")[-max_lines:]
    lines = [line if len(line) <= max_line_chars else _shortened(line, max_line_chars) for line in lines]
    out = "\n".join(lines)
    if len(out) > max_chars:
        out = "…" + out[-(max_chars - 1) :]
    return out


def _shortened(line: str, most: int) -> str:
    """A long line's beginning and its end (where a build tool puts the cause: Maven's `[ERROR] Failed to
    execute goal ...: <why>`), `most` characters in all."""
    head = most // 3
    return line[:head] + " … " + line[-(most - head - 3) :]


def last_line(path: Path, max_chars: int = 200, recent: bytes = b"") -> str:
    """The last line of a log that is not blank, cleaned and bounded; `recent`: the output's last bytes where the
    file does not end with them (a bounded log past its beginning, `RunLog.recent`)."""
    lines = [line for line in clean_text(recent or read_tail_bytes(path, 8192)).split("\n") if line.strip()]
    line = lines[-1].strip() if lines else ""
    return line if len(line) <= max_chars else line[: max_chars - 1] + "…"
