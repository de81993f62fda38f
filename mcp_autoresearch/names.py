"""The names of the server's own files, folders and refs, in one place. Standard library only, no logic: every
module that reads or writes one of them takes its name from here.

A project holds, besides its own files:
- `results.tsv` (the table people read) and `run.log` (the last run's output), at the project's top;
- `.autoresearch/`, the server's folder: `sessions/<tag>.json` (the state for people and tools),
  `sessions/<tag>.own.json` (the server's own record, the only one it trusts), `sessions/<tag>.own.jsonl` (its copy
  of the JSONL), `runs/<tag>/` (every run's logs), `slots/<tag>/` (the slots' index files), `bin/` (Go's
  binary), `outputs/<tag>/` (outputs moved aside before each run: `run-<id>` what a run left,
  `found-before-<id>` anything else, never deleted), `holdout/<tag>.jsonl` (the holdout's values, never in a tool result) and the JSONL itself by default
  (`autoresearch.jsonl`);
- branches `autoresearch/<tag>` (one per session) and refs `refs/autoresearch/<tag>/` (discarded ideas).
"""

from __future__ import annotations

STATE_DIR = ".autoresearch"  # the server's folder in a project
SESSIONS = "sessions"  # .autoresearch/sessions: the states and records of every session
RUN_LOGS = "runs"  # .autoresearch/runs/<tag>: the logs of every run
SLOT_INDEXES = "slots"  # .autoresearch/slots/<tag>: the slots' git index files
OUTPUTS_DIR = (
    "outputs"  # .autoresearch/outputs/<tag>: what runs left in the outputs, moved aside before the next
)
HOLDOUT = "holdout"  # .autoresearch/holdout/<tag>.jsonl and its logs: the holdout's values, never shown
RESULTS_TSV = "results.tsv"
RUN_LOG = "run.log"
DEFAULT_JSONL = f"{STATE_DIR}/autoresearch.jsonl"
SERVER_BIN = f"{STATE_DIR}/bin"  # the one folder of the server's a run may write (Go's build output)
SESSION_BRANCHES = "autoresearch/"
SESSION_REFS = "refs/autoresearch/"


def public_state(tag: str) -> str:
    """The session's state for people and tools (inside `.autoresearch/sessions`)."""
    return f"{tag}.json"


def own_record(tag: str) -> str:
    """The server's own record of the session, the one it trusts (inside `.autoresearch/sessions`)."""
    return f"{tag}.own.json"


def own_journal(tag: str) -> str:
    """The server's copy of the session's JSONL (inside `.autoresearch/sessions`)."""
    return f"{tag}.own.jsonl"
