"""Review 39: a run's first command started ahead (`Experiment.start_ahead`), held before its exec while the
server records the run (`sandbox/start_gate.py`, `command.hold_for_go`), its time counted from the word to go; a
failed start undone (`Runs._undo_failed_start`); the launcher's answers read late and matched by id. Real git
repositories, real servers over the real MCP client, real launchers, keepers and processes. Three holes were found in
the fallbacks (the launcher gone, or starting nothing, or silent), each fixed in `CommandStart`; the others guard
what held."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import psutil
import pytest

from mcp_autoresearch.sandbox.launcher import Launcher
from mcp_autoresearch.sandbox.policy import probe_isolation
from mcp_autoresearch.sandbox.process_run import ProcessRun
from mcp_autoresearch.vcs import ref_files

from .conftest import git, make_repo
from .helpers.needs import require
from .helpers.spares import processes_with

ISOLATION = probe_isolation("auto")
require(ISOLATION.confined, "CI must confine runs", f"Landlock is unavailable here: {ISOLATION.reason}")


def _spec(tmp_path: Path) -> dict[str, object]:
    return {"landlock": True, "view": ISOLATION.namespaces, "write": [str(tmp_path / "w")]}


def _asking(launcher: Launcher, spec: object):
    """A `ProcessRun.launch` through `launcher` (as `StageConfinement.launch` is), `spec` the keeper's."""

    def launch(argv, cwd, env, out_fd, tmpdir, err_fd, gate_fd):  # type: ignore[no-untyped-def]
        return launcher.ask(argv, cwd, env, out_fd, spec, err_fd, gate_fd)  # type: ignore[arg-type]

    return launch


def _own_keeper(started: list[list[str]]):
    """The `wrapper` (the keeper the server starts itself when the launcher cannot): a real argv prefix; each
    start is noted in `started`."""

    def wrapper(argv: list[str], tmpdir: str) -> list[str]:
        started.append(argv)
        return ["/usr/bin/env", "STARTED_BY=server", *argv]

    return wrapper


# --- 1. The synchronous fallback: a command started ahead runs at once, before the word ----------------------


def test_a_run_started_ahead_runs_nothing_before_the_word_when_the_launcher_is_gone(tmp_path: Path) -> None:
    """`Experiment.start_ahead` calls `ProcessRun.start` before the candidate is committed and recorded. The
    launcher died (here: killed and reaped, so the request's send fails with EPIPE): `begin` falls back to the
    server's own keeper at once, not held, and the candidate's command runs while the server has not yet
    committed it nor written `running` (a commit refused then, or the server killed then, leaves a run that ran
    and is recorded nowhere). `process()` already handles a launcher that started nothing by starting the
    command when the run is let go: the synchronous failure must wait for it too."""
    (tmp_path / "w").mkdir()
    token = uuid.uuid4().hex
    launcher = Launcher()
    launcher.process.kill()
    launcher.process.wait()
    started: list[list[str]] = []
    process = ProcessRun(
        command=f"echo ran > {tmp_path / 'w' / 'ran'} # {token}",
        cwd=tmp_path,
        log_path=tmp_path / "logs" / "r2.log",
        timeout_s=60,
        launch=_asking(launcher, _spec(tmp_path)),
        wrapper=_own_keeper(started),
    )
    try:
        process.start()  # the server now commits and records the run
        for proc in processes_with(token):  # a command started meanwhile: its end awaited (it ends by itself)
            try:
                proc.wait()
            except psutil.Error:
                pass
        ran_early = (tmp_path / "w" / "ran").exists()
    finally:
        process.cancel("the run was not started")  # the commit failed: `drop_ahead`
        done = process.run()
        launcher.sock.close()
    assert done.status == "cancelled", done
    assert not ran_early, f"the command ran before the word to go (started by {started})"
    assert not (tmp_path / "w" / "ran").exists(), "a dropped run's command ran"


# --- 2. A dropped run whose launcher started nothing -----------------------------------------------------------


