"""A server in a PID namespace that still sees the host's /proc (`unshare -p`, `bwrap --unshare-pid` without
`--proc`, as a sandbox around an agent may start it): /proc numbers processes as the host does, `os.getpid()` and
`Popen.pid` as the namespace does. Who holds an HTTP connection (`adapters/peers.py`) is still told, and a run is
refused before it starts (`sandbox/process_run.py`): its processes could not be told from others."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from .helpers.needs import require

ROOT = Path(__file__).resolve().parent.parent

# The server's side: a listening socket; a connection from outside (the agent) checked, then one its own child
# holds (a run's process).
SERVER = """
import os, socket, sys
from mcp_autoresearch.adapters import peers
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(2)
port = server.getsockname()[1]
print("PORT", port, flush=True)
conn, client = server.accept()
print("OUTSIDE", peers.run_holding(client, ("127.0.0.1", port)) is None, flush=True)
sys.stdin.readline()
ready_r, ready_w = os.pipe()
done_r, done_w = os.pipe()
child = os.fork()
if child == 0:
    held = socket.create_connection(("127.0.0.1", port))
    os.write(ready_w, b"x")
    os.read(done_r, 1)
    os._exit(0)
os.read(ready_r, 1)
conn, client = server.accept()
print("RUN", "runs" in (peers.run_holding(client, ("127.0.0.1", port)) or ""), flush=True)
os.write(done_w, b"x")
os.waitpid(child, 0)
"""


def _check(prefix: list[str]) -> list[str]:
    server = subprocess.Popen(
        [*prefix, sys.executable, "-c", SERVER],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None and server.stdin is not None
    try:
        first = server.stdout.readline().split()
        assert first[:1] == ["PORT"], first + [server.stderr.read() if server.stderr else ""]
        with socket.create_connection(("127.0.0.1", int(first[1]))):
            outside = server.stdout.readline().split()
        server.stdin.write("go\n")
        server.stdin.flush()
        run = server.stdout.readline().split()
        assert server.wait(120) == 0, server.stderr.read() if server.stderr else ""
        return outside + run
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_in_a_pid_namespace_seeing_the_hosts_proc_a_runs_connection_is_still_told_from_the_agents() -> None:
    """The server as pid 1 of its namespace and as another pid there: the agent's connection (a process outside)
    is let through, one held by the server's own child (a run) is refused, as without the namespace. Failed
    before: as pid 1 the agent's connection was refused (every chain of parents in /proc ends at the host's pid
    1, taken for the server); as pid 2 the run's was let through (its parents never reach a pid 2)."""
    require(os.geteuid() == 0, "CI runs as root", "a PID namespace needs root here")
    require(shutil.which("unshare"), "CI installs util-linux (unshare)", "unshare is needed")
    assert _check([]) == ["OUTSIDE", "True", "RUN", "True"]
    assert _check(["unshare", "--pid", "--fork"]) == ["OUTSIDE", "True", "RUN", "True"]
    as_second = ["unshare", "--pid", "--fork", "/bin/sh", "-c", '"$0" "$@"; exit $?']
    assert _check(as_second) == ["OUTSIDE", "True", "RUN", "True"]


PROCESS_RUN = """
import os, sys
from pathlib import Path
from mcp_autoresearch.sandbox.process_run import ProcessRun
folder = Path(sys.argv[1])
run = ProcessRun(command="echo ran > ran", cwd=folder, timeout_s=60, log_path=folder / "run.log")
result = run.run()
print(result.status, "|", result.error)
"""


def test_in_a_pid_namespace_seeing_the_hosts_proc_no_run_starts_and_the_log_says_why(tmp_path: Path) -> None:
    """The run's pid there names another process of the machine (a kernel thread, another user's program): the
    server would watch it as the run's and, at the run's end, end it and its descendants. Nothing starts; the
    result and the run's log say why and how to start the server. Failed before: the run started, its tree read
    (and ended) through the wrong pids."""
    require(os.geteuid() == 0, "CI runs as root", "a PID namespace needs root here")
    require(shutil.which("unshare"), "CI installs util-linux (unshare)", "unshare is needed")
    done = subprocess.run(
        ["unshare", "--pid", "--fork", sys.executable, "-c", PROCESS_RUN, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    status, why = done.stdout.strip().split(" | ", 1)
    assert status == "failed_to_start" and "/proc of its own" in why, done.stdout
    assert not (tmp_path / "ran").exists()
    assert "/proc of its own" in (tmp_path / "run.log").read_text()
