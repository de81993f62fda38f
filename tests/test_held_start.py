"""A command held before its exec (`sandbox/start_gate.py`, `command.hold_for_go`): a run's first command is
started while the server still records the run, and runs only once the record says "running" and the server
gives the word. Held, it runs nothing: not when the server closes the gate, not when the server dies, not when
the run's start fails after its command was started. Real launchers, keepers, views, sessions and processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from mcp_autoresearch.sandbox.launcher import Launched, Launcher
from mcp_autoresearch.sandbox.policy import probe_isolation
from mcp_autoresearch.sandbox.process_run import ProcessRun
from mcp_autoresearch.sandbox.start_gate import StartGate
from mcp_autoresearch.vcs import ref_files

from .conftest import make_repo
from .helpers.needs import require

ISOLATION = probe_isolation("auto")
require(ISOLATION.confined, "CI must confine runs", f"Landlock is unavailable here: {ISOLATION.reason}")

# The standby path (a spare keeper's command process, its view made ahead) and the keeper's own fork.
VIEWS = [pytest.param(True, id="view"), pytest.param(False, id="no-view")]


def _held(launcher: Launcher, tmp_path: Path, script: str, view: bool) -> tuple[Launched, StartGate, int]:
    """`script` started through the launcher, confined, held at its gate; returns it, the gate and the reading
    end of its output's pipe."""
    if view and not ISOLATION.namespaces:
        pytest.fail(f"CI must give runs their private view: {ISOLATION.reason}")
    read_fd, write_fd = os.pipe()
    gate = StartGate()
    try:
        spec = {"landlock": True, "view": view, "write": [str(tmp_path / "w")]}
        launched = launcher.spawn(
            ["/bin/sh", "-c", script], tmp_path, dict(os.environ), write_fd, spec, None, gate.their_fd()
        )  # type: ignore[arg-type]
    finally:
        os.close(write_fd)
    gate.handed()
    return launched, gate, read_fd


def _script(tmp_path: Path) -> str:
    (tmp_path / "w").mkdir(exist_ok=True)
    return f"echo ran > {tmp_path / 'w' / 'ran'}; echo output"


@pytest.mark.parametrize("view", VIEWS)
def test_a_held_command_runs_only_after_the_word_to_go(tmp_path: Path, view: bool) -> None:
    """Ready (its keeper, view and Landlock made), the command still has not run; the word lets it run."""
    launcher = Launcher()
    try:
        launched, gate, read_fd = _held(launcher, tmp_path, _script(tmp_path), view)
        assert gate.wait_ready(time.monotonic() + 60, _never())
        assert not (tmp_path / "w" / "ran").exists(), "the command ran before the word to go"
        gate.go()
        with os.fdopen(read_fd, "rb") as pipe:
            output = pipe.read().decode()
        assert launched.wait(60) == 0
        assert output == "output\n"
        assert (tmp_path / "w" / "ran").read_text() == "ran\n"
    finally:
        launcher.sock.close()


@pytest.mark.parametrize("view", VIEWS)
def test_a_held_command_whose_gate_closes_runs_nothing(tmp_path: Path, view: bool) -> None:
    """The server drops a held run (its record failed): the command ends at its gate, nothing run, and says
    nothing on the run's output."""
    launcher = Launcher()
    try:
        launched, gate, read_fd = _held(launcher, tmp_path, _script(tmp_path), view)
        assert gate.wait_ready(time.monotonic() + 60, _never())
        gate.close()
        with os.fdopen(read_fd, "rb") as pipe:
            output = pipe.read().decode()
        assert launched.wait(60) == 125
        assert output == ""
        assert not (tmp_path / "w" / "ran").exists()
    finally:
        launcher.sock.close()


