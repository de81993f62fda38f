"""Landlock confinement of a run, and the small keeper process that runs it.

Standard library only: the server runs this file as its own short-lived process (`python -I -S confine.py`), so
it imports nothing from the package. It is also imported by the server to ask the kernel which Landlock ABI it
has (`probe`), which restricts nothing.

The keeper, started by the server for every command of a run:
1. becomes a child subreaper (every orphan of the run is re-parented to it, whatever its environment) and asks
   for SIGTERM when the server dies (so a killed server leaves no run behind);
2. forks the command, which sets no-new-privileges and restricts itself with Landlock before `exec`: writes only
   beneath the paths it is given, reads anywhere; with ABI >= 6 it cannot signal processes outside its domain
   (the server, the keeper, other runs). The restriction is inherited by every descendant and cannot be lifted;
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
from typing import TYPE_CHECKING

if TYPE_CHECKING or __package__:
    from . import namespaces, output_dirs
else:  # run as a script (or imported by the launcher as one): its stdlib-only siblings are imported by path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import namespaces
    import output_dirs

    del sys.path[0]

SETUP_FAILED = 125
MARK = "autoresearch-confine:"

_SYS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446), "riscv64": (444, 445, 446)}
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1

# Filesystem access rights (ABI 1 unless noted).
WRITE_FILE = 1 << 1
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6
PR_CAPBSET_DROP = 24
# Capabilities a root run must not keep, because Landlock does not mediate what they allow: file flags such as
# `chattr +i` on the user's or the server's files (FS_IOC_SETFLAGS on a file opened read-only), kernel modules,
# raw I/O, reboot, the system clock, BPF, mounts and namespaces (CAP_SYS_ADMIN), network configuration.
DROPPED_CAPS = (9, 12, 16, 17, 21, 22, 25, 32, 33, 39)  # LINUX_IMMUTABLE NET_ADMIN SYS_MODULE SYS_RAWIO
# SYS_ADMIN SYS_BOOT SYS_TIME MAC_OVERRIDE MAC_ADMIN BPF

_WRITE_ABI1 = (
    WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_CHAR | MAKE_DIR | MAKE_REG | MAKE_SOCK | MAKE_FIFO | MAKE_BLOCK
)
_WRITE_ABI1 |= MAKE_SYM


class ConfineError(Exception):
    """Landlock is missing or refused; the message says why, in a few words."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _syscalls() -> tuple[int, int, int]:
    machine = os.uname().machine
    if not sys.platform.startswith("linux"):
        raise ConfineError(f"Landlock is a Linux feature (this is {sys.platform})")
    if machine not in _SYS:
        raise ConfineError(f"Landlock syscall numbers are not known for {machine}")
    return _SYS[machine]


