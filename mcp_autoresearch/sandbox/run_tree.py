"""A run's process tree: what it holds while it runs (its processes seen, its memory), and its end.

Every descendant seen while sampling is remembered with its creation time, so one that re-parents (a daemon)
is still ended and a reused pid is not. At the end, the command, its descendants, those seen, the process
group, and any orphan re-parented to this process (a child subreaper) that carries the run's environment
marker or the no-new-privileges mark of a confined run, get SIGTERM, then SIGKILL after the grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil

from .exit_waiter import reported
from .launcher import Launched
from .processes import (
    MARKER_PROJECT,
    MARKER_RUN,
    created,
    descendants,
    environment,
    no_new_privs,
    own_children,
)


class RunTree:
    """The processes of one started command (`popen`: the shell, or the keeper that runs it when `kept`)."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes] | Launched,
        run_marker: str,
        project_marker: str,
        kept: bool,
        grace_s: float,
    ) -> None:
        self.popen = popen
        self.run_marker = run_marker
        self.project_marker = project_marker
        self.kept = kept
        self.grace_s = grace_s
        self.peak_rss = 0
        self._seen: dict[int, float] = {}  # pid -> create_time of every descendant observed

    def sample(self) -> None:
        """Record descendants (to kill them later even if they re-parent) and the tree's memory."""
        try:
            shell = psutil.Process(self.popen.pid)
            children = descendants(shell)
        except psutil.Error:
            return
        self._seen.setdefault(shell.pid, created(shell))
        # The keeper is ours, not the run's: its few MB are not the run's memory.
        procs = children if self.kept else [shell, *children]
        total = 0
        for proc in procs:
            try:
                self._seen.setdefault(proc.pid, proc.create_time())
                total += proc.memory_info().rss
            except psutil.Error:
                continue
        self.peak_rss = max(self.peak_rss, total)

    def end(self, final: bool = False) -> int:
        """SIGTERM everything of this run, SIGKILL what is left after the grace period. Returns how many
        processes were still alive (after a normal exit: background processes the command left behind)."""
        procs = self._collect()
        group_alive = self._group_alive()
        if not procs and not group_alive:
            self._reap()
            return 0
        count = len(procs)
        self._signal_group(signal.SIGTERM)
        for proc in procs:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(procs, timeout=self.grace_s)
        for _round in range(3):
            self._signal_group(signal.SIGKILL)
            alive = [p for p in alive if p.is_running()] + [p for p in self._collect() if p not in alive]
            for proc in alive:
                try:
                    proc.kill()
                except psutil.Error:
                    pass
            _, alive = psutil.wait_procs(alive, timeout=1.0)
            if not alive and not self._group_alive():
                break
        self._reap()
        return count if final else 0

    def _collect(self) -> list[psutil.Process]:
        """Every live process that belongs to this run."""
        found: dict[int, psutil.Process] = {}
        own_pid = os.getpid()

        def add(proc: psutil.Process) -> None:
            if proc.pid != own_pid and proc.pid not in found:
                found[proc.pid] = proc

        try:
            shell = psutil.Process(self.popen.pid)
            # A keeper that reported the run's end is ending itself: it is not the run's.
            if shell.status() != psutil.STATUS_ZOMBIE and not reported(self.popen):
                add(shell)
            for child in descendants(shell):
                add(child)
        except psutil.Error:
            pass
        for pid, born in list(self._seen.items()):
            try:
                proc = psutil.Process(pid)
                if abs(proc.create_time() - born) < 0.01:  # same process, not a reused pid
                    add(proc)
            except psutil.Error:
                self._seen.pop(pid, None)
        if self.run_marker:
            for proc in self._marked_candidates():
                add(proc)
        return list(found.values())

    def _marked_candidates(self) -> list[psutil.Process]:
        """Processes of this run that escaped the tree: on Linux, our re-parented children that carry this run's
        marker or the no-new-privileges mark of a supervised run (a daemon can clear its environment, not that
        mark); elsewhere, processes carrying the marker."""
        linux = sys.platform.startswith("linux")
        pool = own_children() if linux else list(psutil.process_iter())
        popen = self.popen
        # The keeper, and the launcher that forked it: ours, never the run's.
        ours = {popen.pid, *([popen.launcher_pid] if isinstance(popen, Launched) else [])}
        result = []
        for proc in pool:
            if proc.pid in ours:
                continue
            if not (linux and self.kept and no_new_privs(proc.pid) and not no_new_privs(os.getpid())):
                env = environment(proc)
                if (
                    env.get(MARKER_RUN) != self.run_marker
                    or env.get(MARKER_PROJECT, "") != self.project_marker
                ):
                    continue
            result.append(proc)
            try:  # with it, what it started: a daemon in a session of its own re-parents here only once it dies
                result += descendants(proc)
            except psutil.Error:
                pass
        return result

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _group_alive(self) -> bool:
        """Whether a process is left in the run's process group (the keeper's: a keeper that reported the run's
        end found none left, and is ending itself)."""
        if reported(self.popen):
            return False
        try:
            os.killpg(self.popen.pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def _reap(self) -> None:
        """Collect the exit status of the shell and of re-parented run processes, so no zombie stays."""
        try:
            self.popen.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
        for pid in list(self._seen):
            if pid == self.popen.pid:
                continue
            try:
                os.waitpid(pid, os.WNOHANG)
            except OSError:  # ChildProcessError included
                pass
