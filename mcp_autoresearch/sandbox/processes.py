"""Finding the processes of a run: our own children, the no-new-privileges mark, the environment marker.

Used by the runner to end a run's whole tree, and at a restart to end what an earlier server's runs left.
"""

from __future__ import annotations

import os
import time

import psutil

MARKER_RUN = "AUTORESEARCH_RUN_ID"
MARKER_PROJECT = "AUTORESEARCH_PROJECT"


def created(proc: psutil.Process) -> float:
    try:
        return proc.create_time()
    except psutil.Error:
        return 0.0


def no_new_privs(pid: int) -> bool:
    """True when the process can never gain privileges: every process of a supervised run is marked so."""
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"NoNewPrivs:"):
                    return line.split()[1] == b"1"
    except OSError:
        pass
    return False


def environment(proc: psutil.Process) -> dict[str, str]:
    """A process's environment. A process caught in the middle of exec (a double fork that just started)
    briefly shows an empty or unreadable one: look again a few times before concluding it has none."""
    for attempt in range(4):
        try:
            env = proc.environ()
            if env or not proc.is_running():
                return env
        except psutil.NoSuchProcess:
            return {}
        except psutil.Error:
            pass
        time.sleep(0.002 * (attempt + 1))
    return {}


def own_children() -> list[psutil.Process]:
    """This process's direct children, read from /proc/self/task/*/children (no scan of every process);
    with the subreaper flag, re-parented orphans of a run appear here too."""
    pids: set[int] = set()
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as handle:
                pids.update(int(pid) for pid in handle.read().split())
    except OSError:
        return psutil.Process().children()
    children = []
    for pid in pids:
        try:
            children.append(psutil.Process(pid))
        except psutil.Error:
            continue
    return children


def marked_processes(project_marker: str) -> list[psutil.Process]:
    """Every live process started by a run of this project (found by the environment marker)."""
    own = os.getpid()
    found = []
    for proc in psutil.process_iter():
        if proc.pid == own:
            continue
        try:
            env = proc.environ()
        except psutil.Error:
            continue
        if env.get(MARKER_PROJECT) == project_marker and MARKER_RUN in env:
            found.append(proc)
    return found


def kill_marked_processes(project_marker: str, grace_s: float = 2.0) -> int:
    """End every process left by an earlier server of this project. Used when a server starts after its
    predecessor died mid-run."""
    victims = marked_processes(project_marker)
    for proc in victims:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(victims, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=1.0)
    return len(victims)
