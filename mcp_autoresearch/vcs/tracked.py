"""What `git status` said of the tracked files, kept with the stat data of every tracked file, so that the
check after a run can be answered without a second git process when provably nothing it looks at changed.

`git status` itself trusts stat data: a file whose size, times and inode match the index is not read. This
module trusts the same data, compared against what they were when `git status` last ran, and only when:
- the index file is the same one (inode, size, mtime, ctime): no entry, flag or blob id in it changed;
- HEAD is on the same branch, at the same commit or at the one commit the server wrote on top of it, which
  changed one path whose index entry differs from it (so git would list that path whatever its content);
- every other tracked file has the same type, size, inode, mtime and ctime (a write changes the ctime, which
  nothing without the right to set the clock can put back), and none of them was changed so recently that
  the file system's clock could have given a later write the same times ("racy" entries, as git calls them).
Anything else (an index of another format, a conflict, a submodule, more than `MAX_ENTRIES` files) and git
runs, as before. Standard library only.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

MAX_ENTRIES = 2000  # beyond this, reading the index here costs more than git's own status
RACY_NS = 100_000_000  # a file changed this close to the snapshot may share its times with a later write
_GITLINK, _DIRECTORY = 0o160000, 0o040000

Stat = tuple[int, int, int, int, int, int]  # mode, size, inode, device, mtime, ctime


def file_stat(path: Path | str) -> Stat | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_mode, st.st_size, st.st_ino, st.st_dev, st.st_mtime_ns, st.st_ctime_ns)


def read_index(data: bytes) -> dict[str, str] | None:
    """Every path of a git index (versions 2-4) with its blob id, or None for anything this reader does not
    vouch for: another format, a conflict, a submodule, a sparse directory, an intent-to-add entry, a split
    index."""
    if len(data) < 12 or data[:4] != b"DIRC":
        return None
    version, count = struct.unpack(">II", data[4:12])
    if version not in (2, 3, 4) or count > MAX_ENTRIES:
        return None
    entries: dict[str, str] = {}
    offset, previous = 12, b""
    try:
        for _ in range(count):
            mode = struct.unpack(">I", data[offset + 24 : offset + 28])[0]
            sha = data[offset + 40 : offset + 60].hex()
            flags = struct.unpack(">H", data[offset + 60 : offset + 62])[0]
            start = offset + 62
            if flags & 0x4000:  # extended flags (version 3 and up)
                if version < 3 or struct.unpack(">H", data[start : start + 2])[0] & 0x2000:
                    return None  # intent-to-add
                start += 2
            if flags & 0x3000 or mode & 0o170000 in (_GITLINK, _DIRECTORY):
                return None
            if version == 4:
                strip, start = _varint(data, start)
                end = data.index(b"\0", start)
                name = previous[: len(previous) - strip] + data[start:end]
                offset = end + 1
            else:
                end = data.index(b"\0", start)
                name = data[start:end]
                offset = offset + ((end - offset + 8) & ~7)
            previous = name
            entries[name.decode("utf-8", "surrogateescape")] = sha
        while offset + 8 <= len(data) - 20:  # extensions, then the checksum
            signature, size = data[offset : offset + 4], struct.unpack(">I", data[offset + 4 : offset + 8])[0]
            if signature in (b"link", b"sdir"):
                return None  # a split index (entries in another file) or a sparse one
            offset += 8 + size
    except (struct.error, ValueError, IndexError):
        return None
    return entries if len(entries) == count else None


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    """Git's offset encoding of index version 4."""
    byte = data[offset]
    value = byte & 0x7F
    offset += 1
    while byte & 0x80:
        byte = data[offset]
        value = ((value + 1) << 7) | (byte & 0x7F)
        offset += 1
    return value, offset


@dataclass
class StatusSnapshot:
    """The tracked files as `git status` saw them, and what it answered."""

    index: Stat | None
    entries: dict[str, str]  # path -> blob id in the index
    stats: dict[str, Stat | None]  # path -> its stat data when the snapshot was taken
    folders: dict[str, tuple[int, int, int] | None]  # every folder on the way: type, inode, device
    taken_ns: int
    head: str = ""
    branch: str | None = None
    changed: list[str] = field(default_factory=list)
    on_top: tuple[str, str, str] | None = None  # (commit, path, blob id): the server's commit on `head`

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

    def committed(self, commit: str, path: str, blob: str) -> None:
        """The server wrote `commit` on top of the snapshot's HEAD, changing only `path` to `blob`."""
        if self.on_top is None and self.head:
            self.on_top = (commit, path, blob)

    def still(self, top: Path, index_file: Path, head: str, branch: str | None) -> list[str] | None:
        """What git status would answer now, when this snapshot proves it; else None (run git)."""
        if branch != self.branch or file_stat(index_file) != self.index:
            return None
        listed = set(self.changed)
        if head == self.head:
            moved = ""
        elif (
            self.on_top is not None
            and head == self.on_top[0]
            and self.entries.get(self.on_top[1])
            not in (
                None,
                self.on_top[2],
            )
        ):
            moved = self.on_top[1]  # its index entry differs from the new HEAD: listed, whatever its content
            listed.add(moved)
        else:
            return None
        if _folders(top, self.entries) != self.folders:
            return None  # a folder swapped for a link or another folder: git would see other files
        racy_after = self.taken_ns - RACY_NS
        for path, then in self.stats.items():
            if path == moved:
                continue
            if (
                then is None
                or then[4] >= racy_after
                or then[5] >= racy_after
                or file_stat(top / path) != then
            ):
                return None
        return sorted(listed)


def _folders(top: Path, paths: dict[str, str]) -> dict[str, tuple[int, int, int] | None]:
    """Type, inode and device of every folder that holds a tracked file (not their times: files come and go
    in them, untracked ones included)."""
    found: dict[str, tuple[int, int, int] | None] = {}
    for path in paths:
        folder = path.rpartition("/")[0]
        while folder and folder not in found:
            stat = file_stat(top / folder)
            found[folder] = None if stat is None else (stat[0], stat[2], stat[3])
            folder = folder.rpartition("/")[0]
    return found
