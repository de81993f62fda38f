"""Review 41: the run's tree ended by `run_tree.py` (server) and `keeper_tree.py` (keeper), the view that leaves a
folder removed while it is made uncovered (`View._cover`), and the HTTP transport's longer keep-alive. Real git
repositories, real servers, real keepers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mcp_autoresearch.sandbox import confine

from .helpers.attacks import NEEDS_LANDLOCK, _log_text, attack

pytestmark = pytest.mark.anyio


# --- 1. The command's main thread ends while the command goes on -----------------------------------------------

MAIN_THREAD_ENDS = """
import ctypes, os, subprocess, sys, threading
worker = subprocess.Popen(
    [sys.executable, "-c", "import sys; sys.stdin.read(); print('WORKER DONE', flush=True)"], stdin=subprocess.PIPE
)
leader = os.getpid()
def rest():
    while True:  # the main thread gone (a zombie thread): the process goes on in this one
        try:
            state = open(f"/proc/self/task/{leader}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            state = "gone"
        if state in ("Z", "X", "gone"):
            break
        os.sched_yield()
    try:
        worker.stdin.close()
    except OSError as exc:
        print("WORKER stdin", exc, flush=True)
    print("WORKER rc", worker.wait(), flush=True)
    sys.stdout.flush()
    os._exit(0)
threading.Thread(target=rest).start()
ctypes.CDLL(None).pthread_exit(None)
"""


@NEEDS_LANDLOCK
async def test_a_command_whose_main_thread_ends_first_keeps_its_children(ml_project: Path, agent_for) -> None:
    """The command's main thread calls pthread_exit while another thread of it goes on (legal: the process lives
    until its last thread ends) and still needs its child. The keeper traces only the main thread
    (PTRACE_O_TRACEEXIT), and took its exit stop for the command's end: every other process of the run was
    killed while the command still ran ("killed 1 process(es) the command left running", the worker ended by
    SIGKILL). At that stop it now looks whether another thread goes on (`keeper_tree.leaves_threads`): then it
    lets the main thread go and kills nothing. The command is the candidate's own process when the run command
    execs it (`exec python train.py` here; bash, /bin/sh on many systems, execs a `-c` command's last simple
    command by itself)."""
    async with agent_for(ml_project, {"run_command": "exec python train.py"}) as agent:
        run, _ = await attack(agent, MAIN_THREAD_ENDS)
    text = _log_text(run)
    assert "WORKER DONE" in text and "WORKER rc 0" in text, text


LEAVES_WATCHERS = """
import os, select, sys, threading
me = os.getpid()
threading.Thread(target=lambda: select.select([], [], []), daemon=True).start()  # a thread that never ends
for _ in range(6):  # watchers of this process's end: one of them wins the race
    if os.fork() == 0:
        os.setsid()
        select.select([os.pidfd_open(me)], [], [])
        for _ in range(200):
            os.write(1, b"LATE val_bpb: 0.000001\\n")
        os._exit(0)
"""


def _kept_without_a_view(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    """`code` run by python as the command itself (exec), under a keeper with Landlock and no private view: no
    PID namespace of its own, whose end would kill the rest anyway; the keeper's hold at the command's exit is
    all there is."""
    script = tmp_path / "command.py"
    script.write_text(textwrap.dedent(code))
    argv = confine.command_line(
        sys.executable, {"landlock": True, "write": []}, ["/bin/sh", "-c", f"exec {sys.executable} {script}"]
    )
    return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)


@NEEDS_LANDLOCK
def test_without_a_view_a_main_thread_that_ends_first_keeps_the_commands_children(tmp_path: Path) -> None:
    """As above, under the keeper alone (where a run has no private view)."""
    done = _kept_without_a_view(tmp_path, MAIN_THREAD_ENDS)
    assert "WORKER DONE" in done.stdout and "WORKER rc 0" in done.stdout, done.stdout + done.stderr


@NEEDS_LANDLOCK
def test_a_command_with_threads_that_exits_is_still_held_at_its_exit(tmp_path: Path) -> None:
    """Guards the fix above: a command that exits (`exit_group`) while another of its threads runs is still
    held at its main thread's exit stop, and what it left is killed before its end can be seen (the other
    thread has SIGKILL pending there: the process ends, not the thread alone). No watcher of its end prints."""
    done = _kept_without_a_view(tmp_path, LEAVES_WATCHERS + 'print("val_bpb: 1.0", flush=True)\n')
    assert "LATE" not in done.stdout and "val_bpb: 1.0" in done.stdout, done.stdout + done.stderr
