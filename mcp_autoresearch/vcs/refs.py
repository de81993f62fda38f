"""Reading git refs in-process (HEAD, branches), as git resolves them: no git process, no GitPython.

Several reads sit on every experiment's path (HEAD before each edit and decision, the session branch when it
moves); GitPython's reader validates each name with two `realpath` calls and costs ten times as much. The
rules are GitPython's and git's: HEAD (and the other per-work-tree refs) in the work tree's own git directory,
every other ref in the common one, a loose ref first and `packed-refs` when there is none, at most five links
in a chain of symbolic refs. A malformed name or file raises ValueError, as GitPython does.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

MAX_DEPTH = 5  # git's limit on a chain of symbolic refs, the last one included
_HEXSHA = re.compile(r"[0-9A-Fa-f]{40}")
_PER_WORKTREE = ("HEAD", "ORIG_HEAD", "FETCH_HEAD", "MERGE_HEAD", "CHERRY_PICK_HEAD")
_PER_WORKTREE_DIRS = ("refs/bisect/", "refs/worktree/", "refs/rewritten/")
_BAD_CHARACTERS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


def check_name(name: str) -> None:
    """Refuse a ref name that git refuses (`git check-ref-format`), above all one that leaves `.git`."""
    if name in _PER_WORKTREE:
        return
    parts = name.split("/")
    if (
        not name.startswith("refs/")
        or _BAD_CHARACTERS.search(name)
        or "@{" in name
        or name.endswith((".", "/"))
        or any(not part or part.startswith(".") or part.endswith(".lock") for part in parts)
    ):
        raise ValueError(f"invalid ref name {name!r}")


def read_small(path: Path, limit: int = 1 << 40) -> bytes:
    """A ref file's bytes (at most `limit` of them), with plain system calls (a Python file object costs four more:
    these reads are on every experiment's path). Raises OSError, as `open` does, for a file that is absent or a
    directory."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO planted there never blocks
    try:
        chunks, size = [], 0
        while size < limit and (chunk := os.read(fd, min(1 << 12, limit - size))):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class RefReader:
    """The refs of one work tree: `git_dir` its own git directory, `common_dir` the shared one."""

    def __init__(self, git_dir: Path, common_dir: Path) -> None:
        self.git_dir = git_dir
        self.common_dir = common_dir

    def _file(self, name: str) -> Path:
        own = name in _PER_WORKTREE or name.startswith(_PER_WORKTREE_DIRS)
        return (self.git_dir if own else self.common_dir) / name

    def _packed(self, name: str) -> str | None:
        try:
            with open(self.common_dir / "packed-refs", encoding="utf-8") as handle:
                for line in handle:
                    line = line.strip()
                    if not line or line.startswith(("#", "^")):
                        continue
                    sha, _, ref = line.partition(" ")
                    if ref == name:
                        return sha
        except OSError:
            pass
        return None

    def read(self, name: str) -> tuple[str | None, str | None]:
        """One step: (the commit id, None) or (None, the ref it points to). ValueError when there is no such
        ref or its file says neither."""
        check_name(name)
        try:
            tokens = read_small(self._file(name)).decode("utf-8").split()
        except OSError:  # absent (or a directory): packed, if anywhere
            packed = self._packed(name)
            if packed is None:
                raise ValueError(f"reference {name!r} does not exist") from None
            tokens = [packed]
        if len(tokens) >= 2 and tokens[0] == "ref:":
            return None, tokens[1]
        if tokens and _HEXSHA.fullmatch(tokens[0]):
            return tokens[0], None
        raise ValueError(f"cannot read the reference {name!r}")

    def commit(self, name: str) -> str:
        """The commit id `name` leads to, following symbolic refs."""
        for _ in range(MAX_DEPTH):
            sha, name_next = self.read(name)
            if sha is not None:
                return sha
            assert name_next is not None
            name = name_next
        raise ValueError(f"reference {name!r}: more than {MAX_DEPTH} symbolic refs in a chain")

    def branch(self) -> str | None:
        """The branch HEAD is on (its short name), None when HEAD is detached. HEAD on a ref that is not a
        branch (`git symbolic-ref HEAD refs/tags/...`) gives that ref's full name: shortened, a tag named like
        the session branch would pass for it, and the server's commits would go where HEAD does not."""
        _, target = self.read("HEAD")
        if target is None:
            return None
        if not target.startswith("refs/heads/"):
            return target
        short = target.removeprefix("refs/heads/")
        if short == ".invalid":
            raise ValueError("HEAD points to 'refs/heads/.invalid', which git uses to mark a ref format")
        return short
