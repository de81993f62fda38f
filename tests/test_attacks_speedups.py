"""Attacks on the shortcuts that cut the server's overhead per experiment: the launcher's spare keeper, the keeper's
early report, and the check of who holds an HTTP connection, skipped when no run can exist. A run (here one that
is not confined: `isolation = "off"`, where it has all of its user's rights) tries to pass for the server's own
processes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from mcp_autoresearch.adapters import peers
from mcp_autoresearch.sandbox.launcher import SERVER_SCRIPT, launcher

from .helpers.attacks import _log_text

# A run whose process outlives it: the command kills its keeper (its processes re-parent to the server, a
# subreaper), then starts a daemon in a session of its own, then holds on without the run's marker in its
# environment (re-executed with an empty one; the mark of no new privileges stays) until it is killed, which is
# when the daemon re-parents to the server in turn. Both ignore SIGTERM.
OUTLIVES_THE_RUN = """
import os, signal, subprocess, sys
def parent(pid):
    return int(open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[1])
def cmdline(pid):
    return open(f'/proc/{pid}/cmdline', 'rb').read()
keeper = os.getppid()
while b'forkserver.py' not in cmdline(keeper):
    keeper = parent(keeper)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.kill(keeper, signal.SIGKILL)
daemon = subprocess.Popen([sys.executable, '-c', 'import time\\nwhile True: time.sleep(1)'], start_new_session=True)
open('DAEMON_PID', 'w').write(str(daemon.pid))
os.execve(sys.executable, [sys.executable, '-c', 'import time\\nwhile True: time.sleep(1)'], {})
"""


@pytest.mark.anyio
async def test_a_daemon_started_after_its_keeper_was_killed_does_not_outlive_the_run(
    ml_project: Path, agent_for, tmp_path: Path
) -> None:
    """A process of the run re-parented to the server is ended with its children, whatever its environment
    says: all of them carry the mark of no new privileges."""
    pid_file = tmp_path / "daemon.pid"
    async with agent_for(ml_project, {"isolation": "off"}) as agent:
        await agent.ok("start_session", tag="outlive")
        await agent.experiment("baseline")
        await agent.edit("LR = 0.5", "LR = 0.4\n" + OUTLIVES_THE_RUN.replace("DAEMON_PID", str(pid_file)))
        run = await agent.ok("run_experiment", description="a daemon that outlives the run")
        run = await agent.until_done(run["run_id"])
    try:
        daemon = psutil.Process(int(pid_file.read_text()))
    except psutil.NoSuchProcess:
        return  # ended (and reaped) with the run
    try:
        assert daemon.status() == psutil.STATUS_ZOMBIE, _log_text(run)
    finally:
        daemon.kill()


def test_a_process_named_like_the_launcher_does_not_pass_for_it() -> None:
    """The check of who holds an HTTP connection is skipped while this server's children are its launcher
    (whose keepers have no child); a process of a run that re-parented to the server (a subreaper) can take the
    launcher's script name, and must not pass for it."""
    launcher()  # this process's own, started if needed
    impostor = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()", str(SERVER_SCRIPT)], stdin=subprocess.PIPE
    )
    try:
        assert peers._runs_may_exist()
    finally:
        assert impostor.stdin is not None
        impostor.stdin.close()
        impostor.wait()


# A run that stops the launcher's spare keeper (a child of its keeper's parent, waiting for the next request).
STOPS_THE_SPARE = """
import os, signal, time
def parent(pid):
    return int(open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[1])
def cmdline(pid):
    return open(f'/proc/{pid}/cmdline', 'rb').read()
def children(pid):
    found = set()
    for task in os.listdir(f'/proc/{pid}/task'):
        found.update(int(child) for child in open(f'/proc/{pid}/task/{task}/children').read().split())
    return found
keeper = os.getppid()
while b'forkserver.py' not in cmdline(keeper):
    keeper = parent(keeper)
while not (spares := children(parent(keeper)) - {keeper}):
    time.sleep(0.01)  # the launcher forks it once it has been idle a moment
for spare in spares:
    os.kill(spare, signal.SIGSTOP)
print('stopped', spares)
"""


@pytest.mark.anyio
async def test_a_spare_keeper_stopped_by_a_run_never_holds_up_the_next_run(
    ml_project: Path, agent_for
) -> None:
    """A stopped (or traced) spare is not handed the next command: it would never start it, and an honest
    candidate would be measured as a timeout."""
    async with agent_for(ml_project, {"isolation": "off", "timeout": 60}) as agent:
        await agent.ok("start_session", tag="stop")
        await agent.experiment("baseline")
        await agent.edit("LR = 0.5", "LR = 0.9\n" + STOPS_THE_SPARE)
        run, _ = await agent.experiment("stops the spare")
        assert "stopped {" in _log_text(run), _log_text(run)
        await agent.edit("LR = 0.5", "LR = 0.4")
        run, decision = await agent.experiment("honest")
        assert run["status"] == "ok" and decision["decision"] == "keep", run
