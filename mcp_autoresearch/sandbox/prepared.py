"""A spare keeper's head start: the Landlock ruleset and the namespaces of the next run, made while the spare
waits, from the spec of the launcher's last request, and used only for a request that asks for the same.

Standard library only, like `confine.py`, which imports it by path. The namespaces can only be entered for a
request with the same flags (the launcher hands a spare only such requests, `flags`); the ruleset only stands
when every path it allows is still asked for and is still the same file (device and inode, as Landlock's rules
hold files, not names), the request's other paths then added: else a new ruleset is built, as without a spare.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from . import namespaces
    from .landlock import ConfineError, allow_beneath, allow_file, build_ruleset
    from .standby import RunCommand, Standby
else:  # run as a script's sibling: imported by path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import namespaces
    from landlock import ConfineError, allow_beneath, allow_file, build_ruleset
    from standby import RunCommand, Standby

    del sys.path[0]

Flags = tuple[bool, bool, bool, bool]


def flags(spec: Any) -> Flags:
    """What a spare's preparation must match: Landlock, its signal scope, the view, the network."""
    return (
        bool(spec.get("landlock")),
        bool(spec.get("scope_signal", True)),
        bool(spec.get("view")),
        bool(spec.get("network", True)),
    )


def _identity(path: str) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _namespace() -> str:
    """This process's IPC namespace (a spare always enters a new one with the others)."""
    try:
        return os.readlink("/proc/self/ns/ipc")
    except OSError:
        return ""


class Prepared:
    """What a spare made for a request like `spec`. `error`: why it could not (the keeper makes it
    all anew when it entered no namespaces, else fails alike)."""

    def __init__(self, spec: Any, run_command: RunCommand | None = None) -> None:
        self.flags = flags(spec)
        # Its command process, forked ahead with the view made (`standby.py`), given `run_command`.
        self.standby: Standby | None = None
        self.ruleset, self.abi = -1, 0
        # path -> the file the ruleset allows, held open (its identity read from the very descriptor the rule
        # was made from; a file deleted since is known by its link count)
        self.allowed: dict[str, int] = {}
        self.error = ""
        # Whether it is in namespaces of its own (failed or not: they cannot be entered again).
        self.entered = False
        landlock, scope_signal, view, network = self.flags
        if landlock:
            try:
                self.ruleset, self.abi = build_ruleset([], scope_signal)
                for path in spec.get("write", []):
                    try:
                        target = os.open(path, os.O_PATH | os.O_CLOEXEC)
                    except OSError:
                        continue  # nothing there to allow (yet)
                    self.allowed[path] = target
                    allow_file(self.ruleset, self.abi, target, path)
            except ConfineError as exc:
                self.ruleset = -1  # closed by the failure
                self.error = str(exc)
                return
        if view:
            own = _namespace()
            try:
                namespaces.enter_keeper(network)
            except namespaces.ViewError as exc:
                self.error = f"namespaces: {exc}"
            self.entered = _namespace() != own
            if run_command is not None and self.entered and not self.error:
                try:
                    self.standby = Standby(spec, run_command)
                except OSError:
                    pass  # no process left for now: the keeper forks its command with the request

    def afresh(self) -> bool:
        """Whether its failure may be left behind: nothing was entered, so a keeper may make all of it anew
        (what failed may have passed: a path since changed, namespaces the run before held)."""
        self._drop()
        return not self.entered

    def _drop(self) -> None:
        if self.ruleset >= 0:
            os.close(self.ruleset)
            self.ruleset = -1
        for target in self.allowed.values():
            os.close(target)
        self.allowed = {}

    def ruleset_for(self, write: list[str]) -> tuple[int, int] | None:
        """The ruleset allowing exactly `write` (the prepared one, completed), or None (the caller builds a new
        one) when it allows a file that is not the one at a path asked for now, or a path not asked for that
        still exists (an earlier run's TMPDIR, deleted after that run, reaches nothing: it is left)."""
        if self.ruleset < 0:
            return None
        for path, target in self.allowed.items():
            held = os.fstat(target)
            if path in write:
                if _identity(path) != (held.st_dev, held.st_ino):
                    self._drop()
                    return None
            elif held.st_nlink > 0:  # not asked for, and still reachable somewhere
                self._drop()
                return None
        try:
            allow_beneath(self.ruleset, self.abi, [path for path in write if path not in self.allowed])
        except ConfineError:
            self.ruleset = -1  # allow_beneath closed it
            self._drop()
            return None
        ruleset, self.ruleset = self.ruleset, -1
        self._drop()
        return ruleset, self.abi
