"""How a run's command is started: through the warm launcher (its keeper forked ahead, `launcher.py`), held
before its `exec` until the server's word (`start_gate.py`); where the launcher cannot, by a keeper started
here (the `wrapper`), or by a plain shell where runs are not confined.

The launcher's answer (the keeper's pid) is read only when the run is let go: meanwhile the server records the
run, and the keeper makes the run's view on the other CPU. A launcher that started nothing (no process left in
its cgroup, gone, silent) has the command started here instead, at that moment and not before (never ahead of
the caller's word, never once the run was cancelled), not held, the output's pipe kept open for that until
then.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .launcher import Launched, LauncherError
from .start_gate import StartGate

if TYPE_CHECKING:
    from .launcher import Asked

log = logging.getLogger("mcp_autoresearch")

Wrapper = Callable[[list[str], str], list[str]]  # (argv, private tmpdir) -> argv that runs it supervised
# (argv, cwd, env, output fd, private tmpdir, stderr fd or None: the output's, the gate's fd) -> the launcher's
# request, its answer read later
Launch = Callable[[list[str], Path, dict[str, str], int, str, int | None, int], "Asked"]
Started = subprocess.Popen[bytes] | Launched


class CommandStart:
    """One command's start (`begin`), its process (`process`), and its word to go (`let_go`)."""

    def __init__(self, cwd: Path, launch: Launch | None, wrapper: Wrapper | None) -> None:
        self.cwd = cwd
        self.launch = launch
        self.wrapper = wrapper
        self.gate: StartGate | None = None  # held at its exec until `let_go`
        self._asked: Asked | None = None  # the launcher's answer, not read yet
        self._here: Callable[[], Started] | None = None  # the command started by this process instead
        self._writers: list[int] = []  # the output pipes' writing ends, ours until the command holds them

    def begin(
        self, argv: list[str], env: dict[str, str], out_fd: int, err_fd: int | None, tmpdir: str
    ) -> None:
        """Ask the launcher to start the command, its output on the pipes whose writing ends are `out_fd` and
        `err_fd` (this process's copies are closed once the command holds them, or on a failure), held at its
        gate. Nothing else starts before `process`: where the launcher cannot be asked (none here, or gone),
        the command is started by this process then, never ahead of the caller's word."""
        self._writers = [out_fd, *([err_fd] if err_fd is not None else [])]
        self._here = functools.partial(self._start_here, argv, env, out_fd, err_fd, tmpdir)
        if self.launch is None:
            return
        gate = StartGate()
        try:
            asked = self.launch(argv, self.cwd, env, out_fd, tmpdir, err_fd, gate.their_fd())
        except LauncherError as exc:
            gate.close()
            log.warning("starting the keeper directly: %s", exc)
        except BaseException:
            gate.close()
            self.close()
            raise
        else:
            gate.handed()
            self.gate, self._asked = gate, asked

    def process(self, cancelled: threading.Event) -> Started | None:
        """The command started: by the launcher (held at its gate), else by this process now (not held); None
        when `cancelled` before this process started it. Once only. Raises OSError when it cannot start."""
        try:
            if self._asked is not None:
                asked, self._asked = self._asked, None
                try:
                    return asked.answer()
                except LauncherError as exc:
                    log.warning("starting the keeper directly: %s", exc)
                if self.gate is not None:
                    self.gate.close()
                    self.gate = None
            here, self._here = self._here, None
            if here is None or cancelled.is_set():
                return None
            return here()
        finally:
            self._close_writers()

    def let_go(self, deadline: float, cancelled: threading.Event) -> bool:
        """A held command: once it is ready, the word to go; not at `deadline` nor after a cancel (it then ends
        unrun). Returns whether it was let go."""
        gate, self.gate = self.gate, None
        if gate is None:
            return False
        if gate.wait_ready(deadline, cancelled):
            gate.go()
            return True
        gate.close()
        return False

    def close(self) -> None:
        """Whatever is still held: the gate (a command waiting there ends unrun), an answer not read, the pipes."""
        if self.gate is not None:
            self.gate.close()
            self.gate = None
        if self._asked is not None:
            self._asked.close()
            self._asked = None
        self._here = None
        self._close_writers()

    def _close_writers(self) -> None:
        for fd in self._writers:
            os.close(fd)
        self._writers = []

    def _start_here(
        self, argv: list[str], env: dict[str, str], out_fd: int, err_fd: int | None, tmpdir: str
    ) -> subprocess.Popen[bytes]:
        """Started by this process: under a keeper of its own (the `wrapper`), or a plain shell."""
        if self.wrapper is not None:
            argv = self.wrapper(argv, tmpdir)
        return subprocess.Popen(
            argv,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=out_fd,
            stderr=out_fd if err_fd is None else err_fd,
            env=env,
            start_new_session=True,  # its own process group and session: killable as one
        )
