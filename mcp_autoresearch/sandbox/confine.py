"""The small keeper process that confines and supervises each command of a run.

Standard library only: the server runs this file as its own short-lived process (`python -I -S confine.py`), or
the launcher forks it; it imports nothing from the package but its stdlib-only siblings (`landlock.py`,
`keeper_tree.py`, `namespaces.py`, `output_dirs.py`, ...). The server also imports it to ask the kernel which
Landlock ABI it has (`probe`, which restricts nothing).

The keeper, started by the server for every command of a run:
1. becomes a child subreaper (every orphan of the run is re-parented to it, whatever its environment) and asks
   for SIGTERM when the server dies (so a killed server leaves no run behind); with the private view, it enters
   new PID and IPC (and network) namespaces, so that the command is PID 1 of its own (`namespaces.py`);
2. forks the command, which builds the private view, hands the keeper the listener through which a build may
   remove and recreate its output directories (`output_dirs.py`), sets no-new-privileges and restricts itself
   with Landlock before `exec`: writes only beneath the paths it is given, reads anywhere; with ABI >= 6 it
   cannot signal processes outside its domain (the server, the keeper, other runs). The restriction is
   inherited by every descendant and cannot be lifted;
3. stays outside the sandbox, waits, and when the command ends kills whatever it left (SIGKILL: nothing prints
   after the command ended), or on SIGTERM forwards it to the whole tree and SIGKILLs it after a grace period;
4. exits with the command's status (re-raising the command's fatal signal).

A keeper that cannot confine as asked exits with `SETUP_FAILED` and one line starting with `MARK` on stderr.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING or __package__:
    from . import keeper_tree, namespaces, output_dirs, view
    from .command import MARK, SETUP_FAILED, become_command, fail, run_standby, say
    from .landlock import ConfineError, build_ruleset, libc_handle
    from .prepared import Prepared, flags
    from .standby import Standby, hold_view, let_view_go
else:  # run as a script (or imported by the launcher as one): its stdlib-only siblings are imported by path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import keeper_tree
    import namespaces
    import output_dirs
    import view
    from command import MARK, SETUP_FAILED, become_command, fail, run_standby, say
    from landlock import ConfineError, build_ruleset, libc_handle
    from prepared import Prepared, flags
    from standby import Standby, hold_view, let_view_go

    del sys.path[0]

# Said by `command.py`, and known by this module's name to the server and the launcher (which gives its spares
# `run_standby`).
__all__ = ["MARK", "SETUP_FAILED", "KeeperSpec", "fail", "keep", "run_standby"]

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

# ---------------------------------------------------------------------------------------------------------------
# the keeper
# ---------------------------------------------------------------------------------------------------------------
_WAKE = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def _exit_code(status: int | None) -> int:
    """What the keeper's parent will see: the command's exit code, minus its fatal signal (as `subprocess` says
    it), or that of a keeper stopped before its command ended."""
    if status is None:
        return 128 + signal.SIGTERM
    return os.waitstatus_to_exitcode(status)


def _finish(status: int | None, report_fd: int = -1) -> None:
    """Leave with the command's status: its exit code, or its fatal signal re-raised (no core dump). Once every
    process of the run is gone, the server is told on `report_fd` (when given) before this process ends: its own
    exit takes longer than the rest of the run's end."""
    if report_fd >= 0:
        try:
            os.write(report_fd, b"%d\n" % _exit_code(status))
        except OSError:
            pass  # then the launcher's report of the keeper's exit tells it
    let_view_go()  # unmounted now, before the server removes the run's folders
    if status is None:
        os._exit(128 + signal.SIGTERM)
    if os.WIFEXITED(status):
        os._exit(os.WEXITSTATUS(status))
    sig = os.WTERMSIG(status)
    for step in (
        lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)),
        lambda: signal.signal(sig, signal.SIG_DFL),  # refused for SIGKILL, which needs no reset
        lambda: signal.pthread_sigmask(signal.SIG_SETMASK, []),
        lambda: os.kill(os.getpid(), sig),
    ):
        try:
            step()
        except (OSError, ValueError):
            pass
    os._exit(128 + sig)


