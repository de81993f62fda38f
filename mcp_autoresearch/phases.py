"""The phases of a run between its start and its logged decision, the moves allowed between them, and the one
function that moves a run (nothing else assigns a phase: `tests/test_structure.py` checks it).

    starting --> running --> finished --> deciding --> (logged: the run leaves the state)
                                 |
                                 +--> running   (with slots: its change merged onto a newer best, run again)

A run `starting` has its record but not yet its candidate commit (a restart undoes the commit, if any); one
`running` has a process (or a job) that may still change files; one `finished` has its measurement and waits for
its decision; one `deciding` has its decision written down, and a restart applies it again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

Phase = Literal["starting", "running", "finished", "deciding"]

IN_FLIGHT: frozenset[Phase] = frozenset({"starting", "running"})  # its process may still run
AWAITING_DECISION: frozenset[Phase] = frozenset({"finished", "deciding"})  # measured, not yet logged

TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    "starting": frozenset({"running"}),
    "running": frozenset({"finished"}),
    "finished": frozenset({"deciding", "running"}),
    "deciding": frozenset(),
}


class HasPhase(Protocol):
    run_id: str
    phase: Phase


class PhaseError(RuntimeError):
    """A move the table does not allow: a bug of the server, never the agent's doing."""


def advance(run: HasPhase, phase: Phase, save: Callable[[], None]) -> None:
    """Move `run` to `phase`, then save the state (a restart resumes the run from there)."""
    if phase not in TRANSITIONS[run.phase]:
        raise PhaseError(f"run {run.run_id} cannot go from {run.phase} to {phase}")
    run.phase = phase
    save()


def unsaved() -> None:
    """The `save` of a move whose record a crash may lose: the caller's next save records it, and until then a
    restart finds the run as it was before the move and does the same again (say why, where it is used)."""


def in_flight(run: HasPhase) -> bool:
    """Its process (or job) may still run: it is neither measured nor decided."""
    return run.phase in IN_FLIGHT
