"""What a run could plant in git's own files to steer the server's git commands, and how the server notices.

`repo.py` already runs git without hooks, fsmonitor, replace objects, grafts, commit-graph files or system
configuration. What git always reads are the configuration and attribute files (a filter driver named in
`.git/info/attributes` and defined in `.git/config` is a command the server's next `git status` would run), the
files that change what git considers history (`info/grafts`, `shallow`, `objects/info/alternates` and
`http-alternates`: a graft can make the user's commit a parent of a candidate, so that `finish --land` would
fast-forward the user's branch around it) and the refs. All are snapshotted before each run and compared after
it, in-process and before any git command runs again: a change is tampering. The files are put back as they
were (a copy of the run's version is kept); refs are only named, since the server never moves a branch but its
own. Nothing here runs git; it costs a few small reads per run.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from ..errors import SessionError
from ..names import SESSION_REFS
from ..records.atomic import atomic_write, copy_regular, read_regular, unused_path
from ..records.state import server_dir
from .repo import Repo

MAX_CONFIG_BYTES = 1 << 20  # a git configuration file larger than this is compared by hash only


def config_files(git_dir: Path, common_dir: Path) -> list[Path]:
    """The configuration and attribute files git reads for the server's calls (system ones are off)."""
    home = Path(os.path.expanduser("~"))
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "git"
    files = [
        common_dir / "config",
        git_dir / "config.worktree",
        common_dir / "info" / "attributes",
        common_dir / "info" / "sparse-checkout",
        home / ".gitconfig",
        xdg / "config",
        xdg / "attributes",
    ]
    return list(dict.fromkeys(files))


def history_files(common_dir: Path) -> list[Path]:
    """The files that change which commits git sees as parents or which objects it reads: grafts (a commit's
    parents replaced), shallow (parents cut off), alternates (objects borrowed from another store)."""
    return [
        common_dir / "info" / "grafts",
        common_dir / "shallow",
        common_dir / "objects" / "info" / "alternates",
        common_dir / "objects" / "info" / "http-alternates",
    ]


def present_history_files(common_dir: Path) -> list[Path]:
    """The history files that exist (a dangling link counts: git would follow it once it points somewhere)."""
    return [path for path in history_files(common_dir) if os.path.lexists(path)]


def _read(path: Path) -> str | None:
    """A file's content as JSON-storable text (latin-1 keeps every byte); None when absent. A symlink (dotfile
    managers link ~/.gitconfig) is its target's name and content; anything else that is not a regular file, or
    a file too large to keep, is a marker."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"\0unreadable: {exc.strerror}"
    prefix = ""
    if stat.S_ISLNK(st.st_mode):
        prefix = f"\0symlink {os.readlink(path)}\0"
    try:
        data = read_regular(path.resolve() if prefix else path)
    except OSError as exc:
        return f"{prefix}\0not a regular file ({exc})"
    if len(data) > MAX_CONFIG_BYTES:
        return f"{prefix}\0sha256 {hashlib.sha256(data).hexdigest()}"
    return prefix + data.decode("latin-1")


def snapshot_config(files: list[Path]) -> dict[str, str | None]:
    return {str(path): _read(path) for path in files}


def changed_config(before: dict[str, str | None]) -> list[str]:
    return [name for name, content in before.items() if _read(Path(name)) != content]


def restore_config(before: dict[str, str | None], names: list[str], keep_dir: Path) -> list[str]:
    """Put these files back as they were before the run, after keeping a copy of the run's version in
    `keep_dir` (a file the run created is removed once copied). Returns the files that could not be put back."""
    failed = []
    for name in names:
        path, content = Path(name), before.get(name)
        try:
            if content is not None and content.startswith("\0symlink "):
                link, _, data = content[len("\0symlink ") :].partition("\0")
                if not path.is_symlink() or os.readlink(path) != link or data.startswith("\0"):
                    failed.append(name)
                    continue
                path = path.resolve()  # the user's own link: its file is put back
                content = data
            if os.path.lexists(path):
                if stat.S_ISREG(os.lstat(path).st_mode):
                    copy_regular(path, unused_path(keep_dir, name.strip("/").replace("/", "__")))
                if content is None:
                    os.unlink(path)
            if content is not None:
                if content.startswith("\0"):
                    failed.append(name)  # only its hash was kept, or it was no plain file before either
                    continue
                atomic_write(path, content.encode("latin-1"), 0o644)
        except OSError:
            failed.append(name)
    return failed


def snapshot_refs(common_dir: Path, own: tuple[str, ...]) -> dict[str, str]:
    """Every loose ref but the session's own (`own`: ref names or prefixes ending in '/') and packed-refs:
    name -> content (a symlink as its target; packed-refs as a hash). HEAD is the session's own check."""
    found: dict[str, str] = {}
    refs = common_dir / "refs"
    for dirpath, dirs, files in os.walk(refs):
        base = Path(dirpath)
        rel_dir = base.relative_to(common_dir).as_posix()
        dirs[:] = sorted(d for d in dirs if f"{rel_dir}/{d}/" not in own)
        for name in files:
            ref = f"{rel_dir}/{name}"
            if ref in own or name.endswith(".lock"):
                continue
            found[ref] = _ref_content(base / name)
    packed = _ref_content(common_dir / "packed-refs")
    found["packed-refs"] = hashlib.sha256(packed.encode("utf-8", "surrogateescape")).hexdigest()
    for name in pack_files(common_dir):  # git reads packs before loose objects, without checking their ids
        found[f"{PACKS}/{name}"] = "(pack file)"
    return found