def probe() -> int:
    """The Landlock ABI version of the running kernel; ConfineError with the reason when there is none."""
    create, _, _ = _syscalls()
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(create, None, ctypes.c_size_t(0), ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    if abi < 0:
        err = ctypes.get_errno()
        reasons = {
            38: "the kernel has no Landlock (before 5.13, or built without it)",  # ENOSYS
            95: "Landlock is disabled at boot (lsm= does not list landlock)",  # EOPNOTSUPP
            1: "the syscalls are blocked here (a container's seccomp profile?)",  # EPERM
        }
        raise ConfineError(reasons.get(err, f"landlock_create_ruleset failed: {os.strerror(err)}"))
    return int(abi)


def write_rights(abi: int) -> int:
    """Every write-type right this ABI knows: the rights the ruleset handles, and grants beneath writable dirs."""
    rights = _WRITE_ABI1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    return rights


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def build_ruleset(writable: list[str], scope_signal: bool = True) -> tuple[int, int]:
    """A ruleset fd that denies every write except beneath `writable` (paths that do not exist are skipped),
    and, with ABI >= 6, signals out of the domain. Returns (fd, abi). Restricts nothing by itself."""
    abi = probe()
    create = _syscalls()[0]
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    handled = write_rights(abi)
    # Scoped: signals and abstract unix sockets of processes outside the run (the server, the user's session).
    scoped = SCOPE_SIGNAL | SCOPE_ABSTRACT_UNIX_SOCKET
    attr = _RulesetAttr(handled, 0, scoped if (scope_signal and abi >= 6) else 0)
    size = 24 if abi >= 6 else 8
    fd = libc.syscall(create, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if fd < 0:
        raise ConfineError(f"landlock_create_ruleset failed: {os.strerror(ctypes.get_errno())}")
    allow_beneath(int(fd), abi, writable)
    return int(fd), abi


def allow_beneath(ruleset_fd: int, abi: int, paths: list[str]) -> None:
    """Add to the ruleset: every write right beneath each directory of `paths`, writing (not creating or
    removing) for each file; paths that do not exist are skipped."""
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    add_rule = _syscalls()[1]
    handled = write_rights(abi)
    file_rights = WRITE_FILE | (TRUNCATE if abi >= 3 else 0)
    for path in paths:
        try:
            target = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue  # nothing there to allow
        try:
            is_dir = os.path.isdir(f"/proc/self/fd/{target}")
            rule = _PathBeneathAttr(handled if is_dir else file_rights, target)
            if libc.syscall(add_rule, ctypes.c_int(ruleset_fd), ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
                            ctypes.byref(rule), ctypes.c_uint32(0)) < 0:
                err = ctypes.get_errno()
                os.close(ruleset_fd)
                raise ConfineError(f"landlock_add_rule({path}) failed: {os.strerror(err)}")
        finally:
            os.close(target)


def restrict_self(ruleset_fd: int) -> None:
    """no_new_privs, then the ruleset: from here on this process and every descendant are confined."""
    _, _, restrict = _syscalls()
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise ConfineError(f"prctl(NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}")
    drop_capabilities(libc)
    if libc.syscall(restrict, ctypes.c_int(ruleset_fd), ctypes.c_uint32(0)) < 0:
        raise ConfineError(f"landlock_restrict_self failed: {os.strerror(ctypes.get_errno())}")


def drop_capabilities(libc: ctypes.CDLL) -> None:
    """Remove DROPPED_CAPS from the bounding set, so neither this process after `exec` nor any descendant holds
    them (root regains only what the bounding set allows). Without CAP_SETPCAP (not root) there is nothing to
    drop, and the calls fail harmlessly."""
    for cap in DROPPED_CAPS:
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)


# ---------------------------------------------------------------------------------------------------------------
# the keeper
# ---------------------------------------------------------------------------------------------------------------
_WAKE = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(p) for p in handle.read().split()]
        except OSError:
            continue
    return found


def _tree(root: int) -> list[int]:
    """Every descendant of `root` (orphans of the run are its children: it is their subreaper)."""
    seen: list[int] = []
    stack = [root]
    while stack:
        for child in _children(stack.pop()):
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


def _signal_all(sig: int) -> int:
    return signal_each(_tree(os.getpid()), sig)


# ptrace, only to hold the command at its exit: requests, options and events (linux/ptrace.h).
PTRACE_CONT, PTRACE_DETACH, PTRACE_SEIZE, PTRACE_LISTEN = 7, 17, 0x4206, 0x4208
PTRACE_O_TRACEEXIT = 0x40
PTRACE_EVENT_EXIT, PTRACE_EVENT_STOP = 6, 128


def _ptrace(libc: ctypes.CDLL, request: int, pid: int, data: int = 0) -> bool:
    libc.ptrace.restype = ctypes.c_long
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    return libc.ptrace(request, pid, None, ctypes.c_void_p(data)) == 0


def _dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _others_end(command: int) -> None:
    """The command is at its exit stop, not yet gone and not yet reported to anyone: every other process of
    the run is killed first, and is dead before the command may finish, so none can print after it ended."""
    victims = [pid for pid in _tree(os.getpid()) if pid != command]
    signal_each(victims, signal.SIGKILL)
    deadline = time.monotonic() + 1.0
    while victims and time.monotonic() < deadline:
        victims = [pid for pid in victims if not _dead(pid)]
        if victims:
            time.sleep(0.0005)
    if victims := [pid for pid in _tree(os.getpid()) if pid != command]:
        os.write(2, f"autoresearch: killed {len(victims)} process(es) the command left running\n".encode())


