"""What a person left unfinished in git that the server's switch of branch would break: an operation under way
(a rebase, a merge, a cherry-pick, a revert, a bisect: git finishes it on whatever HEAD is then, and a rebase
writes its result to the branch it started from) and commits that only a detached HEAD holds (a checkout of
another branch leaves them reachable from no ref)."""

from __future__ import annotations

import os

from ..errors import SessionError
from .readonly import GITFILE_LIMIT
from .refs import read_small
from .repo import Repo

# The files git keeps in a work tree's own git directory while an operation is under way, and how to end it.
OPERATIONS = {
    "rebase-merge": ("a rebase", "git rebase --continue, or git rebase --abort"),
    "rebase-apply": ("a rebase or git am", "git rebase --continue or git am --continue, or --abort"),
    "MERGE_HEAD": ("a merge", "git commit, or git merge --abort"),
    "CHERRY_PICK_HEAD": ("a cherry-pick", "git cherry-pick --continue, or git cherry-pick --abort"),
    "REVERT_HEAD": ("a revert", "git revert --continue, or git revert --abort"),
    "BISECT_LOG": ("a bisect", "git bisect reset"),
    # a cherry-pick or revert of several commits, stopped and then committed by hand: only its plan is left
    "sequencer": (
        "a cherry-pick or revert of several commits",
        "git cherry-pick --continue or git revert --continue, or --quit, or --abort",
    ),
}


def unfinished_operation(repo: Repo) -> str | None:
    """The git operation under way in this work tree, said with how to end it; None when there is none."""
    for name, (what, how) in OPERATIONS.items():
        if os.path.lexists(repo.worktree_git_dir / name):
            return (
                f"{what} is under way in this work tree ({repo.worktree_git_dir / name} exists); a person must "
                f"finish it first ({how})"
            )
    return None


def branch_in_operation(repo: Repo, branch: str) -> str | None:
    """Where `branch` is being rebased or bisected, in any work tree of the repository (this one too): HEAD is
    detached meanwhile, and the rebase writes its result to the branch when it ends, from the tip it started
    on (git's own `branch -f` refuses such a branch as checked out). None when it is not."""
    common = repo.git_dir
    linked = common / "worktrees"
    folders = [common] + (sorted(p for p in linked.iterdir() if p.is_dir()) if linked.is_dir() else [])
    for folder in folders:
        for name, marker, what in (
            ("rebase-merge/head-name", f"refs/heads/{branch}", "being rebased"),
            ("rebase-apply/head-name", f"refs/heads/{branch}", "being rebased"),
            ("BISECT_START", branch, "being bisected"),
        ):
            try:  # bounded, and never waiting on a FIFO planted there; a name's bytes as `branch` holds them
                named = read_small(folder / name, GITFILE_LIMIT).decode("utf-8", "surrogateescape").strip()
            except OSError:
                continue
            if named == marker:
                return f"{what} (git keeps {folder / name}): a person must finish that first"
    return None


def switch_problem(repo: Repo, branch: str) -> str | None:
    """Why the server must not check out `branch` now (a person's operation under way, or commits only the
    detached HEAD holds, which the switch would leave behind); None when it may."""
    operation = unfinished_operation(repo)
    if operation is not None:
        return operation
    if repo.current_branch() is not None:
        return None
    head = repo.head_commit()
    left = repo.head_only_commits()
    if not left:
        return None
    return (
        f"HEAD is detached at {head[:12]}, which holds {len(left)} commit(s) no branch holds (a person's?): "
        f"checking out {branch} would leave them behind. A person must put them on a branch first "
        f"(git branch NAME {head[:12]}), or check out {branch} themselves"
    )


def refuse_start(repo: Repo) -> None:
    """Raise SessionError when a session must not start here: an operation under way (git would end it on the
    session's branch), or uncommitted changes to tracked files (no work of a person's may be lost)."""
    if operation := unfinished_operation(repo):
        raise SessionError(f"cannot start a session: {operation}. Nothing was changed")
    dirty = [repo.project_path(p) for p in repo.changed_tracked_files()]
    if dirty:
        raise SessionError(
            "tracked files have uncommitted changes: "
            + ", ".join(dirty[:20])
            + (f" (+{len(dirty) - 20} more)" if len(dirty) > 20 else "")
            + ". A person must commit or stash them first, so no work of theirs can be lost."
        )


def refuse_switch(repo: Repo, branch: str, tag: str) -> None:
    """Raise SessionError when session `tag` must not check out its `branch` to resume (`switch_problem`, or
    uncommitted changes to tracked files)."""
    if problem := switch_problem(repo, branch):
        raise SessionError(f"cannot resume session '{tag}': {problem}. Nothing was changed")
    dirty = repo.changed_tracked_files()
    if dirty:
        raise SessionError(
            f"cannot switch to {branch}: tracked files have uncommitted changes "
            f"({', '.join(dirty[:10])}); a person must commit or stash them first"
        )
