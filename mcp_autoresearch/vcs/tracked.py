"""What `git status` said of the tracked files, kept with the stat data of every tracked file, so that the
checks before and after each run are answered without a git process when provably nothing they look at changed.

`git status` itself trusts stat data: a file whose size, times and inode match the index is not read. This
module trusts the same data, compared against what they were when `git status` last ran, and only when:
- the index file is the same one (inode, size, mtime, ctime), or was rewritten by the server on the target alone
  (its own git command, or `index_file` in-process; every other entry, blob id and mode, checked the same);
- HEAD is on the same branch, at the same commit or at one the server wrote from it changing the target alone;
- every other tracked file has the same type, size, inode, mtime and ctime (a write changes the ctime, which
  nothing without the right to set the clock can put back), none of them was changed so recently that the file
  system's clock could have given a later write the same times ("racy" entries, as git calls them), and every
  folder holding one is the same folder;
- the target (a plain file: the server commits its bytes) is judged by its content: its blob id against the
  index entry, the entry against HEAD's, its executable bit against the entry's mode.
Anything else (an index of another format, a split index, a conflict, a submodule, more than
`index_file.MAX_ENTRIES` files, a file changed by anyone) and git runs, as before. Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .index_file import parse_index

MAX_EXACT_BYTES = 1 << 22  # a larger target is left to git
RACY_NS = 100_000_000  # a file changed this close to the snapshot may share its times with a later write
HEADS = (
    64  # the commits made from a snapshot's HEAD that HEAD may be at and still be proven (see `committed`)
)

Stat = tuple[int, int, int, int, int, int]  # mode, size, inode, device, mtime, ctime


def file_stat(path: Path | str) -> Stat | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_mode, st.st_size, st.st_ino, st.st_dev, st.st_mtime_ns, st.st_ctime_ns)


def read_index(data: bytes) -> dict[str, tuple[str, int]] | None:
    """Every path of a git index (versions 2-4) with its blob id and mode, or None for anything this reader does not
    vouch for: another format, a conflict, a submodule, a sparse directory, an intent-to-add entry, a split
    index (`index_file.parse_index`)."""
    parsed = parse_index(data)
    if parsed is None or any(
        signature in (b"link", b"sdir") for signature, _start, _end in parsed.extensions
    ):
        return None  # a split index (entries in another file) or a sparse one
    return {entry.name: (entry.blob.hex(), entry.mode) for entry in parsed.entries}


HeadEntry = Callable[[str, str], "tuple[str, int] | None"]  # (commit, path) -> (blob id, mode) there


@dataclass
class StatusSnapshot:
    """The tracked files as `git status` saw them, and what it answered. `exact` paths (the target, which the
    server itself commits and restores) are not judged by stat data: their status is worked out from their
    content, the index entry and HEAD's entry at each check. `heads`: HEAD's commit then, and the commits the
    server made from it that differ from it only at `exact` paths."""

    index: Stat | None
    entries: dict[str, tuple[str, int]]  # path -> (blob id, mode) in the index
    stats: dict[str, Stat | None]  # path -> its stat data when git status ran
    folders: dict[str, tuple[int, int, int] | None]  # every folder on the way: type, inode, device
    taken_ns: int
    branch: str | None = None
    changed: list[str] = field(default_factory=list)
    heads: dict[str, None] = field(default_factory=dict)  # in the order made: an ordered set
    exact: set[str] = field(default_factory=set)

    @classmethod
    def take(cls, top: Path, index_file: Path) -> StatusSnapshot | None:
        """The stat data of the index and of every file it tracks, taken before git status runs (a file changed
        after this is seen either by status or by the comparison later)."""
        before = file_stat(index_file)
        try:
            with open(index_file, "rb") as handle:
                data = handle.read()
        except OSError:
            return None
        entries = read_index(data)
        if entries is None or before is None or file_stat(index_file) != before:
            return None
        taken = time.time_ns()
        stats = {path: file_stat(top / path) for path in entries}
        return cls(before, entries, stats, _folders(top, entries), taken)

    def committed(self, parent: str, commit: str, path: str) -> None:
        """The server wrote `commit` on `parent`, changing only `path` (a plain file: no filter applies). The
        last `HEADS` such commits used are held (each experiment makes one; a parent counts as used again): HEAD
        at an older one is not proven, and git status runs once."""
        if parent in self.heads and path in self.entries:
            del self.heads[parent]  # moved to the newest end with its child: the best, which HEAD returns to
            self.heads[parent] = self.heads[commit] = None
            while len(self.heads) > HEADS:
                del self.heads[next(iter(self.heads))]
            self.exact.add(path)

    def synced(self, top: Path, index_file: Path, path: str, proven: list[str]) -> StatusSnapshot | None:
        """After the server's own git command rewrote `path` (its index entry, maybe the file): the snapshot
        that still holds, given `proven`, the answer this one gave just before the command. None when the
        index changed anywhere else."""
        if path not in self.exact:
            return None
        after = StatusSnapshot.take(top, index_file)
        if after is None or path not in after.entries:
            return None
        others = {name: entry for name, entry in after.entries.items() if name != path}
        if others != {name: entry for name, entry in self.entries.items() if name != path}:
            return None
        after.stats, after.folders, after.taken_ns = self.stats, self.folders, self.taken_ns
        after.branch, after.changed, after.heads, after.exact = self.branch, proven, self.heads, self.exact
        return after

    def still(
        self, top: Path, index_file: Path, head: str, branch: str | None, head_entry: HeadEntry
    ) -> list[str] | None:
        """What git status would answer now, when this snapshot proves it; else None (run git)."""
        if branch != self.branch or head not in self.heads or file_stat(index_file) != self.index:
            return None
        if _folders(top, self.entries) != self.folders:
            return None  # a folder swapped for a link or another folder: git would see other files
        racy_after = self.taken_ns - RACY_NS
        for path, then in self.stats.items():
            if path in self.exact:
                continue
            if (
                then is None
                or then[4] >= racy_after
                or then[5] >= racy_after
                or file_stat(top / path) != then
            ):
                return None
        listed = set(self.changed) - self.exact
        for path in self.exact:
            differs = _differs(top / path, self.entries[path], head_entry(head, path))
            if differs is None:
                return None
            if differs:
                listed.add(path)
        return sorted(listed)


def _differs(file: Path, entry: tuple[str, int], at_head: tuple[str, int] | None) -> bool | None:
    """Whether git status lists this plain file: its content or mode against the index entry, the entry
    against HEAD's. None when git must judge (not a regular file, too large to read here, an executable bit
    that `core.fileMode` may tell git to ignore)."""
    try:
        st = os.lstat(file)
    except FileNotFoundError:
        return True  # deleted
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_EXACT_BYTES:
        return None
    if bool(st.st_mode & 0o100) != (entry[1] == 0o100755):
        return None
    try:
        with open(file, "rb") as handle:
            data = handle.read(MAX_EXACT_BYTES + 1)
    except OSError:
        return None
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    return blob != entry[0] or at_head is None or at_head != entry


def _folders(top: Path, paths: dict[str, tuple[str, int]]) -> dict[str, tuple[int, int, int] | None]:
    """Type, inode and device of every folder that holds a tracked file (not their times: files come and go
    in them, untracked ones included)."""
    found: dict[str, tuple[int, int, int] | None] = {}
    for path in paths:
        folder = path.rpartition("/")[0]
        while folder and folder not in found:
            seen = file_stat(top / folder)
            found[folder] = None if seen is None else (seen[0], seen[2], seen[3])
            folder = folder.rpartition("/")[0]
    return found


def porcelain_paths(out: str) -> list[str]:
    """The paths `git status --porcelain=v1 -z` lists (both of a rename), sorted."""
    paths: list[str] = []
    entries = out.split("\0")
    index = 0
    while index < len(entries):
        entry = entries[index]
        index += 1
        if len(entry) < 4:
            continue
        paths.append(entry[3:])
        if "R" in entry[:2] or "C" in entry[:2]:
            paths.append(entries[index])  # the rename's source path follows
            index += 1
    return sorted(set(paths))


class KnownStatus:
    """The last `git status` of one work tree, kept across the server's own commands where it provably holds.
    `where` reads (HEAD's commit, its branch); `head_entry` a path's (blob id, mode) in a commit."""

    def __init__(
        self, top: Path, index_file: Path, where: Callable[[], tuple[str, str | None]], head_entry: HeadEntry
    ) -> None:
        self.top, self.index_file, self.where, self.head_entry = top, index_file, where, head_entry
        self.snapshot: StatusSnapshot | None = None

    def answer(self) -> list[str] | None:
        """What git status would answer now, when the last snapshot proves it, else None."""
        if self.snapshot is None:
            return None
        head, branch = self.where()
        if not head:
            return None
        try:
            return self.snapshot.still(self.top, self.index_file, head, branch, self.head_entry)
        except (OSError, ValueError, KeyError):
            return None

    def run(self, status: Callable[[], list[str]]) -> list[str]:
        """Run git `status`, keeping its answer with the stat data taken just before it."""
        head, branch = self.where()
        usable = head and "GIT_INDEX_FILE" not in os.environ
        snapshot = StatusSnapshot.take(self.top, self.index_file) if usable else None
        self.snapshot = None
        changed = status()
        if snapshot is not None and self.where() == (head, branch):
            snapshot.heads, snapshot.branch, snapshot.changed = {head: None}, branch, changed
            self.snapshot = snapshot
        return changed

    def committed(self, parent: str, commit: str, path: str, branch: str) -> None:
        """The server wrote `commit` on `parent` (on `branch`), changing the plain file `path` alone."""
        if self.snapshot is not None and self.snapshot.branch == branch:
            self.snapshot.committed(parent, commit, path)

    def rewriting(self, paths: list[str]) -> Callable[[], None]:
        """Before the server's own git command rewrites `paths`: a function to call after it, which keeps the
        snapshot where it provably still holds (one path, judged by content: the target)."""
        snapshot, proven = self.snapshot, self.answer() if len(paths) == 1 else None
        self.snapshot = None

        def after() -> None:
            if snapshot is not None and proven is not None:
                self.snapshot = snapshot.synced(self.top, self.index_file, paths[0], proven)

        return after
