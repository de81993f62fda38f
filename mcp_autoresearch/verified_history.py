"""Ancestry that git's own walk cannot be talked into: every commit on the way is checked against its id.

Git reads a commit's parents from its object without checking that the object's content hashes to its id
(only objects named on its command line are checked). A run that can write `.git` (not confined) can rewrite
the loose object of an old commit so that it names a user's commit as its parent, dated so that git's walk
goes through it: the session's best then looks like a descendant of the user's commit, and a fast-forward of
the user's branch would drop that commit's changes from it. `is_verified_ancestor` walks from the descendant
through `git cat-file --batch`, hashing each commit it reads; a commit whose content does not match its id
stops everything with an error naming it. Nothing here writes.
"""

from __future__ import annotations

import hashlib
import heapq
import os
import re
import subprocess
from pathlib import Path

from .errors import SessionError
from .repo import GIT_ENV, GIT_OPTIONS

MAX_WALKED = 200_000  # commits read before giving up (a user's branch that far behind the session)
_PARENT = re.compile(rb"^parent ([0-9a-f]+)$", re.M)
_DATE = re.compile(rb"^committer .*> (\d+)", re.M)


def is_verified_ancestor(top: Path, ancestor: str, descendant: str) -> bool:
    """Whether `ancestor` is reachable from `descendant` through commits whose content matches their ids (the
    newest first, so a branch a few commits behind is reached in a few reads). Raises SessionError naming the
    first commit read whose content does not match its id."""
    options = [arg for option in GIT_OPTIONS for arg in ("-c", option)]
    process = subprocess.Popen(
        ["git", "--no-replace-objects", *options, "cat-file", "--batch"],
        cwd=top,
        env={**os.environ, **GIT_ENV},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        return _walk(process, ancestor, descendant)
    finally:
        process.kill()
        process.wait()


def _walk(process: subprocess.Popen[bytes], ancestor: str, descendant: str) -> bool:
    seen = {descendant}
    queue: list[tuple[int, str]] = [(0, descendant)]
    walked = 0
    while queue and walked < MAX_WALKED:
        _, commit = heapq.heappop(queue)
        if commit == ancestor:
            return True
        walked += 1
        content = _read_commit(process, commit)
        date = _DATE.search(content)
        for parent in _PARENT.findall(content):
            name = parent.decode()
            if name not in seen:
                seen.add(name)
                heapq.heappush(queue, (-int(date.group(1)) if date else 0, name))
    return False


def _read_commit(process: subprocess.Popen[bytes], commit: str) -> bytes:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(commit.encode() + b"\n")
    process.stdin.flush()
    header = process.stdout.readline().split()
    if len(header) != 3 or header[1] != b"commit":
        raise SessionError(f"commit {commit} cannot be read ({b' '.join(header).decode(errors='replace')}); "
                           "run git fsck. Nothing was changed")
    size = int(header[2])
    content = process.stdout.read(size + 1)[:size]
    algorithm = "sha256" if len(commit) == 64 else "sha1"
    if hashlib.new(algorithm, b"commit %d\0" % size + content).hexdigest() != commit:
        raise SessionError(
            f"the object of commit {commit} does not match its id: its content was rewritten (a run that could "
            "write .git may have forged it, to make your commits look like the session's ancestors). Nothing "
            "was changed; run git fsck, and restore that object (from a clone or a backup) before landing"
        )
    return content
