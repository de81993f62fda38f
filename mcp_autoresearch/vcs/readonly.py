"""What git knows of a project without a session (for detection and the CLI): read-only, never a session's git."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ..errors import SessionError
from .git_options import GIT_ENV, GIT_OPTIONS
from .refs import RefReader

_OPTION_ARGS = [arg for option in GIT_OPTIONS for arg in ("-c", option)]


def tracked_and_ignored(project_root: Path) -> tuple[set[str], set[str]] | None:
    """What git knows of the project's files, without a session: the files it tracks below `project_root`, and the
    paths an ignore rule matches (tracked or not; an ignored directory as 'dir/'), project-relative. None outside
    a git work tree. Read-only: for detection, which must never pick a build output as the target."""

    def ls_files(*args: str) -> set[str] | None:
        try:
            done = subprocess.run(
                ["git", *_OPTION_ARGS, "ls-files", "-z", *args],
                cwd=project_root,
                env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"},
                capture_output=True,
                stdin=subprocess.DEVNULL,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        if done.returncode != 0:
            return None
        return {path for path in done.stdout.decode("utf-8", "surrogateescape").split("\0") if path}

    tracked = ls_files()
    if tracked is None:
        return None
    ignored = ls_files("-c", "-o", "-i", "--exclude-standard", "--directory")
    return tracked, ignored or set()


def checked_out_branch(project_root: Path) -> str | None:
    """The branch checked out in the repository holding `project_root` (as `Repo.current_branch` reads it), None
    outside one or with HEAD detached. Its directories come from one `git rev-parse`: a reader (the report, the
    web page) need not import GitPython for it."""
    try:
        done = subprocess.run(
            ["git", *_OPTION_ARGS, "rev-parse", "--absolute-git-dir", "--git-common-dir"],
            cwd=project_root,
            env={**os.environ, **GIT_ENV},
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = done.stdout.decode("utf-8", "surrogateescape").splitlines()
    if done.returncode != 0 or len(found) != 2:
        return None
    return RefReader(Path(found[0]), project_root / found[1]).branch()  # the common one may be relative


def git_problem(project_root: Path) -> str | None:
    """Why the loop cannot keep and discard experiments in this directory's git repository (None when it can)."""
    from .repo import Repo  # GitPython: only here, not for every reader of this module

    try:
        repo = Repo(project_root)
    except SessionError as exc:
        return str(exc)
    if not repo.has_commits():
        return "the repository has no commits yet; commit the project first (git add, git commit)"
    return None
