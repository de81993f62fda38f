"""The diff of one experiment's commit against its parent, for the page: read-only git, bounded output.

The commit id has already been checked to be a hex id of this session (`SessionView.session_commit`); git
runs with the server's own safe options, and with nothing that could run a program of the repository's
configuration (no external diff, no textconv filters).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ...vcs.git_options import GIT_OPTIONS

MAX_DIFF_BYTES = 512 * 1024
GIT_TIMEOUT_S = 20


@dataclass(frozen=True)
class Diff:
    commit: str
    text: str
    truncated: bool
    error: str | None = None


def commit_diff(root: Path, commit: str) -> Diff:
    """`git show` of the commit: its message, a stat, and the patch against its first parent."""
    args = ["git"]
    for option in GIT_OPTIONS:
        args += ["-c", option]
    args += [
        "show",
        "--no-color",
        "--no-ext-diff",  # a configured diff.external would run an arbitrary program
        "--no-textconv",  # so would a textconv driver of .gitattributes
        "--stat",
        "--patch",
        "--format=commit %H%nAuthor: %an%nDate:   %ad%n%n%w(0,4,4)%B",
        "--end-of-options",  # the id can never be read as an option
        commit,
        "--",
    ]
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat", "LC_ALL": "C"}
    try:
        done = subprocess.run(
            args,
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=GIT_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Diff(commit, "", False, f"git could not show {commit[:12]}: {exc}")
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip().splitlines()
        return Diff(
            commit, "", False, f"git show {commit[:12]} failed: {detail[-1] if detail else done.returncode}"
        )
    out = done.stdout
    truncated = len(out) > MAX_DIFF_BYTES
    return Diff(commit, out[:MAX_DIFF_BYTES].decode("utf-8", "replace"), truncated)
