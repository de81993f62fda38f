"""Room for the server's own records on a disk a run can fill, and what a full disk tells the user.

A run may fill the disk the project is on through its writable outputs. The server must still write what it
owes the user afterwards: the session state, the JSONL, results.tsv, git's refs, the target. So it holds
`RESERVE_BYTES` in a preallocated file of its own (`.autoresearch/reserve`, which a confined run cannot write
nor remove), and `RESERVE_ENTRIES` empty files (`.autoresearch/reserve.d/`): a run can also use up the file
system's inodes with empty files, and then git, the logs and the state cannot create a file at all. A run that
leaves the disk full (less than `FULL_BYTES` or `FULL_ENTRIES` inodes free, on the project's disk or its slot's)
gets the status `disk_full` and an error naming the largest files runs wrote (writable paths, logs); the reserve is freed so that
its records and decision are written, and no run starts until the reserve is whole again. This module deletes
nothing of the user's or of a run's: freeing space is the user's call.
"""

from __future__ import annotations

import errno
import heapq
import logging
import os
from pathlib import Path

from ..errors import SessionError
from ..names import RUN_LOGS, STATE_DIR
from ..terminal_text import printable
from .state import RunOutcome, server_dir

log = logging.getLogger("mcp_autoresearch")

RESERVE_BYTES = 8 << 20  # what the server keeps for its records: dozens of decisions' state and log writes
FULL_BYTES = 1 << 20  # a disk with less free (to ordinary users) than this after a run counts as full
RESERVE_ENTRIES = 64  # inodes the server keeps (empty files): a decision's git objects, locks, state and logs
FULL_ENTRIES = 128  # a disk with fewer free inodes than this after a run counts as full too
LARGEST_SHOWN = 3  # files named in the message
WALK_LIMIT = 100_000  # directory entries looked at when finding what grew, at most
NO_ROOM = (errno.ENOSPC, errno.EDQUOT)
# What the agent does after a disk_full run (its error names the files).
AFTER_DISK_FULL = "free space on the disk first (the run's error names the largest files runs wrote); then "


# How git and Python say it when a write found no room.
NO_ROOM_TEXT = ("No space left on device", "Out of diskspace", "Disk quota exceeded")


def no_room(exc: BaseException) -> bool:
    """The error is a write that found the disk (or the quota) full: OSError's errno, or git's message."""
    if isinstance(exc, OSError) and exc.errno in NO_ROOM:
        return True
    return any(text in str(exc) for text in NO_ROOM_TEXT)


def free_bytes(path: Path) -> int | None:
    """Bytes an ordinary user may still write on the file system holding `path` (None when unknown)."""
    try:
        info = os.statvfs(path)
    except OSError:
        return None
    return info.f_bavail * info.f_frsize


def free_entries(path: Path) -> int | None:
    """Inodes an ordinary user may still create on the file system holding `path` (None when unknown, or
    when the file system has no fixed number of them)."""
    try:
        info = os.statvfs(path)
    except OSError:
        return None
    return info.f_favail if info.f_files > 0 else None


def mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


class DiskSpace:
    """The reserve of one project, and the checks before and after each run."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self) -> Path:
        return server_dir(self.root) / "reserve"

    def _ensure_entries(self) -> bool:
        """The reserve of inodes, whole; False when the file system has no room for it."""
        try:
            folder = server_dir(self.root) / "reserve.d"
            folder.mkdir(mode=0o700, exist_ok=True)
            if len(os.listdir(folder)) >= RESERVE_ENTRIES:
                return True
            for n in range(RESERVE_ENTRIES):
                fd = os.open(folder / str(n), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
                os.close(fd)
        except SessionError as exc:
            log.warning("could not make the inode reserve: %s", exc)
        except OSError as exc:
            if exc.errno in NO_ROOM:
                return False
            log.warning("could not make the inode reserve: %s", exc)
        return True

    def ensure(self) -> bool:
        """Make the reserve whole; False when the disk has not the room for it (what was taken is given back)."""
        return self._ensure_entries() and self._ensure_bytes()

    def _ensure_bytes(self) -> bool:
        try:
            path = self._path()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except SessionError as exc:  # the server's folder is not a real directory: said by the guards
            log.warning("could not make the disk reserve: %s", exc)
            return True
        except OSError as exc:
            if exc.errno in NO_ROOM:
                return False
            log.warning("could not make the disk reserve: %s", exc)
            return True  # not a full disk: runs are not held back for a reserve the system cannot make
        try:
            if os.fstat(fd).st_blocks * 512 >= RESERVE_BYTES:
                return True
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
            return True
        except OSError as exc:
            if exc.errno in NO_ROOM:
                os.ftruncate(fd, 0)
                return False
            log.warning("could not make the disk reserve: %s", exc)
            return True
        finally:
            os.close(fd)

    def release(self) -> None:
        """Give the reserve's space back to the disk, for the server's own writes."""
        try:
            self._path().unlink(missing_ok=True)
            folder = server_dir(self.root) / "reserve.d"
            for entry in os.listdir(folder) if folder.is_dir() else []:
                (folder / entry).unlink(missing_ok=True)
        except (OSError, SessionError) as exc:
            log.warning("could not free the disk reserve: %s", exc)

    def after_run(self, places: list[Path], writable: list[str]) -> str | None:
        """After a run (its processes ended): None while its disks have room; else the run's error (the caller
        then frees the reserve, `release`, to record it). `places`: the run's project directory (the project or
        its slot's checkout); `writable`: the configured writable entries."""
        full = where_full([self.root, *places])
        if not full:
            return None
        return (
            f"the disk filled up during the run ({full}); {what_grew(self.root, places, writable)}. This run "
            "was recorded in the space the server reserves for its records; no run starts until that is back"
        )

    def before_run(self, places: list[Path], writable: list[str]) -> str | None:
        """Before a run: None when the reserve is whole and the disks are not full; else why no run may start,
        and what to free."""
        reserved = self.ensure()
        full = where_full([self.root, *places])
        if reserved and not full:
            return None
        return (
            f"the disk is full ({full or where_full([self.root], every=True)}): no run starts until the server "
            f"has {mib(RESERVE_BYTES)} reserved for its own records and {mib(FULL_BYTES)} more are free; "
            + what_grew(self.root, places, writable)
        )