def _libc() -> ctypes.CDLL:
    return namespaces._libc()


def keep(
    spec: KeeperSpec,
    argv: list[str],
    env: dict[str, str] | None = None,
    report_fd: int = -1,
    prepared: Prepared | None = None,
    gate_fd: int = -1,
) -> None:
    """Run `argv` confined as `spec` says (in `env`, else this process's environment), and never return. The
    exit code is also written on `report_fd` once the whole run has ended (the command never holds it). A spare
    keeper's `prepared` head start (its namespaces entered, its ruleset made) is used where it fits `spec`.
    `gate_fd`: the server's gate, handed to the command, which waits there for the word to go (`hold_for_go`);
    the keeper keeps no copy (the server sees the command's end of it close when the command ends)."""
    if report_fd >= 0:
        os.set_inheritable(report_fd, False)  # closed at the command's exec
    libc = _libc()
    if (
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0
        or libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0
    ):
        fail(f"prctl failed: {os.strerror(ctypes.get_errno())}")
    if spec.get("parent") and os.getppid() != spec["parent"]:
        fail("the server ended before the run started")
    if prepared is not None and prepared.flags != flags(spec):
        fail("the spare keeper was prepared for another kind of run")
    if prepared is not None and prepared.error:
        if not prepared.afresh():
            fail(prepared.error)
        prepared = None  # made anew, as by a keeper forked for this request
    ruleset, abi = None, 0
    if spec.get("landlock"):
        made = prepared.ruleset_for(list(spec.get("write", []))) if prepared is not None else None
        try:
            ruleset, abi = made or build_ruleset(
                list(spec.get("write", [])), bool(spec.get("scope_signal", True))
            )
        except ConfineError as exc:
            fail(str(exc))
    view, network = bool(spec.get("view")), bool(spec.get("network", True))
    if view and prepared is None:  # a spare entered them already
        try:
            namespaces.enter_keeper(network)
        except namespaces.ViewError as exc:
            fail(f"namespaces: {exc}")
    grace = float(spec.get("grace", 3.0))
    signal.pthread_sigmask(signal.SIG_BLOCK, _WAKE)
    outputs = writable_outputs(spec)
    standby = prepared.standby if prepared is not None and view else None
    if standby is not None:
        command, next_signal, tracer = _start_standby(
            libc, standby, spec, argv, env, ruleset, abi, outputs, gate_fd
        )
    else:
        command, next_signal, tracer = _fork_command(libc, spec, argv, env, ruleset, abi, outputs, gate_fd)
    status: int | None = None
    ended = False
    kill_at: float | None = None
    while True:
        wait = 1.0 if kill_at is None else max(0.0, kill_at - time.monotonic())
        woke = next_signal(wait)
        if woke is not None and woke != signal.SIGCHLD:
            if kill_at is None:  # stop requested (timeout, cancel, or the server died): the whole tree
                keeper_tree.signal_all(signal.SIGTERM)
                kill_at = time.monotonic() + grace
            continue
        if kill_at is not None and time.monotonic() >= kill_at:
            keeper_tree.signal_all(signal.SIGKILL)
        found, none_left = keeper_tree.reap(command, tracer)
        if found is not None:
            status, ended = found, True
        if ended and not none_left and kill_at is None:
            # The command is done: what it left behind is killed at once, so nothing it left prints later.
            left = keeper_tree.signal_all(signal.SIGKILL)
            if left:
                say(f"autoresearch: killed {left} process(es) the command left running")
            while not keeper_tree.reap(command, tracer)[1]:
                time.sleep(0.002)
                keeper_tree.signal_all(signal.SIGKILL)
            none_left = True
        if none_left:
            _finish(status, report_fd)


