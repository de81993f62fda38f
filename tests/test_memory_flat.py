"""The server's memory stays flat over a long session: what it holds per experiment beyond the journal's compact
index is bounded (the rows it wrote, held for their next reading; the commits the git status proof may meet as
HEAD). Real sessions on a real repository, in process, with the bounds made small so that a few dozen experiments
pass them."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_autoresearch.records import journal
from mcp_autoresearch.session.workspace import Workspace
from mcp_autoresearch.vcs import tracked

from .conftest import decided_baseline, make_repo

ROWS, HEADS, EXPERIMENTS = 6, 4, 24


@pytest.fixture
def small_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal, "_ROW_CACHE", ROWS)
    monkeypatch.setattr(tracked, "HEADS", HEADS)


def _project(path: Path) -> Path:
    return make_repo(
        path,
        {
            "params.sh": "K=1000\n",
            "autoresearch.toml": 'target_file = "params.sh"\nrun_command = ". ./params.sh; echo \\"score: $K\\""\n'
            'metric_name = "score"\n',
        },
    )


def test_rows_written_and_the_proven_heads_stay_bounded(tmp_path: Path, small_bounds: None) -> None:
    """Every experiment writes a row (held for the decision's next_step) and a commit (which HEAD may be at, for
    the proof that spares a git status): both were held for the whole session, about 1.4 KB per experiment.
    Now the last few of each are: the cache and the proof's commits stay within their bounds, and the best
    (the parent every candidate starts from, which HEAD returns to after a discard) stays among them, so the
    proof still holds after a long streak of discards."""
    workspace = Workspace(_project(tmp_path / "p"))
    session = decided_baseline(workspace, "flat")
    best = current = 1000
    decisions = []
    for i in range(EXPERIMENTS):
        value = best - 1 if i % 8 == 0 else best + 1 + i  # a keep, then a streak of seven discards
        edit = [{"old_text": f"K={current}", "new_text": f"K={value}"}]
        _edit, run_id = session.edit_and_start_run(f"K={value}", False, edit, None)
        assert isinstance(run_id, str)
        handle = session.run_handle(run_id)
        assert handle is not None and handle.wait(120)
        decision = session.commit_or_reset(run_id).decision
        decisions.append(decision)
        best = value if decision == "keep" else best
        current = best
        snapshot = session.repo._known.snapshot
        if snapshot is not None:
            assert len(snapshot.heads) <= HEADS, snapshot.heads
        assert len(session.journal._cache) <= ROWS
    assert decisions.count("keep") == 3 and decisions.count("discard") == EXPERIMENTS - 3
    snapshot = session.repo._known.snapshot
    assert snapshot is not None  # the proof still stands after the discards
    assert session.state.best is not None and session.state.best.commit in snapshot.heads
    assert len(session.journal) == EXPERIMENTS + 1
    assert [row.run_id for row in session.journal.tail(3)] == [
        f"r{n}" for n in range(EXPERIMENTS - 1, EXPERIMENTS + 2)
    ]
    workspace.shutdown()
