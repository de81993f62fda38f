"""What `finish` and `clean` check before they change anything, and how they run git: the project lock, the
files that change what git considers history, uncommitted changes, the branch to land on, another worktree
holding it; git run with the server's options and environment."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ..errors import ConfigError, SessionError
from ..names import SESSION_BRANCHES, SESSION_REFS
from ..records.state import ProjectLock, SessionState
from ..terminal_text import printable
from ..vcs.git_options import GIT_ENV, GIT_OPTIONS
from ..vcs.identity import USER_KEYS, Identity
from ..vcs.planted import present_history_files
from ..vcs.repo import Repo


def project_lock(root: Path, doing: str) -> ProjectLock:
    """Hold the project lock while changing anything: a server running the loop must not see its refs move."""
    lock = ProjectLock(root)
    try:
        lock.acquire()
    except SessionError as exc:
        raise SessionError(f"cannot {doing} now: {exc}") from None
    return lock


_HISTORY_FIXES = {
    "shallow": "git sees the history cut off at the commits it lists. If you cloned shallow, fetch the full "
    "history (git fetch --unshallow)",
    "alternates": "git reads objects from the stores it names, so what is landed could depend on objects "
    "outside this repository. If you cloned with --reference or --shared, copy them in (git repack -a -d) and "
    "remove the file",
    "http-alternates": "git reads objects from the addresses it names. If you did not write it, remove it",
}


def check_history(repo: Repo, doing: str) -> None:
    """Refuse while a file that changes what git considers history exists (grafts are ignored: every call runs
    with GIT_GRAFT_FILE=/dev/null, and `history_note` names them)."""
    for path in present_history_files(repo.git_dir):
        if path.name in _HISTORY_FIXES:
            raise SessionError(
                f"cannot {doing}: {path} exists: {_HISTORY_FIXES[path.name]}; if you did not, a run may have "
                "planted it: look at it, move it away, and run again. Nothing was changed"
            )


def history_note(root: Path) -> str:
    """A line naming a grafts file, which finish and clean ignore (a run may plant one to rewrite parents)."""
    grafts = [p for p in present_history_files(Repo(root).git_dir) if p.name == "grafts"]
    return "".join(
        f"note: {path} is ignored: finish and clean see every commit's own parents, not its grafts "
        "(a run may have planted it to make your commits look like the session's ancestors)\n"
        for path in grafts
    )


def check_clean_tree(repo: Repo, state: SessionState) -> None:
    dirty = [repo.project_path(p) for p in repo.changed_tracked_files()]
    if not dirty:
        return
    branched = ""
    if state.next_parent and state.best is not None and state.target_file in dirty:
        branched = (
            f" The target holds the content of node {state.next_parent} (the session branched from it; it is kept "
            f"under {SESSION_REFS}{state.tag}/{state.next_parent}): put the best's back first with "
            f"branch_from(run_id='{state.best.run_id}'), then finish."
        )
    raise SessionError(
        "tracked files have uncommitted changes: " + ", ".join(dirty[:10]) + ". Commit or stash them "
        "first (an undecided experiment? let the server decide it), so nothing of yours is overwritten."
        + branched
    )


def check_branch_name(repo: Repo, branch: str) -> None:
    # A leading '-' would be read as an option by git; session branches belong to the server.
    if branch.startswith("-") or branch.startswith(SESSION_BRANCHES) or branch == "HEAD":
        raise ConfigError(f"--land {branch!r}: name one of your branches (e.g. main), not a session branch")
    try:
        git(repo.top, "check-ref-format", "--branch", branch)
    except SessionError:
        raise ConfigError(f"--land {branch!r} is not a valid branch name") from None


def checked_out_elsewhere(repo: Repo, branch: str) -> str | None:
    """The other worktree that has `branch` checked out (its files would no longer match), if any."""
    path = None
    for line in git(repo.top, "worktree", "list", "--porcelain").splitlines():
        if line.startswith("worktree "):
            path = line.removeprefix("worktree ")
        elif line == f"branch refs/heads/{branch}" and path and Path(path).resolve() != repo.top:
            return path
    return None


def tree_of(repo: Repo, commit: str) -> str:
    return git(repo.top, "rev-parse", f"{commit}^{{tree}}").strip()


def git(top: Path, *args: str, identity: bool = False) -> str:
    env = {**os.environ, **GIT_ENV}
    if identity:  # the neutral identity only where neither the environment nor the configuration gives one
        env = {**Identity(lambda: _user_keys(top)).read_again(), **env}
    options = [arg for option in GIT_OPTIONS for arg in ("-c", option)]
    try:
        done = subprocess.run(
            ["git", "--no-replace-objects", *options, *args],
            cwd=top,
            env=env,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SessionError(f"git {args[0]} could not run: {exc}") from None
    if done.returncode != 0:
        detail = printable(
            (done.stderr or done.stdout).decode("utf-8", "replace").strip().replace("\n", " ")[:400]
        )
        raise SessionError(f"git {args[0]} failed: {detail or f'exit code {done.returncode}'}")
    return done.stdout.decode("utf-8", "surrogateescape")


def _user_keys(top: Path) -> str:
    """`user.name` and `user.email` as `Identity` reads them (empty: neither is set)."""
    try:
        return git(top, "config", "-z", "--get-regexp", USER_KEYS)
    except SessionError:
        return ""