def _fork_command(
    libc: ctypes.CDLL,
    spec: KeeperSpec,
    argv: list[str],
    env: dict[str, str] | None,
    ruleset: int | None,
    abi: int,
    outputs: list[str],
    gate_fd: int = -1,
) -> tuple[int, Callable[[float], int | None], ctypes.CDLL | None]:
    """Fork the command (it makes the view itself, when asked) and hold it by ptrace before it goes on: (its
    pid, how the keeper waits for its signals, the ptrace handle or None where ptrace is refused)."""
    channel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) if outputs else None
    gate_r, gate_w = os.pipe()
    command = os.fork()
    if command == 0:
        os.close(gate_w)
        os.read(gate_r, 1)  # until the keeper holds it by ptrace (or gave that up)
        os.close(gate_r)
        if channel is not None:
            channel[0].close()  # the keeper's end: with it, the run could answer its own calls
        become_command(
            libc, spec, argv, env, ruleset, abi, None, channel[1] if channel else None, gate=gate_fd
        )
    if ruleset is not None:
        os.close(ruleset)
    if gate_fd >= 0:
        os.close(gate_fd)  # the command's now
    os.close(gate_r)
    next_signal: Callable[[float], int | None] = _sigtimedwait
    if channel is not None:
        channel[1].close()
        try:
            next_signal = output_dirs.Answerer(channel[0], outputs, _WAKE).next_signal
        except OSError:
            channel[0].close()  # the command's rmdir/mkdir then wait for no one: it must not get a listener
            os.kill(command, signal.SIGKILL)
            fail("could not watch the run's output directories (signalfd)")
    # Held at its exit (where ptrace is allowed): the rest of the run is ended before anyone can see it end.
    tracer = keeper_tree.hold_at_exit(libc, command)
    os.write(gate_w, b"x")
    os.close(gate_w)
    return command, next_signal, tracer


def _start_standby(
    libc: ctypes.CDLL,
    standby: Standby,
    spec: KeeperSpec,
    argv: list[str],
    env: dict[str, str] | None,
    ruleset: int | None,
    abi: int,
    outputs: list[str],
    gate_fd: int = -1,
) -> tuple[int, Callable[[float], int | None], ctypes.CDLL | None]:
    """Hand the command to the spare's standby process (its view made ahead, `standby.py`), held by ptrace
    first; as `_fork_command`."""
    command = standby.pid
    tracer = keeper_tree.hold_at_exit(libc, command)
    hold_view(command)
    cwd = os.getcwd()
    request = {
        "argv": argv,
        "env": dict(os.environ) if env is None else env,
        "spec": dict(spec),
        "cwd": cwd,
        # Seen outside the view: the paths resolved (copied from the mounts as they were), the folders to hide.
        "real": view.resolved([*spec.get("write", []), cwd, *spec.get("read", [])]),
        "hide_dirs": view.directories(list(spec.get("hide", []))),
        "abi": abi,
        "ruleset": ruleset is not None,
        "outputs": bool(outputs),
        "gate": gate_fd >= 0,
    }
    fds = [1, 2, *([ruleset] if ruleset is not None else []), *([gate_fd] if gate_fd >= 0 else [])]
    try:
        standby.start(request, fds)
    except OSError as exc:
        os.kill(command, signal.SIGKILL)
        fail(f"the standby command process is gone ({exc.strerror})")
    if ruleset is not None:
        os.close(ruleset)
    if gate_fd >= 0:
        os.close(gate_fd)  # the command's now
    next_signal: Callable[[float], int | None] = _sigtimedwait
    if outputs:
        try:
            next_signal = output_dirs.Answerer(standby.channel, outputs, _WAKE).next_signal
        except OSError:
            standby.channel.close()
            os.kill(command, signal.SIGKILL)
            fail("could not watch the run's output directories (signalfd)")
    return command, next_signal, tracer


def prepare() -> None:
    """In a spare keeper, while it waits for its request: the work that is the same for every run (best effort:
    a run does it again when it is not done)."""
    try:
        namespaces.prepare()
        _libc()
        libc_handle()
    except OSError:
        pass


def _sigtimedwait(timeout: float) -> int | None:
    info = signal.sigtimedwait(_WAKE, timeout)
    return info.si_signo if info is not None else None