def mark_disk_full(outcome: RunOutcome, error: str | None) -> None:
    """A run after which the disk was full is `disk_full` (its measurement is not to be trusted), unless it
    tampered or was cancelled: those say more."""
    if error and outcome.status not in ("tampered", "cancelled"):
        outcome.status, outcome.error = "disk_full", error


def where_full(places: list[Path], every: bool = False) -> str:
    """The full file systems among those holding `places` (all of them with `every`), one each, as
    '<free> free on the file system of <place>'; "" when none is full."""
    shown: dict[int, str] = {}
    looked: set[int] = set()  # each file system once (the project is usually among the places twice)
    for place in places:
        try:
            device = os.stat(place).st_dev
        except OSError:
            continue
        if device in looked:
            continue
        free, entries = free_bytes(place), free_entries(place)
        if free is None:
            continue
        looked.add(device)
        if entries is not None and entries < FULL_ENTRIES:
            shown[device] = f"{mib(free)} and {entries} inodes (new files) free on the file system of {place}"
        elif every or free < FULL_BYTES:
            shown[device] = f"{mib(free)} free on the file system of {place}"
    return ", ".join(shown.values())


def _walk_largest(top: str, found: list[tuple[int, str]], seen: int) -> int:
    """Keep the largest files below `top` in `found`; returns `seen` plus the entries looked at. Its own stack
    (a run may nest directories deeper than Python's recursion limit); links are not followed."""
    pending = [top] if os.path.isdir(top) and not os.path.islink(top) else []
    while pending and seen <= WALK_LIMIT:
        try:
            with os.scandir(pending.pop()) as listing:
                children = list(listing)
        except OSError:
            continue
        seen += len(children)
        for child in children:
            try:
                if child.is_dir(follow_symlinks=False):
                    pending.append(child.path)
                elif child.is_file(follow_symlinks=False):
                    _keep_largest(found, (child.stat(follow_symlinks=False).st_size, child.path))
            except OSError:
                continue
    return seen


def what_grew(root: Path, places: list[Path], writable: list[str]) -> str:
    """The largest files beneath the runs' writable paths (in the project or a slot's checkout) and the runs'
    logs (their output, which the server writes), and what to do about them."""
    tops = {os.path.join(place, os.path.expanduser(entry)) for place in places for entry in writable}
    tops.add(os.path.join(root, STATE_DIR, RUN_LOGS))
    found: list[tuple[int, str]] = []
    seen = 0
    entries: dict[str, int] = {}
    for top in sorted(tops):
        before = seen
        if os.path.isfile(top) and not os.path.islink(top):
            _keep_largest(found, (os.path.getsize(top), top))
        seen = _walk_largest(top, found, seen)
        entries[top] = seen - before
    largest = [(size, path) for size, path in sorted(found, reverse=True) if size >= FULL_BYTES]
    most = max(entries, key=lambda top: entries[top], default=None)
    if not largest and most is not None and entries[most] >= FULL_ENTRIES:
        return (
            f"the runs' writable paths hold no large file, but many files: {_shown(root, most)} holds "
            f"{entries[most]} files and folders (each takes an inode); delete what is not needed, then run again"
        )
    if not largest:
        return (
            "the runs' writable paths and logs hold no large file: something else filled the disk; free space "
            "there, then run again"
        )
    shown = ", ".join(f"{_shown(root, path)} ({mib(size)})" for size, path in largest)
    return f"the largest files runs wrote: {shown}; free space (delete or move what is not needed), then run again"


def _keep_largest(found: list[tuple[int, str]], item: tuple[int, str]) -> None:
    if len(found) < LARGEST_SHOWN:
        heapq.heappush(found, item)
    else:
        heapq.heappushpop(found, item)


def _shown(root: Path, path: str) -> str:
    """A path as the user reads it: relative to the project when it is inside, its bytes that are not UTF-8 (a
    run names its files as it likes) and control characters escaped, as the run's record and reply can hold."""
    relative = os.path.relpath(path, root)
    return printable(path if relative.startswith("..") else relative)