def _stopped(libc: ctypes.CDLL, command: int, pid: int, code: int) -> None:
    """A ptrace stop of the command: its exit (end the rest of the run first), a group stop (stay stopped), or a
    signal on its way (deliver it)."""
    event = code >> 16
    if pid == command and event == PTRACE_EVENT_EXIT:
        _others_end(command)
        _ptrace(libc, PTRACE_DETACH, pid)
    elif event == PTRACE_EVENT_STOP:
        _ptrace(libc, PTRACE_LISTEN, pid)
    else:
        _ptrace(libc, PTRACE_CONT, pid, os.WSTOPSIG(code))


def _reap(command: int, libc: ctypes.CDLL | None = None) -> tuple[int | None, bool]:
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
                _stopped(libc, command, pid, code)
            continue
        if pid == command:
            status = code


def _finish(status: int | None) -> None:
    """Leave with the command's status: its exit code, or its fatal signal re-raised (no core dump)."""
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


def fail(message: str) -> None:
    os.write(2, f"{MARK} {message}\n".encode())
    os._exit(SETUP_FAILED)


def keep(spec: dict, argv: list[str], env: dict[str, str] | None = None) -> None:
    """Run `argv` confined as `spec` says (in `env`, else this process's environment), and never return."""
    libc = _libc()
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 or libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0,
                                                                       0) != 0:
        fail(f"prctl failed: {os.strerror(ctypes.get_errno())}")
    if spec.get("parent") and os.getppid() != spec["parent"]:
        fail("the server ended before the run started")
    ruleset, abi = None, 0
    if spec.get("landlock"):
        try:
            ruleset, abi = build_ruleset(list(spec.get("write", [])), bool(spec.get("scope_signal", True)))
        except ConfineError as exc:
            fail(str(exc))
    view, network = bool(spec.get("view")), bool(spec.get("network", True))
    if view:
        try:
            namespaces.enter_keeper(network)
        except namespaces.ViewError as exc:
            fail(f"namespaces: {exc}")
    grace = float(spec.get("grace", 3.0))
    signal.pthread_sigmask(signal.SIG_BLOCK, _WAKE)
    outputs = _output_dirs(spec)
    channel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) if outputs else None
    gate_r, gate_w = os.pipe()
    command = os.fork()
    if command == 0:
        try:
            os.close(gate_w)
            os.read(gate_r, 1)  # until the keeper holds it by ptrace (or gave that up)
            os.close(gate_r)
            for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            libc.prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0)
            if view:
                _enter_view(libc, spec, network, ruleset, abi)
            if channel is not None:
                _hand_over_listener(libc, channel)
            if ruleset is not None:
                restrict_self(ruleset)
                os.close(ruleset)
            else:  # no Landlock: still no privilege gain, and a mark that no child can shed
                libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            if env is None:
                os.execvp(argv[0], argv)
            else:
                os.execvpe(argv[0], argv, env)
        except ConfineError as exc:
            fail(str(exc))
        except namespaces.ViewError as exc:
            fail(f"namespaces: {exc}")
        except OSError as exc:
            os.write(2, f"autoresearch: could not start {argv[0]}: {exc.strerror}\n".encode())
            os._exit(127)
        os._exit(SETUP_FAILED)
    if ruleset is not None:
        os.close(ruleset)
    os.close(gate_r)
    next_signal = _sigtimedwait
    if channel is not None:
        channel[1].close()
        try:
            next_signal = output_dirs.Answerer(channel[0], outputs, _WAKE).next_signal
        except OSError:
            channel[0].close()  # the command's rmdir/mkdir then wait for no one: it must not get a listener
            os.kill(command, signal.SIGKILL)
            fail("could not watch the run's output directories (signalfd)")
    # Held at its exit (where ptrace is allowed): the rest of the run is ended before anyone can see it end.
    tracer = libc if _ptrace(libc, PTRACE_SEIZE, command, PTRACE_O_TRACEEXIT) else None
    os.write(gate_w, b"x")
    os.close(gate_w)
    status: int | None = None
    ended = False
    kill_at: float | None = None
    while True:
        wait = 1.0 if kill_at is None else max(0.0, kill_at - time.monotonic())
        sig = next_signal(wait)
        if sig is not None and sig != signal.SIGCHLD:
            if kill_at is None:  # stop requested (timeout, cancel, or the server died): the whole tree
                _signal_all(signal.SIGTERM)
                kill_at = time.monotonic() + grace
            continue
        if kill_at is not None and time.monotonic() >= kill_at:
            _signal_all(signal.SIGKILL)
        found, none_left = _reap(command, tracer)
        if found is not None:
            status, ended = found, True
        if ended and not none_left and kill_at is None:
            # The command is done: what it left behind is killed at once, so nothing it left prints later.
            left = _signal_all(signal.SIGKILL)
            if left:
                os.write(2, f"autoresearch: killed {left} process(es) the command left running\n".encode())
            while not _reap(command, tracer)[1]:
                time.sleep(0.002)
                _signal_all(signal.SIGKILL)
            none_left = True
        if none_left:
            _finish(status)


