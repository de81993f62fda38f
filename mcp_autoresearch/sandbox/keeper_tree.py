"""The keeper's view of the run's processes (every one is its descendant: it is their subreaper), and its end.

Standard library only, like `confine.py`, which imports it by path; the server reads /proc through `read_proc`
too. At the command's exit the keeper holds it by ptrace (where allowed) and kills the rest of the run first, so
nothing the run left can print after the command was seen to end.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING or __package__:
    from .command import say
else:  # run as a script's sibling: imported by path
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from command import say

    del sys.path[0]


def read_proc(path: str) -> bytes:
    """A /proc file's content, read with plain system calls (a Python file object costs four more per read:
    these reads are on every run's path)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(p) for p in read_proc(f"/proc/{pid}/task/{task}/children").split()]
        except OSError:
            continue
    return found


def tree(root: int) -> list[int]:
    """Every descendant of `root` (orphans of the run are its children: it is their subreaper)."""
    seen: list[int] = []
    stack = [root]
    while stack:
        for child in children(stack.pop()):
            if child not in seen:
                seen.append(child)
                stack.append(child)
    return seen


def signal_each(pids: list[int] | set[int], sig: int) -> int:
    """Send `sig` to each of `pids` (those already gone are skipped). Returns how many were asked."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    return len(pids)


def signal_all(sig: int) -> int:
    """Send `sig` to every process of the run (this keeper's descendants, orphans included)."""
    return signal_each(tree(os.getpid()), sig)


# ptrace, only to hold the command at its exit: requests, options and events (linux/ptrace.h).
PTRACE_CONT, PTRACE_DETACH, PTRACE_SEIZE, PTRACE_LISTEN = 7, 17, 0x4206, 0x4208
PTRACE_O_TRACEEXIT = 0x40
PTRACE_EVENT_EXIT, PTRACE_EVENT_STOP = 6, 128


def ptrace(libc: ctypes.CDLL, request: int, pid: int, data: int = 0) -> bool:
    libc.ptrace.restype = ctypes.c_long
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    return libc.ptrace(request, pid, None, ctypes.c_void_p(data)) == 0


def hold_at_exit(libc: ctypes.CDLL, command: int) -> ctypes.CDLL | None:
    """Trace the command to stop it at its exit (`stopped` then ends the rest first): the handle to answer its
    stops with, or None where ptrace is refused (a container's seccomp, Yama)."""
    return libc if ptrace(libc, PTRACE_SEIZE, command, PTRACE_O_TRACEEXIT) else None


def dead(pid: int) -> bool:
    try:
        return read_proc(f"/proc/{pid}/stat").rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def others_end(command: int) -> None:
    """The command is at its exit stop, not yet gone and not yet reported to anyone: every other process of
    the run is killed first, and is dead before the command may finish, so none can print after it ended."""
    victims = [pid for pid in tree(os.getpid()) if pid != command]
    signal_each(victims, signal.SIGKILL)
    deadline = time.monotonic() + 1.0
    while victims and time.monotonic() < deadline:
        victims = [pid for pid in victims if not dead(pid)]
        if victims:
            time.sleep(0.0005)
    if victims := [pid for pid in tree(os.getpid()) if pid != command]:
        say(f"autoresearch: killed {len(victims)} process(es) the command left running")


# The `exit` system call, which ends one thread (`exit_group` ends them all), where the keeper knows it.
_EXIT_ONE_THREAD = {"x86_64": b"60", "aarch64": b"93"}.get(os.uname().machine)


def leaves_threads(command: int) -> bool:
    """At the exit stop of the command's main thread: whether it ended alone, by the `exit` system call of one
    thread (`pthread_exit`), while another of its threads goes on, rather than with the whole process (its
    `exit_group`, or a fatal signal: every thread ends, each with SIGKILL pending or gone)."""
    try:
        current = read_proc(f"/proc/{command}/syscall").split()[:1]
        threads = [int(tid) for tid in os.listdir(f"/proc/{command}/task") if int(tid) != command]
    except (OSError, ValueError):
        return False
    if _EXIT_ONE_THREAD is None or current != [_EXIT_ONE_THREAD]:
        return False
    for tid in threads:
        try:
            status = read_proc(f"/proc/{command}/task/{tid}/status")
        except OSError:
            continue  # gone
        fields = dict(line.split(b":", 1) for line in status.splitlines() if b":" in line)
        state = fields.get(b"State", b"").split()[:1]
        try:
            dying = int(fields.get(b"SigPnd", b"0").strip(), 16) & (1 << (signal.SIGKILL - 1))
        except ValueError:
            dying = 0
        if state not in ([b"Z"], [b"X"]) and not dying:
            return True
    return False


def stopped(libc: ctypes.CDLL, command: int, pid: int, code: int) -> None:
    """A ptrace stop of the command: its exit (end the rest of the run first), a group stop, or a signal (sent on).
    A main thread that ends while another thread goes on is let go, nothing killed: the process's real end is
    no longer held, and what it leaves is ended once it is reaped (as where ptrace is refused)."""
    event = code >> 16
    if pid == command and event == PTRACE_EVENT_EXIT:
        if not leaves_threads(command):
            others_end(command)
        ptrace(libc, PTRACE_DETACH, pid)
    elif event == PTRACE_EVENT_STOP:
        ptrace(libc, PTRACE_LISTEN, pid)
    else:
        ptrace(libc, PTRACE_CONT, pid, os.WSTOPSIG(code))


def reap(command: int, libc: ctypes.CDLL | None = None) -> tuple[int | None, bool]:
    """Collect every child that ended (and answer the command's ptrace stops). Returns (the command's wait
    status if it ended now, no children left)."""
    status = None
    while True:
        try:
            pid, code = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status, True
        if pid == 0:
            return status, False
        if os.WIFSTOPPED(code):
            if libc is not None:
                stopped(libc, command, pid, code)
            continue
        if pid == command:
            status = code
