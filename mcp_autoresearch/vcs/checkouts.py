"""The slots' checkouts: one disposable copy of the candidate's tree per slot, outside the user's work tree.

A slot is a directory of the server's (`~/.cache/mcp-autoresearch/slots/<project>-<tag>/<n>`, or below
`AUTORESEARCH_SLOTS_DIR`) holding the whole tracked tree at the candidate's commit, written by git from this
repository's objects through an index of the slot's own (`.autoresearch/slots/<tag>/<n>.index`): the user's
index and work tree are never touched, and a run in a slot sees no `.git` to write. Untracked inputs the runs
need (`shared_inputs`: node_modules, a virtual environment, data) are links into the project, read-only to a
confined run; build outputs (`writable` entries inside the project) are the slot's own and survive from one run
to the next in that slot, as they do in a single work tree.

Before every run the slot is brought back to the candidate: tracked files that differ are written again and
everything untracked outside the writable outputs and the links is removed, so nothing one run leaves (a forged
`sitecustomize.py`, a stale bytecode cache) reaches the next. After a run, `changes` says which tracked files
it altered: a confined run cannot, so any is tampering.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, SessionError
from ..names import SLOT_INDEXES
from ..records.atomic import atomic_write
from ..records.state import server_dir

if TYPE_CHECKING:
    from .repo import Repo

SLOTS_ENV = "AUTORESEARCH_SLOTS_DIR"


def slots_home() -> Path:
    explicit = os.environ.get(SLOTS_ENV)
    if explicit:
        return Path(explicit).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(cache).resolve() / "mcp-autoresearch" / "slots"


def check_writable_for_slots(root: Path, entries: list[str]) -> None:
    """At configuration time, with slots: refuse `writable` entries that contain the slots' folder or lie in it
    (`~/.cache`, for one): each slot must stay read-only to the runs of the others."""
    home = slots_home()
    for entry in entries:
        path = Path(os.path.normpath(os.path.join(root, os.path.expanduser(entry))))
        spelled = os.path.expanduser(entry)
        tree = next(((top, found) for top, found in _spellings(root, path) if _contains(top, found)), None)
        if os.path.isabs(spelled) and tree is not None:
            relative = tree[1].relative_to(tree[0]).as_posix()
            raise ConfigError(
                f"writable entry '{entry}' names a folder of your work tree by its full path: with slots, each "
                f"slot's run writes its own checkout's copy of it; write it relative to the project ('{relative}')"
            )
        for candidate in {path, path.resolve()}:
            if _contains(candidate, home) or _contains(home, candidate):
                raise ConfigError(
                    f"writable entry '{entry}' would let a run write the slots' checkouts ({home}): each slot "
                    "must be read-only to the runs of the others; name a narrower directory (or move the slots "
                    f"with {SLOTS_ENV})"
                )


def check_slots_home() -> None:
    """At configuration time, with slots: the slots' folder can be made (its nearest existing ancestor is a
    writable directory), else a clear error before any session starts."""
    home = slots_home()
    existing = home
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"the slots' checkouts cannot be made in {home} ({existing} is not a writable directory); point "
            f"{SLOTS_ENV} at a writable directory outside the project, or set slots = 1"
        )


def session_slots(root: Path, tag: str) -> Path:
    """Where a session's slots live."""
    root = root.resolve()
    key = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    return slots_home() / f"{root.name[:40]}-{key}-{tag}"


