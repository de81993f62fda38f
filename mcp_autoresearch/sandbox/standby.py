"""A standby command process: forked by a spare keeper ahead of its request, with the private view made.

Standard library only, like `confine.py`, which imports it by path. A spare keeper made for a view (its PID,
IPC and network namespaces entered, `prepared.py`) forks its command process at once: PID 1 of those
namespaces, which makes the part of the view that does not depend on the request (`view.View`: its mount
namespace, every mount read-only, the hidden directories, /proc, `lo`) and seals itself (no capability left to
a program it runs, no user namespace), then waits. With the request the keeper holds it by ptrace (as a
command it forks) and hands it the command, its output pipes and the Landlock ruleset; it shows the request's
paths again, restricts itself and runs the command. The fork and most of the view are thus paid while the
machine is idle, not on the run's path.

The command process is PID 1 of its namespaces: when it is gone no other can be started there, so the launcher
hands a spare a request only when the spare's standby process is alive and untouched (`forkserver.Spare`); the
spare announces its pid to the launcher for that.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from . import namespaces, view
    from .command import SETUP_FAILED, first_for_the_oom_killer
else:  # run as a script's sibling: imported by path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import namespaces
    import view
    from command import SETUP_FAILED, first_for_the_oom_killer

    del sys.path[0]

PR_SET_PDEATHSIG = 1

# What the standby process does with its request: confine's `run_command` (request, its descriptors, the view
# made ahead or None, why it could not be made, the channel to the keeper). Never returns.
RunCommand = Callable[[dict[str, Any], list[int], "view.View | None", str, socket.socket], None]


class Standby:
    """The keeper's side: the standby process's pid, and the channel its request goes through (the listener of
    the output directories comes back through it, `output_dirs.Answerer`)."""

    def __init__(self, like: dict[str, Any], run_command: RunCommand) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:
            ours.close()
            _stand_by(theirs, like, run_command)
        theirs.close()
        # The request is one message, a little larger than the launcher's (the paths resolved besides): a
        # buffer as large as the system allows (twice the default one of the launcher's channel) takes any
        # request the launcher took.
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 30)
        self.channel = ours

    def start(self, request: dict[str, Any], fds: list[int]) -> None:
        """Hand it the command (`request`: argv, env, spec, cwd, the paths resolved outside the view, whether a
        ruleset follows) with its stdout, stderr and ruleset descriptors."""
        socket.send_fds(self.channel, [json.dumps(request).encode()], fds)


# The view's mount namespace, held by the keeper for the run (`hold_view`).
_held: list[int] = []


def hold_view(pid: int) -> None:
    """In the keeper: hold the standby process's mount namespace (its view) for the run. The last process to
    leave a mount namespace unmounts all of it and waits for an RCU grace period before it is gone: tens of
    microseconds on a quiet machine, milliseconds on a busy one, between the command's end and the keeper's
    report. Held here, it is let go right after the report (`let_view_go`), the wait then the keeper's alone;
    its mounts go at once, before the server removes the run's folders (a folder the view still showed would
    make that removal unmount it, and wait). Nothing of the run is in it by then (every process of the run is
    gone before the report)."""
    try:
        _held.append(os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC))
    except OSError:
        pass  # the wait stays the command's, as before


def let_view_go() -> None:
    """In the keeper, after its report: the view's mount namespace unmounted (see `hold_view`)."""
    while _held:
        os.close(_held.pop())


def _stand_by(channel: socket.socket, like: dict[str, Any], run_command: RunCommand) -> None:
    """In the standby process: make the view like the spare's spec, wait for the request, run it. Never returns;
    gone with the spare keeper (SIGKILL when it dies), and when the keeper closes the channel unused."""
    try:
        libc = namespaces._libc()
        # Gone with the spare: killed when it dies from now on; dead before, its end of `channel` is closed (the
        # wait below ends). (Its parent is outside its PID namespace: getppid() says 0 whatever happened.)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        keep = channel.fileno()
        os.closerange(
            3, keep
        )  # the spare's channel to the launcher above all: only the spare reads a request
        os.closerange(keep + 1, 1 << 16)
        made, error = None, ""
        first_for_the_oom_killer()  # the run's process to be: before the view closes /proc/self to writes
        try:
            made = view.View(list(like.get("hide", [])), bool(like.get("network", True)))
            namespaces.seal(libc)
            _rehearse(like)
        except namespaces.ViewError as exc:
            error = f"namespaces: {exc}"
        except OSError as exc:
            error = f"namespaces: {exc.strerror}: {exc.filename}"
        data, fds, _flags, _addr = socket.recv_fds(channel, 1 << 20, 4)
        if not data or len(fds) < 2:
            os._exit(0)
        try:
            os.sched_setscheduler(
                0, os.SCHED_OTHER, os.sched_param(0)
            )  # the spare's batch policy: not the run's
        except (OSError, AttributeError):
            pass
        run_command(json.loads(data), fds, made, error, channel)
    finally:
        os._exit(SETUP_FAILED)


def _rehearse(like: dict[str, Any]) -> None:
    """Read a request like the one to come, once, while nothing waits: code run for the first time in a freshly
    forked process copies every page it touches (about 40 page faults leave the run's path)."""
    try:
        paths = [*like.get("write", []), *like.get("read", [])]
        json.loads(
            json.dumps({"argv": [], "env": dict(os.environ), "spec": like, "real": {p: p for p in paths}})
        )
    except (ValueError, TypeError, RecursionError):
        pass
