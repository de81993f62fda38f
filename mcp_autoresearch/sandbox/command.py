"""The command's own process, from its fork (or a standby process's request) to its `exec`: the signals a
program expects, the private view, the output directories' listener handed to the keeper, Landlock, and the
server's word to go (`hold_for_go`). And how a keeper that cannot confine as asked says so (`fail`:
`SETUP_FAILED` and one line starting with `MARK`).

Standard library only, like `confine.py`, which imports it by path (see there for the keeper around it).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from . import namespaces, output_dirs, view
    from .landlock import PR_SET_NO_NEW_PRIVS, ConfineError, allow_beneath, restrict_self
else:  # run as a script's sibling: imported by path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import namespaces
    import output_dirs
    import view
    from landlock import PR_SET_NO_NEW_PRIVS, ConfineError, allow_beneath, restrict_self

    del sys.path[0]

SETUP_FAILED = 125
MARK = "autoresearch-confine:"
PR_SET_PDEATHSIG = 1


def say(line: str) -> None:
    """One line on stderr, the run's output pipe: gone (nobody reads any more), it is dropped."""
    try:
        os.write(2, f"{line}\n".encode())
    except OSError:
        pass


def fail(message: str) -> None:
    say(f"{MARK} {message}")
    os._exit(SETUP_FAILED)


def first_for_the_oom_killer() -> None:
    """In the command's process, before its view and Landlock (both close /proc/self to writes): its OOM score at
    the top, inherited by every process of the run. A run can pin memory no process's size counts (its scratch
    tmpfs, /dev/shm); where memory runs short the OOM killer then chose the largest process, the server, and the
    session ended with the run still going. Raising one's own score needs no privilege; best effort."""
    try:
        fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.write(fd, b"1000")
    except OSError:
        pass
    finally:
        os.close(fd)


def run_standby(
    request: dict[str, Any], fds: list[int], made: view.View | None, error: str, channel: socket.socket
) -> None:
    """In a standby process, with its request (`standby.py`): its output pipes in place, then the command as
    `_become_command` runs it, in the view made ahead. Never returns."""
    libc = namespaces._libc()
    out_fd, err_fd, *rest = fds
    try:
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        for fd in {out_fd, err_fd} - {1, 2}:
            os.close(fd)
    except OSError as exc:
        fail(f"could not prepare the run: {exc}")
    if error:
        fail(error)
    ruleset = rest[0] if request.get("ruleset") and rest else None
    gate = rest[-1] if request.get("gate") and rest else -1
    become_command(
        libc,
        request["spec"],
        request["argv"],
        request["env"],
        ruleset,
        int(request.get("abi", 0)),
        (made, request["cwd"], request["real"], request.get("hide_dirs")),
        channel if request.get("outputs") else None,
        channel,
        gate,
    )


def become_command(
    libc: ctypes.CDLL,
    spec: Mapping[str, Any],
    argv: list[str],
    env: dict[str, str] | None,
    ruleset: int | None,
    abi: int,
    standby: tuple[view.View | None, str, dict[str, str], list[str] | None] | None,
    listener: socket.socket | None,
    keeper: socket.socket | None = None,
    gate: int = -1,
) -> None:
    """In the command's own process, held by the keeper: the signals a program expects, the private view (made
    here, or finished when a standby process made it ahead: `standby` = (the view, the request's directory, its
    paths resolved and its folders to hide, both seen outside)), the output directories' listener handed to the
    keeper through `listener`, Landlock, the server's word to go when it sent a `gate` (`hold_for_go`), exec.
    `keeper`: a standby process's channel to its keeper, where the view's spent copy of the mounts is let go
    (`View.let_go`). Never returns."""
    try:
        if standby is None:  # a standby process did it before it made the view
            first_for_the_oom_killer()
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        libc.prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0)
        made, cwd, real, hide_dirs = standby if standby is not None else (None, "", {}, None)
        if made is not None:
            scratch = made.finish(
                list(spec.get("write", [])),
                cwd,
                list(spec.get("read", [])),
                list(spec.get("hide", [])),
                real,
                list(spec.get("records", [])),
                hide_dirs,
            )
            if ruleset is not None:
                allow_beneath(ruleset, abi, scratch)  # sealed already, when the view was made
        elif spec.get("view"):
            enter_view(libc, spec, bool(spec.get("network", True)), ruleset, abi)
        if listener is not None:
            hand_over_listener(libc, listener)
        if made is not None:
            made.let_go(keeper)  # after the listener: the keeper takes the first message as the listener
        if listener is not None:
            listener.close()
        if ruleset is not None:
            restrict_self(ruleset)
            os.close(ruleset)
        else:  # no Landlock: still no privilege gain, and a mark that no child can shed
            libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        if ruleset is not None or made is not None or spec.get("view"):
            namespaces.forbid_keyrings(libc)  # a key would outlive the run: a channel to the next one
        if gate >= 0:
            hold_for_go(gate)
        if env is None:
            os.execvp(argv[0], argv)
        else:
            os.execvpe(argv[0], argv, env)
    except ConfineError as exc:
        fail(str(exc))
    except namespaces.ViewError as exc:
        fail(f"namespaces: {exc}")
    except OSError as exc:
        say(f"autoresearch: could not start {argv[0]}: {exc.strerror}")
        os._exit(127)
    os._exit(SETUP_FAILED)


def hold_for_go(gate: int) -> None:
    """In the command's process, confined, right before `exec`: say "ready" on `gate` (a socket whose other end
    is the server's, `start_gate.StartGate`) and wait for its word. The server starts a run this way while it
    still records it (the whole start, view and Landlock included, is done meanwhile), and times the run from
    its word. Anything but "go" (its end closed: the run was dropped before it started, or the server is gone)
    ends this process here, nothing run. The command never holds `gate`."""
    try:
        os.write(gate, b"r")
        word = os.read(gate, 1)
    except OSError:
        word = b""
    os.close(gate)
    if word != b"g":
        os._exit(SETUP_FAILED)


def hand_over_listener(libc: ctypes.CDLL, channel: socket.socket) -> None:
    """In the command: the filter whose notifications the keeper answers; the listening end goes to the keeper
    through `channel` (the command's end), and no copy stays here (with one, the run could answer its own
    calls). `channel` stays open: a standby process sends its view's spent copy of the mounts after it
    (`View.let_go`); the caller closes it (it would close at `exec` anyway)."""
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise ConfineError(f"prctl(NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}")
    try:
        listener = output_dirs.install_listener(libc)
    except OSError as exc:
        raise ConfineError(str(exc.strerror)) from None
    socket.send_fds(channel, [b"listener"], [listener])
    os.close(listener)


def enter_view(
    libc: ctypes.CDLL, spec: Mapping[str, Any], network: bool, ruleset: int | None, abi: int
) -> None:
    """In the command's process (PID 1 of the keeper's namespaces): build the private view, let Landlock allow
    writes in its fresh scratch directories, and seal it (no capabilities, no user namespaces)."""
    try:
        scratch = view.build_view(
            list(spec.get("write", [])),
            os.getcwd(),
            network,
            list(spec.get("read", [])),
            list(spec.get("hide", [])),
            list(spec.get("records", [])),
        )
    except OSError as exc:
        raise namespaces.ViewError(f"{exc.strerror}: {exc.filename}") from None
    if ruleset is not None:
        allow_beneath(ruleset, abi, scratch)
    namespaces.seal(libc)
