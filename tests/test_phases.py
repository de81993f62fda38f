"""The run's state machine: a move the table does not allow is refused before anything is assigned or saved."""

from __future__ import annotations

import pytest

from mcp_autoresearch.phases import IN_FLIGHT, TRANSITIONS, PhaseError, advance
from mcp_autoresearch.records.state import Pending


def test_a_move_the_table_allows_assigns_and_saves() -> None:
    run = Pending(run_id="r1", description="d", parent="p")
    saved: list[str] = []
    for phase in ("running", "finished", "running", "finished", "deciding"):
        advance(run, phase, lambda: saved.append(run.phase))  # type: ignore[arg-type]
    assert saved == ["running", "finished", "running", "finished", "deciding"]


@pytest.mark.parametrize(
    ("start", "to"),
    [("starting", "finished"), ("running", "deciding"), ("deciding", "running"), ("running", "running")],
)
def test_a_move_the_table_does_not_allow_is_refused_unsaved(start: str, to: str) -> None:
    run = Pending(run_id="r1", description="d", parent="p", phase=start)  # type: ignore[arg-type]
    saved: list[str] = []
    with pytest.raises(PhaseError, match=f"r1 cannot go from {start} to {to}"):
        advance(run, to, lambda: saved.append(run.phase))  # type: ignore[arg-type]
    assert run.phase == start and not saved


def test_every_phase_has_its_moves_and_the_decision_ends_the_run() -> None:
    assert set(TRANSITIONS) == {"starting", "running", "finished", "deciding"}
    assert TRANSITIONS["deciding"] == frozenset()  # a run leaves the state when its decision is logged
    assert all(TRANSITIONS[p] for p in IN_FLIGHT)
