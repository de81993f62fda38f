"""The server's own files (session state, JSONL, results.tsv): written only by the server.

Their fingerprints are taken after each write of the server's; anything else that wrote them (a run, or the
agent's shell between two calls) is undone from what the server knows. The JSONL is append-only and sealed: the
server keeps the sha256 of the bytes it wrote (in memory, and in its own record of the session for a restart)
and a copy of them (`.autoresearch/sessions/<tag>.own.jsonl`), so a JSONL rewritten, edited in place (same size,
mtime put back) or deleted is restored by content, never adopted.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import SessionError
from ..names import RESULTS_TSV, RUN_LOG, SESSIONS, STATE_DIR, public_state
from ..vcs.repo import Repo
from .atomic import atomic_write, fingerprint, open_regular
from .journal import Journal, Seal
from .state import current_tag, record_path, server_dir, state_files_fingerprint, state_path

log = logging.getLogger("mcp_autoresearch")


class OwnFiles:
    def __init__(
        self,
        root: Path,
        tag: str,
        journal: Journal,
        jsonl_rel: str,
        save: Callable[[], None],
        recovered: list[str],
    ) -> None:
        self.root = root
        self.tag = tag
        self.journal = journal
        self.jsonl_rel = jsonl_rel  # as configured, for messages
        self._save = save  # writes the state again from memory
        self._recovered = recovered  # the session's report of what was repaired
        self._journal_prints = journal.fingerprints()
        self._mirror_print = journal.written_print(journal.mirror)
        self._state_paths = (record_path(root, tag), state_path(root, tag))
        self._state_print = state_files_fingerprint(self._state_paths)

    def journal_written(self) -> None:
        """The server appended to the journal: its files as its own writes left them are the expected ones
        (taken from the descriptors written through: a file a run swaps in meanwhile is never adopted)."""
        journal = self.journal
        self._journal_prints = (
            journal.written_print(journal.tsv_path),
            journal.written_print(journal.jsonl_path),
        )
        self._mirror_print = journal.written_print(journal.mirror)

    def state_written(self, record: bool = True, public: bool = True) -> None:
        """The server wrote its record of the state, its public copy, or both: their fingerprints as its writes
        left them (a file it did not write keeps the one it had: an outside write to it is still found)."""
        (record_at, public_at), (record_was, public_was) = self._state_paths, self._state_print
        self._state_print = (
            fingerprint(record_at) if record else record_was,
            fingerprint(public_at) if public else public_was,
        )

    def guard(self) -> None:
        """Before every step that writes: undo outside writes to the server's files, and say so."""
        changed = self.restore()
        if changed:
            self._recovered.append("restored files written outside the server: " + ", ".join(changed))

    def restore(self) -> list[str]:
        """Undo outside writes to the server's files; returns the files that had been written. Compared by
        size, times and inode (the ctime cannot be put back), then restored by content from what this process
        wrote: the state from memory, the JSONL from its sealed bytes, results.tsv from the JSONL."""
        changed: list[str] = []
        tsv_before, jsonl_before = self._journal_prints
        tsv_now, jsonl_now = self.journal.fingerprints()
        mirror = self.journal.mirror
        if jsonl_now != jsonl_before or (mirror is not None and self._mirror_print != fingerprint(mirror)):
            if jsonl_now != jsonl_before:
                changed.append(self.jsonl_rel)
            # Never read back: the file now holds the sealed bytes, which the journal in memory already is,
            # and a run in flight may append more meanwhile (a reload would adopt them, seal and all).
            restore_jsonl(self.journal, self.journal.seal())
        if tsv_before is not None and tsv_now != tsv_before:
            changed.append(RESULTS_TSV)
            self.journal.reconcile_tsv()
        if state_files_fingerprint(self._state_paths) != self._state_print:
            changed.append(f"{STATE_DIR}/{SESSIONS}/{public_state(self.tag)}")
            self._save()
        if changed:
            log.warning("restored files written outside the server: %s", ", ".join(changed))
        self.journal.written.clear()  # restored (or found as expected): the files as they are now
        self.journal_written()
        return changed


def prefix_sha256(path: Path, size: int, then: bytes = b"") -> str | None:
    """sha256 of a regular file's first `size` bytes (followed by `then`); None when it is shorter, or not a
    regular file."""
    if size < 0:
        return None
    try:
        fd = open_regular(path)
    except OSError:
        return None
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as handle:
        left = size
        while left > 0 and (chunk := handle.read(min(left, 1 << 20))):
            digest.update(chunk)
            left -= len(chunk)
    digest.update(then)
    return digest.hexdigest() if left == 0 else None


