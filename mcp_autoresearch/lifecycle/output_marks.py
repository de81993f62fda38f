"""What a run may leave on an output directory itself: the directory stays from run to run (only what it holds is
moved aside, `fresh_outputs.make_fresh`), so its extended attributes, times and mode would carry a message from
one run to the next. `clear_marks` takes them off before each run, and replaces a directory the run grew (ext4
never shrinks one: its size, a block more per run, would count the runs)."""

from __future__ import annotations

import array
import contextlib
import fcntl
import glob
import os
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

_lock = threading.Lock()
# An output directory (its real path) -> its mode, the attributes below and its inode flags (`chattr`'s) when the
# server first made it fresh.
_first: dict[str, tuple[int, dict[str, bytes], int | None]] = {}
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS = 0x80086601, 0x40086602
# The extended attributes a run may set on a directory it owns (no capability needed): its own, and an ACL.
_RUN_SET_ATTRIBUTES = ("user.", "system.posix_acl_")


def clear_marks(path: Path) -> None:
    """What a run may leave on the output directory `path` itself, which stays from run to run, is put back as
    the server first found it (in this process: the user's own ACL stays): its `user.*` extended attributes and
    ACLs, its mode (the owner's rights given back); its times are set to now; its size, where a file system
    never shrinks a directory, by a new empty one in its place. The next run would read them, a message from one
    run to the next (its count of runs, say). Opened without following a link; what cannot be done is left (an
    attribute a file system does not keep was never set)."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        found = os.fstat(fd)
        if found.st_uid != os.geteuid():
            return
        with _lock:
            first = _first.get(os.path.realpath(path))
            if first is None:
                at = f"/proc/self/fd/{fd}"
                first = _first[os.path.realpath(path)] = (
                    stat.S_IMODE(found.st_mode) | stat.S_IRWXU,
                    _attributes(at),
                    _flags(at),
                )
        fd, found = _shrunk(path, fd, found)
        _put_back(f"/proc/self/fd/{fd}", found, first)
    finally:
        os.close(fd)


def _put_back(at: str, found: os.stat_result, first: tuple[int, dict[str, bytes], int | None]) -> None:
    """The directory `at` (found as `found`) given the mode, attributes and inode flags `first`, and times now."""
    mode, attributes, first_flags = first
    now, flags = _attributes(at), _flags(at)
    if first_flags is not None and flags != first_flags:
        _flags(at, first_flags)
    for name in now.keys() - attributes.keys():
        _try(os.removexattr, at, name)
    for name, value in attributes.items():
        if now.get(name) != value:
            _try(os.setxattr, at, name, value)
    if stat.S_IMODE(found.st_mode) != mode:
        _try(os.chmod, at, mode)
    _try(os.utime, at)


def _shrunk(path: Path, fd: int, found: os.stat_result) -> tuple[int, os.stat_result]:
    """The emptied directory `path` (open as `fd`), or, when it is larger than a new empty one beside it (a
    file system that never shrinks a directory), that new one in its place (`fd` closed, the new one opened).
    Empty ones a server killed meanwhile left beside it are removed (`rmdir`: never anything they hold)."""
    for left in path.parent.glob(f".{glob.escape(path.name)}.fresh-*"):
        with contextlib.suppress(OSError):
            os.rmdir(left)
    try:
        fresh = tempfile.mkdtemp(prefix=f".{path.name}.fresh-", dir=path.parent)
    except OSError:
        return fd, found
    try:
        if os.stat(fresh).st_size >= found.st_size:
            return fd, found
        _try(os.chown, fresh, -1, found.st_gid)
        os.rename(fresh, path)  # replaces the empty directory; fails when a file appeared there
    except OSError:
        return fd, found
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(fresh)
    try:
        new = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return fd, found
    os.close(fd)
    return new, os.fstat(new)


def _attributes(at: str) -> dict[str, bytes]:
    """The extended attributes of `at` a run may set, with their values."""
    found: dict[str, bytes] = {}
    with contextlib.suppress(OSError):
        for name in os.listxattr(at):
            if name.startswith(_RUN_SET_ATTRIBUTES):
                with contextlib.suppress(OSError):
                    found[name] = os.getxattr(at, name)
    return found


def _try(call: Callable[..., None], *args: object) -> None:
    with contextlib.suppress(OSError):
        call(*args)


def _flags(at: str, put: int | None = None) -> int | None:
    """The inode flags of the directory `at` (None where the file system has none), or set them to `put`."""
    try:
        fd = os.open(at, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        value = array.array("l", [put or 0])
        fcntl.ioctl(fd, FS_IOC_GETFLAGS if put is None else FS_IOC_SETFLAGS, value, True)
        return value[0]
    except OSError:
        return None
    finally:
        os.close(fd)
