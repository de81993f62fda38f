"""Reading git objects on every experiment's path without a round trip to `git cat-file`.

A commit's tree and a file's content at a commit are read from the loose objects in-process (gitdb's loose store,
the one the server writes its candidates' commits with); a packed object, or a name that is not a full object id,
is read through GitPython's `git cat-file` as before. Objects are immutable, so the few last read are kept:
each round trip to `git cat-file` is a context switch each way, which on a loaded machine is most of its cost.
Nothing here writes.
"""

from __future__ import annotations

import re
from collections import OrderedDict

import git
from git.objects.fun import tree_entries_from_data
from gitdb.db.loose import LooseObjectDB
from gitdb.exc import BadObject

_FULL_ID = re.compile(r"[0-9a-f]{40}")
CACHED_OBJECTS = 256  # objects kept in memory (only commits and trees, and blobs under CACHED_BLOB_BYTES)
CACHED_BLOB_BYTES = 1 << 20


class ObjectReader:
    def __init__(self, repo: git.Repo, loose: LooseObjectDB) -> None:
        self._repo = repo
        self._loose = loose
        self._cache: OrderedDict[bytes, tuple[bytes, bytes]] = OrderedDict()

    def read(self, binsha: bytes) -> tuple[bytes, bytes]:
        """(type, content) of one object."""
        found = self._cache.get(binsha)
        if found is not None:
            self._cache.move_to_end(binsha)
            return found
        try:
            stream = self._loose.stream(binsha)
        except (BadObject, OSError):
            stream = self._repo.odb.stream(binsha)  # packed: git cat-file
        found = (stream.type, stream.read())
        if found[0] != b"blob" or len(found[1]) <= CACHED_BLOB_BYTES:
            self._cache[binsha] = found
            if len(self._cache) > CACHED_OBJECTS:
                self._cache.popitem(last=False)
        return found

    def commit_tree(self, commit: str) -> bytes:
        """The id of a commit's tree."""
        if _FULL_ID.fullmatch(commit):
            kind, data = self.read(bytes.fromhex(commit))
            if (
                kind == b"commit"
                and data.startswith(b"tree ")
                and _FULL_ID.fullmatch(data[5:45].decode("ascii"))
            ):
                return bytes.fromhex(data[5:45].decode("ascii"))
        return self._repo.commit(commit).tree.binsha

    def entry(self, commit: str, repo_path: str) -> tuple[bytes, int] | None:
        """(id, mode) of the entry at `repo_path` in `commit`, or None when there is none."""
        sha, mode = self.commit_tree(commit), 0o040000
        for name in repo_path.split("/"):
            if mode != 0o040000:
                return None  # a path below a file
            kind, data = self.read(sha)
            if kind != b"tree":
                return None
            for entry_sha, entry_mode, entry_name in tree_entries_from_data(data):
                if entry_name == name:
                    sha, mode = entry_sha, entry_mode
                    break
            else:
                return None
        return sha, mode

    def file(self, commit: str, repo_path: str) -> bytes:
        """A file's content at `commit`; KeyError when it has none there."""
        found = self.entry(commit, repo_path)
        if found is None:
            raise KeyError(repo_path)
        kind, data = self.read(found[0])
        if kind != b"blob":
            raise KeyError(repo_path)
        return data