def restore_jsonl(journal: Journal, seal: Seal) -> str | None:
    """Make the JSONL exactly the `seal`ed bytes the server wrote, and its copy too. What a run appended is cut;
    a JSONL rewritten, edited in place or deleted is restored from the server's copy; appends an OS crash lost
    (never fsynced) are written again from the seal's tail, which the server's record carries. Nothing another
    process wrote is ever adopted, and the history is never emptied: when neither file holds the sealed bytes,
    this refuses. Returns what was done (None when nothing was needed)."""
    size, digest, tail = seal.size, seal.digest, seal.tail
    path, mirror = journal.jsonl_path, journal.mirror
    sources = [path] if mirror is None else [path, mirror]
    note = None
    if prefix_sha256(path, size) == digest:
        if os.lstat(path).st_size > size:
            _truncate(path, size)
            note = f"cut what was appended to {path.name} after the server's last write"
    elif mirror is not None and prefix_sha256(mirror, size) == digest:
        _copy_prefix(mirror, path, size)
        note = f"{path.name} restored from the server's copy"
    elif tail and (base := _holding(sources, size - len(tail), tail, digest)) is not None:
        _copy_prefix(base, path, size - len(tail), tail)
        note = f"{path.name}: its last {len(tail)} bytes (not yet fsynced) written again from the server's record"
    else:
        raise SessionError(
            f"{path} was rewritten and the server's copy ({mirror}) no longer holds what the server wrote "
            "either; nothing of them was adopted. Put back the JSONL from a backup, or start a new session"
        )
    if mirror is not None and (prefix_sha256(mirror, size) != digest or os.lstat(mirror).st_size != size):
        _copy_prefix(path, mirror, size)
    return note


def _holding(sources: list[Path], size: int, tail: bytes, digest: str) -> Path | None:
    """The first file whose first `size` bytes, followed by `tail`, hash to `digest`."""
    return next((path for path in sources if prefix_sha256(path, size, tail) == digest), None)


def start_mirror(journal: Journal) -> None:
    """A new session's copy of the JSONL: its whole content as this server read it."""
    assert journal.mirror is not None
    _copy_prefix(journal.jsonl_path, journal.mirror, journal.seal().size)


def _truncate(path: Path, size: int) -> None:
    fd = open_regular(path, os.O_RDWR)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_prefix(source: Path, dest: Path, size: int, then: bytes = b"") -> None:
    """`dest` becomes the first `size` bytes of `source`, then `then` (atomically; only `then` when `source` is
    absent)."""
    try:
        fd = open_regular(source)
    except FileNotFoundError:
        atomic_write(dest, then, 0o644)
        return
    with os.fdopen(fd, "rb") as handle:
        left = size

        def chunks() -> Iterator[bytes]:
            nonlocal left
            while left > 0 and (chunk := handle.read(min(left, 1 << 20))):
                left -= len(chunk)
                yield chunk
            yield then

        atomic_write(dest, chunks(), 0o644)


def archive_results(root: Path, new_tag: str) -> list[str]:
    """A new session starts a fresh results.tsv and run.log; what was there (a previous session's, or the
    original tool's) is moved beside the session state, never deleted. Returns what was moved."""
    moved = []
    old = current_tag(root) or "previous"
    if old == new_tag:
        old = f"{old}-old"
    for name, archived in ((RESULTS_TSV, f"results-{old}.tsv"), (RUN_LOG, f"run-{old}.log")):
        source = root / name
        if not source.exists() and not source.is_symlink():
            continue
        archive = server_dir(root) / archived
        number = 1
        while os.path.lexists(archive):  # an earlier archive of the same name is never replaced
            number += 1
            archive = archive.with_name(f"{Path(archived).stem}-{number}{Path(archived).suffix}")
        os.replace(source, archive)
        archived = archive.name
        moved.append(f"{name} -> .autoresearch/{archived}")
    return moved


def exclude_patterns(repo: Repo, jsonl_path: str) -> list[str]:
    def anchored(rel: str) -> str:
        return "/" + repo.repo_path(rel)

    patterns = [anchored(STATE_DIR) + "/", anchored(RESULTS_TSV), anchored(RUN_LOG)]
    if not jsonl_path.startswith(STATE_DIR + "/"):
        patterns.append(anchored(jsonl_path))
    return patterns
