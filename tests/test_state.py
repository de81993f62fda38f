"""Session state on disk: typed run results and decisions, and state files written by version 0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mcp_autoresearch.errors import SessionError
from mcp_autoresearch.records.state import DecisionRecord, RunOutcome, load_state, state_path
from mcp_autoresearch.session.workspace import Workspace

# A state file as version 0.1 wrote it: the run's result and the decision as plain objects.
STATE_0_1 = {
    "tag": "nov26",
    "branch": "autoresearch/nov26",
    "base_commit": "a" * 40,
    "created_at": "2026-11-26T09:00:00",
    "target_file": "train.py",
    "metric_name": "val_bpb",
    "metric_direction": "lower_is_better",
    "readonly_hashes": {"prepare.py": "b" * 64},
    "rules": {"target_file": "train.py", "run_command": "python train.py", "repeats": 1},
    "run_counter": 1,
    "best": None,
    "baseline_value": None,
    "baseline_commit": None,
    "pending": {
        "run_id": "r1",
        "description": "baseline",
        "parent": "a" * 40,
        "commit": "a" * 40,
        "is_baseline": True,
        "nonblank_lines": 5,
        "target_sha256": "c" * 64,
        "phase": "deciding",
        "started_at": "2026-11-26T09:00:01",
        "result": {
            "status": "ok",
            "value": 1.4,
            "values": [1.4],
            "spread": None,
            "duration_s": 0.05,
            "memory_gb": 0.5,
            "exit_code": 0,
            "log_path": "/p/.autoresearch/runs/nov26/r1.log",
            "log_tail": "val_bpb: 1.400000",
            "error": None,
            "secondary": {},
            "leftovers_killed": 0,
        },
        "decision": {"decision": "keep", "reason": "baseline", "delta": None, "prev": None},
    },
}


def test_a_state_file_of_version_0_1_loads_typed(tmp_path: Path) -> None:
    path = state_path(tmp_path, "nov26")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(STATE_0_1))
    state = load_state(tmp_path, "nov26")
    assert state is not None and state.pending is not None
    assert isinstance(state.pending.result, RunOutcome)
    assert state.pending.result.status == "ok" and state.pending.result.value == 1.4
    assert isinstance(state.pending.decision, DecisionRecord)
    assert state.pending.decision.decision == "keep" and state.pending.decision.reason == "baseline"


def test_a_run_left_finished_by_version_0_1_is_decided_after_an_upgrade(ml_project: Path) -> None:
    """A 0.1 server stopped after a run and before its decision; the new server resumes and decides it."""
    workspace = Workspace(ml_project)
    workspace.start_session("old")
    session = workspace.session
    run_id = session.start_run("baseline")
    handle = session.run_handle(run_id)
    assert handle is not None and handle.wait(60)
    workspace.shutdown()

    path = state_path(ml_project, "old")
    raw = json.loads(path.read_text())
    measured = raw["inflight"][0]["result"]
    assert raw["inflight"][0]["phase"] == "finished" and measured["status"] == "ok"
    # What 0.1 wrote: the same keys, as a plain object (fields it did not have are absent).
    raw["inflight"][0]["result"] = {k: measured[k] for k in STATE_0_1["pending"]["result"]}
    path.write_text(json.dumps(raw))

    resumed = Workspace(ml_project)
    try:
        resumed.start_session()
        decision = resumed.session.commit_or_reset(run_id)
        assert decision.decision == "keep" and decision.value == measured["value"]
        assert (
            resumed.session.state.best is not None and resumed.session.state.best.value == measured["value"]
        )
    finally:
        resumed.shutdown()


def test_a_log_swapped_right_after_the_servers_own_write_is_never_adopted(tmp_path: Path) -> None:
    """With slots, runs are in flight while the server writes its log: a run (unconfined) that swaps the JSONL
    for a link between the server's append and its bookkeeping must still be found, and the log put back."""
    import os

    from mcp_autoresearch.records.journal import Journal
    from mcp_autoresearch.records.ownfiles import OwnFiles, start_mirror

    own_dir = tmp_path / ".autoresearch"
    own_dir.mkdir()
    journal = Journal(tmp_path / "results.tsv", own_dir / "log.jsonl", "t")
    journal.mirror = own_dir / "mirror.jsonl"
    journal.load()
    start_mirror(journal)
    own = OwnFiles(tmp_path, "t", journal, "log.jsonl", lambda: None, [])
    journal.log_session_start({"branch": "autoresearch/t"})
    copy = own_dir / "elsewhere.jsonl"
    copy.write_bytes(journal.jsonl_path.read_bytes())
    journal.jsonl_path.unlink()
    os.symlink(copy, journal.jsonl_path)  # the swap, before the server records what it wrote
    own.journal_written()
    assert own.restore() == ["log.jsonl"]
    assert not journal.jsonl_path.is_symlink()
    journal.log_event("after", {"run_id": "r1"})  # the server writes on, into its own file
    assert "after" in journal.jsonl_path.read_text() and "after" not in copy.read_text()


