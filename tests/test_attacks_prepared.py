"""Attacks on the spare keepers' head start and on the quick walk of a run's processes (`descendants`, read
from each process's children files instead of psutil's scan of every process): a run's process tries to hide
what it started, so that it outlives the run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from mcp_autoresearch.sandbox import confine
from mcp_autoresearch.sandbox.forkserver import SPARES
from mcp_autoresearch.sandbox.launcher import Launcher
from mcp_autoresearch.sandbox.processes import descendants

from .helpers.spares import is_spare
from .test_launcher import ISOLATION, VIEW, _prepared_like, _run_spec, _spares, _until

# A run's process that starts a daemon, then keeps starting and ending threads: a walk that lists its threads
# and then opens each one's children file finds one of them gone. The parent prints the daemon's pid.
CHURNING_PARENT = """
import subprocess, sys, threading, time
daemon = subprocess.Popen([sys.executable, '-c', 'import time\\nwhile True: time.sleep(1)'])
print(daemon.pid, flush=True)
def churn():
    while True:
        threads = [threading.Thread(target=int) for _ in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
for _ in range(3):
    threading.Thread(target=churn, daemon=True).start()
time.sleep(600)
"""

# The run's command (a child of the keeper, which is the walk's root): the churning parent above.
COMMAND = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {CHURNING_PARENT!r}])"


def test_a_process_whose_threads_come_and_go_does_not_hide_its_children() -> None:
    """A thread that ends between the listing of a process's threads and the reading of its children file
    does not hide the process's children: each walk finds the daemon, as psutil's scan does."""
    root = subprocess.Popen([sys.executable, "-c", COMMAND], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert root.stdout is not None
        daemon = int(root.stdout.readline())
        keeper = psutil.Process(root.pid)
        assert daemon in {proc.pid for proc in keeper.children(recursive=True)}
        missed = sum(daemon not in {proc.pid for proc in descendants(keeper)} for _ in range(300))
        assert missed == 0, f"the daemon was missed by {missed} of 300 walks"
    finally:
        for proc in [psutil.Process(root.pid), *psutil.Process(root.pid).children(recursive=True)]:
            try:
                proc.kill()
            except psutil.Error:
                pass
        root.wait()


# A run's process whose daemon is started by a thread other than its first (the daemon's parent is that thread),
# which then waits: the daemon is listed in that thread's children file only. The parent prints the daemon's pid.
THREAD_PARENT = """
import subprocess, sys, threading, time
def start():
    daemon = subprocess.Popen([sys.executable, '-c', 'import time\\nwhile True: time.sleep(1)'])
    print(daemon.pid, flush=True)
    time.sleep(600)
threading.Thread(target=start, daemon=True).start()
time.sleep(600)
"""


def test_a_daemon_started_by_a_thread_is_found() -> None:
    command = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {THREAD_PARENT!r}])"
    root = subprocess.Popen([sys.executable, "-c", command], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert root.stdout is not None
        daemon = int(root.stdout.readline())
        assert daemon in {proc.pid for proc in descendants(psutil.Process(root.pid))}
    finally:
        for proc in [psutil.Process(root.pid), *psutil.Process(root.pid).children(recursive=True)]:
            try:
                proc.kill()
            except psutil.Error:
                pass
        root.wait()


def test_a_spare_made_like_a_request_that_failed_does_not_fail_the_next_one(tmp_path: Path) -> None:
    """A spare whose head start failed (here: made like a request whose writable path Landlock refuses; also a
    passing shortage of namespaces while the run before held them) does not pass that failure on to the next
    request of the same kind, which a keeper forked for it would have run: it is made afresh."""
    assert ISOLATION.confined, ISOLATION.reason
    (tmp_path / "w").mkdir()
    refused = {"landlock": True, "write": [str(tmp_path / "w"), "/proc/self/ns/net"]}
    launcher = Launcher()
    try:
        used = []
        for _ in range(SPARES):  # the spares forked at the start know no request: these take them
            keeper, code, output = _run_spec(launcher, tmp_path, "true", refused)
            assert code == confine.SETUP_FAILED and "landlock_add_rule" in output, output
            used.append(keeper)
        spares = _spares(launcher, used=tuple(used))  # made like the refused request
        keeper, code, output = _run_spec(
            launcher, tmp_path, "echo ok > w/a", {"landlock": True, "write": [str(tmp_path / "w")]}
        )
        assert keeper in spares
        assert code == 0 and (tmp_path / "w" / "a").exists(), output
    finally:
        launcher.sock.shutdown(socket.SHUT_RDWR)
        launcher.process.wait(30)
        launcher.sock.close()


@pytest.mark.skipif(not ISOLATION.namespaces, reason="the spares' namespaces need the private view")
@pytest.mark.parametrize("made, asked", [(False, True), (True, False)])
def test_a_spare_made_for_one_network_setting_never_serves_the_other(
    tmp_path: Path, made: bool, asked: bool
) -> None:
    """A spare made in a network namespace of its own (`network = "off"`) never runs a command that should have
    the network, nor the reverse: the command sees the host's interfaces exactly when its request asks for
    them."""
    (tmp_path / "w").mkdir()
    write = [str(tmp_path / "w")]
    host = len(Path("/proc/net/dev").read_text().splitlines())
    launcher = Launcher()
    try:
        spares = _prepared_like(launcher, tmp_path, {**VIEW, "network": made, "write": write})
        keeper, code, output = _run_spec(
            launcher, tmp_path, "cat /proc/net/dev", {**VIEW, "network": asked, "write": write}
        )
        assert code == 0 and keeper not in spares, output
        assert (len(output.splitlines()) == host) == asked, output
    finally:
        launcher.sock.shutdown(socket.SHUT_RDWR)
        launcher.process.wait(30)
        launcher.sock.close()


def _idle_spares(launcher: Launcher) -> set[int]:
    """The launcher's spares once there are `SPARES` of them (children that started no command)."""

    def find() -> set[int] | None:
        idle = set()
        try:
            for child in psutil.Process(launcher.process.pid).children():
                if is_spare(child):
                    idle.add(child.pid)
        except psutil.Error:
            return None  # one ended meanwhile: look again
        return idle if len(idle) == SPARES else None

    return _until(find, "the launcher's spare keepers")


def test_a_spare_sent_a_stop_signal_it_has_not_acted_on_is_not_handed_the_next_command(
    tmp_path: Path,
) -> None:
    """A run that stops the spares just before it ends: a waiting spare (a batch process) may not have run since,
    so it is not stopped yet, only about to be. Handed the next command, it would never start it (an honest
    candidate measured as a timeout): the launcher sees the pending stop, kills it and forks a keeper."""
    (tmp_path / "w").mkdir()
    spec = {"landlock": True, "write": [str(tmp_path / "w")]}
    launcher = Launcher()
    try:
        for _ in range(50):  # the spare acts on the signal before the request in most rounds
            for pid in _idle_spares(launcher):
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    pass  # gone meanwhile (a spare the launcher killed, or made again after a mount): none to stop
            read_fd, write_fd = os.pipe()
            launched = launcher.spawn(
                ["/bin/sh", "-c", "echo started"], tmp_path, dict(os.environ), write_fd, spec
            )  # type: ignore[arg-type]
            os.close(write_fd)
            try:  # the end first: a stopped spare holding the output's pipe would never close it
                assert launched.wait(60) == 0
                assert os.read(read_fd, 100) == b"started\n"
            finally:
                os.close(read_fd)
                launched.close()
    finally:
        launcher.sock.shutdown(socket.SHUT_RDWR)
        launcher.process.wait(30)
        launcher.sock.close()
