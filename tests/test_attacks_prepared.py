"""Attacks on the spare keepers' head start and on the quick walk of a run's processes (`descendants`, read
from each process's children files instead of psutil's scan of every process): a run's process tries to hide
what it started, so that it outlives the run.
"""

from __future__ import annotations

import subprocess
import sys

import psutil

from mcp_autoresearch.sandbox.processes import descendants

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
