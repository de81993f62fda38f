"""`run.log` at the project root: the original tool's view of the last run's output (`cmd > run.log 2>&1`). The
server captures the output itself, so a run command's own redirect to it is taken off, and the file is the
server's copy for people, never an input."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..names import RUN_LOG

_RUN_LOG_REDIRECT = re.compile(
    r"\s*(?:(?:1?>|&>)\s*\.?/?run\.log(?:\s+2>&1)?|(?:2>&1\s*)?\|\s*tee\s+(?:-a\s+)?\.?/?run\.log)\s*$"
)


def without_run_log_redirect(command: str) -> str:
    """The run command without a redirect of its output to run.log at its end (`> run.log 2>&1`, `| tee run.log`)."""
    return _RUN_LOG_REDIRECT.sub("", command) or command


def clear_run_log(root: Path) -> None:
    """No `run.log` at the project root while a run goes on: what stands there is no output of this run."""
    try:
        (root / RUN_LOG).unlink()
    except OSError:
        pass


def publish_run_log(root: Path, log_path: Path) -> None:
    """`run.log` at the project root shows this run's output, so the original tool's commands still work.
    It is the server's copy for people, never an input: whatever stands there (a file the run wrote, a link)
    is replaced, unread, by a hard link to the captured log (a copy where links fail)."""
    run_log = root / RUN_LOG
    staged = root / f".{RUN_LOG}.{os.getpid()}.tmp"
    try:
        staged.unlink(missing_ok=True)
        os.link(log_path, staged)
    except OSError:
        try:
            with open(log_path, "rb") as src, open(staged, "xb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        except OSError:
            staged.unlink(missing_ok=True)
            return
    try:
        os.replace(staged, run_log)  # replaces a symlink or a directory entry, never follows it
    except OSError:
        staged.unlink(missing_ok=True)
