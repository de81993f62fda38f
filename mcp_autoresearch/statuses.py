"""The one vocabulary of statuses: how a run ended, and what the loop decided about it.

Every module that names a status (experiment, journal, session, models, views) takes it from here, so a new
status is added in one place. This module imports nothing of the package.
"""

from __future__ import annotations

from typing import Literal, get_args

# How a run ended. `tampered`: it changed files it must not (restored); `interrupted`: the server stopped
# while it was in flight, so it never finished (not a verdict on its idea); `disk_full`: the disk was full
# when it ended (its error names the largest files it could write).
RunStatus = Literal[
    "ok",
    "crash",
    "timeout",
    "metric_error",
    "checks_failed",
    "tampered",
    "cancelled",
    "interrupted",
    "disk_full",
]
# What the loop decided: keep (the branch advances), discard (reverted), crash (nothing to keep).
Decision = Literal["keep", "discard", "crash"]
# What a view of a run can say: a status, or still running.
RunState = Literal["running", RunStatus]

RUN_STATUSES: tuple[RunStatus, ...] = get_args(RunStatus)
# Runs that never finished: they say nothing about their idea, which may be run again.
UNFINISHED: tuple[RunStatus, ...] = ("cancelled", "interrupted", "disk_full")
DECISIONS: tuple[Decision, ...] = get_args(Decision)
# Everything a query can filter on: a decision or a run status.
FILTERS: tuple[str, ...] = tuple(dict.fromkeys((*DECISIONS, *RUN_STATUSES)))


def as_run_status(value: object) -> RunStatus:
    """A run status read back from a file; anything unknown counts as a crash."""
    for status in RUN_STATUSES:
        if value == status:
            return status
    return "crash"


def as_decision(value: object) -> Decision:
    """A decision read back from a file; anything unknown counts as a crash."""
    for decision in DECISIONS:
        if value == decision:
            return decision
    return "crash"
