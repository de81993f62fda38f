"""Reading and editing the target: the one file experiments may change.

Every path is checked to be the configured target (no other file, no symlink swapped in) and every write is
atomic. Nothing here commits or runs anything.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import RuleViolation, SessionError
from ..models import EditResult, TargetView
from ..records.atomic import atomic_write, read_regular, unused_path
from ..records.state import server_dir
from ..setup.single_file import resolve_target_path, sha256_bytes
from ..terminal_text import printable
from ..vcs.repo import Repo
from .context import SessionCore
from .diffs import bounded_diff

MAX_EDIT_BYTES = 4 * 1024 * 1024  # largest content apply_edit writes
MAX_VIEW_CHARS = 100_000  # largest slice read_target returns
DELETED_FIX = "write it again with apply_edit(content=...) (the whole file)"


class Editor:
    def __init__(self, core: SessionCore) -> None:
        self.core = core
        self.last_written: str | None = None  # the sha256 of what apply_edit last wrote (lost at a restart)
        # the sha256 of the last hand edit kept aside, and where
        self.last_kept: tuple[str, Path] | None = None

    def target_path(self, requested: str | None = None, must_exist: bool = False) -> Path:
        """The target's path, when `requested` names it (or is None) and it is still a regular file.
        Refusals say which call fixes it, or that a person must: the agent may have no shell."""
        target = self.core.target_rel
        path = resolve_target_path(self.core.root, target, requested)
        mode = _lstat_mode(path)  # one look: what stands there, never followed
        if must_exist and mode is None:
            raise RuleViolation(f"the target {target} was deleted; {DELETED_FIX}")
        if mode is not None and not stat.S_ISREG(mode):
            raise RuleViolation(
                f"the target {target} is no longer a regular file (a symlink or directory replaced it); no tool "
                f"can write through that, so a person must restore it (git checkout -- {target})"
            )
        parent = path.parent
        if parent.resolve() != parent:
            raise RuleViolation(
                f"a directory on the path to {target} is a symlink; a person must restore the directory"
            )
        return path

    def read_target(self, start_line: int | None, end_line: int | None) -> TargetView:
        path = self.target_path()
        try:
            data = read_regular(path)  # never blocks on a FIFO swapped in after the check above
        except FileNotFoundError:
            raise RuleViolation(f"the target {self.core.target_rel} was deleted; {DELETED_FIX}") from None
        except OSError:
            raise RuleViolation(
                f"the target {self.core.target_rel} is no longer a regular file; restore it"
            ) from None
        text = data.decode("utf-8", errors="replace")
        lines = text.splitlines(keepends=True)
        total = len(lines)
        start = 1 if start_line is None else start_line
        end = total if end_line is None else end_line
        if start < 1 or (total and start > total) or end < start - 1:
            raise RuleViolation(f"line range {start}-{end} is outside the file (1-{total})")
        end = min(end, total)
        content = "".join(lines[start - 1 : end])
        truncated, line_cut = False, None
        if len(content) > MAX_VIEW_CHARS:
            cut = content[:MAX_VIEW_CHARS]
            end = start - 1 + _whole_lines(lines[start - 1 : end], MAX_VIEW_CHARS)
            content = "".join(lines[start - 1 : end])
            truncated = True
            if end < start:  # the first line alone is longer: its beginning, said so (never an empty answer)
                content, end, line_cut = cut, start, True
        return TargetView(
            path=self.core.target_rel,
            content=content,
            sha256=sha256_bytes(data),
            total_lines=total,
            start_line=start,
            end_line=end,
            truncated=truncated,
            line_cut=line_cut,
        )

    def apply_edit(
        self,
        edits: list[dict[str, str]] | None,
        content: str | None,
        path: str | None,
        expected_sha256: str | None,
    ) -> EditResult:
        """Write the new content under the session's lock; the diff is computed after the lock is released (it
        may take a while on a large change, and other calls must not wait for it)."""
        with self.core.lock:
            target = self.target_path(path)
            self.core.check_no_pending()
            self.core.check_head()  # never write into another branch's work tree
            if (edits is None) == (content is None):
                raise RuleViolation(
                    "give exactly one of edits (a list of {old_text, new_text}) or content (the whole new file)"
                )
            if content is not None and len(content) > MAX_EDIT_BYTES:  # refused before any copy of it is made
                raise RuleViolation(_too_large(len(content), "characters"))
            try:
                before_bytes = read_regular(target)
            except FileNotFoundError:
                before_bytes = b""
            except OSError:
                raise RuleViolation(
                    f"the target {self.core.target_rel} is no longer a regular file"
                ) from None
            before_sha = sha256_bytes(before_bytes)
            given = None if expected_sha256 is None else _hash_given(expected_sha256)
            if given is not None and given != before_sha:
                raise RuleViolation(
                    f"the target changed since you read it (sha256 is {before_sha[:12]}…, you expected "
                    f"{given[:12]}…); call read_target again and redo the edit"
                )
            try:
                before = before_bytes.decode("utf-8")
            except UnicodeDecodeError:
                raise RuleViolation(
                    f"{self.core.target_rel} is not UTF-8 text; edits need a text file"
                ) from None
            after = content if content is not None else self._replaced(before, edits or [])
            data = after.encode("utf-8")
            if len(data) > MAX_EDIT_BYTES:
                raise RuleViolation(_too_large(len(data), "bytes"))
            if "\x00" in after:
                raise RuleViolation("the new content contains NUL bytes; only text can be written")
            kept_aside = self._keep_hand_edit(before_bytes, before_sha)
            # Replaces a symlink swapped in, never follows it. Not fsynced, as an editor or git checkout writes:
            # no record names this content until start_run commits it (README, "Crash safety").
            atomic_write(target, data, sync=False)
            self.last_written = sha256_bytes(data)
        diff = bounded_diff(before, after, self.core.target_rel)
        return EditResult(
            path=self.core.target_rel,
            sha256_before=before_sha,
            sha256_after=sha256_bytes(data),
            diff=printable(diff.text, lines=True),  # the content is the agent's: shown escaped
            lines_added=diff.added,
            lines_removed=diff.removed,
            diff_summarized=diff.summarized or None,
            kept_aside=kept_aside,
        )

    def _keep_hand_edit(self, current: bytes, current_sha: str) -> str | None:
        """The target as a person left it, kept in `.autoresearch/edits/` before an edit replaces it: when it holds
        neither what this server's apply_edit last wrote nor the target of a commit the server put there (HEAD,
        the best, the next parent, a run's candidate or parent), the bytes came from someone else (a person's
        hand edit between runs; after a restart, also an edit the agent made before it). The copy's path
        (project-relative), or None when nothing was kept."""
        core = self.core
        if not current or current_sha == self.last_written:
            return None
        state, repo, path = core.state, core.repo, core.target_repo_path
        commits = {repo.head_commit(), state.best.commit if state.best else None, state.next_parent_commit}
        for run in state.inflight:
            commits |= {run.commit, run.parent_commit}
        form = current if core.plain_target else repo.blob_id(path, current).encode()
        if any(_holds(repo, c, path, form, core.plain_target) for c in commits if c):
            return None
        if self.last_kept is not None and self.last_kept[0] == current_sha and self.last_kept[1].is_file():
            # kept already: the same bytes, not a new copy
            return str(self.last_kept[1].relative_to(core.root))
        target = core.root / core.target_rel
        aside = unused_path(server_dir(core.root, "edits"), f"{core.state.tag}-before-edit-{target.name}")
        atomic_write(aside, current)
        self.last_kept = (current_sha, aside)
        return str(aside.relative_to(core.root))

    def _replaced(self, before: str, edits: list[dict[str, str]]) -> str:
        """`before` with each exact replacement applied in order; refused as soon as it grows past the limit."""
        if not edits:
            raise RuleViolation("edits is empty; give at least one {old_text, new_text}")
        after = before
        for number, edit in enumerate(edits, start=1):
            old, new = edit.get("old_text", ""), edit.get("new_text", "")
            if not old:
                raise RuleViolation(f"edit {number}: old_text is empty; quote the exact text to replace")
            old, new = _in_line_endings_of(after, old, new)
            count = after.count(old)
            if count != 1:
                where = "does not occur" if count == 0 else f"occurs {count} times"
                raise RuleViolation(
                    f"edit {number}: old_text {where} in {self.core.target_rel}; it must occur exactly once "
                    "(quote more surrounding text, or read_target to see the current content)"
                )
            after = after.replace(old, new, 1)
            if len(after) > MAX_EDIT_BYTES:  # 200 edits of 4 MB each would otherwise build 800 MB
                raise RuleViolation(f"after edit {number}, " + _too_large(len(after), "characters"))
        return after


def _in_line_endings_of(text: str, old: str, new: str) -> tuple[str, str]:
    """The edit as it applies to `text`: where every line of the target ends with CRLF, the newlines of both
    texts are CRLF too (an agent retypes read_target's lines with plain newlines), so that the edit matches and
    the file keeps one line ending. Anything else: the edit as given."""
    if "\r\n" not in text or text.count("\n") != text.count("\r\n"):
        return old, new
    return _crlf(old), _crlf(new)


def _crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


def _holds(repo: Repo, commit: str, path: str, form: bytes, plain: bool) -> bool:
    """Whether `commit`'s target is `form`: the bytes of a plain target, else its blob id (git's form, so that a
    checkout's converted bytes are no change); False when the commit has no such file."""
    try:
        if plain:
            return repo.show_file(commit, path) == form
        return repo.blob_at(commit, path).encode() == form
    except (SessionError, KeyError, ValueError, OSError):
        return False


def _too_large(size: int, unit: str) -> str:
    return (
        f"the new content is {size} {unit}; the limit is {MAX_EDIT_BYTES} bytes ({MAX_EDIT_BYTES // 1024 // 1024} "
        "MiB) of UTF-8 text"
    )


def _hash_given(expected_sha256: str) -> str:
    """The sha256 an agent passed, in read_target's form (spaces around and capitals allowed); refused when it
    cannot be one, rather than answered as a target that changed."""
    given = expected_sha256.strip().lower()
    if len(given) != 64 or not all(c in "0123456789abcdef" for c in given):
        raise RuleViolation(
            f"expected_sha256 {printable(expected_sha256[:80])!r} is not a sha256 (64 hexadecimal digits): pass "
            "the sha256 read_target returned, or leave expected_sha256 out"
        )
    return given


def _lstat_mode(path: Path) -> int | None:
    """The mode of what stands at `path` (a symlink's own), None when nothing does."""
    try:
        return os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None


def what_the_edit_left(edit: EditResult) -> str:
    """For a refusal that came after an edit: what the target holds now."""
    if edit.sha256_after == edit.sha256_before:
        return f"the edit changed nothing: the target is as it was, sha256 {edit.sha256_after[:12]}…"
    return f"the edit was made before: the target holds it, sha256 {edit.sha256_after[:12]}…"


def _whole_lines(lines: list[str], most: int) -> int:
    """How many of `lines` (`str.splitlines`' lines: a newline is not the only end of one) fit in `most`
    characters."""
    count = taken = 0
    for line in lines:
        taken += len(line)
        if taken > most:
            break
        count += 1
    return count
