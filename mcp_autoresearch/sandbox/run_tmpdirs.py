"""A run's private TMPDIR: made in the system's temporary directory under a name that says which process made it
(its PID namespace, pid and start time), removed after the run without following a link, and, when that process
was killed before it could remove it, removed by the next server of the same user (`sweep`).

Standard library only. A run may leave its TMPDIR in any state: links (unlinked, never followed), a tree deeper
than Python's recursion or a process's descriptors reach (walked one folder at a time, removed by `rm -rf`),
directories it made unwritable or unreadable (their owner's rights given back first, through a descriptor opened
without following a link).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING or __package__:
    from . import namespaces
else:  # imported by path, as the keeper's modules are
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import namespaces

    del sys.path[0]

log = logging.getLogger("mcp_autoresearch")

PREFIX = "autoresearch-run-"

_own: dict[int, str] = {}  # pid -> its part of the names ("<pid namespace>-<pid>-<start time>")


def _started(pid: int | str) -> int | None:
    """When process `pid` started (clock ticks after boot), or None when it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return int(handle.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _pid_namespace() -> int | None:
    """This process's PID namespace, or None when /proc is another one's (a PID namespace made without its own
    /proc: its pids there are not this namespace's, and a live process would look gone)."""
    try:
        if os.readlink("/proc/self") != str(os.getpid()):
            return None
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _owner_part() -> str:
    pid = os.getpid()
    part = _own.get(pid)
    if part is None:
        namespace, started = _pid_namespace(), _started("self")
        part = "" if namespace is None or started is None else f"{namespace}-{pid}-{started}-"
        _own[pid] = part
    return part


def make() -> str:
    """A new private TMPDIR for one run (mode 0700), named for this process (see `sweep`)."""
    return tempfile.mkdtemp(prefix=PREFIX + _owner_part())


def hidden_parent(cwd: Path, project: Path) -> list[str]:
    """The folder every run's TMPDIR is made in, for the view to hide (each run's own shown again, as one beneath
    /tmp is): where $TMPDIR leads the server elsewhere than /tmp, other runs' TMPDIRs (another slot's, an
    evaluation's) would be in reach. Not the root, and not a folder that holds both the run's working directory
    and the session's project (TMPDIR=$HOME: hiding it would hide the toolchains and caches there; a slot's
    checkout or a project alone beneath it is shown again)."""
    parent = os.path.realpath(tempfile.gettempdir())
    hidden_already = ("/tmp", "/var/tmp", "/dev/shm", "/run", "/var/run")
    if parent == "/" or any(parent == top or parent.startswith(top + "/") for top in hidden_already):
        return []

    def holds(path: Path) -> bool:
        real = os.path.realpath(path)
        return real == parent or real.startswith(parent.rstrip("/") + "/")

    return [] if holds(cwd) and holds(project) else [parent]


def not_made(exc: OSError) -> str:
    """Why no run's TMPDIR could be made (`make` raised `exc`), and what to do."""
    return (
        f"could not make the run's temporary directory in {tempfile.gettempdir()}: "
        f"{exc.strerror or exc}; make room there or make the directory again (the server chose it when it "
        "started, from $TMPDIR, else /tmp), or restart the server with TMPDIR set to a writable directory"
    )


def remove(path: str) -> None:
    """Remove a run's TMPDIR once nothing of the run is left (links in it are unlinked, never followed)."""
    try:
        os.rmdir(path)  # most runs leave it empty: one system call
        return
    except FileNotFoundError:
        return
    except OSError:
        pass
    if namespaces.mounts_under(os.path.realpath(path), including=True):
        # A mount in it (only a run with the right to mount, unconfined, can make one: a bind of / there would
        # have its files removed through it): left as it is.
        log.warning("left the run's temporary directory %s: a file system is mounted in it", path)
        return
    _rmtree(path)
    if os.path.lexists(
        path
    ):  # a directory the run made unwritable or unreadable: its rights back, then again
        give_tree_rights_back(path)
        _rmtree(path)
    if os.path.lexists(path):
        log.warning("could not remove the run's temporary directory %s", path)


def _rmtree(path: str) -> None:
    try:
        shutil.rmtree(path, ignore_errors=True)
    except RecursionError:
        pass
    if os.path.lexists(path):  # deeper than Python's recursion or descriptors reach: rm does not recurse
        try:
            subprocess.run(
                ["rm", "-rf", "--", path], stdin=subprocess.DEVNULL, capture_output=True, timeout=120
            )
        except (OSError, subprocess.SubprocessError):
            pass


def give_tree_rights_back(path: str) -> None:
    """Owner read, write and search on `path` and every directory below it, each opened without following a link
    (O_PATH, O_NOFOLLOW) and changed through that descriptor's /proc name: a link is never changed nor
    followed. Depth first with one directory open at a time (a run can make a tree deeper than the recursion and
    the descriptors of a process), back up through "..", which must be the directory left (else it stops: the
    tree was moved meanwhile)."""
    _grant(None, path)
    try:
        fd = os.open(path, _DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    above: list[tuple[tuple[int, int], list[str]]] = []  # each directory on the way down, its subfolders left
    try:
        left = _subfolders(fd)
        while True:
            if left:
                name = left.pop()
                _grant(fd, name)
                try:
                    child = os.open(name, _DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError:
                    continue
                above.append((_identity(fd), left))
                os.close(fd)
                fd, left = child, _subfolders(child)
            elif above:
                identity, left = above.pop()
                parent = os.open("..", _DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = parent
                if _identity(fd) != identity:
                    return
            else:
                return
    except OSError:
        pass
    finally:
        os.close(fd)


_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def _identity(fd: int) -> tuple[int, int]:
    found = os.fstat(fd)
    return found.st_dev, found.st_ino


def _subfolders(fd: int) -> list[str]:
    """The names of the directories in the directory open as `fd` (links not counted)."""
    try:
        with os.scandir(fd) as entries:
            return [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _grant(dir_fd: int | None, name: str) -> None:
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode) and os.fstat(fd).st_uid == os.geteuid():
            os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(mode) | stat.S_IRWXU)
    except OSError:
        pass
    finally:
        os.close(fd)


def sweep(base: str | None = None) -> list[str]:
    """Remove the run TMPDIRs in `base` (the system's temporary directory) left by processes of this user that are
    gone (killed before they could remove them), and return their paths. Only folders named as `make` names them,
    in this PID namespace (a pid of another one says nothing here; none at all where /proc is another one's),
    owned by this user, whose process is gone or is another that reused its pid (its start time differs): a live
    server's runs, another user's folders, a link and anything else are left as they are."""
    base = base or tempfile.gettempdir()
    namespace = _pid_namespace()
    removed: list[str] = []
    if namespace is None:
        return removed
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(PREFIX):
            continue
        owner = _owner(entry.name[len(PREFIX) :])
        if owner is None or owner[0] != namespace:
            continue
        try:
            found = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.geteuid():
            continue
        now = _started(owner[1])
        if now == owner[2] or (now is None and os.path.exists(f"/proc/{owner[1]}")):
            continue  # alive (or unreadable: perhaps alive)
        remove(entry.path)
        if not os.path.lexists(entry.path):
            removed.append(entry.path)
    return removed


def _owner(rest: str) -> tuple[int, int, int] | None:
    """(PID namespace, pid, start time) of a name's rest after the prefix, or None for another shape."""
    parts = rest.split("-")
    if len(parts) != 4 or not all(part.isascii() and part.isdigit() for part in parts[:3]):  # not "²", "١"
        return None
    return int(parts[0]), int(parts[1]), int(parts[2])
