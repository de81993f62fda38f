"""The launcher: a warm, single-threaded process that forks keepers, so a run does not pay an interpreter's start.

Standard library only, like `confine.py` beside it, which it imports by path: the server runs it as
`python -I -S forkserver.py FD`, FD being its end of a SOCK_SEQPACKET socket pair (see `launcher.py` for the
server's side and the protocol).
"""

from __future__ import annotations

import json
import math
import os
import select
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import confine, keeper_tree, namespaces, view
    from .prepared import Flags, Prepared, flags
else:  # run as a script: confine.py is imported from beside this file, and nothing else of the package
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import confine
    import keeper_tree
    import namespaces
    import view
    from prepared import Prepared, flags

    del sys.path[0]

SPARES = 2  # keepers forked ahead of time
# Spares are forked one at a time, each after this long without a request or an exit: soon when no command runs,
# though not before the server had time to ask for a re-measurement (about 3 ms after its run ends here: a fork
# then would prepare a spare on the CPU that run needs; the other spare serves it); while one runs, only after a
# long quiet (a spare's preparation would take the CPU the command and its end need), even with none ready. With
# none ready and none running, one is forked at once. One at a time: two preparing together took both cores of
# a small machine from the server's work between runs (bench/loop_overhead.py: a kept experiment 3 ms dearer).
QUIET_S = 0.010
QUIET_RUNNING_S = 0.25


def _start_keeper(request: dict[str, Any], fds: list[int], prepared: Prepared | None = None) -> None:
    """In a child of the launcher, alone with the request's descriptors (the output's pipe, stderr's, and the
    pipe on which the keeper reports the run's end): become the keeper of one command (with a spare's
    `prepared` head start). Never returns."""
    out_fd, err_fd, report_fd, gate_fd = _request_fds(fds)
    try:
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)  # the output's own pipe, unless the request sent one for stderr
        for fd in {out_fd, err_fd} - {1, 2, report_fd, gate_fd}:
            os.close(fd)
        os.chdir(request["cwd"])
    except OSError as exc:
        confine.fail(f"could not prepare the run: {exc}")
    confine.keep(request["spec"], request["argv"], request["env"], report_fd, prepared, gate_fd)


def _become_keeper(request: dict[str, Any], fds: list[int], prepared: Prepared | None = None) -> None:
    """`_start_keeper`, in a child of the launcher: whatever goes wrong, it never returns into the launcher's
    loop (a child running that loop would start commands of its own)."""
    try:
        _start_keeper(request, fds, prepared)
    finally:
        os._exit(confine.SETUP_FAILED)


def _request_fds(fds: list[int]) -> tuple[int, int, int, int]:
    """(output, stderr, report, gate) of a request's descriptors: [output], [output, stderr], those and the
    report's, or all four (the server's gate: the command waits there for its word to go, `hold_for_go`)."""
    out_fd = fds[0]
    err_fd = fds[1] if len(fds) > 1 else out_fd
    return out_fd, err_fd, fds[2] if len(fds) > 2 else -1, fds[3] if len(fds) > 3 else -1


