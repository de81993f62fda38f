"""Which session is current: the one whose branch is checked out. Read-only (git and the state files), so the
readers (report, web page) can ask it without importing the session."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SessionError
from ..names import SESSION_BRANCHES
from ..vcs.readonly import checked_out_branch
from .state import load_state

if TYPE_CHECKING:
    from ..vcs.repo import Repo


def current_session(root: Path, repo: Repo | None = None) -> str | None:
    """The current session is the one whose branch is checked out, always (also when a person checked out
    another session's branch by hand). None when no session branch is checked out."""
    try:
        branch = repo.current_branch() if repo is not None else checked_out_branch(root)
    except SessionError:
        return None
    except ValueError:  # a HEAD the ref files cannot give a branch for: the readers show the last session
        if repo is not None:
            raise  # the session says why (`RefReader.branch`)
        return None
    tag = branch.removeprefix(SESSION_BRANCHES) if branch else ""
    if tag and tag != branch and load_state(root, tag) is not None:
        return tag
    return None