def test_a_dropped_run_whose_launcher_started_nothing_is_never_started(tmp_path: Path) -> None:
    """`Runs.start_run` fails after `start_ahead` (the commit refused): `drop_ahead` cancels the process and
    calls `run` to end it at its gate. When the launcher's answer (read only now) says it started nothing (in
    life: no process left in its cgroup; here: a request it refuses), `process()` starts the command with the
    server's own keeper, not held, although the run was cancelled: the dropped candidate is started, and only
    the supervision's first look kills it (how far it got is a race). A cancelled run must start nothing."""
    (tmp_path / "w").mkdir()
    started: list[list[str]] = []
    process = ProcessRun(
        command=f"echo ran > {tmp_path / 'w' / 'ran'}",
        cwd=tmp_path,
        log_path=tmp_path / "logs" / "r2.log",
        timeout_s=60,
        launch=_asking(Launcher(), "not a keeper's spec"),
        wrapper=_own_keeper(started),
    )
    process.start()
    process.cancel("the run was not started")
    done = process.run()
    assert done.status == "cancelled", done
    assert started == [], f"the dropped run's command was started by the server: {started}"


# --- 3. A silent launcher: the run timed from its request ------------------------------------------------------


def test_a_run_whose_launcher_is_silent_is_timed_from_its_own_start(tmp_path: Path) -> None:
    """The change's rule: a run's duration and its timeout count from the word to go, its setup left out. A
    launcher that never answers (stopped: an unconfined run of the same user can SIGSTOP it) makes `process()`
    wait 10 s, then start the command here: its deadline is still `start`'s time plus the timeout, so a command
    that prints and exits at once is reported a `timeout` (timeout 5 s < the 10 s wait), and with a longer
    timeout its wall_time_s holds the 10 s."""
    (tmp_path / "w").mkdir()
    launcher = Launcher()
    os.kill(launcher.process.pid, signal.SIGSTOP)
    try:
        process = ProcessRun(
            command="echo 'score: 1'",
            cwd=tmp_path,
            log_path=tmp_path / "logs" / "r2.log",
            timeout_s=5,
            launch=_asking(launcher, _spec(tmp_path)),
            wrapper=_own_keeper([]),
        )
        done = process.run()
    finally:
        os.kill(launcher.process.pid, signal.SIGCONT)
        launcher.sock.close()
    assert (done.status, done.exit_code) == ("exited", 0), done
    assert (tmp_path / "logs" / "r2.log").read_text() == "score: 1\n"


# --- 4. What held ----------------------------------------------------------------------------------------------

PARAMS = "K=1000\n"
HEAD_CONFIG = (
    'target_file = "params.sh"\n'
    'run_command = \'. ./params.sh; echo "score: $K"; echo "head=$(git rev-parse HEAD)"\'\n'
    'metric_name = "score"\n'
)


@pytest.mark.anyio
async def test_a_run_started_ahead_runs_on_its_own_commit_and_a_failed_start_leaves_branch_and_edit(
    tmp_path: Path, agent_for, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first command is started before the candidate is committed, its view and Landlock made then: when it
    runs, HEAD is already the run's commit (the word comes after the commit and the record). A start refused
    after the record (the session branch's ref locked) is undone: the branch stays at the best, the agent's edit
    stays in the work tree, the call names the lock, and the next run is measured on the edit."""
    root = make_repo(tmp_path / "proj", {"params.sh": PARAMS, "autoresearch.toml": HEAD_CONFIG})
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="ahead")
        _, decision = await agent.experiment("baseline")
        assert decision["decision"] == "keep", decision
        best = git(root, "rev-parse", "autoresearch/ahead").strip()
        await agent.edit("K=1000", "K=998")
        lock = root / ".git" / "refs" / "heads" / "autoresearch" / "ahead.lock"
        monkeypatch.setattr(ref_files, "LOCK_WAIT_S", 0.3)  # the lock is refused sooner: it stays meanwhile
        lock.write_text("")
        refused = await agent.refused("run_experiment", description="K=998")
        assert "ahead.lock" in refused, refused
        lock.unlink()
        assert git(root, "rev-parse", "autoresearch/ahead").strip() == best
        assert (root / "params.sh").read_text() == "K=998\n"
        assert "K=998" not in git(root, "show", f"{best}:params.sh")
        run, decision = await agent.experiment("K=998")
        assert run["status"] == "ok" and run["value"] == 998.0, run
        assert f"head={run['commit']}" in Path(run["log_path"]).read_text(), "the run ran before its commit"
        assert decision["decision"] == "keep", decision
