"""What a new session passes before it opens: a tag of the right shape (or the date's, as the original tool
names its sessions), and no earlier session of the project with its budget spent."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from ..errors import AutoresearchError
from ..readers.report import open_session_files
from ..records.budget import BUDGET_KEYS, refuse_escape
from ..records.state import current_tag, recorded_tags
from ..setup.config import Config

TAG_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def default_tag() -> str:
    """Lower-cased month and day, like the original: nov26."""
    return datetime.now().strftime("%b%d").lower()


def check_last_budget(root: Path, tag: str, config: Config) -> None:
    """A new session does not start while a session of the project has spent its budget (budget.py). Every
    session the server holds a record of counts, not only the one `.autoresearch/current` names: that file is
    a plain one the agent's shell can delete or rewrite."""
    configured = {key: getattr(config, key) for key in BUDGET_KEYS}
    current = current_tag(root)
    for last in sorted((({current} if current else set()) | recorded_tags(root)) - {tag}):
        try:
            files = open_session_files(str(root), last)
        except AutoresearchError:
            continue  # no readable session: nothing to hold against a new one
        refuse_escape(files.state, len(files.journal), configured, tag)
