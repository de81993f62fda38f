"""The research tree across restarts: a server stopped (or killed with SIGKILL) at every phase of a branched
run comes back with the tree consistent with git, the TSV and the JSONL: the session branch on the best, the
work tree's target on the next parent, every node reachable, every row logged once."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from mcp_autoresearch.records.state import load_state
from mcp_autoresearch.session.session import Session
from mcp_autoresearch.session.workspace import Workspace

from .conftest import Agent, decided_baseline, git, make_repo, served_here, stdio_params
from .test_tree_engine import TREE_PY

OVERRIDES = {"target_file": "train.py", "run_command": "python train.py"}


class Stopped(BaseException):
    """The server stops here (as a kill would leave the files: every write before it is on disk)."""


def stop(*_args: object, **_kwargs: object) -> None:
    raise Stopped("the server stopped here")


@pytest.fixture
def knobs(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "knobs", {"train.py": TREE_PY, "prepare.py": "# fixed\n"})


def run(session: Session, old: str, new: str, description: str, decide: bool = True) -> str:
    session.apply_edit([{"old_text": old, "new_text": new}], None, None, None)
    run_id = session.start_run(description)
    assert isinstance(run_id, str)
    handle = session.run_handle(run_id)
    assert handle is not None and handle.wait(120)
    if decide:
        session.commit_or_reset(run_id)
    return run_id


def a_small_tree(root: Path) -> Workspace:
    """r1 baseline 10, r2 A=3 (8), r3 A=1 (6, the best); then branched to r2."""
    workspace = Workspace(root, OVERRIDES)
    session = decided_baseline(workspace, "rc")
    run(session, "A = 5", "A = 3", "A to 3")
    run(session, "A = 3", "A = 1", "A to 1")
    session.branch_from("r2")
    return workspace


def consistent(root: Path, tag: str = "rc", edit_kept: bool = False) -> dict[str, Any]:
    """Every invariant of the tree after a restart; returns the state for more checks."""
    state = load_state(root, tag)
    assert state is not None and not state.inflight
    assert state.best is not None
    assert git(root, "rev-parse", f"autoresearch/{tag}").strip() == state.best.commit  # the branch: the best
    assert git(root, "rev-parse", "HEAD").strip() == state.best.commit
    changed = git(root, "status", "--porcelain", "-uno").split()
    assert changed in ([], ["M", "train.py"])  # only the target may differ from the best
    parent_commit = state.next_parent_commit or state.best.commit
    if not edit_kept:  # the next parent's target (else the agent's edit, not yet run, on it)
        assert (root / "train.py").read_bytes() == git_bytes(root, parent_commit)
    lines = (root / ".autoresearch" / "autoresearch.jsonl").read_text().splitlines()
    done = [json.loads(x)["details"] for x in lines if '"experiment_done"' in x]
    ids = [d["run_id"] for d in done]
    assert len(ids) == len(set(ids))  # logged once
    tsv = (root / "results.tsv").read_text().splitlines()[1:]
    assert len(tsv) == len(done)
    for details in done:  # every node reachable in git
        ref = f"refs/autoresearch/{tag}/{details['run_id']}"
        has_ref = git(root, "for-each-ref", ref).strip() != ""
        assert has_ref or git(root, "merge-base", "--is-ancestor", details["full_commit"], "HEAD") == ""
    best_rows = [d["run_id"] for d in done if d["best"]]
    assert best_rows[-1] == state.best.run_id
    return {"state": state, "done": {d["run_id"]: d for d in done}}


def git_bytes(root: Path, commit: str) -> bytes:
    import subprocess

    return subprocess.run(
        ["git", "show", f"{commit}:train.py"], cwd=root, capture_output=True, check=True
    ).stdout


def resume(root: Path) -> Workspace:
    workspace = Workspace(root, OVERRIDES)
    workspace.start_session("rc")
    return workspace


# The edits after branching to r2 (value 8; the best r3 is 6): a node kept beside the best, a new best, a discard.
CASES = {
    "kept node": ("B = 5", "B = 4", "keep", False),  # 7
    "new best": ("B = 5", "B = 0", "keep", True),  # 3
    "discard": ("B = 5", "B = 9", "discard", False),  # 12
}


def _stop_in_journal(session: Session) -> Callable[[], Any]:
    return lambda: setattr(session.journal, "log_experiment_done", stop)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the stop
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("where", ["before the log", "inside git", "starting", "running"])
def test_a_branched_run_stopped_at_every_phase_leaves_the_tree_consistent(
    knobs: Path, monkeypatch: pytest.MonkeyPatch, case: str, where: str
) -> None:
    old, new, decision, becomes_best = CASES[case]
    workspace = a_small_tree(knobs)
    session = workspace.session
    try:
        if where == "starting":
            session.apply_edit([{"old_text": old, "new_text": new}], None, None, None)
            monkeypatch.setattr(session.journal, "log_experiment_start", stop)
            with pytest.raises(Stopped):
                session.start_run("stopped while starting")
        elif where == "running":
            monkeypatch.setattr(session.runs, "record", stop)  # the run's thread dies before it records
            session.apply_edit([{"old_text": old, "new_text": new}], None, None, None)
            run_id = session.start_run("stopped while running")
            handle = session.run_handle(run_id)  # type: ignore[arg-type]
            assert handle is not None and handle.wait(120)
            on_disk = load_state(knobs, "rc")
            assert on_disk is not None and on_disk.pending is not None and on_disk.pending.phase == "running"
        else:
            run_id = run(session, old, new, "stopped while decided", decide=False)
            target = session.journal if where == "before the log" else session.repo
            name = "log_experiment_done" if where == "before the log" else "unstage"
            if where == "inside git" and becomes_best:
                name = "sync_index"
            monkeypatch.setattr(target, name, stop)
            with pytest.raises(Stopped):
                session.commit_or_reset(run_id)
        monkeypatch.undo()
    finally:
        with contextlib.suppress(Exception):
            workspace.shutdown()
    resumed = resume(knobs)
    try:
        session = resumed.session
        pending = session.state.pending
        if pending is not None:  # finished, not written ahead (a keep of the best): decided again
            session.commit_or_reset(pending.run_id)
        found = consistent(knobs, edit_kept=where == "starting")
        state, done = found["state"], found["done"]
        if where == "starting":
            assert "r4" not in done and new in (knobs / "train.py").read_text()  # the edit is kept
            assert state.next_parent == "r2"
        elif where == "running":
            assert done["r4"]["run_status"] == "interrupted" and done["r4"]["parent"] == "r2"
            assert state.next_parent == "r2" and state.best.run_id == "r3"
        else:
            row = done["r4"]
            assert (row["status"], row["parent"], row["best"]) == (decision, "r2", becomes_best)
            assert state.best.run_id == ("r4" if becomes_best else "r3")
            expected_next = None if becomes_best else ("r4" if decision == "keep" else "r2")
            assert state.next_parent == expected_next
    finally:
        resumed.shutdown()


def server_pid(root: Path) -> int:
    return int(json.loads((root / ".autoresearch" / "server.lock").read_text())["pid"])


@pytest.mark.anyio
async def test_a_server_killed_with_a_branched_run_in_flight_resumes_consistent(knobs: Path) -> None:
    root = knobs
    (root.parent / "rules.toml").write_text('target_file = "train.py"\nrun_command = "python train.py"\n')
    extra = ("--config", str(root.parent / "rules.toml"))
    with anyio.fail_after(600):  # a guard against a hang, never reached by a server that answers
        async with Client(stdio_params(root, *extra)) as client:
            agent = Agent(client)
            await agent.ok("start_session", tag="rc")
            await agent.experiment("baseline")
            await agent.edit("A = 5", "A = 3")
            await agent.experiment("A to 3")
            await agent.edit("A = 3", "A = 1")
            await agent.experiment("A to 1")
            await agent.ok("branch_from", run_id="r2")
            await agent.edit("B = 5", "B = 4\nprint('waiting', flush=True)\nimport time; time.sleep(300)")
            started = await agent.ok("run_experiment", description="killed", wait_s=0)
            seen = await agent.ok("wait_experiment", run_id=started["run_id"], wait_s=1)
            while "waiting" not in (seen.get("log_tail") or ""):
                seen = await agent.ok("wait_experiment", run_id=started["run_id"], wait_s=1)
            os.kill(server_pid(root), signal.SIGKILL)
            with contextlib.suppress(BaseException):
                await agent.ok("query_results")
        # the next server, with the same rules: what it finds on disk is the subject
        async with served_here(root, {"target_file": "train.py", "run_command": "python train.py"}) as agent:
            resumed = await agent.ok("start_session", tag="rc")
            assert resumed["resumed"] is True
            results = await agent.ok("query_results")
            rows = {r["run_id"]: r for r in results["rows"]}
            assert rows["r4"]["run_status"] == "interrupted" and rows["r4"]["parent"] == "r2"
            assert results["best"]["run_id"] == "r3"
            found = consistent(root)
            assert found["state"].next_parent == "r2"
            await agent.edit("B = 5", "B = 4")  # the branch goes on from r2 after the restart
            _run, decision = await agent.experiment("B to 4 after the restart")
            assert (decision["decision"], decision["parent"], decision["best"]) == ("keep", "r2", False)
