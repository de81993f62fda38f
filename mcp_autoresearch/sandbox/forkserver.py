"""The launcher: a warm, single-threaded process that forks keepers, so a run does not pay an interpreter's start.

Standard library only, like `confine.py` beside it, which it imports by path: the server runs it as
`python -I -S launch_server.py FD`, FD being its end of a SOCK_SEQPACKET socket pair (see `launcher.py` for the
server's side and the protocol).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import confine
else:  # run as a script: confine.py is imported from beside this file, and nothing else of the package
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import confine

    del sys.path[0]


def _start_keeper(request: dict[str, Any], out_fd: int, sock_fd: int, err_fd: int) -> None:
    """In the freshly forked child of the launcher: become the keeper of one command. Never returns."""
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        os.setsid()
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)  # the output's own pipe, unless the request sent one for stderr
        # Nothing of the launcher's stays open: above all not its socket, through which runs are started.
        os.closerange(3, 1 << 16)
        os.chdir(request["cwd"])
    except OSError as exc:
        confine.fail(f"could not prepare the run: {exc}")
    del sock_fd
    confine.keep(request["spec"], request["argv"], request["env"])


def serve(sock_fd: int) -> None:
    """Read start requests (JSON + the output fd) on a SOCK_SEQPACKET socket from the server, answer each with
    the keeper's pid, and report every keeper's exit status. When the server goes (end of file on the socket),
    every keeper is told to stop (each ends its whole run) and the launcher leaves."""
    sock = socket.socket(fileno=sock_fd)
    wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only the end of the socket stops the launcher
    keepers: set[int] = set()

    def send(message: dict[str, Any]) -> None:
        try:
            sock.send(json.dumps(message).encode())
        except OSError:
            pass

    while True:
        try:
            ready, _, _ = select.select([sock_fd, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            try:
                os.read(wake_r, 4096)
            except OSError:
                pass
            while keepers:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                keepers.discard(pid)
                send({"exit": pid, "status": status})
        if sock_fd in ready:
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, 1 << 20, 4)
            except OSError:
                data, fds = b"", []
            if not data:
                break
            try:
                request = json.loads(data)
                out_fd = fds[0]
                err_fd = fds[1] if len(fds) > 1 else out_fd
            except (ValueError, IndexError) as exc:
                for fd in fds:
                    os.close(fd)
                send({"error": f"bad request: {exc}"})
                continue
            pid = os.fork()
            if pid == 0:
                _start_keeper(request, out_fd, sock_fd, err_fd)
            for fd in fds:
                os.close(fd)
            keepers.add(pid)
            send({"pid": pid})
    confine.signal_each(keepers, signal.SIGTERM)
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
        confine.fail("usage: launch_server.py FD")
    serve(int(sys.argv[1]))
