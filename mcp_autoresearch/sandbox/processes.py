"""Finding the processes of a run: our own children, the no-new-privileges mark, the environment marker.

Used by the runner to end a run's whole tree, and at a restart to end what an earlier server's runs left.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time

import psutil

from .keeper_tree import read_proc

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
        for line in read_proc(f"/proc/{pid}/status").splitlines():
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


OTHER_PROC = (
    "this server runs in a PID namespace whose /proc is another namespace's (there it is pid {proc}, here pid "
    "{own}): it could not tell a run's processes from the machine's others, nor end only them, so it runs "
    "nothing. Start it with a /proc of its own (unshare --mount-proc, bwrap --proc /proc) or outside the PID "
    "namespace"
)


def other_proc() -> str | None:
    """Why /proc does not number this process as the process itself does (a PID namespace made without its own
    /proc, `unshare -p`, `bwrap --unshare-pid` without `--proc`: every pid read there would name another
    process), or None when it does, or where there is no /proc."""
    try:
        shown = os.readlink("/proc/self")
    except OSError:
        return None
    own = os.getpid()
    return None if shown == str(own) else OTHER_PROC.format(proc=shown, own=own)


def own_children() -> list[psutil.Process]:
    """This process's direct children, read from /proc/self/task/*/children (no scan of every process);
    with the subreaper flag, re-parented orphans of a run appear here too."""
    pids = _child_pids("self")
    if pids is None:
        return psutil.Process().children()
    return _processes(pids)


def descendants(proc: psutil.Process) -> list[psutil.Process]:
    """Every descendant of `proc`, read from /proc/<pid>/task/*/children, following each child (psutil's
    `children(recursive=True)` reads every process of the machine: 1.3 ms with 90 of them, on every run)."""
    found: dict[int, None] = {}
    stack = [proc.pid]
    while stack:
        pids = _child_pids(str(stack.pop()))
        if pids is None:
            if stack or found:
                continue  # gone meanwhile: its children were re-parented, and are looked for elsewhere
            try:
                return proc.children(recursive=True)  # no children files here (an old kernel)
            except psutil.Error:
                return []
        for pid in pids - found.keys():
            found[pid] = None
            stack.append(pid)
    return _processes(set(found))


def _child_pids(pid: str) -> set[int] | None:
    """The children of `pid` (every thread's), or None when its threads cannot be listed (it is gone). A thread
    that ends hands its children to another thread, perhaps one read already: the threads are listed again after
    the reading, and when one ended meanwhile (or its file was gone) every thread is read again; after a third
    such pass psutil's scan of every process's parent tells them (a server's threads come and go with its runs:
    the scan costs 1-2 ms)."""
    for _attempt in range(3):
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return None
        pids: set[int] = set()
        try:
            for task in tasks:
                pids.update(int(child) for child in read_proc(f"/proc/{pid}/task/{task}/children").split())
            if set(os.listdir(f"/proc/{pid}/task")) == set(tasks):
                return pids
        except OSError:
            continue
    return _scanned_children(os.getpid() if pid == "self" else int(pid))


def _scanned_children(pid: int) -> set[int] | None:
    try:
        return {child.pid for child in psutil.Process(pid).children()}
    except psutil.Error:
        return None


def _processes(pids: set[int]) -> list[psutil.Process]:
    found = []
    for pid in pids:
        try:
            found.append(psutil.Process(pid))
        except psutil.Error:
            continue
    return found


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


_subreaper_lock = threading.Lock()
_subreaper_set = False


def become_subreaper() -> None:
    """Linux: orphaned descendants are re-parented to this process instead of init, so a `setsid` double fork
    stays findable among our children. Elsewhere the environment-marker scan covers them."""
    global _subreaper_set
    with _subreaper_lock:
        if _subreaper_set or not sys.platform.startswith("linux"):
            return
        try:
            ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
        except (OSError, AttributeError):
            pass
        _subreaper_set = True
