"""Ancestry that git's own walk cannot be talked into: every commit on the way is checked against its id.

Git reads a commit's parents from its object without checking that the object's content hashes to its id
(only objects named on its command line are checked). A run that can write `.git` (not confined) can rewrite
the loose object of an old commit so that it names a user's commit as its parent, dated so that git's walk
goes through it: the session's best then looks like a descendant of the user's commit, and a fast-forward of
the user's branch would drop that commit's changes from it. `is_verified_ancestor` walks from the descendant
through `git cat-file --batch`, hashing each commit it reads; a commit whose content does not match its id
stops everything with an error naming it. `check_changed_files` does the same for the trees and files the
best commit adds to the base. Nothing here writes.
"""

from __future__ import annotations

import hashlib
import heapq
import os
import re
import subprocess
from pathlib import Path

from ..errors import SessionError
from .git_options import GIT_ENV, GIT_OPTIONS

MAX_WALKED = 200_000  # commits read before giving up (a user's branch that far behind the session)
_PARENT = re.compile(rb"^parent ([0-9a-f]+)$", re.M)
_DATE = re.compile(rb"^committer .*> (\d+)", re.M)


def is_verified_ancestor(top: Path, ancestor: str, descendant: str) -> bool:
    """Whether `ancestor` is reachable from `descendant` through commits whose content matches their ids (the
    newest first, so a branch a few commits behind is reached in a few reads). Raises SessionError naming the
    first commit read whose content does not match its id."""
    process = _batch(top)
    try:
        return _walk(process, ancestor, descendant)
    finally:
        process.kill()
        process.wait()


def check_changed_files(top: Path, base: str, best: str) -> None:
    """Every tree and file of `best` that is not `base`'s (what landing adds: the kept target) matches its id.
    A run can plant, at the id its own content will have, an object holding other content (git writes no object
    it already has), so that the kept commit names a file never measured; raises SessionError naming it."""
    process = _batch(top)
    try:
        _compare(process, _tree_of(process, best), _tree_of(process, base), "")
    finally:
        process.kill()
        process.wait()


def _batch(top: Path) -> subprocess.Popen[bytes]:
    options = [arg for option in GIT_OPTIONS for arg in ("-c", option)]
    return subprocess.Popen(
        ["git", "--no-replace-objects", *options, "cat-file", "--batch"],
        cwd=top,
        env={**os.environ, **GIT_ENV},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )


def _tree_of(process: subprocess.Popen[bytes], commit: str) -> str:
    return _read(process, commit, "commit").split(b"\n", 1)[0].removeprefix(b"tree ").decode()


def _compare(process: subprocess.Popen[bytes], new: str, old: str | None, where: str) -> None:
    """Read (so check) every object below tree `new` whose id differs from the same path's in tree `old`."""
    old_entries = _entries(_read(process, old, "tree"), len(old)) if old else {}
    for name, (mode, object_id) in _entries(_read(process, new, "tree", where or "/"), len(new)).items():
        if old_entries.get(name, (b"", ""))[1] == object_id or mode == b"160000":  # same, or a submodule's
            continue
        path = f"{where}{name.decode(errors='replace')}"
        if mode == b"40000":
            old_mode, old_id = old_entries.get(name, (b"", ""))
            _compare(process, object_id, old_id if old_mode == b"40000" else None, path + "/")
        else:
            _read(process, object_id, "blob", path)


def _entries(tree: bytes, id_length: int) -> dict[bytes, tuple[bytes, str]]:
    """A tree object's entries: name -> (mode, object id)."""
    entries: dict[bytes, tuple[bytes, str]] = {}
    size = id_length // 2
    at = 0
    while at < len(tree):
        space = tree.index(b" ", at)
        nul = tree.index(b"\0", space)
        entries[tree[space + 1 : nul]] = (tree[at:space], tree[nul + 1 : nul + 1 + size].hex())
        at = nul + 1 + size
    return entries


def _walk(process: subprocess.Popen[bytes], ancestor: str, descendant: str) -> bool:
    seen = {descendant}
    queue: list[tuple[int, str]] = [(0, descendant)]
    walked = 0
    while queue and walked < MAX_WALKED:
        _, commit = heapq.heappop(queue)
        if commit == ancestor:
            return True
        walked += 1
        content = _read(process, commit, "commit")
        date = _DATE.search(content)
        for parent in _PARENT.findall(content):
            name = parent.decode()
            if name not in seen:
                seen.add(name)
                heapq.heappush(queue, (-int(date.group(1)) if date else 0, name))
    return False


def _read(process: subprocess.Popen[bytes], object_id: str, kind: str, path: str = "") -> bytes:
    """An object's content, after checking that it hashes to its id (SessionError naming it otherwise)."""
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(object_id.encode() + b"\n")
    process.stdin.flush()
    header = process.stdout.readline().split()
    named = f"{kind} {object_id}" + (f" ({path})" if path else "")
    if len(header) != 3 or header[1] != kind.encode():
        raise SessionError(
            f"{named} cannot be read ({b' '.join(header).decode(errors='replace')}); run git fsck. Nothing was "
            "changed"
        )
    size = int(header[2])
    content = process.stdout.read(size + 1)[:size]
    algorithm = "sha256" if len(object_id) == 64 else "sha1"
    if hashlib.new(algorithm, f"{kind} {size}".encode() + b"\0" + content).hexdigest() != object_id:
        raise SessionError(
            f"the object of {named} does not match its id: its content was rewritten (a run that could write "
            ".git may have forged it: to make your commits look like the session's ancestors, or to land a "
            "file that was never measured). Nothing was changed; run git fsck, and restore that object (from a "
            "clone or a backup) before landing"
        )
    return content
