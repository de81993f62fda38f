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
