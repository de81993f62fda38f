"""Review 41: the run's tree ended by `run_tree.py` (server) and `keeper_tree.py` (keeper), the view that leaves a
folder removed while it is made uncovered (`View._cover`), and the HTTP transport's longer keep-alive. Real git
repositories, real servers, real keepers."""

from __future__ import annotations

from pathlib import Path

import pytest

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
@pytest.mark.xfail(
    strict=True,
    reason="keeper_tree.stopped takes the main thread's PTRACE_EVENT_EXIT for the command's end: others_end kills "
    "the rest of the run while the command's other threads go on",
)
async def test_a_command_whose_main_thread_ends_first_keeps_its_children(ml_project: Path, agent_for) -> None:
    """The command's main thread calls pthread_exit while another thread of it goes on (legal: the process lives
    until its last thread ends) and still needs its child. The keeper traces only the main thread
    (PTRACE_O_TRACEEXIT): its exit stop is taken for the command's end, and every other process of the run is
    killed while the command still runs ("killed 1 process(es) the command left running", the worker ends by
    SIGKILL). The command is the candidate's own process when the run command execs it (`exec python train.py`
    here; bash, /bin/sh on many systems, execs a `-c` command's last simple command by itself)."""
    async with agent_for(ml_project, {"run_command": "exec python train.py"}) as agent:
        run, _ = await attack(agent, MAIN_THREAD_ENDS)
    text = _log_text(run)
    assert "WORKER DONE" in text and "WORKER rc 0" in text, text