def _sigtimedwait(timeout: float) -> int | None:
    info = signal.sigtimedwait(_WAKE, timeout)
    return info.si_signo if info is not None else None


def _output_dirs(spec: dict) -> list[str]:
    """The writable directories inside the working directory (the project's outputs, such as dist): a run may
    remove and recreate them (`output_dirs.py`)."""
    cwd = os.getcwd().rstrip("/") + "/"
    return [path for path in spec.get("write", []) if path.startswith(cwd) and os.path.isdir(path)]


def _hand_over_listener(libc: ctypes.CDLL, channel: tuple[socket.socket, socket.socket]) -> None:
    """In the command: the filter whose notifications the keeper answers; the listening end goes to the keeper,
    and no copy stays here (with one, the run could answer its own calls)."""
    channel[0].close()
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise ConfineError(f"prctl(NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}")
    try:
        listener = output_dirs.install_listener(libc)
    except OSError as exc:
        raise ConfineError(str(exc.strerror)) from None
    socket.send_fds(channel[1], [b"listener"], [listener])
    os.close(listener)
    channel[1].close()


def _enter_view(libc: ctypes.CDLL, spec: dict, network: bool, ruleset: int | None, abi: int) -> None:
    """In the command's process (PID 1 of the keeper's namespaces): build the private view, let Landlock allow
    writes in its fresh scratch directories, and seal it (no capabilities, no user namespaces)."""
    try:
        scratch = namespaces.build_view(list(spec.get("write", [])), os.getcwd(), network,
                                        list(spec.get("read", [])))
    except OSError as exc:
        raise namespaces.ViewError(f"{exc.strerror}: {exc.filename}") from None
    if ruleset is not None:
        allow_beneath(ruleset, abi, scratch)
    namespaces.seal(libc)


def parse_args(args: list[str]) -> tuple[dict, list[str]]:
    """`[--landlock] [--no-scope] [--view] [--no-network] [--parent PID] [--grace S] [-w PATH]... [-r PATH]...
    -- COMMAND...` (no argparse or json:
    every import here is paid on every run)."""
    spec: dict = {"write": [], "landlock": False, "scope_signal": True}
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
        elif arg in ("-w", "-r", "--parent", "--grace") and index + 1 < len(args):
            index += 1
            value = args[index]
            if arg in ("-w", "-r"):
                spec.setdefault("write" if arg == "-w" else "read", []).append(value)
            elif arg == "--parent":
                spec["parent"] = int(value)
            else:
                spec["grace"] = float(value)
        else:
            raise ValueError(f"unknown argument {arg!r}")
        index += 1
    raise ValueError("no command after --")


def command_line(python: str, spec: dict, argv: list[str]) -> list[str]:
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
    for path in spec.get("write", []):
        line += ["-w", path]
    for path in spec.get("read", []):
        line += ["-r", path]
    return [*line, "--", *argv]


def main() -> None:
    try:
        spec, argv = parse_args(sys.argv[1:])
    except ValueError as exc:
        fail(f"{exc}; usage: confine.py [--landlock] [-w PATH]... -- COMMAND [ARGS...]")
    if not argv:
        fail("no command given")
    keep(spec, argv)


if __name__ == "__main__":
    main()
