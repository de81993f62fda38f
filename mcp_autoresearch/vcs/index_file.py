"""One entry of git's index file rewritten in-process, as `git reset -q <commit> -- <path>` (the entry) or
`git checkout -q <commit> -- <path>` (the file, then the entry) leave it: no git process on an experiment's path.

The index is written only when this module vouches for all of it, else the caller runs git, as before:
- a plain index of version 2, 3 or 4 with at most `MAX_ENTRIES` entries, no conflict, intent-to-add entry,
  submodule or sparse directory, a valid SHA-1 checksum (not `index.skipHash`), and no extension but the
  cache tree (`TREE`), whose nodes on the path are invalidated when the entry's blob or mode changes (git's
  `cache_tree_invalidate_path`); a split index, an untracked cache, an fsmonitor token, resolve-undo data, the
  offset tables of a threaded reader and anything else fall back to git;
- the entry exists, at stage 0, without flags (assume-valid, extended flags), and is a regular file's;
- the "racily clean" entries (mtime not older, to the second, than the index being replaced) are handled as
  git handles them when it writes an index: the file read, and the entry's size set to 0 (smudged) when it no
  longer holds the entry's blob; a racy file too large to read here falls back to git;
- `index.lock` is taken as git takes it (created exclusively, written, renamed over the index); a lock held by
  anyone else falls back to git, which waits for it; the new index gets the permissions git would give it.
The entry's stat data are the file's, taken after it was read and found to hold the entry's blob (and its
executable bit to match the mode); otherwise they are zero, as git leaves an entry it could not refresh. Standard
library and the project's atomic write only.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from ..records.atomic import atomic_write

MAX_ENTRIES = 2000  # beyond this, reading the index here costs more than git's own commands
MAX_RACY_BYTES = 1 << 22  # a racily clean file larger than this is left to git to read
REGULAR_MODES = (0o100644, 0o100755)
ENTRY_FIXED = struct.Struct(">10I20sH")  # ctime s/ns, mtime s/ns, dev, ino, mode, uid, gid, size, id, flags
_GITLINK, _DIRECTORY, _TYPE = 0o160000, 0o040000, 0o170000
_FLAG_STAGE, _FLAG_EXTENDED, _FLAG_ASSUME_VALID = 0x3000, 0x4000, 0x8000
_INTENT_TO_ADD = 0x2000  # in the extended flags
Stat10 = tuple[int, int, int, int, int, int, int, int, int, int]


@dataclass(frozen=True)
class IndexEntry:
    offset: int  # where its fixed part starts
    name: str
    blob: bytes
    mode: int
    flags: int
    mtime_s: int
    size: int


@dataclass(frozen=True)
class ParsedIndex:
    version: int
    entries: list[IndexEntry]
    extensions: list[tuple[bytes, int, int]]  # signature, start and end of its data


def parse_index(data: bytes) -> ParsedIndex | None:
    """A git index (versions 2-4) read entry by entry, or None for anything this reader does not vouch for:
    another format, a conflict, a submodule, a sparse directory, an intent-to-add entry, twice the same path,
    more than `MAX_ENTRIES` entries. Extensions are listed, not judged; the checksum is not checked."""
    if len(data) < 32 or data[:4] != b"DIRC":
        return None
    version, count = struct.unpack(">II", data[4:12])
    if version not in (2, 3, 4) or count > MAX_ENTRIES:
        return None
    entries: list[IndexEntry] = []
    offset, previous = 12, b""
    try:
        for _ in range(count):
            fixed = ENTRY_FIXED.unpack_from(data, offset)
            mode, flags, start = fixed[6], fixed[11], offset + ENTRY_FIXED.size
            if flags & _FLAG_EXTENDED:  # extended flags (version 3 and up)
                if version < 3 or struct.unpack(">H", data[start : start + 2])[0] & _INTENT_TO_ADD:
                    return None
                start += 2
            if flags & _FLAG_STAGE or mode & _TYPE in (_GITLINK, _DIRECTORY):
                return None
            if version == 4:
                strip, start = _varint(data, start)
                end = data.index(b"\0", start)
                name = previous[: len(previous) - strip] + data[start:end]
                following = end + 1
            else:
                end = data.index(b"\0", start)
                name = data[start:end]
                following = offset + ((end - offset + 8) & ~7)
            entries.append(
                IndexEntry(
                    offset,
                    name.decode("utf-8", "surrogateescape"),
                    fixed[10],
                    mode,
                    flags,
                    fixed[2],
                    fixed[9],
                )
            )
            offset, previous = following, name
        extensions = []
        while offset + 8 <= len(data) - 20:  # extensions, then the checksum
            signature, size = data[offset : offset + 4], struct.unpack(">I", data[offset + 4 : offset + 8])[0]
            if offset + 8 + size > len(data) - 20:
                return None
            extensions.append((signature, offset + 8, offset + 8 + size))
            offset += 8 + size
    except (struct.error, ValueError, IndexError):
        return None
    if offset != len(data) - 20 or len({entry.name for entry in entries}) != count:
        return None
    return ParsedIndex(version, entries, extensions)


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


def set_entry(
    index_file: Path, top: Path, path: str, blob: bytes, mode: int, content: bytes | None = None
) -> bool:
    """Make the index entry of `path` (repo-relative) hold `blob` with `mode`, with the stat data of the file in
    the work tree under `top`; with `content` (the blob's bytes), first write the file as git checks it out (a
    new file, executable or not as `mode` says, replaced atomically). False when nothing was written because git
    must do it (see the module's rules)."""
    if mode not in REGULAR_MODES or "GIT_INDEX_FILE" in os.environ:
        return False
    file = top / path
    if not _plain_place(top, path):
        return False
    if content is not None:
        if hashlib.sha1(b"blob %d\0" % len(content) + content).digest() != blob:
            return False
        atomic_write(file, content, mode=0o777 if mode == 0o100755 else 0o666, sync=False)
    lock = index_file.with_name(index_file.name + ".lock")
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError:
        return False  # held by a git command (or left by a dead one): git waits for it or takes it over
    written = False
    try:
        new = _updated(index_file, top, path, blob, mode, os.fstat(fd).st_mode)
        if new is not None:
            view = memoryview(new)
            while view:
                view = view[os.write(fd, view) :]
            written = True
    finally:
        os.close(fd)
        if written:
            os.replace(lock, index_file)
        else:
            lock.unlink(missing_ok=True)
    return written


def _updated(index_file: Path, top: Path, path: str, blob: bytes, mode: int, lock_mode: int) -> bytes | None:
    """The new index's bytes, or None when git must write it."""
    try:
        fd = os.open(index_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o7777 != lock_mode & 0o7777:
            return None  # a shared repository's permissions, or anything unusual: git sets them
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read()
    finally:
        os.close(fd)
    parsed = parse_index(data)
    if parsed is None or hashlib.sha1(data[:-20]).digest() != data[-20:]:
        return None  # includes `index.skipHash` (a zero checksum)
    if any(signature != b"TREE" for signature, _start, _end in parsed.extensions):
        return None
    target = next((entry for entry in parsed.entries if entry.name == path), None)
    if target is None or target.flags & (_FLAG_STAGE | _FLAG_EXTENDED | _FLAG_ASSUME_VALID):
        return None
    if target.mode not in REGULAR_MODES:
        return None
    body = bytearray(data[:-20])
    if not _smudge_racy(body, parsed, target, st.st_mtime_ns // 1_000_000_000, top):
        return None
    ENTRY_FIXED.pack_into(body, target.offset, *_stat_of(top / path, blob, mode), blob, target.flags)
    if (target.blob, target.mode) != (blob, mode):
        for _signature, start, end in reversed(parsed.extensions):
            tree = invalidated_tree(data[start:end], path.split("/"))
            if tree is None:
                return None
            body[start - 8 : end] = b"TREE" + struct.pack(">I", len(tree)) + tree
    return bytes(body) + hashlib.sha1(body).digest()


def _smudge_racy(body: bytearray, parsed: ParsedIndex, target: IndexEntry, index_s: int, top: Path) -> bool:
    """Do what git does with "racily clean" entries when it writes an index (`ce_smudge_racily_clean_entry`):
    an entry whose mtime is not older than the index being replaced (to the second, whether or not git counts
    nanoseconds) and whose file no longer holds its blob gets the size 0, so that git reads that file again
    instead of trusting stat data that the new index's later mtime would otherwise vouch for. False when a
    racy file is too large to read here, or a symlink: git must write the index."""
    for entry in parsed.entries:
        if entry is target or entry.mtime_s < index_s or entry.size == 0:
            continue
        if entry.mode not in REGULAR_MODES:
            return False  # a symlink: git compares where it points
        holds = _holds(top / entry.name, entry.blob)
        if holds is None:
            return False
        if not holds:
            struct.pack_into(">I", body, entry.offset + 36, 0)
    return True


def _holds(file: Path, blob: bytes) -> bool | None:
    """Whether `file` holds `blob` (True too when it is gone or not a regular file: git sees that from its
    stat data); None when it is too large to read here."""
    try:
        st = os.lstat(file)
        if not stat.S_ISREG(st.st_mode):
            return True
        if st.st_size > MAX_RACY_BYTES:
            return None
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return True
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_RACY_BYTES + 1)
    return hashlib.sha1(b"blob %d\0" % len(data) + data).digest() == blob


def _stat_of(file: Path, blob: bytes, mode: int) -> Stat10:
    """The stat fields of `file` as git records them after reading it, when it holds `blob` with the executable
    bit `mode` gives; zero otherwise (git's entry that it could not refresh: compared by content next time)."""
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return _unrefreshed(mode)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or bool(st.st_mode & 0o100) != (mode == 0o100755):
            return _unrefreshed(mode)
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read()
    finally:
        os.close(fd)
    if hashlib.sha1(b"blob %d\0" % len(data) + data).digest() != blob:
        return _unrefreshed(mode)
    fields = (
        st.st_ctime_ns // 1_000_000_000,
        st.st_ctime_ns % 1_000_000_000,
        st.st_mtime_ns // 1_000_000_000,
        st.st_mtime_ns % 1_000_000_000,
        st.st_dev,
        st.st_ino,
        mode,
        st.st_uid,
        st.st_gid,
        st.st_size,
    )
    return tuple(value & 0xFFFFFFFF for value in fields)  # type: ignore[return-value]


def _unrefreshed(mode: int) -> Stat10:
    return (0, 0, 0, 0, 0, 0, mode, 0, 0, 0)


def _plain_place(top: Path, path: str) -> bool:
    """Every folder from `top` to the file is a real folder (no link to follow out of the project), and the file
    is absent or a regular file."""
    current = top
    for name in path.split("/")[:-1]:
        current = current / name
        try:
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                return False
        except OSError:
            return False
    try:
        return stat.S_ISREG(os.lstat(top / path).st_mode)
    except FileNotFoundError:
        return True
    except OSError:
        return False


def invalidated_tree(data: bytes, parts: list[str]) -> bytes | None:
    """The cache-tree extension's data with the nodes on the way to the file at `parts` marked invalid (entry
    count -1, no tree id) and a subtree of the file's name dropped, as git's `cache_tree_invalidate_path` does;
    None when the data cannot be read."""
    try:
        root, end = _read_node(data, 0)
    except (ValueError, IndexError):
        return None
    if end != len(data):
        return None
    node = root
    for depth, name in enumerate(parts):
        node.count, node.tree_id = -1, b""
        raw = name.encode("utf-8", "surrogateescape")
        match = next((child for child in node.children if child.name == raw), None)
        if match is None:
            break
        if depth == len(parts) - 1:
            node.children.remove(match)
            break
        node = match
    out = bytearray()
    root.write(out)
    return bytes(out)


@dataclass
class _TreeNode:
    """One node of the cache tree: its name, entry count (-1: invalid), tree id (none when invalid), subtrees."""

    name: bytes
    count: int
    tree_id: bytes
    children: list[_TreeNode]

    def write(self, out: bytearray) -> None:
        out += self.name + b"\0" + b"%d %d\n" % (self.count, len(self.children)) + self.tree_id
        for child in self.children:
            child.write(out)


def _read_node(data: bytes, offset: int) -> tuple[_TreeNode, int]:
    """The cache-tree node at `offset`, and the offset after it."""
    nul = data.index(b"\0", offset)
    newline = data.index(b"\n", nul)
    count_text, subtrees_text = data[nul + 1 : newline].split(b" ")
    count, subtrees = int(count_text), int(subtrees_text)
    if subtrees < 0:
        raise ValueError("negative subtree count")
    position = newline + 1
    tree_id = b""
    if count >= 0:
        tree_id = data[position : position + 20]
        if len(tree_id) != 20:
            raise ValueError("cut short")
        position += 20
    children = []
    for _ in range(subtrees):
        child, position = _read_node(data, position)
        children.append(child)
    return _TreeNode(data[offset:nul], count, tree_id, children), position
