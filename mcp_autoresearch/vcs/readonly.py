"""What git knows of a project without a session (for detection and the CLI): read-only, never a session's git."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ..errors import SessionError
from .git_options import GIT_OPTIONS
from .refs import RefReader, read_small

_OPTION_ARGS = [arg for option in GIT_OPTIONS for arg in ("-c", option)]
# Bytes read of a `.git` file or a `commondir`: a path, never more (a planted file may be huge).
GITFILE_LIMIT = 4096


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
    outside one, in a bare one or with HEAD detached. Found as the session's `Repo` finds it, from the path alone
    (`git_dirs`), and read from the ref files: no git process (whose discovery follows GIT_DIR, a ceiling or the
    system's `safe.directory`, which the session's git calls do not), and no GitPython import for the readers."""
    found = git_dirs(project_root.resolve())
    return RefReader(*found).branch() if found is not None else None


def git_dirs(start: Path) -> tuple[Path, Path] | None:
    """(the git directory, the common one) of the work tree holding `start`, walking up as GitPython's
    `Repo(start, search_parent_directories=True)` does: a folder that is itself a git directory is a bare
    repository (None: no work tree); else its `.git`, a git directory or a file `gitdir: <path>` (a linked work
    tree, a submodule), whose `commondir` names the shared directory."""
    for folder in (start, *start.parents):
        if _is_git_dir(folder):
            return None
        dot = folder / ".git"
        if dot.is_file():
            try:
                text = read_small(dot, GITFILE_LIMIT).decode("utf-8", "surrogateescape").strip()
            except OSError:
                return None
            if not text.startswith("gitdir:"):
                return None
            git_dir = folder / text.removeprefix("gitdir:").strip()
        elif _is_git_dir(dot):
            git_dir = dot
        else:
            continue
        if not (git_dir / "HEAD").is_file():
            return None
        try:
            common = (
                read_small(git_dir / "commondir", GITFILE_LIMIT).decode("utf-8", "surrogateescape").strip()
            )
        except OSError:
            common = "."
        return git_dir.resolve(), (git_dir / common).resolve()
    return None


def _is_git_dir(folder: Path) -> bool:
    return (folder / "HEAD").is_file() and (folder / "objects").is_dir() and (folder / "refs").is_dir()


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
