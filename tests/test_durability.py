"""What the server fsyncs: an experiment's decision, once; and a record that an OS crash leaves is whole with
the JSONL's fsynced part (the appends written since travel in the record)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_autoresearch.names import own_record
from mcp_autoresearch.records.journal import SYNC_EVERY, Journal
from mcp_autoresearch.records.state import record_path
from mcp_autoresearch.session.session import Session
from mcp_autoresearch.session.workspace import Workspace


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The files this process fsyncs, in order (the real fsync runs: only the call is noted)."""
    paths: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    yield paths


def _experiment(session: Session, old: str, new: str) -> str:
    if old != new:
        session.apply_edit([{"old_text": old, "new_text": new}], None, None, None)
    run_id = session.start_run(new)
    assert isinstance(run_id, str)
    handle = session.run_handle(run_id)
    assert handle is not None and handle.wait(60)
    return run_id


def test_an_experiment_fsyncs_once_the_record_of_its_decision(ml_project: Path, synced: list[str]) -> None:
    """The saves of a run on its way (starting, running, finished), its JSONL lines and the target's edit are
    written and renamed but not fsynced: a kill -9 loses none of them (the page cache outlives the process).
    The record that holds the decision is fsynced, once per experiment."""
    workspace = Workspace(ml_project)
    workspace.start_session("sync")
    session = workspace.session
    try:
        baseline = _experiment(session, "WIDTH = 4", "WIDTH = 4")
        session.commit_or_reset(baseline)
        synced.clear()
        decisions = []
        for lr in ("0.3", "0.7", "0.2", "0.9"):
            run_id = _experiment(session, f"LR = {session_lr(ml_project)}", f"LR = {lr}")
            assert len(synced) == len(decisions)  # the edit, the start and the run fsynced nothing
            decisions.append(session.commit_or_reset(run_id).decision)
        assert "keep" in decisions and "discard" in decisions
        record = str(record_path(ml_project, "sync").with_name(f".{own_record('sync')}"))
        assert len(synced) == 4 and all(path.startswith(record) for path in synced), synced
    finally:
        workspace.shutdown()


def session_lr(root: Path) -> str:
    line = next(x for x in (root / "train.py").read_text().splitlines() if x.startswith("LR = "))
    return line.removeprefix("LR = ")


def test_the_jsonl_is_fsynced_when_its_unsynced_tail_grows_large(tmp_path: Path, synced: list[str]) -> None:
    """The record carries the JSONL's bytes since its last fsync: they stay bounded."""
    journal = Journal(tmp_path / "results.tsv", tmp_path / "log.jsonl", "t")
    journal.load()
    synced.clear()
    for number in range(400):
        journal.log_event("step", {"run_id": f"r{number}", "note": "x" * 200})
        assert len(journal.seal().tail) < SYNC_EVERY
    assert synced and all(path == str(tmp_path / "log.jsonl") for path in synced)
    assert journal.seal().size == (tmp_path / "log.jsonl").stat().st_size


def test_a_record_an_os_crash_leaves_is_whole_with_the_fsynced_jsonl(ml_project: Path) -> None:
    """An OS crash keeps what was fsynced and may keep any later write or none: here the record of the last run
    as `finished` (a save that was not fsynced) and the JSONL and its copy cut back to their fsynced part. The
    restarted server writes back the appends from the record, and decides the run again, the same."""
    workspace = Workspace(ml_project)
    workspace.start_session("crash")
    session = workspace.session
    baseline = _experiment(session, "WIDTH = 4", "WIDTH = 4")
    session.commit_or_reset(baseline)
    kept = _experiment(session, "LR = 0.5", "LR = 0.3")
    assert session.commit_or_reset(kept).decision == "keep"
    run_id = _experiment(session, "LR = 0.3", "LR = 0.2")
    finished = record_path(ml_project, "crash").read_bytes()
    expected = session.commit_or_reset(run_id)
    jsonl, mirror = session.journal.jsonl_path, session.journal.mirror
    assert mirror is not None
    logged = jsonl.read_bytes()
    workspace.shutdown()

    record = json.loads(finished)
    durable = record["jsonl_size"] - len(record.get("jsonl_tail", "").encode("utf-8"))
    assert durable < record["jsonl_size"]  # the run's lines were never fsynced
    record_path(ml_project, "crash").write_bytes(finished)
    for path in (jsonl, mirror):
        os.truncate(path, durable)

    resumed = Workspace(ml_project)
    try:
        resumed.start_session()
        again = resumed.session
        assert jsonl.read_bytes() == logged[: record["jsonl_size"]]
        assert any("written again from the server's record" in note for note in again.recovered)
        decision = again.commit_or_reset(run_id)
        assert (decision.decision, decision.value) == (expected.decision, expected.value)
        assert jsonl.read_bytes().count(b'"experiment_done"') == 3
        assert mirror.read_bytes() == jsonl.read_bytes()
        rows = (ml_project / "results.tsv").read_text().splitlines()[1:]
        assert [row.split("\t")[3] for row in rows] == ["keep", "keep", expected.decision]
    finally:
        resumed.shutdown()