HOLD_AND_DIE = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from mcp_autoresearch.sandbox.launcher import Launcher
    from mcp_autoresearch.sandbox.start_gate import StartGate
    import threading
    tmp, view = Path(sys.argv[1]), sys.argv[2] == "1"
    launcher = Launcher()
    read_fd, write_fd = os.pipe()
    gate = StartGate()
    spec = {"landlock": True, "view": view, "write": [str(tmp / "w")]}
    launched = launcher.spawn(["/bin/sh", "-c", f"echo ran > {tmp / 'w' / 'ran'}"], tmp, dict(os.environ),
                              write_fd, spec, None, gate.their_fd())
    gate.handed()
    assert gate.wait_ready(time.monotonic() + 60, threading.Event())
    print(launched.pid, flush=True)
    os._exit(0)  # the server dies with the run held: its end of the gate closes with it
    """
)


@pytest.mark.parametrize("view", VIEWS)
def test_a_run_held_when_the_server_dies_runs_nothing(tmp_path: Path, view: bool) -> None:
    """The server dies between a run's start and its record: the held command never runs (the server's end of
    the gate is gone), its keeper leaves."""
    (tmp_path / "w").mkdir()
    done = subprocess.run(
        [sys.executable, "-c", HOLD_AND_DIE, str(tmp_path), "1" if view else "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    keeper = int(done.stdout.split()[0])
    try:
        psutil.Process(keeper).wait(60)
    except psutil.NoSuchProcess:
        pass
    assert not (tmp_path / "w" / "ran").exists(), "a run held when the server died ran all the same"


def _never() -> threading.Event:
    return threading.Event()


PARAMS = "K=1000\n"


@pytest.mark.anyio
async def test_a_run_whose_start_fails_after_its_command_started_runs_nothing(
    tmp_path: Path, agent_for, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's first command is started before the candidate is committed; the commit fails (the session
    branch's ref is locked by another git command): the call says why, the command started ahead never runs,
    and the next run goes on."""
    root = make_repo(
        tmp_path / "proj",
        {
            "params.sh": PARAMS,
            "autoresearch.toml": 'target_file = "params.sh"\n'
            'run_command = \'. ./params.sh; echo "score: $K"; echo "ran-$K"\'\nmetric_name = "score"\n',
        },
    )
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="held")
        run, decision = await agent.experiment("baseline")
        assert run["status"] == "ok" and decision["decision"] == "keep", run
        await agent.edit("K=1000", "K=999")
        lock = root / ".git" / "refs" / "heads" / "autoresearch" / "held.lock"
        monkeypatch.setattr(ref_files, "LOCK_WAIT_S", 0.3)  # the lock is refused sooner: it stays meanwhile
        lock.write_text("")  # newer than the server: another git command's, not a stale one
        refused = await agent.refused("run_experiment", description="K=999")
        assert "held.lock" in refused, refused
        logs = root / ".autoresearch" / "runs" / "held"
        for log in logs.rglob("*"):
            if log.is_file():
                assert "ran-999" not in log.read_text(errors="replace"), f"{log} shows the dropped run ran"
        lock.unlink()
        run, decision = await agent.experiment("K=999")
        assert run["status"] == "ok" and run["value"] == 999.0, run
        assert decision["decision"] == "keep", decision


def _asking(launcher: Launcher, spec: object):
    """A `ProcessRun.launch` through `launcher`, with `spec` as the keeper's."""

    def launch(argv, cwd, env, out_fd, tmpdir, err_fd, gate_fd):  # type: ignore[no-untyped-def]
        return launcher.ask(argv, cwd, env, out_fd, spec, err_fd, gate_fd)  # type: ignore[arg-type]

    return launch


def test_a_run_started_then_cancelled_before_it_runs_runs_nothing(tmp_path: Path) -> None:
    """`start` (the server records the run meanwhile), then a cancel: `run` ends it at its gate, unrun."""
    launcher = Launcher()
    try:
        spec = {"landlock": True, "view": ISOLATION.namespaces, "write": [str(tmp_path / "w")]}
        process = ProcessRun(
            command=_script(tmp_path),
            cwd=tmp_path,
            log_path=tmp_path / "logs" / "r1.log",
            timeout_s=60,
            launch=_asking(launcher, spec),
        )
        process.start()
        process.cancel("the run was not started")
        done = process.run()
        assert done.status == "cancelled", done
        assert not (tmp_path / "w" / "ran").exists()
        assert (tmp_path / "logs" / "r1.log").read_text() == ""
    finally:
        launcher.sock.close()


def test_a_launcher_that_starts_nothing_has_the_command_started_here(tmp_path: Path) -> None:
    """The launcher's answer, read when the run is let go, says it started nothing (here: a request it cannot
    read; in life, no process left in its cgroup): the command is started by the server itself, under the
    keeper it starts directly (the `wrapper`), and runs once."""
    launcher = Launcher()
    try:
        process = ProcessRun(
            command="echo started-$HERE",
            cwd=tmp_path,
            log_path=tmp_path / "logs" / "r1.log",
            timeout_s=60,
            launch=_asking(launcher, "not a keeper's spec"),
            wrapper=lambda argv, tmpdir: ["/usr/bin/env", "HERE=here", *argv],
        )
        done = process.run()
        assert (done.status, done.exit_code) == ("exited", 0), done
        assert (tmp_path / "logs" / "r1.log").read_text() == "started-here\n"
    finally:
        launcher.sock.close()