def test_a_ref_lock_left_by_a_server_killed_just_before_the_restart_is_taken_over(tmp_path: Path) -> None:
    """A server killed while writing a ref leaves `<ref>.lock`; the next server, started a moment later, takes
    it over (the crash soak restarts within 50 ms). The lock is older than the new server, however quickly it
    starts: never refused for 'another git command'."""
    import subprocess
    import sys

    from .conftest import git, make_repo

    root = make_repo(tmp_path / "proj", {"a.txt": "a\n"})
    head = git(root, "rev-parse", "HEAD").strip()
    lock = root / ".git" / "refs" / "autoresearch" / "t" / "r1.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(head + "\n")  # the predecessor's half-done write, an instant ago
    code = (
        "import sys; from pathlib import Path; from mcp_autoresearch.vcs.repo import Repo; "
        "Repo(Path(sys.argv[1])).set_ref('refs/autoresearch/t/r1', sys.argv[2])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(root), head], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert (root / ".git" / "refs" / "autoresearch" / "t" / "r1").read_text().strip() == head
    assert not lock.exists()


def test_a_steps_saves_write_the_public_copy_once_at_its_end(ml_project: Path) -> None:
    """Within a step every save writes the server's record (what a restart trusts); the public copy is written
    once, when the step ends. A server stopped within a step leaves it behind: no 'written outside' note."""
    from mcp_autoresearch.records.state import SessionState, load_record

    workspace = Workspace(ml_project)
    workspace.start_session("pub")
    session = workspace.session
    path = state_path(ml_project, "pub")
    try:
        run_id = session.start_run("baseline")
        handle = session.run_handle(run_id)
        assert handle is not None and handle.wait(60)
        session.commit_or_reset(run_id)
        assert SessionState.model_validate_json(path.read_text()) == session.state  # each step ends written
        before = path.read_bytes()
        with session.public_copy.one_call(session.write_public):
            session.state.run_counter += 5
            session.save()
            assert path.read_bytes() == before  # left for the end of the step
            record, notes = load_record(ml_project, "pub")
            assert record is not None and record.state.run_counter == session.state.run_counter
            assert notes == []  # behind, as the server said: not an outside write
        assert SessionState.model_validate_json(path.read_text()).run_counter == session.state.run_counter
        path.write_bytes(before.replace(b'"run_counter"', b'"run_counter" ', 1))  # an outside write
        assert load_record(ml_project, "pub")[1] != []
    finally:
        workspace.shutdown()


def test_a_keep_cut_short_before_its_log_is_decided_the_same_after_a_restart(
    ml_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keep changes nothing in git that a second decision cannot redo, so it is not written ahead: the state
    on disk stays `finished` until the decision is logged, and a server that stopped in between decides the
    run again, the same, logged once."""
    workspace = Workspace(ml_project)
    workspace.start_session("keep")
    session = workspace.session
    for description in ("baseline", "LR to 0.3"):
        if description != "baseline":
            session.apply_edit([{"old_text": "LR = 0.5", "new_text": "LR = 0.3"}], None, None, None)
        run_id = session.start_run(description)
        handle = session.run_handle(run_id)
        assert handle is not None and handle.wait(60)
        if description == "baseline":
            session.commit_or_reset(run_id)
    candidate = session.state.pending.commit if session.state.pending else None

    def stopped(*args: object) -> None:
        raise KeyboardInterrupt("the server stopped here")

    monkeypatch.setattr(session.journal, "log_experiment_done", stopped)
    with pytest.raises(KeyboardInterrupt):
        session.commit_or_reset(run_id)
    on_disk = load_state(ml_project, "keep")
    assert on_disk is not None and on_disk.pending is not None and on_disk.pending.phase == "finished"
    monkeypatch.undo()
    workspace.shutdown()

    resumed = Workspace(ml_project)
    try:
        resumed.start_session()
        decision = resumed.session.commit_or_reset(run_id)
        assert decision.decision == "keep" and decision.commit == candidate
        assert resumed.session.repo.head_commit() == candidate
        rows = (ml_project / "results.tsv").read_text().splitlines()[1:]
        assert [row.split("\t")[3] for row in rows] == ["keep", "keep"]
    finally:
        resumed.shutdown()


def test_the_runs_in_flight_are_one_list_and_states_of_before_read_into_it() -> None:
    """The run in the user's tree and the slots' runs are one list, each saying where it runs; a state written
    when the run in the user's tree was kept apart (`pending`) reads into that list."""
    from mcp_autoresearch.records.state import SessionState

    single = SessionState.model_validate(STATE_0_1)
    assert [(p.run_id, p.placement) for p in single.inflight] == [("r1", "tree")]
    assert single.pending is single.inflight[0]
    assert "pending" not in single.model_dump()  # written as one list from now on
    run = {k: v for k, v in STATE_0_1["pending"].items() if k not in ("result", "decision")}
    slots = SessionState.model_validate(
        {
            **STATE_0_1,
            "pending": None,
            "inflight": [{**run, "run_id": "r2", "slot": 0}, {**run, "run_id": "r3"}],
        }
    )
    assert [(p.run_id, p.placement) for p in slots.inflight] == [("r2", "slots"), ("r3", "slots")]
    assert slots.pending is None
    again = SessionState.model_validate_json(slots.model_dump_json())
    assert again == slots and again.pending is None
    again.drop("r2")
    assert [p.run_id for p in again.inflight] == ["r3"]


def test_a_restart_rebuilds_results_tsv_from_the_jsonl_with_no_run_in_flight(ml_project: Path) -> None:
    """Recovery is one path for every placement: a single-run session with nothing in flight rebuilds a
    results.tsv whose earlier row was edited while the server was down, as a session with slots does."""
    workspace = Workspace(ml_project)
    workspace.start_session("tsv")
    session = workspace.session
    for description in ("baseline", "LR to 0.3"):
        if description != "baseline":
            session.apply_edit([{"old_text": "LR = 0.5", "new_text": "LR = 0.3"}], None, None, None)
        run_id = session.start_run(description)
        handle = session.run_handle(run_id)
        assert handle is not None and handle.wait(60)
        session.commit_or_reset(run_id)
    workspace.shutdown()
    tsv = ml_project / "results.tsv"
    logged = tsv.read_text()
    header, first, *rest = logged.splitlines(keepends=True)
    tsv.write_text(header + first.replace("\tkeep\t", "\tdiscard\t", 1) + "".join(rest))

    resumed = Workspace(ml_project)
    try:
        resumed.start_session()
        assert "results.tsv was rebuilt from the JSONL log" in resumed.session.recovered
        assert tsv.read_text() == logged
    finally:
        resumed.shutdown()


def test_a_runs_saves_write_the_public_copy_once_before_its_waiters_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's thread is a step of its own: under the sequential rule it saves several times (the best's
    content swapped in and out, then how the run ended), each writing the server's record; the public copy is
    written once, at its end, and before wait_experiment returns."""
    import threading

    from mcp_autoresearch.records import state as state_module
    from mcp_autoresearch.records.state import SessionState, load_record
    from mcp_autoresearch.session import session as session_module

    from .test_noise import project

    root = project(tmp_path)  # scripted noise: the candidate below re-measures the best
    writers: list[str] = []
    real = state_module.write_public

    def counted(where: Path, state: SessionState) -> str:
        writers.append(threading.current_thread().name)
        return real(where, state)

    monkeypatch.setattr(state_module, "write_public", counted)
    monkeypatch.setattr(session_module, "write_public", counted)
    workspace = Workspace(root)
    workspace.start_session("k")
    session = workspace.session
    try:
        baseline = session.start_run("baseline")
        assert isinstance(baseline, str)
        handle = session.run_handle(baseline)
        assert handle is not None and handle.wait(120)
        session.commit_or_reset(baseline)
        assert session.state.keep_rule == "sequential"
        session.apply_edit(None, "VALUES 0.5 0.52 0.48\n", None, None)
        writers.clear()
        run_id = session.start_run("much better")
        assert isinstance(run_id, str)
        handle = session.run_handle(run_id)
        assert handle is not None and handle.wait(120)
        public = SessionState.model_validate_json(state_path(root, "k").read_text())
        assert (
            public == session.state and public.inflight[0].phase == "finished"
        )  # written before the wait ends
        record, notes = load_record(root, "k")
        assert record is not None and record.state == session.state and notes == []
        assert session.state.inflight[0].result is not None
        assert session.state.inflight[0].result.best_values  # the best was re-measured: saves in the thread
        assert [w for w in writers if w.startswith("run-")] == [f"run-{run_id}"]
    finally:
        workspace.shutdown()


def test_an_atomic_write_over_a_left_temporary_file_or_link_never_follows_it(tmp_path: Path) -> None:
    """A server killed mid-write leaves its temporary file; a link may stand at that name too. The next write
    of the same thread replaces it (the link only), writes the file, and leaves no temporary file behind."""
    import os
    import threading

    from mcp_autoresearch.records.atomic import atomic_write, own_dir

    outside = tmp_path / "outside.txt"
    outside.write_text("the user's\n")
    folder = own_dir(tmp_path, "own")
    path = folder / "state.json"
    temporary = folder / f".state.json.{os.getpid()}.{threading.get_ident()}.tmp"
    temporary.symlink_to(outside)
    atomic_write(path, b"first\n", 0o644)
    assert path.read_bytes() == b"first\n" and outside.read_text() == "the user's\n"
    temporary.write_bytes(b"half a write")
    atomic_write(path, b"second\n", 0o644, sync=False)
    assert path.read_bytes() == b"second\n" and not temporary.exists() and not path.is_symlink()
    assert sorted(p.name for p in folder.iterdir()) == ["state.json"]


def test_the_servers_folders_are_made_real_and_a_planted_link_is_replaced_never_followed(
    tmp_path: Path,
) -> None:
    from mcp_autoresearch.errors import SessionError
    from mcp_autoresearch.records.atomic import own_dir

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    made = own_dir(tmp_path, ".autoresearch/sessions", replace_links=True)
    assert made.is_dir() and not made.is_symlink()
    assert own_dir(tmp_path, ".autoresearch/sessions", replace_links=True) == made  # found as it is
    made.rmdir()
    made.symlink_to(elsewhere)
    assert own_dir(tmp_path, ".autoresearch/sessions", replace_links=True) == made
    assert made.is_dir() and not made.is_symlink() and elsewhere.is_dir()  # the link only was removed
    made.rmdir()
    made.symlink_to(elsewhere)
    with pytest.raises(SessionError, match="not a real directory"):
        own_dir(tmp_path, ".autoresearch/sessions")  # a folder the server does not own alone: refused
    made.unlink()
    made.write_text("a file")
    with pytest.raises(SessionError, match="not a real directory"):
        own_dir(tmp_path, ".autoresearch/sessions", replace_links=True)


def test_a_record_written_outside_within_a_step_is_not_adopted_by_the_public_copy_at_its_end(
    ml_project: Path,
) -> None:
    """Writing the public copy at the end of a step takes that file's fingerprint only: the server's record,
    rewritten by someone else since the step's last save, is still found changed (and restored) by the guard."""
    from mcp_autoresearch.records.state import OwnRecord, record_path

    workspace = Workspace(ml_project)
    workspace.start_session("own")
    session = workspace.session
    record = record_path(ml_project, "own")
    try:
        session.save()  # outside a step: both written, the public copy's sha256 known
        with session.public_copy.one_call(session.write_public):
            session.state.run_counter += 3
            session.save()
            assert session.public_copy.owed  # left for the end of the step
            ours = record.read_bytes()
            record.write_bytes(ours.replace(b'"run_counter":3', b'"run_counter":7', 1))  # an outside write
        assert session.own.restore() != []  # found, though the public copy was written after it
        assert OwnRecord.model_validate_json(record.read_bytes()).state.run_counter == 3
        assert session.own.restore() == []  # restored: as the server wrote it
    finally:
        workspace.shutdown()


def test_detect_describes_the_project_when_the_sessions_record_is_unreadable(ml_project: Path) -> None:
    """A corrupt record of the checked-out session does not stop detection: the project is described, with a
    warning naming the file and what to do; opening the session is what refuses."""
    from mcp_autoresearch.records.state import record_path

    workspace = Workspace(ml_project)
    workspace.start_session("broken")
    workspace.shutdown()
    record_path(ml_project, "broken").write_bytes(b"{not json")
    fresh = Workspace(ml_project)
    try:
        info = fresh.detect()
        assert info.target_file == "train.py" and info.ready
        assert any("broken.own.json" in w and "move it aside" in w for w in info.warnings), info.warnings
        with pytest.raises(SessionError, match="unreadable"):
            fresh.start_session("broken")
    finally:
        fresh.shutdown()
