"""What the parts of a session share, as a protocol the `Session` satisfies.

The parts (editing, running, decisions, views) are objects the session owns; they see the session only through
this protocol, so none of them imports `session` and the dependency arrows point one way.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol

from ..records.journal import Journal
from ..records.ownfiles import OwnFiles
from ..records.state import PublicCopy, SessionState
from ..sandbox.policy import Isolation
from ..setup.config import Config
from ..vcs.repo import Repo


class SessionCore(Protocol):
    root: Path
    config: Config
    repo: Repo
    state: SessionState
    journal: Journal
    own: OwnFiles  # the server's own files and their fingerprints
    target_rel: str  # the target, relative to the project root
    target_repo_path: str  # the target, relative to the repository root
    plain_target: bool  # git stores the target as is (no filters, no end-of-line conversion)
    lock: threading.RLock
    recovered: list[str]  # what was repaired, reported to the agent
    isolation: Isolation  # how runs are confined on this machine
    public_copy: PublicCopy  # when the public copy of the state is written (once per step: `one_call`)

    def save(self) -> None:
        """Write the state (atomically) and remember its fingerprint."""

    def write_public(self) -> None:
        """The public copy that the saves of a step left behind."""

    def check_head(self) -> None:
        """Refuse unless HEAD is the session branch at the loop's head."""

    def check_no_pending(self) -> None:
        """Refuse while a run is in flight or waits for its decision."""

    def check_readonly(self) -> None:
        """Refuse when a read-only file changed since the session started."""


def normal_run_id(run_id: str) -> str:
    """Run ids as the agent may type them: '3' is 'r3'."""
    run_id = str(run_id).strip()
    return f"r{run_id}" if run_id.isascii() and run_id.isdigit() else run_id


def logged_run_id(journal: Journal, run_id: str) -> str:
    """`normal_run_id`, then spelled as its row logged it ('r03' finds r3, and is r3): a record the server writes
    (a parent, a note) names a logged run only as the JSONL's readers know it (the web page matches ids as text)."""
    run_id = normal_run_id(run_id)
    index = journal.index_of(run_id)
    return run_id if index is None else journal.run_id_at(index)
