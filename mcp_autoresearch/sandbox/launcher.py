"""The server's side of the launcher: start each command of a run under a keeper without paying for a new
interpreter every time.

`forkserver.py` is a small, single-threaded process started once per server (on the first run). For each
command it forks a keeper (see `confine.py`) that confines and supervises the command; a fork of a warm process
costs about a millisecond where starting the keeper's interpreter costs ten or more, and even that fork is made
ahead of time: two spare keepers wait for the next requests, so a command starts without a fork on its way (see
BENCHMARKS.md). The server talks to it over
a socket pair: a request carries the argv, directory, environment, confinement spec and the output pipe's fd;
the answer is the keeper's pid; later, its exit status. When the server dies, the launcher sees the socket close
and stops every keeper (each ends its whole run). If the launcher is gone (a run killed it, where runs are not
confined), the next command starts a new one, and a command whose launcher died is reported as ended.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from .confine import KeeperSpec
from .readiness import ready_to_read

log = logging.getLogger("mcp_autoresearch")
SERVER_SCRIPT = Path(__file__).with_name("forkserver.py")
# The server's secrets never reach a run, nor the launcher and keepers, whose environment a run could read.
HIDDEN_FROM_RUNS = ("AUTORESEARCH_TOKEN",)
ANSWER_WAIT_S = 10.0  # how long a request's answer is waited for before the launcher counts as silent


class LauncherError(Exception):
    """The launcher could not start a command; the caller falls back to starting the keeper directly."""


class Launched:
    """A command started through the launcher, with the part of `subprocess.Popen` the runner uses. Its exit
    code comes from the keeper's report on `report_fd`, written once the whole run has ended and before the
    keeper's own exit (which takes longer), or else from the launcher's report of the keeper's exit."""

    def __init__(self, launcher: Launcher, pid: int, report_fd: int = -1) -> None:
        self._launcher = launcher
        self.pid = pid
        self.returncode: int | None = None
        self.report_fd = report_fd
        self.reported = False  # the code came from the keeper's report: the keeper itself may still be ending

    @property
    def launcher_pid(self) -> int:
        return self._launcher.process.pid

    def poll(self) -> int | None:
        if self.returncode is None and self.report_fd >= 0 and _readable(self.report_fd, 0.0):
            self._read_report()
        if self.returncode is None:
            self.returncode = self._launcher.exit_code(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            remaining = None if end is None else end - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise subprocess.TimeoutExpired(f"keeper {self.pid}", timeout or 0.0)
            if self.report_fd >= 0:
                _readable(self.report_fd, 0.5 if remaining is None else min(remaining, 0.5))
            else:
                self._launcher.wait_event(self.pid, remaining)
        return self.returncode

    def _read_report(self) -> None:
        """The keeper's report (its exit code), or its end of the pipe closed without one (it was killed: the
        launcher's report says how it ended)."""
        try:
            data = os.read(self.report_fd, 64)
        except OSError:
            data = b""
        self.close()
        try:
            code = int(data.strip()) if data.endswith(b"\n") else None
        except ValueError:
            code = None
        if code is not None and -64 <= code <= 255:
            self.returncode, self.reported = code, True
            self._launcher.forget(self.pid)

    def close(self) -> None:
        if self.report_fd >= 0:
            os.close(self.report_fd)
            self.report_fd = -1


class Asked:
    """A request sent to the launcher, its answer not read yet (`Launcher.ask`): the caller goes on meanwhile
    (the request is handed to a spare keeper, which makes the run's view, on the other CPU)."""

    def __init__(self, launcher: Launcher, request_id: int, report_fd: int) -> None:
        self._launcher = launcher
        self._request_id = request_id
        self._report_fd = report_fd

    def answer(self) -> Launched:
        """The command started (its keeper's pid known); `LauncherError` when the launcher started none."""
        try:
            reply = self._launcher.reply(self._request_id)
        except BaseException:
            self.close()
            raise
        if "pid" not in reply:
            self.close()
            raise LauncherError(str(reply.get("error", reply)))
        report_fd, self._report_fd = self._report_fd, -1
        return Launched(self._launcher, int(reply["pid"]), report_fd)

    def close(self) -> None:
        if self._report_fd >= 0:
            os.close(self._report_fd)
            self._report_fd = -1


def _readable(fd: int, timeout: float) -> bool:
    return bool(ready_to_read([fd], timeout))


class Launcher:
    """One launcher process per server process, started on first use and restarted when it died."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-S", str(SERVER_SCRIPT), str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                env={key: value for key, value in os.environ.items() if key not in HIDDEN_FROM_RUNS},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            raise LauncherError(f"could not start the launcher: {exc}") from None
        finally:
            theirs.close()
        self.sock = ours
        self._send_lock = threading.Lock()
        self._changed = threading.Condition()
        self._replies: dict[int, dict[str, Any]] = {}  # by request id
        self._unanswered: list[int] = []  # the requests sent, oldest first, their answer not come yet
        self._last_id = 0
        self._abandoned: set[int] = (
            set()
        )  # requests given up on (no answer in time): a late answer is dropped
        self._exits: dict[int, int] = {}
        self._forgotten: set[int] = set()
        self.alive = True
        threading.Thread(target=self._read, name="launcher-reader", daemon=True).start()
        atexit.register(self._wake_to_leave)

    def _wake_to_leave(self) -> None:
        """As this process leaves: the launcher is told (the end of its socket) and woken, in case a run stopped
        it (an unconfined run can: same user). Stopped, it would never read that end, and stay for good."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self.process.poll() is None:  # not reaped: its pid is still its own
            try:
                os.kill(self.process.pid, signal.SIGCONT)
            except OSError:
                pass

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                data = b""
            with self._changed:
                if not data:
                    self.alive = False
                    self._changed.notify_all()
                    return
                message = json.loads(data)
                if "exit" in message:
                    pid = int(message["exit"])
                    if pid in self._forgotten:  # its keeper reported the code already
                        self._forgotten.discard(pid)
                    else:
                        self._exits[pid] = int(message["status"])
                else:
                    asked = message.get("id")
                    if asked in self._abandoned:  # too late: its command runs nothing (its gate is closed)
                        self._abandoned.discard(asked)
                        asked = None
                    elif asked not in self._unanswered:  # (a request the launcher could not read)
                        asked = self._unanswered[0] if self._unanswered else None
                    if asked is not None:
                        self._unanswered.remove(asked)
                        self._replies[asked] = message
                self._changed.notify_all()

    def spawn(
        self,
        argv: list[str],
        cwd: Path,
        env: dict[str, str],
        out_fd: int,
        spec: KeeperSpec,
        err_fd: int | None = None,
        gate_fd: int | None = None,
    ) -> Launched:
        """Start `argv` under a keeper with `spec`: its stdout (and stderr, unless `err_fd`) on `out_fd`; with
        `gate_fd`, held before its `exec` until the word to go comes through that gate (`start_gate`)."""
        return self.ask(argv, cwd, env, out_fd, spec, err_fd, gate_fd).answer()

    def ask(
        self,
        argv: list[str],
        cwd: Path,
        env: dict[str, str],
        out_fd: int,
        spec: KeeperSpec,
        err_fd: int | None = None,
        gate_fd: int | None = None,
    ) -> Asked:
        """`spawn`, its answer read later (`Asked.answer`): the request is sent, the keeper starts meanwhile."""
        report_r, report_w = os.pipe()  # the keeper's report of the run's end (not inherited: PEP 446)
        fds = [
            out_fd,
            out_fd if err_fd is None else err_fd,
            report_w,
            *([gate_fd] if gate_fd is not None else []),
        ]
        try:
            with self._send_lock:
                self._last_id += 1
                asked = self._last_id
                request = {"argv": argv, "cwd": str(cwd), "env": env, "spec": spec, "id": asked}
                with self._changed:
                    self._unanswered.append(asked)
                try:
                    socket.send_fds(self.sock, [json.dumps(request).encode()], fds)
                except OSError as exc:
                    with self._changed:
                        self._unanswered.remove(asked)
                    raise LauncherError(f"the launcher is gone ({exc})") from None
        except BaseException:
            os.close(report_r)
            raise
        finally:
            os.close(report_w)
        return Asked(self, asked, report_r)

    def reply(self, asked: int) -> dict[str, Any]:
        """The launcher's answer to request `asked` (`LauncherError` when it is gone, or silent for
        `ANSWER_WAIT_S`)."""
        with self._changed:
            end = time.monotonic() + ANSWER_WAIT_S
            while asked not in self._replies and self.alive and time.monotonic() < end:
                self._changed.wait(end - time.monotonic())
            if asked not in self._replies:
                if asked in self._unanswered:
                    self._unanswered.remove(asked)
                    self._abandoned.add(asked)
                raise LauncherError("the launcher did not answer" if self.alive else "the launcher is gone")
            return self._replies.pop(asked)

    def forget(self, pid: int) -> None:
        """Its keeper reported the exit code: the launcher's later report of the keeper's exit is dropped."""
        with self._changed:
            if self._exits.pop(pid, None) is None:
                self._forgotten.add(pid)

    def exit_code(self, pid: int) -> int | None:
        """The keeper's exit code once it ended (read once: `Launched` keeps it), else None."""
        with self._changed:
            status = self._exits.pop(pid, None)
            alive = self.alive
        if status is not None:
            return os.waitstatus_to_exitcode(status)
        if not alive and not _running(pid):
            return -9  # the launcher died and took this keeper's status with it: it was killed
        return None

    def wait_event(self, pid: int, timeout: float | None) -> None:
        with self._changed:
            if pid not in self._exits and self.alive:
                self._changed.wait(0.5 if timeout is None else min(timeout, 0.5))


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


_lock = threading.Lock()
_launcher: Launcher | None = None


def launcher() -> Launcher:
    """The server's launcher, started (again) when needed."""
    global _launcher
    with _lock:
        if _launcher is None or not _launcher.alive or _launcher.process.poll() is not None:
            _launcher = Launcher()
        return _launcher


def running_pid() -> int | None:
    """The pid of this process's launcher while it runs (none is started): no other process can take that pid
    before this process reaps the launcher."""
    with _lock:
        current = _launcher
    if current is None or current.process.returncode is not None:
        return None
    return current.process.pid