PACKS = "objects/pack"


def pack_files(common_dir: Path) -> list[str]:
    """The names in `objects/pack` (packs, their indexes, a multi-pack index): the server never packs."""
    try:
        return sorted(os.listdir(common_dir / PACKS))
    except OSError:
        return []


def _ref_content(path: Path) -> str:
    try:
        if path.is_symlink():
            return f"symlink to {os.readlink(path)}"
        return read_regular(path).decode("latin-1").strip()
    except FileNotFoundError:
        return "(absent)"
    except OSError as exc:
        return f"(unreadable: {exc})"


def changed_refs(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Refs the run created, moved, deleted or made symbolic, each with what changed."""
    notes = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name, "(absent)"), after.get(name, "(absent)")
        if old != new:
            notes.append(f"{name} ({_short(old)} -> {_short(new)})")
    return notes


def _short(content: str) -> str:
    return content[:12] if len(content) == 40 or len(content) == 64 else content[:80]


def _stat(path: Path) -> tuple[int, ...] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def digest(snapshot: dict[str, str]) -> str:
    """One hash for a refs snapshot: what a restarted server compares (the names live in memory only)."""
    text = "\n".join(f"{k}\t{v}" for k, v in sorted(snapshot.items()))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


class GitWatch:
    """The git side of one session's runs: snapshot before a run, compare (and put back) after it."""

    def __init__(self, repo: Repo, root: Path, branch: str, tag: str) -> None:
        self.repo = repo
        self.root = root
        self.branch = branch
        self.history = history_files(repo.git_dir)
        self.files = config_files(repo.worktree_git_dir, repo.git_dir) + self.history
        self.own = (f"refs/heads/{branch}", f"{SESSION_REFS}{tag}/")
        # The last snapshot, with names (a restart has the digest only), and the index file's stat then.
        self._refs: dict[str, str] | None = None
        self._index: tuple[int, ...] | None = None

    def before_run(self) -> tuple[dict[str, str | None], str]:
        """The configuration files' content and the refs' digest, to record with the pending run."""
        self._refs = snapshot_refs(self.repo.git_dir, self.own)
        self._index = _stat(self.repo.worktree_git_dir / "index")
        return snapshot_config(self.files), digest(self._refs)

    def index_unchanged(self) -> bool:
        """True when the index file is the one the run found (same inode, size, mtime and ctime): then no
        flag in it can have changed, and listing them is skipped."""
        before, self._index = self._index, None
        return before is not None and before == _stat(self.repo.worktree_git_dir / "index")

    def _set_packs_aside(self, before: dict[str, str], now: dict[str, str], run_id: str) -> list[str]:
        """A pack file the run added is moved out of git's reach (a planted pack may claim any object id, the
        candidate's tree included): kept under the server's `tampered/<run>/git-packs`, and named."""
        notes = []
        for name in [n for n in now if n.startswith(f"{PACKS}/") and n not in before]:
            path = self.repo.git_dir / name
            try:
                keep = server_dir(self.root, "tampered", run_id, "git-packs")
                os.replace(path, keep / Path(name).name)
            except (OSError, SessionError):
                notes.append(f"git pack {name} added by the run (NOT moved aside: look at it)")
            else:
                notes.append(f"git pack {name} added by the run (moved aside: the server never packs)")
            now.pop(name, None)
        return notes

    def after_run(
        self, config: dict[str, str | None], refs_digest: str, commit: str, run_id: str
    ) -> list[str]:
        """What the run changed in git's files, as tampering notes. Called before any git command runs again:
        configuration is put back (a copy of the run's version kept), a symbolic session ref is replaced by a
        plain one at `commit`, other refs are named (never moved: they are not the server's)."""
        notes: list[str] = []
        changed = changed_config(config) if config else []
        if changed:
            try:
                keep = server_dir(self.root, "tampered", run_id, "git")
                failed = restore_config(config, changed, keep)
            except SessionError:
                failed = changed  # no copy of the run's version can be kept: nothing is overwritten
            history = {str(path) for path in self.history}
            notes += [
                ("git history file " if name in history else "git configuration ")
                + name
                + (" (NOT restored: look at it)" if name in failed else " (restored)")
                for name in changed
            ]
        problem = self.repo.own_ref_problem(self.branch)
        if problem:
            notes.append(f"the session branch (its ref was made {problem}; replaced by a plain ref)")
            self.repo.replace_own_ref(self.branch, commit)
        if refs_digest:
            now = snapshot_refs(self.repo.git_dir, self.own)
            if self._refs is not None:
                notes += self._set_packs_aside(self._refs, now, run_id)
            if digest(now) != refs_digest:
                moved = (
                    changed_refs(self._refs, now) if self._refs is not None else ["changed during the run"]
                )
                notes += [
                    f"ref {note} (left as the run set it; only the session branch is the server's)"
                    for note in moved
                ]
        self._refs = None
        return notes
