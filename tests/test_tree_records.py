"""The research tree's records: every row names its parent node and whether it became the best; rows and
state files written before the tree still load, read as the greedy loop had them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mcp_autoresearch.records.journal import Journal
from mcp_autoresearch.records.rows import Row
from mcp_autoresearch.records.state import load_state, state_path
from mcp_autoresearch.session.workspace import Workspace

from .test_state import STATE_0_1


def _old_done(run_id: str, status: str, value: float) -> dict[str, Any]:
    """An experiment_done event as the server wrote it before the research tree (no parent, no best)."""
    return {
        "tool": "autoresearch",
        "action": "experiment_done",
        "status": "success",
        "details": {
            "run_id": run_id,
            "status": status,
            "run_status": "ok",
            "metric": "val_bpb",
            "value": value,
            "commit": "abcdef1",
            "full_commit": "abcdef1" + "0" * 33,
            "description": f"run {run_id}",
            "tag": "old",
        },
        "timestamp": "2026-11-26T09:00:00.000Z",
    }


def test_rows_written_before_the_tree_read_with_the_best_at_their_time_as_parent(tmp_path: Path) -> None:
    jsonl = tmp_path / "log.jsonl"
    events = [
        _old_done("r1", "keep", 1.4),
        _old_done("r2", "discard", 1.5),
        _old_done("r3", "keep", 1.3),
        _old_done("r4", "crash", 0.0),
        _old_done("r5", "keep", 1.2),
    ]
    jsonl.write_text("".join(json.dumps(e) + "\n" for e in events))
    journal = Journal(tmp_path / "results.tsv", jsonl, "old")
    journal.load()
    rows = journal.rows
    assert [r.parent for r in rows] == [None, "r1", "r1", "r3", "r3"]
    assert [r.best for r in rows] == [True, False, True, False, True]
    assert [journal.parent_at(i) for i in range(5)] == [None, "r1", "r1", "r3", "r3"]
    assert journal.lineage.parent_index(4) == 2 and journal.lineage.parent_index(0) is None
    assert all(len(line.split("\t")) == 5 for line in (tmp_path / "results.tsv").read_text().splitlines())


def test_a_row_names_its_parent_even_when_that_is_not_the_last_keep(tmp_path: Path) -> None:
    """A new row's own parent and best flag win over the old reading; a parent that is not a row of this
    session is kept as named."""
    jsonl = tmp_path / "log.jsonl"
    events = [_old_done("r1", "keep", 1.4), _old_done("r2", "keep", 1.3), _old_done("r3", "keep", 1.35)]
    events[2]["details"].update(parent="r1", best=False)
    extra = _old_done("r4", "discard", 1.5)
    extra["details"].update(parent="elsewhere", best=False)
    jsonl.write_text("".join(json.dumps(e) + "\n" for e in [*events, extra]))
    journal = Journal(tmp_path / "results.tsv", jsonl, "old")
    journal.load()
    assert [(r.parent, r.best) for r in journal.rows] == [
        (None, True),
        ("r1", True),
        ("r1", False),
        ("elsewhere", False),
    ]


def test_a_state_file_of_version_0_1_names_the_parent_commit_and_the_best_as_parent_run(
    tmp_path: Path,
) -> None:
    old = json.loads(json.dumps(STATE_0_1))
    old["best"] = {
        "value": 1.4,
        "commit": "a" * 40,
        "run_id": "r1",
        "description": "baseline",
        "nonblank_lines": 5,
    }
    old["pending"]["run_id"], old["pending"]["is_baseline"] = "r2", False
    path = state_path(tmp_path, "nov26")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(old))
    state = load_state(tmp_path, "nov26")
    assert state is not None and state.pending is not None
    assert state.pending.parent_commit == "a" * 40
    assert state.pending.parent_run == "r1"


def test_every_row_result_and_start_event_names_its_parent_and_whether_it_became_best(
    ml_project: Path,
) -> None:
    workspace = Workspace(ml_project)
    workspace.start_session("rec")
    session = workspace.session
    decisions = []
    try:
        for description, old, new in (
            ("baseline", "", ""),
            ("LR to 0.3", "LR = 0.5", "LR = 0.3"),
            ("LR to 0.9", "LR = 0.3", "LR = 0.9"),
        ):
            if old:
                session.apply_edit([{"old_text": old, "new_text": new}], None, None, None)
            run_id = session.start_run(description)
            assert session.state.pending is not None
            started_parent = session.state.pending.parent_run
            handle = session.run_handle(run_id)
            assert handle is not None and handle.wait(60)
            assert session.view(run_id).parent == started_parent
            decisions.append(session.commit_or_reset(run_id))
        assert [(d.decision, d.parent, d.best) for d in decisions] == [
            ("keep", None, True),
            ("keep", "r1", True),
            ("discard", "r2", False),
        ]
        rows = session.journal.rows
        assert [(r.parent, r.best) for r in rows] == [(None, True), ("r1", True), ("r2", False)]
        assert [r.parent for r in session.query(None, 10, "recent").rows] == ["r2", "r1", None]
        assert session.commit_or_reset("r3").parent == "r2"  # a retried call answers the same
        events = [json.loads(line) for line in session.journal.jsonl_path.read_text().splitlines()]
        starts = {e["details"]["run_id"]: e["details"] for e in events if e["action"] == "experiment_start"}
        done = {e["details"]["run_id"]: e["details"] for e in events if e["action"] == "experiment_done"}
        assert [starts[r]["parent"] for r in ("r1", "r2", "r3")] == [None, "r1", "r2"]
        assert [(done[r]["parent"], done[r]["best"]) for r in ("r1", "r2", "r3")] == [
            (None, True),
            ("r1", True),
            ("r2", False),
        ]
        assert all("combined" not in d for d in done.values())
        assert len((ml_project / "results.tsv").read_text().splitlines()[0].split("\t")) == 5
    finally:
        workspace.shutdown()


def test_the_row_just_logged_reads_back_without_the_file_a_run_may_have_replaced(tmp_path: Path) -> None:
    """The decision's next_step reads the row it just logged: a run still in flight may have put a link in the
    JSONL's place by then (seen under load in tests/test_attacks_slots.py: an internal error, ELOOP). The journal
    holds what it wrote."""
    jsonl = tmp_path / "log.jsonl"
    journal = Journal(tmp_path / "results.tsv", jsonl, "t")
    journal.load()
    journal.log_experiment_done(
        Row("r1", "a" * 40, "m", 1.5, "keep", "ok", "baseline", None, None, None, 0.1, None, "t", "")
    )
    elsewhere = tmp_path / "forged.jsonl"
    elsewhere.write_text("")
    jsonl.unlink()
    jsonl.symlink_to(elsewhere)
    again = journal.get("r1")
    assert again is not None and (again.value, again.status, again.description) == (1.5, "keep", "baseline")