def writable_outputs(spec: KeeperSpec) -> list[str]:
    """The writable directories inside the working directory (the project's outputs, such as dist): a run may
    remove and recreate them (`output_dirs.py`)."""
    cwd = os.getcwd().rstrip("/") + "/"
    return [path for path in spec.get("write", []) if path.startswith(cwd) and os.path.isdir(path)]


_PATH_FLAGS = {"-w": "write", "-r": "read", "-x": "hide", "-e": "records"}


class KeeperSpec(TypedDict, total=False):
    """What a keeper is told: `command_line` writes it as arguments, `parse_args` reads it back."""

    write: list[str]  # the paths the run may write beneath (Landlock; mounted writable in the view)
    read: list[str]  # paths the view keeps showing where a hidden directory covers them
    hide: list[str]  # paths the view hides
    records: list[str]  # files the view shows empty and read-only (the server's records)
    landlock: bool  # apply Landlock
    scope_signal: bool  # Landlock's signal scope (the run cannot signal outside its domain)
    view: bool  # build the private view (namespaces)
    network: bool  # with the view: keep the network (else a loopback of its own)
    parent: int  # the process the keeper must be a child of (it refuses to run otherwise)
    grace: float  # seconds between SIGTERM and SIGKILL when the run ends


def parse_args(args: list[str]) -> tuple[KeeperSpec, list[str]]:
    """`[--landlock] [--no-scope] [--view] [--no-network] [--parent PID] [--grace S] [-w|-r|-x|-e PATH]...
    -- COMMAND...` (-x: hidden in the view, -e: shown empty; no argparse or json: each import costs every run)."""
    spec: KeeperSpec = {"write": [], "landlock": False, "scope_signal": True}
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            return spec, args[index + 1 :]
        if arg == "--landlock":
            spec["landlock"] = True
        elif arg == "--no-scope":
            spec["scope_signal"] = False
        elif arg == "--view":
            spec["view"] = True
        elif arg == "--no-network":
            spec["network"] = False
        elif arg in ("-w", "-r", "-x", "-e", "--parent", "--grace") and index + 1 < len(args):
            index += 1
            value = args[index]
            if arg in _PATH_FLAGS:
                spec.setdefault(_PATH_FLAGS[arg], []).append(value)  # type: ignore[misc]
            elif arg == "--parent":
                spec["parent"] = int(value)
            else:
                spec["grace"] = float(value)
        else:
            raise ValueError(f"unknown argument {arg!r}")
        index += 1
    raise ValueError("no command after --")


def command_line(python: str, spec: KeeperSpec, argv: list[str]) -> list[str]:
    """The argv that runs `argv` under a keeper with `spec` (the inverse of `parse_args`)."""
    line = [python, "-I", "-S", __file__]
    if spec.get("landlock"):
        line.append("--landlock")
    if not spec.get("scope_signal", True):
        line.append("--no-scope")
    if spec.get("view"):
        line.append("--view")
    if not spec.get("network", True):
        line.append("--no-network")
    if spec.get("parent"):
        line += ["--parent", str(spec["parent"])]
    if "grace" in spec:
        line += ["--grace", repr(float(spec["grace"]))]
    for flag, path in [
        *(("-w", p) for p in spec.get("write", [])),
        *(("-r", p) for p in spec.get("read", [])),
        *(("-x", p) for p in spec.get("hide", [])),
        *(("-e", p) for p in spec.get("records", [])),
    ]:
        line += [flag, path]
    return [*line, "--", *argv]


def main() -> None:
    try:
        spec, argv = parse_args(sys.argv[1:])
    except ValueError as exc:
        fail(
            f"{exc}; usage: confine.py [--landlock] [--view [--no-network]] [-w PATH]... [-r PATH]... [-x PATH]... -- "
            "COMMAND [ARGS...]"
        )
    if not argv:
        fail("no command given")
    keep(spec, argv)


if __name__ == "__main__":
    main()