class Checkouts:
    """The checkouts of one session's slots."""

    def __init__(self, root: Path, repo: Repo, tag: str, writable: list[str], shared: list[str]) -> None:
        self.root = root.resolve()
        self.repo = repo
        self.tag = tag
        self.home = session_slots(self.root, tag)
        self.prefix = self.root.relative_to(repo.top).as_posix() if self.root != repo.top else ""
        self.writable = [w for w in writable if not _outside(w)]
        self.shared = [os.path.normpath(s) for s in shared]
        self._linked: dict[int, set[str]] = {}  # the shared inputs each slot's last `prepare` left linked

    def check_writable(self, entries: list[str], slots: int) -> None:
        """Refuse `writable` entries that would open the slots' checkouts to a run (`~/.cache`, an absolute path
        above them, a relative one climbing out of the project into them): each slot must stay read-only to the
        runs of the others, and its tracked files to its own."""
        home = self.home
        for entry in entries:
            for slot in range(slots):
                lexical = Path(os.path.normpath(os.path.join(self.project(slot), os.path.expanduser(entry))))
                for path in {lexical, lexical.resolve()}:
                    if _contains(path, home) or (
                        _contains(home, path) and not _contains(self.top(slot), path)
                    ):
                        raise ConfigError(
                            f"writable entry '{entry}' would let a run write the slots' checkouts ({home}): each "
                            "slot must be read-only to the runs of the others; name a narrower directory"
                        )

    def check_home(self) -> None:
        """The slots' folder can be made here (else a clear error before any run, not a crash per run)."""
        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"the slots' checkouts cannot be made in {self.home} ({exc.strerror or exc}); point "
                f"{SLOTS_ENV} at a writable directory outside the project, or set slots = 1"
            ) from None

    # -- where -------------------------------------------------------------------------------------------
    def top(self, slot: int) -> Path:
        return self.home / str(slot)

    def project(self, slot: int) -> Path:
        """The project's root inside the slot (the project may be a subdirectory of its repository)."""
        return self.top(slot) / self.prefix if self.prefix else self.top(slot)

    def _index(self, slot: int) -> Path:
        return server_dir(self.root, SLOT_INDEXES, self.tag) / f"{slot}.index"

    def index_exists(self, slot: int) -> bool:
        return self._index(slot).exists()

    def _git(self, slot: int, *args: str) -> str:
        self._check_real(slot)
        return self.repo.in_checkout(self.top(slot), self._index(slot), *args)

    def _is_real(self, slot: int) -> bool:
        """The slot is a real directory at its own path: no link in place of it or of a folder above it (a run
        that is not confined could plant one leading into the user's tree, which a restore would then clean)."""
        top = self.top(slot)
        return top.is_dir() and os.path.realpath(top) == str(top)

    def _check_real(self, slot: int) -> None:
        if not self._is_real(slot):
            raise SessionError(
                f"slot {slot} ({self.top(slot)}) is no longer a real directory of the server's"
            )

    # -- before a run ------------------------------------------------------------------------------------
    def prepare(self, slot: int, commit: str) -> Path:
        """The slot holding exactly `commit`'s tracked tree, the links to the shared inputs, the writable outputs
        of earlier runs, and nothing else. Returns the project's root in the slot."""
        top = self.top(slot)
        fresh = not self._is_real(slot) or not self._index(slot).exists()
        if fresh:
            for path in (
                self.home,
                top,
            ):  # a link planted in place of the slot (or its session's folder) goes
                if path.is_symlink():
                    _remove(path)
            if os.path.realpath(self.home.parent) != str(self.home.parent):
                raise SessionError(f"the slots' folder {self.home.parent} is no longer a real directory")
            _remove(top)
            top.mkdir(parents=True, exist_ok=True)
            self._check_real(slot)
        self._git(slot, "read-tree", commit)
        if fresh:
            self._git(slot, "checkout-index", "-a", "-f", "-u")
        else:
            self.restore(slot)
        self._link_shared(slot)
        self._make_outputs(slot)
        return self.project(slot)

    def _make_outputs(self, slot: int) -> None:
        """The writable outputs exist in the slot (a build may expect its output folder), created only where
        no component is a link: an output below a shared input is that input's, never made through the link."""
        project = self.project(slot)
        for entry in self.writable:
            _make_dirs(project, os.path.normpath(entry))

    def restore(self, slot: int) -> list[str]:
        """Put the slot back to its index's commit: tracked files that differ are written again, untracked ones
        outside the writable outputs and the links removed. Returns the tracked files that differed."""
        top = self.top(slot)
        changed, untracked = self._status(slot, untracked=True)
        self._remove_untracked(slot, untracked)
        for path in changed:  # a path a run replaced with a directory or a link is written anew
            _remove_in(top, path)
        self._checkout(slot, changed)
        return [self._project_relative(p) for p in changed]

    def _checkout(self, slot: int, paths: list[str]) -> None:
        for start in range(0, len(paths), 500):
            self._git(slot, "checkout-index", "-f", "-u", "--", *paths[start : start + 500])

    def _status(self, slot: int, untracked: bool = False) -> tuple[list[str], list[str]]:
        """One git process: tracked files whose content in the slot is not the index's (stat data, then content),
        and with `untracked` every untracked entry (ignored ones too; a directory once, as 'dir/')."""
        args = ["status", "--porcelain=v1", "-z", "--no-renames", "--ignore-submodules=all"]
        args += (
            ["--untracked-files=normal", "--ignored=traditional"] if untracked else ["--untracked-files=no"]
        )
        changed: list[str] = []
        others: list[str] = []
        for entry in self._git(slot, *args).split("\0"):
            if len(entry) < 4:
                continue
            code, path = entry[:2], entry[3:]
            if code in ("??", "!!"):
                others.append(path)
            elif code[1] != " ":  # the work tree's column: this file differs from the index
                changed.append(path)
        return changed, others

    def _remove_untracked(self, slot: int, untracked: list[str]) -> None:
        """Everything untracked in the slot goes, but the writable outputs and the shared links."""
        top = self.top(slot)
        keep = [self._in_slot(w) for w in self.writable] + [self._in_slot(s) for s in self.shared]
        for entry in untracked:
            path = entry.rstrip("/")
            if any(path == k or path.startswith(k + "/") for k in keep) and not self._impostor(top, path):
                continue
            if any(k.startswith(path + "/") for k in keep) and _real_parent(top, f"{path}/x") is not None:
                self._remove_below(top, path, keep)  # a real directory holding kept entries: look inside
                continue
            _remove_in(top, path)

    def _impostor(self, top: Path, path: str) -> bool:
        """An untracked entry standing where a kept one belongs, but not what the server put there: a shared
        input that is not the server's link into the project (forged data a run left for the next), or a
        writable output that is a link (the next runs' outputs, and the metric read from them, would be
        elsewhere). Only the entry itself is judged; what lies inside a real output is the runs' own."""
        for entry in self.shared:
            if path == self._in_slot(entry):
                return not self._is_link_to_source(top / path, entry)
        return any(path == self._in_slot(w) for w in self.writable) and (top / path).is_symlink()

    def _remove_below(self, top: Path, directory: str, keep: list[str]) -> None:
        """Inside an untracked real directory that holds kept entries: remove all but those."""
        try:
            names = os.listdir(top / directory)
        except OSError:
            return
        for name in names:
            path = f"{directory}/{name}"
            if any(path == k or path.startswith(k + "/") for k in keep) and not self._impostor(top, path):
                continue
            inside = top / path
            if any(k.startswith(path + "/") for k in keep) and inside.is_dir() and not inside.is_symlink():
                self._remove_below(top, path, keep)
                continue
            _remove(inside)  # below an untracked directory nothing is tracked

    def _in_slot(self, project_relative: str) -> str:
        rel = os.path.normpath(project_relative).lstrip("/")
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _link_shared(self, slot: int) -> None:
        project = self.project(slot)
        linked = self._linked[slot] = set()
        for entry in self.shared:
            source = self.root / entry
            link = project / entry
            if not _make_dirs(project, os.path.dirname(entry)):
                continue  # a link on the way: never written through
            if not source.exists() or (link.is_symlink() and os.readlink(link) == str(source)):
                continue
            if os.path.lexists(link) and not link.is_symlink():
                continue  # tracked content of the candidate's (or an output): never replaced by a link
            if link.is_symlink():
                _remove(link)
            os.symlink(source, link)
        linked.update(e for e in self.shared if self._is_link_to_source(project / e, e))

    def write_target(self, slot: int, repo_path: str, data: bytes) -> None:
        """The target's content in the slot (the best's, for a re-measurement), atomically, never through a link
        a run put on its way."""
        if not self._is_real(slot) or _real_parent(self.top(slot), repo_path) is None:
            raise SessionError(
                f"a directory on the way to {repo_path} in slot {slot} is no longer a real directory"
            )
        atomic_write(self.top(slot) / repo_path, data)

    # -- after a run -------------------------------------------------------------------------------------
    def changes(self, slot: int) -> list[str]:
        """Tracked files the run changed in its slot (restored before the slot's next run), project-relative."""
        found, _ = self._status(slot)
        return [self._project_relative(p) for p in found]

    def replaced_links(self, slot: int) -> list[str]:
        """Shared inputs whose link into the project, made before this slot's run, is gone or replaced: forged
        data in place of a read-only input, or a link leading elsewhere."""
        project = self.project(slot)
        return [
            entry
            for entry in sorted(self._linked.get(slot, ()))
            if not (
                _real_parent(project, entry) is not None and self._is_link_to_source(project / entry, entry)
            )
        ]

    def _is_link_to_source(self, link: Path, entry: str) -> bool:
        return link.is_symlink() and os.readlink(link) == str(self.root / entry)

    def _project_relative(self, repo_path: str) -> str:
        return (
            repo_path[len(self.prefix) + 1 :]
            if self.prefix and repo_path.startswith(self.prefix + "/")
            else repo_path
        )

    def remove_all(self) -> None:
        _remove(self.home)


