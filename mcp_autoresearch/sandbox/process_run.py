"""Run one shell command under a hard time limit, capture its output, and leave nothing behind.

The command's stdout and stderr go into a pipe that the thread supervising the run copies into the log file as
output arrives (1 MiB pipe, bounded chunks: a run that prints 1 GB costs disk, not memory). Only what arrived while the command ran
counts: capture stops when the command has ended, or just before a timeout or cancel kills it, so nothing the
run prints afterwards (a SIGTERM handler, a leftover daemon) reaches the log, and the log itself lives where a
confined run cannot write. The capture's sha256 lets the caller prove the file still holds what was captured.

A run can be started (`start`: its logs, TMPDIR, pipes, and the request to the launcher, `command_start.py`)
before it runs (`run`): a command the launcher starts waits right before its `exec` for the word to go, so the
caller records the run meanwhile; its time and its timeout count from that word, its setup left out.

On Linux the command runs under the keeper (`confine.py`): Landlock, a subreaper of its own, and the kill of
whatever the command leaves. This process is a child subreaper too, so a tree whose keeper was killed still
ends here (`run_tree.py`): at the deadline, on cancel, and after a normal exit.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import SessionError
from ..records.atomic import atomic_write, open_own, own_dir
from ..records.logtail import last_line
from . import run_tmpdirs
from .capture import Capture
from .command_start import CommandStart, Launch, Wrapper
from .exit_waiter import ExitWaiter
from .launcher import HIDDEN_FROM_RUNS, Launched
from .processes import MARKER_PROJECT, MARKER_RUN, become_subreaper, other_proc
from .run_tree import RunTree

log = logging.getLogger("mcp_autoresearch")
# "rejected": a remote run whose report cannot be trusted (its log was tampered with, or Ray contradicts it)
ProcessStatus = Literal["exited", "timeout", "cancelled", "failed_to_start", "rejected"]
ProgressCallback = Callable[[float, float, str], None]
SAMPLE_INTERVAL_S = 0.5
DEFAULT_GRACE_S = 3.0
PIPE_BYTES = 1 << 20


@dataclass
class ProcessResult:
    status: ProcessStatus
    exit_code: int | None
    duration_s: float
    peak_rss_bytes: int
    log_path: Path
    error: str | None = None
    leftovers_killed: int = 0
    captured_bytes: int = 0
    captured_sha256: str = ""
    # A remote run (Ray): the size of each `metric_measure` output, measured where it ran, or why it could not be.
    sizes: dict[str, int | str] | None = None
    # What a bounded log left out of the output, in words (`RunLog.summary`); None: the log holds it all.
    output_cut: str | None = None
    # Where the log's part of the output's end begins when some was left out (`RunLog.end_from`): a value is
    # read from there on only. None: the log holds the whole output.
    log_end_from: int | None = None


@dataclass
class ProcessRun:
    """One command, started once. Thread-safe `cancel()`; `run()` blocks until the tree is gone."""

    command: str
    cwd: Path
    log_path: Path
    timeout_s: float
    env: dict[str, str] = field(default_factory=dict)
    run_marker: str = ""
    project_marker: str = ""
    grace_s: float = DEFAULT_GRACE_S
    on_progress: ProgressCallback | None = None
    progress_every_s: float = 2.0
    wrapper: Wrapper | None = None  # the keeper (confinement); None runs `/bin/sh -c` directly
    launch: Launch | None = None  # the same keeper, forked by the warm launcher; the wrapper is the fallback
    # (private tmpdir, environment) -> variables to add, e.g. caches moved into the private tmpdir
    private_env: Callable[[str, dict[str, str]], dict[str, str]] | None = None
    # Where the command's stderr goes, on a pipe of its own (the evaluation stage: only its stdout is read for
    # the metric); None: stderr shares the output's pipe and log.
    stderr_log: Path | None = None
    # The most a log keeps of the output, in bytes (`records/run_log.py`); None: all of it.
    log_limit: int | None = None
    # Where the output's latest bytes are written every `progress_every_s` while a bounded log holds its end in
    # memory (past its beginning the log file stops growing until the end): for readers of the files, the web
    # page's live tail. Removed when the capture ends. None: not written.
    live_tail: Path | None = None

    def __post_init__(self) -> None:
        self._cancel = threading.Event()
        self._cancel_reason = ""
        self._live_tail_written = False
        self._popen: subprocess.Popen[bytes] | Launched | None = None
        self._capture: Capture | None = None
        self._err_capture: Capture | None = None
        self._begun = False  # `start` was called
        self._launched_at = 0.0  # when `start` began (monotonic)
        self._failed: ProcessResult | None = None  # why nothing started
        self._log_fd = self._err_fd = -1
        self._tmpdir = ""
        self._starting = CommandStart(self.cwd, None, None)  # its start (through the launcher: held, `run`)

    def cancel(self, reason: str = "cancelled") -> None:
        self._cancel_reason = reason
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    # -- running --------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Everything up to the command's `exec`, where it then waits for `run` (the launcher's keepers: a
        `StartGate`): its logs, TMPDIR, pipes and process; the caller may record the run meanwhile. Once only;
        `run` calls it when no one did. A started run is always `run` (or cancelled, then `run`): that ends it
        and frees what it holds."""
        if self._begun:
            return
        self._begun = True
        self._launched_at = time.monotonic()
        try:
            self._failed = self._begin()
        except BaseException:
            self._release()
            raise

    def _begin(self) -> ProcessResult | None:
        """`start`'s work: None, or why nothing started."""
        become_subreaper()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {key: value for key, value in os.environ.items() if key not in HIDDEN_FROM_RUNS}
        env.update(self.env)
        if self.run_marker:
            env[MARKER_RUN] = self.run_marker
        if self.project_marker:
            env[MARKER_PROJECT] = self.project_marker
        flags = os.O_RDWR | os.O_TRUNC
        self._log_fd = log_fd = open_own(self.log_path, flags)
        try:
            if self.stderr_log is not None:  # stderr's own log, made before anything starts
                self._err_fd = open_own(self.stderr_log, flags)
            self._tmpdir = tmpdir = run_tmpdirs.make()
        except OSError as exc:  # the temporary directory removed, full or read-only since the server started
            if self._err_fd < 0 and self.stderr_log is not None:
                reason = f"could not make the log {self.stderr_log}: {exc.strerror or exc}"
            else:
                reason = run_tmpdirs.not_made(exc)
            return self._not_started(reason)
        for name in ("TMPDIR", "TMP", "TEMP"):
            env[name] = tmpdir
        if self.private_env is not None:
            env.update(self.private_env(tmpdir, env))
        if self._cancel.is_set():
            return ProcessResult("cancelled", None, 0.0, 0, self.log_path, self._cancel_reason)
        if (why := other_proc()) is not None:
            return self._not_started(why)
        read_fd, write_fd = os.pipe()  # not inherited (PEP 446); os.pipe2 is Linux-only
        err_read, err_write = os.pipe() if self.stderr_log is not None else (-1, -1)
        try:
            fcntl.fcntl(write_fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
        except OSError:
            pass  # the default pipe size only costs more wake-ups
        self._starting = CommandStart(self.cwd, self.launch, self.wrapper)
        try:
            argv = ["/bin/sh", "-c", self.command]
            err = err_write if err_write >= 0 else None
            self._starting.begin(argv, env, write_fd, err, tmpdir)  # (it closes both writers)
        except OSError as exc:
            os.close(read_fd)
            if err_read >= 0:
                os.close(err_read)
            return self._not_started(f"could not start the command: {exc}", str(exc))
        self._capture = Capture(read_fd, log_fd, self.log_limit)
        if err_read >= 0:
            self._err_capture = Capture(err_read, self._err_fd, self.log_limit)
            self._err_fd = -1  # the capture's now
        return None

    def _not_started(self, why: str, error: str | None = None) -> ProcessResult:
        os.write(self._log_fd, f"autoresearch: {why}\n".encode())
        return ProcessResult("failed_to_start", None, 0.0, 0, self.log_path, error or why)

    def run(self) -> ProcessResult:
        """The command run to its end (started first, unless `start` did), timed from its word to go."""
        self.start()
        try:
            if self._failed is not None:
                return self._failed
            try:
                self._popen = self._starting.process(self._cancel)
            except OSError as exc:
                return self._not_started(f"could not start the command: {exc}", str(exc))
            if self._popen is None:  # cancelled before it was started
                return ProcessResult("cancelled", None, 0.0, 0, self.log_path, self._cancel_reason)
            tree = RunTree(self._popen, self.run_marker, self.project_marker, self._kept, self.grace_s)
            started = self._let_go()
            status, exit_code = self._supervise(tree, started)
            duration = time.monotonic() - started
            self._cut()
            leftovers = tree.end(final=True)
            error = None
            if status == "timeout":
                error = f"killed after the {self.timeout_s:g} s timeout"
            elif status == "cancelled":
                error = self._cancel_reason or "cancelled"
            capture = self._capture
            assert capture is not None
            return ProcessResult(
                status,
                exit_code,
                duration,
                tree.peak_rss,
                self.log_path,
                error,
                leftovers,
                capture.size,
                capture.sha256,
                output_cut=self._output_cut(),
                log_end_from=capture.log.end_from,
            )
        finally:
            self._release()

    def _let_go(self) -> float:
        """A held command: once it is ready, the word to go (not at the deadline, nor after a cancel: it then
        ends unrun, and the supervision reports why). Returns when the run's time starts."""
        if self._starting.gate is None:  # started by this process just now: timed from here
            return time.monotonic()
        if self._starting.let_go(self._launched_at + self.timeout_s, self._cancel):
            return time.monotonic()
        return self._launched_at  # the supervision sees the deadline passed, or the cancel

    def _release(self) -> None:
        """What a started run holds, freed (its log kept visible)."""
        self._cut()
        self._starting.close()
        if isinstance(self._popen, Launched):
            self._popen.close()
        if self._log_fd >= 0:
            self._keep_log_visible(self._log_fd)
            os.close(self._log_fd)
            self._log_fd = -1
        if self._err_capture is not None:
            os.close(self._err_capture.log_fd)
            self._err_capture = None
        elif self._err_fd >= 0:
            os.close(self._err_fd)
        self._err_fd = -1
        if self._tmpdir:
            run_tmpdirs.remove(self._tmpdir)
            self._tmpdir = ""

    def _output_cut(self) -> str | None:
        """What the bounded logs left out (the output's, and stderr's where it has a log of its own)."""
        said = [
            capture.log.summary(what)
            for capture, what in ((self._capture, "the command"), (self._err_capture, "its stderr"))
            if capture is not None
        ]
        return "; ".join(line for line in said if line) or None

    def _cut(self) -> None:
        for capture in (self._capture, self._err_capture):
            if capture is not None:
                capture.cut()
        if self.live_tail is not None and self._live_tail_written:
            with contextlib.suppress(OSError):
                self.live_tail.unlink()

    def _write_live_tail(self) -> None:
        """The output's latest bytes beside the log, while the log's file no longer shows them (see `live_tail`)."""
        capture = self._capture
        if self.live_tail is None or capture is None or not capture.log.cutting or capture.read_fd < 0:
            return
        try:
            atomic_write(self.live_tail, capture.log.recent(), 0o644, sync=False)
            self._live_tail_written = True
        except OSError:
            pass  # a full disk: only the page's live tail waits

    @property
    def _kept(self) -> bool:
        """The command runs under a keeper (ours, not the run's)."""
        return self.launch is not None or self.wrapper is not None

    def _supervise(self, tree: RunTree, started: float) -> tuple[ProcessStatus, int | None]:
        popen = tree.popen
        deadline = started + self.timeout_s
        next_progress = started + self.progress_every_s
        wait_step = 0.05  # first checks are quick so trivial commands return fast
        exited = ExitWaiter(popen)
        try:
            return self._supervise_loop(tree, started, deadline, next_progress, wait_step, exited)
        finally:
            exited.close()

    def _supervise_loop(
        self,
        tree: RunTree,
        started: float,
        deadline: float,
        next_progress: float,
        wait_step: float,
        exited: ExitWaiter,
    ) -> tuple[ProcessStatus, int | None]:
        while True:
            now = time.monotonic()
            # A killed run has no meaningful exit code (and psutil may have collected it already).
            if self._cancel.is_set():
                self._cut()  # nothing printed while being killed counts
                tree.end()
                return "cancelled", None
            if now >= deadline:
                self._cut()
                tree.end()
                return "timeout", None
            captures = [c for c in (self._capture, self._err_capture) if c is not None]
            if exited.wait(min(wait_step, max(0.0, deadline - now)), captures):
                try:
                    return "exited", tree.popen.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    pass
            wait_step = SAMPLE_INTERVAL_S
            tree.sample()
            if time.monotonic() < next_progress:
                continue
            next_progress = time.monotonic() + self.progress_every_s
            self._write_live_tail()
            if self.on_progress:
                try:
                    recent = self._capture.log.recent() if self._capture is not None else b""
                    line = last_line(self.log_path, recent=recent)
                    self.on_progress(time.monotonic() - started, self.timeout_s, line)
                except Exception:  # a failing progress consumer must never break the run
                    pass

    def _keep_log_visible(self, log_fd: int) -> None:
        """A run may delete its own log file or the log directory; restore it from our still-open descriptor."""
        try:
            # Never through a symlink the run left in the log's folders: it would carry the write elsewhere.
            relative = self.log_path.parent.relative_to(self.cwd).as_posix()
            parent = own_dir(self.cwd, relative, replace_links=True)
            if os.path.lexists(parent / self.log_path.name):
                return
            os.lseek(log_fd, 0, os.SEEK_SET)
            with os.fdopen(os.dup(log_fd), "rb") as src:
                atomic_write(parent / self.log_path.name, iter(lambda: src.read(1 << 20), b""), 0o644)
        except (OSError, ValueError, SessionError):
            pass