def _leave_launcher(keep: list[int]) -> None:
    """In a freshly forked child of the launcher: its own session, no signal handling of the launcher's, stdin
    on /dev/null, and nothing of the launcher's open but the descriptors in `keep` (above all not its socket,
    through which runs are started)."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    os.setsid()
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    low = 3
    for fd in sorted(fd for fd in set(keep) if fd >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 16)


def _fork_keeper(request: dict[str, Any], fds: list[int]) -> int:
    """A keeper forked for this request (when no spare is ready)."""
    pid = os.fork()
    if pid == 0:
        try:
            _leave_launcher(fds)
        except OSError as exc:
            confine.fail(f"could not prepare the run: {exc}")
        _become_keeper(request, fds)
    return pid


def _spare(channel: socket.socket, like: dict[str, Any] | None) -> None:
    """In a child forked ahead of time: leave the launcher, make what a request `like` the last one needs (see
    `prepared.py`), then wait for one request on `channel` and become its keeper. The launcher gone (end of
    file), it leaves. Never returns (whatever happens, never into the launcher's loop)."""
    try:
        _batch(True)  # its preparation too: it must not delay a command's start or end
        _leave_launcher([channel.fileno()])
        confine.prepare()
        prepared = Prepared(like, confine.run_standby) if like is not None else None
        if like is not None:
            _rehearse(like)
        if prepared is not None and prepared.standby is not None:
            try:  # for `Spare.hand_over`; handed its request already, it finds the launcher's end closed
                channel.send(json.dumps({"standby": prepared.standby.pid}).encode())
            except OSError:
                pass  # the request waits in the channel all the same
        data, fds = _request(channel)
        _batch(False)
        channel.close()
        if data and fds:
            _become_keeper(json.loads(data), fds, prepared)
        os._exit(0)  # the launcher gone before a request came
    finally:  # a failure, before its request or while reading it: never an exit that reads as a run's success
        os._exit(confine.SETUP_FAILED)


def _rehearse(like: dict[str, Any]) -> None:
    """In a spare, prepared: the steps of its request that read and compute (the request's JSON, the paths
    resolved for the view, the output directories), done once on the last request's spec while nothing waits.
    Code run for the first time in a freshly forked process copies every page it touches: about 90 page faults
    (0.25 ms of CPU) leave the run's path. Nothing is kept, and no path of the request is looked up (the code is
    the same for any path: the spare's own folder stands for each): one on a mount that stopped answering (a
    network file system whose server went away) would hold the spare, and the next run handed to it, for good."""
    try:
        message = json.dumps({"argv": [], "cwd": os.getcwd(), "env": dict(os.environ), "spec": like})
        spec = json.loads(message)["spec"]
        own = os.getcwd()
        paths = [own for _ in [*spec.get("write", []), own, *spec.get("read", [])]]
        json.dumps({"spec": dict(spec), "real": view.resolved(paths)})
        confine.writable_outputs({"write": [own]})
    except (OSError, ValueError, TypeError, RecursionError):
        pass


def _request(channel: socket.socket) -> tuple[bytes, list[int]]:
    """A spare's request (b"" when the launcher is gone). The launcher may close its end before it read the
    spare's word on its standby process: the kernel then reports the reset first, once, and the request still
    waits behind it."""
    for _attempt in range(2):
        try:
            data, fds, _flags, _addr = socket.recv_fds(channel, 1 << 20, 4)
            return data, fds
        except ConnectionResetError:
            continue
    return b"", []


def _batch(waiting: bool) -> None:
    """A spare is a batch process until its request: preparing, it yields to a run's processes (a woken one
    preempts it); waiting, woken by its request, it does not take the launcher's CPU before the launcher has
    answered the server (a woken process may preempt its waker). It is an ordinary process again at once, and so
    is its command."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH if waiting else os.SCHED_OTHER, os.sched_param(0))
    except (OSError, AttributeError):
        pass


class Spare:
    """A keeper forked ahead of time, waiting for the next request: a request handed to it starts its command
    without a fork on the way (the fork was paid while the machine was idle). Made `like` a spec (the last
    request's), it entered the namespaces and made the ruleset such a request needs: it takes only requests of
    the same `flags`."""

    def __init__(self, like: dict[str, Any] | None) -> None:
        self.flags: Flags | None = flags(like) if like is not None else None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:
            ours.close()
            _spare(theirs, like)
        theirs.close()
        self.channel = ours

    def _standby_untouched(self) -> bool:
        """Its standby command process (announced once made, `standby.py`), when it has one: alive and untouched.
        Gone, no command can start in the spare's namespaces any more."""
        try:
            message = self.channel.recv(256, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True  # still preparing: a standby it makes now is new
        try:
            return _untouched(int(json.loads(message)["standby"]), alive=True)
        except (ValueError, KeyError, TypeError):
            return False

    def end(self) -> None:
        """Killed, not only left at the end of its channel: a spare a run stopped would never read that end, and
        would stay, stopped, for the launcher's life (its standby process dies with it)."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass  # gone already (reaped: its pid is not reused while the launcher has not waited for it)
        self.channel.close()

    def fits(self, spec: dict[str, Any]) -> bool:
        return self.flags is None or self.flags == flags(spec)

    def hand_over(self, data: bytes, fds: list[int]) -> bool:
        """Give it the request; False if it is gone (it was killed: the caller forks one instead), or stopped or
        traced (a run reached it: it would never start the command, or not as asked; it is killed)."""
        try:
            if not _untouched(self.pid) or not self._standby_untouched():
                os.kill(self.pid, signal.SIGKILL)
                return False
            socket.send_fds(self.channel, [data], fds)
            return True
        except OSError:
            return False
        finally:
            self.channel.close()


# SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU: a spare that has one pending stops as soon as it runs (a batch process, it
# may not have run since it was sent), before it reads its request.
_STOPPING = sum(1 << (sig - 1) for sig in (signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU))


def _untouched(pid: int, alive: bool = False) -> bool:
    """Whether a spare (or its standby process) is neither stopped (nor about to be: a stop signal pending) nor
    traced (its /proc status; a signal or a tracer could only come from a process of its user, a run among
    them); with `alive`, also whether it still runs (not a zombie, nor gone). The status is read twice: its state
    comes before its pending signals in one reading, and a process that took a stop signal between the two
    lines showed neither; the pending signals of the first reading and the state of the second leave no such
    gap (a signal taken before the second reading has stopped the process by then)."""
    try:
        first = _status(pid)
        fields = _status(pid)
    except OSError:
        return not alive  # gone; or no /proc (not Linux): nothing to tell
    state, tracer = fields.get(b"State", b"").split(), fields.get(b"TracerPid", b"0").strip()
    pending = int(first.get(b"ShdPnd", b"0"), 16) | int(first.get(b"SigPnd", b"0"), 16)
    stopped = not state or state[0] in (b"T", b"t") or (alive and state[0] in (b"Z", b"X"))
    return not stopped and tracer == b"0" and not pending & _STOPPING


def _status(pid: int) -> dict[bytes, bytes]:
    status = keeper_tree.read_proc(f"/proc/{pid}/status")
    return dict(line.split(b":", 1) for line in status.splitlines() if b":" in line)


class Spares:
    """The spare keepers, up to `SPARES` of them (a kept candidate's re-measurement follows its run at once: a
    second spare is ready for it while the first is replaced), each made like the last request."""

    def __init__(self) -> None:
        self.ready: list[Spare] = []
        self.like: dict[str, Any] | None = None  # the last request's spec

    def fill(self) -> None:
        """One spare more, when one is missing (`QUIET_S` says why one at a time)."""
        if len(self.ready) >= SPARES:
            return
        # What every spare prepares the same (the list of block devices, the C library's handles): done here once,
        # each spare forked with it (it only checks /dev is unchanged) instead of each making it anew.
        confine.prepare()
        try:
            self.ready.append(Spare(self.like))
        except OSError:  # no process or socket left for now: a request forks its keeper
            pass

    def take(self, data: bytes, fds: list[int], spec: dict[str, Any]) -> int | None:
        """The pid of a spare that took the request, or None (none that fits is left alive). A spare made for
        another kind of run is ended."""
        self.like = spec
        while self.ready:
            spare = self.ready.pop(0)
            if not spare.fits(spec):
                spare.end()
                continue
            if spare.hand_over(data, fds):
                return spare.pid
        return None

    def discard(self) -> None:
        """End every spare (its standby process with it)."""
        for spare in self.ready:
            spare.end()
        self.ready = []

    def reaped(self, pid: int) -> bool:
        """True when `pid` was a spare (killed before its request): it is dropped."""
        for spare in self.ready:
            if spare.pid == pid:
                spare.channel.close()
                self.ready.remove(spare)
                return True
        return False


def serve(sock_fd: int) -> None:
    """Read start requests (JSON + the output fd) on a SOCK_SEQPACKET socket from the server, answer each with
    the keeper's pid, and report every keeper's exit status. Spare keepers wait for the next requests: forked
    one at a time when nothing else happens (`QUIET_S`), so the fork is off the run's path. When the server goes
    (end of file on the socket), every keeper is told to stop (each ends its whole run) and the launcher leaves."""
    sock = socket.socket(fileno=sock_fd)
    wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only the end of the socket stops the launcher
    keepers: set[int] = set()
    spares = Spares()
    spares.fill()
    mounts = _mount_table()
    # poll, not select: the socket keeps the server's number for it, past 1023 for a server holding many files
    watched = select.poll()
    for fd in (sock_fd, wake_r):
        watched.register(fd, select.POLLIN)
    for fd in mounts:
        watched.register(fd, select.POLLPRI)  # a mount made or taken away (proc(5))

    def send(message: dict[str, Any]) -> None:
        try:
            sock.send(json.dumps(message).encode())
        except OSError:
            pass

    while True:
        try:
            # Spares are forked when nothing else happens (`QUIET_S`): a request that comes meanwhile (a
            # re-measurement right after its run) does not wait for a fork, while the other spare serves it.
            quiet = QUIET_RUNNING_S if keepers else QUIET_S
            wait = None if len(spares.ready) == SPARES else quiet if spares.ready or keepers else 0.0
            events = watched.poll(None if wait is None else math.ceil(wait * 1000))
        except InterruptedError:
            continue
        ready = [fd for fd, _ in events if fd not in mounts]
        changed = [fd for fd, _ in events if fd in mounts]
        if changed:
            # A mount was made or taken away: a standby process holds a copy of every mount as it was (a disk
            # taken away would stay busy in it, one added would be missing), so the spares are made again; and
            # the list of block devices is read again (a device bound over another /dev name leaves /dev's times).
            spares.discard()
            namespaces.forget_block_devices()
        if wake_r in ready:
            for pid, status in _reap(wake_r):
                if not spares.reaped(pid) and pid in keepers:
                    keepers.discard(pid)
                    send({"exit": pid, "status": status})
        if not ready:
            spares.fill()
        if sock_fd not in ready:
            continue
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, 1 << 20, 4)
        except OSError:
            data, fds = b"", []
        if not data:
            break
        try:
            request = json.loads(data)
            if not isinstance(request, dict):
                raise ValueError("not an object")
            asked = request.get("id")  # echoed: the server matches each answer with its request
            if not fds or not isinstance(request.get("spec"), dict):
                raise ValueError("no output descriptor or no spec")
        except (ValueError, RecursionError) as exc:  # nested deeper than Python reads: refused, not the end
            for fd in fds:
                os.close(fd)
            send({"error": f"bad request: {exc}"})
            continue
        taken = spares.take(data, fds, request["spec"])
        try:
            pid = _fork_keeper(request, fds) if taken is None else taken
        except OSError as exc:  # no process left (a run used up its cgroup's): this request fails, not the
            send({"error": f"could not fork a keeper: {exc.strerror}", "id": asked})  # launcher, whose end
            continue  # ends every run
        finally:
            for fd in fds:
                os.close(fd)
        keepers.add(pid)
        send({"pid": pid, "id": asked})
    _stop(keepers, spares)


def _mount_table() -> list[int]:
    """The launcher's mount table, watched (a priority event says it changed), or nothing to watch."""
    try:
        return [os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)]
    except OSError:
        return []


def _reap(wake_r: int) -> list[tuple[int, int]]:
    """After SIGCHLD: every child that ended, with its wait status."""
    try:
        os.read(wake_r, 4096)
    except OSError:
        pass
    ended = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        ended.append((pid, status))
    return ended


def _stop(keepers: set[int], spares: Spares) -> None:
    """The server is gone: every keeper is told to stop (each ends its whole run), every spare is ended (it ran
    nothing; one just forked may not handle SIGTERM yet), and the launcher leaves."""
    for spare in spares.ready:
        spare.end()
        keepers.add(spare.pid)  # waited for with the keepers
    keeper_tree.signal_each(keepers, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while keepers and time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            keepers.discard(pid)
        else:
            time.sleep(0.02)
    os._exit(0)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        confine.fail("usage: forkserver.py FD")
    serve(int(sys.argv[1]))