def merge_file(base: bytes, ours: bytes, theirs: bytes) -> subprocess.CompletedProcess[bytes]:
    """`git merge-file -p` on three contents: returncode 0 (merged), the number of conflicts (the output marks
    them), or an error (negative, or above 127)."""
    with tempfile.TemporaryDirectory(prefix="autoresearch-merge-") as tmp:
        paths = []
        for name, data in (("ours", ours), ("base", base), ("theirs", theirs)):
            path = Path(tmp) / name
            path.write_bytes(data)
            paths.append(str(path))
        try:
            return subprocess.run(
                ["git", "merge-file", "-p", *paths],
                capture_output=True,
                stdin=subprocess.DEVNULL,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SessionError(f"git merge-file could not run: {exc}") from None


def merge_target(base: bytes, ours: bytes, theirs: bytes) -> bytes | None:
    """Three-way merge of the target: `theirs` (a candidate's change from `base`) applied onto `ours` (the new
    best). None when the two changes conflict."""
    done = merge_file(base, ours, theirs)
    if done.returncode != 0:  # the number of conflicts, or an error
        return None
    return done.stdout


def _spellings(root: Path, path: Path) -> list[tuple[Path, Path]]:
    """The work tree and an entry's path as written, then both with their links resolved (an entry may reach the
    work tree through a link, or the work tree be named through one)."""
    return [
        (Path(os.path.normpath(root)), path),
        (Path(os.path.realpath(root)), Path(os.path.realpath(path))),
    ]


def _contains(outer: Path, inner: Path) -> bool:
    return outer == inner or outer in inner.parents


def _outside(entry: str) -> bool:
    """A writable entry outside the project (absolute or ~): the same directory for every slot."""
    return entry.startswith(("/", "~"))


def _make_dirs(top: Path, rel: str) -> bool:
    """Create `top/rel` directory by directory; False (and nothing made further) at a link or a non-directory."""
    path = top
    for part in Path(rel).parts if rel else ():
        path = path / part
        if path.is_symlink():
            return False
        if not path.exists():
            try:
                path.mkdir()
            except OSError:
                return False
        elif not path.is_dir():
            return False
    return True


def _real_parent(top: Path, rel: str) -> Path | None:
    """The directory holding `top/rel` when every component from `top` down to it is a real directory (no
    link): only then may the server write or remove there. None otherwise."""
    path = top
    for part in Path(rel).parts[:-1]:
        path = path / part
        if path.is_symlink() or not path.is_dir():
            return None
    return path


def _remove_in(top: Path, rel: str) -> None:
    """Remove `top/rel` without ever going through a link: a link on the way is itself removed instead."""
    path = top
    for part in Path(rel).parts[:-1]:
        path = path / part
        if path.is_symlink():
            _remove(path)
            return
        if not path.is_dir():
            return
    _remove(top / rel)


def _remove(path: Path) -> None:
    """Remove a path of the slot's: a link itself (never what it points to), a file, or a directory tree."""
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
        else:
            shutil.rmtree(path, ignore_errors=True)
    except OSError:
        pass
    except (
        RecursionError
    ):  # a tree deeper than Python's recursion limit (a run can make one): rm is not recursive
        try:
            subprocess.run(
                ["rm", "-rf", "--", str(path)], stdin=subprocess.DEVNULL, capture_output=True, timeout=120
            )
        except (OSError, subprocess.SubprocessError):
            pass
