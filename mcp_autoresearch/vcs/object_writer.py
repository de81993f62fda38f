"""The git objects of a candidate's commit, written in-process as git names and compresses them: its blob, the
trees on its path, the commit. An object already at an id is kept when it holds that content; a loose one holding
other content was planted and is replaced; a pack claiming the id with other content stops the commit."""

from __future__ import annotations

import hashlib
import io
import os
import zlib
from pathlib import Path

import git
from git.objects.fun import tree_entries_from_data, tree_to_stream
from gitdb.db.loose import LooseObjectDB

from ..errors import SessionError
from ..records.atomic import atomic_write, own_dir
from .objects import ObjectReader
from .packs import packs_claiming


class ObjectWriter:
    """Loose objects written into `objects_dir`, read back through `loose`, git's view through `repo`."""

    def __init__(self, objects_dir: Path, repo: git.Repo, loose: LooseObjectDB, reader: ObjectReader) -> None:
        self._objects_dir = objects_dir
        self._repo = repo
        self._loose = loose
        self._objects = reader

    def store(self, kind: bytes, data: bytes) -> bytes:
        """Write one loose object, in-process, as git names and compresses it (not fsynced: git's default for
        loose objects). Like git, an object already at that id is kept; one holding other content was planted
        (a run that could write .git, at the id its own content would have: the kept commit would name a file
        never measured), and ours replaces it. The fan-out folder must be a real one (a planted symlink there
        would carry the write out of .git)."""
        raw = kind + b" %d\0" % len(data) + data
        binsha = hashlib.sha1(raw).digest()
        name = binsha.hex()
        for pack in packs_claiming(self._objects_dir, binsha):
            if not self._git_reads(binsha, kind, data):
                raise SessionError(
                    f"{pack.name} in .git/objects/pack claims the object {name} (the {kind.decode()} the server "
                    "is writing) but holds other content: it was planted, and git, which reads packs first, "
                    "would take it for what was measured. Nothing was committed. A person must move that pack "
                    "(its .idx and .pack files) out of .git/objects/pack"
                )
            break
        folder = own_dir(self._objects_dir, name[:2])
        if os.path.lexists(folder / name[2:]) and self._holds(binsha, kind, data):
            return binsha
        atomic_write(folder / name[2:], zlib.compress(raw), mode=0o444, sync=False)
        return binsha

    def _git_reads(self, binsha: bytes, kind: bytes, data: bytes) -> bool:
        """git itself (packs first) reads `binsha` as exactly `kind` and `data`."""
        try:
            stream = self._repo.odb.stream(binsha)
            return bool(stream.type == kind and stream.read() == data)
        except Exception:  # noqa: BLE001 - unreadable: not what the server writes either
            return False

    def _holds(self, binsha: bytes, kind: bytes, data: bytes) -> bool:
        """The loose object at `binsha` is exactly `kind` and `data`."""
        try:
            stream = self._loose.stream(binsha)
            return bool(stream.type == kind and stream.read() == data)
        except Exception:  # noqa: BLE001 - unreadable (not zlib, cut short): not ours either
            return False

    def replace_in_tree(self, tree_sha: bytes, parts: list[str], blob: bytes) -> bytes:
        """A new tree equal to `tree_sha` but with the blob at `parts` replaced (its mode kept); returns its id."""
        entries = list(tree_entries_from_data(self._objects.read(tree_sha)[1]))
        for index, (sha, mode, name) in enumerate(entries):
            if name == parts[0]:
                new_sha = blob if len(parts) == 1 else self.replace_in_tree(sha, parts[1:], blob)
                entries[index] = (new_sha, mode, name)
                break
        else:
            raise SessionError(f"{'/'.join(parts)} is not in the commit; is the target tracked?")
        buffer = io.BytesIO()
        tree_to_stream(entries, buffer.write)
        return self.store(b"tree", buffer.getvalue())
