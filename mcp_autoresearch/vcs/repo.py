"""Every git operation the server performs, in one place (GitPython over the git CLI).

What this module never does: `git clean`, `git add -A`, `git stash`, touching untracked files, or moving any
branch other than the session's own. A discard is `reset --soft` to the best commit plus restoring only the
paths the candidate changed, so an unrelated uncommitted edit cannot be lost.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import git
from gitdb.db.loose import LooseObjectDB

from ..errors import SessionError
from ..names import SESSION_BRANCHES, SESSION_REFS
from ..records.atomic import atomic_write, own_dir, read_regular
from .git_options import GIT_ENV, GIT_OPTIONS
from .identity import USER_KEYS, Identity
from .index_file import REGULAR_MODES, set_entry
from .object_writer import ObjectWriter
from .objects import ObjectReader
from .ref_files import LOCK_WAIT_S, append_reflogs, own_ref_problem, remove_lock, stale, write_ref
from .refs import RefReader
from .tracked import KnownStatus, porcelain_paths


class Repo:
    """The git repository that holds the project (the project may be a subdirectory of it)."""

    def __init__(self, project_root: Path) -> None:
        try:
            self._repo = git.Repo(project_root, search_parent_directories=True)
        except git.InvalidGitRepositoryError:
            raise SessionError(
                f"{project_root} is not inside a git repository; run 'git init && git add -A && git commit -m init' "
                "there first (the loop keeps and discards experiments as git commits)"
            ) from None
        except git.NoSuchPathError:
            raise SessionError(f"{project_root} does not exist") from None
        if self._repo.bare:
            raise SessionError(f"{project_root} is a bare repository; use a working tree")
        object_format = str(
            self._repo.config_reader("repository").get_value("extensions", "objectformat", "sha1")
        )
        if object_format.lower() != "sha1":  # its commits could not be read (they read as none), nor written
            raise SessionError(
                f"the repository of {project_root} names its objects with {object_format} "
                "(extensions.objectFormat); the loop works on SHA-1 repositories only, git's default: a copy of the "
                "project committed to a repository made by a plain 'git init'"
            )
        self.top = Path(self._repo.working_tree_dir).resolve()  # type: ignore[arg-type]
        self.project_root = project_root.resolve()
        self._git = self._repo.git
        self._identity = Identity(self._read_identity)
        self._loose = LooseObjectDB(str(Path(self._repo.common_dir) / "objects"))
        self._objects_dir = (Path(self._repo.common_dir) / "objects").resolve()
        self._objects = ObjectReader(self._repo, self._loose)
        self._writer = ObjectWriter(self._objects_dir, self._repo, self._loose, self._objects)
        self._env: dict[str, str] = {}
        # GitPython reads objects through `git cat-file`: it must not see replace objects either.
        self._git.update_environment(**{k: v for k, v in GIT_ENV.items() if k != "LC_ALL"})
        # Named explicitly on every call, so a `core.worktree` (or GIT_DIR) planted by a run cannot point the
        # server's checkouts at another directory.
        self._location = [f"--git-dir={Path(self._repo.git_dir).resolve()}", f"--work-tree={self.top}"]
        # Resolved once, like the location above: the directories every git process of the server is given.
        self._common_dir = Path(self._repo.common_dir).resolve()
        self._worktree_dir = Path(self._repo.git_dir).resolve()
        self._refs = RefReader(self._worktree_dir, self._common_dir)
        # what the last git status said, with its stat data
        self._known = KnownStatus(
            self.top, self._worktree_dir / "index", self._head_and_branch, self._head_entry
        )

    # -- paths ----------------------------------------------------------------------------------------------
    def repo_path(self, project_relative: str) -> str:
        """A project-relative path as git names it (relative to the top of the work tree)."""
        return (self.project_root / project_relative).relative_to(self.top).as_posix()

    def project_path(self, repo_relative: str) -> str:
        full = self.top / repo_relative
        try:
            return full.relative_to(self.project_root).as_posix()
        except ValueError:
            return os.path.relpath(full, self.project_root)

    @property
    def git_dir(self) -> Path:
        """The common git directory (objects, refs, config), shared by every work tree."""
        return self._common_dir

    @property
    def worktree_git_dir(self) -> Path:
        """This work tree's own git directory (HEAD, index); the common one for the main work tree."""
        return self._worktree_dir

    # -- running git ----------------------------------------------------------------------------------------
    def _run(self, *args: str, input: bytes | None = None) -> str:
        """One git command. Plain subprocess, not GitPython's execute: this sits on every experiment's path and
        costs half as much. A command that meets `index.lock` waits for the git process holding it, and takes
        over a lock that a killed process (an earlier server) left behind."""
        return self._git_process(self._location, {}, args, input)

    def in_checkout(self, work_tree: Path, index_file: Path, *args: str) -> str:
        """A git command on another work tree with its own index (a slot's checkout), over this repository's
        objects: the user's index and work tree are never touched."""
        location = [self._location[0], f"--work-tree={work_tree}"]
        return self._git_process(location, {"GIT_INDEX_FILE": str(index_file)}, args, None, cwd=work_tree)

    def _git_process(
        self,
        location: list[str],
        extra_env: dict[str, str],
        args: tuple[str, ...],
        input: bytes | None,
        cwd: Path | None = None,
    ) -> str:
        env = {**os.environ, **self._env, **GIT_ENV, **extra_env}
        began = time.monotonic()
        while True:
            try:
                done = subprocess.run(
                    [git_executable(), "--no-replace-objects", *location, *_OPTION_ARGS, *args],
                    cwd=cwd or self.top,
                    env=env,
                    capture_output=True,
                    input=input,
                    stdin=None if input is not None else subprocess.DEVNULL,
                    timeout=120,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise SessionError(f"git {args[0]} could not run: {exc}") from None
            index_lock = Path(self._repo.git_dir) / "index.lock"
            if done.returncode == 0 or b"index.lock" not in done.stderr or not index_lock.exists():
                break
            if stale(index_lock, time.monotonic() - began):
                remove_lock(index_lock)
            elif time.monotonic() - began > LOCK_WAIT_S:
                break
            else:
                time.sleep(0.05)
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).decode("utf-8", "replace").strip().replace("\n", " ")[:400]
            raise SessionError(f"git {args[0]} failed: {detail or f'exit code {done.returncode}'}")
        return done.stdout.decode("utf-8", "surrogateescape")

    def ensure_identity(self) -> None:
        """Commits need an author; on a fresh machine without one, use a neutral identity for our commits (read
        again at each session's start): only what neither the environment nor the configuration gives."""
        self._env = self._identity.read_again()

    def _read_identity(self) -> str:
        """`user.name` and `user.email` as `git config -z --get-regexp` lists them (empty: neither is set)."""
        try:
            return str(self._git.config("-z", "--get-regexp", USER_KEYS, strip_newline_in_stdout=False))
        except git.GitCommandError:
            return ""

    # -- reading --------------------------------------------------------------------------------------------
    def has_commits(self) -> bool:
        """HEAD leads to a commit id, read from the ref files: a git that cannot start (a configuration it cannot
        parse) is no repository without commits, and says its own error at the first git command."""
        try:
            self._refs.commit("HEAD")
            return True
        except ValueError:
            return False

    def resolve_branch(self, branch: str) -> str:
        """A branch's commit id, read from the ref files."""
        return self._refs.commit(f"refs/heads/{branch}")

    def head_commit(self) -> str:
        """HEAD's commit id, read from the ref files (no git process, no object parsing)."""
        return self._refs.commit("HEAD")

    def current_branch(self) -> str | None:
        """The checked-out branch name, or None when HEAD is detached."""
        return self._refs.branch()

    def branch_exists(self, branch: str) -> bool:
        return f"refs/heads/{branch}" in {ref.path for ref in self._repo.references}

    def is_tracked(self, repo_path: str) -> bool:
        return bool(self._run("ls-files", "--", repo_path).strip())

    def commit_holding(self, repo_path: str) -> str | None:
        """A commit (of any ref or reflog entry) whose tree holds or held `repo_path`, else None: its content
        stays readable in .git's objects after the path is untracked."""
        found = self._run("rev-list", "--all", "--reflog", "-1", "--", repo_path).strip()
        return found[:12] or None

    def head_only_commits(self) -> list[str]:
        """Commits HEAD holds that no branch, tag, remote branch or ref of the server's does."""
        refs = ("--branches", "--tags", "--remotes", f"--glob={SESSION_REFS.rstrip('/')}")
        return self._run("rev-list", "HEAD", "--not", *refs).split()

    def changed_tracked_files(self) -> list[str]:
        """Tracked files whose index or working-tree content differs from HEAD (repo-relative). Without git's
        optional locks: status compares exactly as before but never rewrites the index to refresh its stat data.
        When the stat data prove that git would answer as it did last time (`tracked.py`), that answer is given
        without a git process."""
        known = self._known.answer()
        if known is not None:
            return known
        args = ("status", "--porcelain=v1", "-z", "--untracked-files=no", "--ignore-submodules=dirty")
        return self._known.run(
            lambda: porcelain_paths(
                self._git_process(self._location, {"GIT_OPTIONAL_LOCKS": "0"}, args, None)
            )
        )

    def _head_and_branch(self) -> tuple[str, str | None]:
        try:
            return self.head_commit(), self.current_branch()
        except ValueError:
            return "", None

    def _head_entry(self, commit: str, repo_path: str) -> tuple[str, int] | None:
        found = self._objects.entry(commit, repo_path)
        return None if found is None else (found[0].hex(), found[1])

    def hidden_tracked_files(self) -> list[str]:
        """Tracked files git status does not look at: flagged assume-unchanged or skip-worktree in the index
        (`git update-index`), which a run can set to hide its edits (repo-relative)."""
        out = self._run("ls-files", "-v", "-z")
        return [entry[2:] for entry in out.split("\0") if len(entry) > 2 and entry[0] != "H"]

    def reveal(self, repo_paths: list[str]) -> None:
        """Clear the assume-unchanged and skip-worktree flags of these paths, so git status sees them again."""
        if repo_paths:  # two calls: update-index applies only the first of the two flags to a path
            self._run("update-index", "-q", "--no-assume-unchanged", "--", *repo_paths)
            self._run("update-index", "-q", "--no-skip-worktree", "--", *repo_paths)

    def show_file(self, commit: str, repo_path: str) -> bytes:
        return self._objects.file(commit, repo_path)

    def commit_of(self, name: str) -> str | None:
        """The commit a ref or commit id names, or None when there is none (a ref never set, an object lost)."""
        try:
            found = self._run("rev-parse", "--verify", "-q", f"{name}^{{commit}}").strip()
        except SessionError:
            return None
        return found or None

    def commit_message(self, commit: str) -> str:
        message = self._repo.commit(commit).message
        return message if isinstance(message, str) else message.decode("utf-8", errors="replace")

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        return self._repo.is_ancestor(self._repo.commit(ancestor), self._repo.commit(descendant))

    # -- writing --------------------------------------------------------------------------------------------
    def create_branch(self, branch: str) -> None:
        """Create `branch` at HEAD and check it out; untracked files are carried along untouched."""
        self._run("checkout", "-q", "-b", branch)

    def checkout_branch(self, branch: str) -> None:
        head = Path(self._repo.git_dir) / "HEAD"
        if head.is_symlink():  # git would update the file it points to: make HEAD a file of its own first
            atomic_write(head, f"ref: refs/heads/{branch}\n".encode())
        self._run("checkout", "-q", branch)

    def commit_file(
        self, branch: str, repo_path: str, data: bytes, message: str, parent: str, plain: bool = True
    ) -> str:
        """Commit `data` as the new content of one tracked file on top of `parent` and move `branch` there, by writing the git objects directly (blob, the trees on its path, the commit) instead of running
        `git commit`: this is on every experiment's path, and it costs a millisecond instead of seven. A file
        that is not `plain` has its blob made by git (`write_commit`); the commit is on `parent` all the same.

        The index still holds the file's previous content afterwards (nothing else changed); `sync_index` or a
        restore brings it in line when the experiment is decided."""
        commit = self.write_commit(repo_path, data, message, parent, plain=plain)
        self.move_branch(branch, commit, f"commit: {message}")
        if plain:
            self._known.committed(parent, commit, repo_path, branch)
        return commit

    def write_commit(self, repo_path: str, data: bytes, message: str, parent: str, plain: bool = True) -> str:
        """A commit object of `parent` with one file's content replaced; no ref moves. A file that is not plain
        (filters, end-of-line conversion) has its blob made by git, with its clean filters applied."""
        if plain:
            blob = self._writer.store(b"blob", data)
        else:
            blob = bytes.fromhex(
                self._run("hash-object", "-w", f"--path={repo_path}", "--stdin", input=data).strip()
            )
        parent_tree = self._objects.commit_tree(parent)
        tree = self._writer.replace_in_tree(parent_tree, repo_path.split("/"), blob)
        author, committer = self._identity.signature("AUTHOR"), self._identity.signature()
        body = f"tree {tree.hex()}\nparent {parent}\nauthor {author}\ncommitter {committer}\n\n{message}\n".encode()
        return self._writer.store(b"commit", body).hex()

    def _config(self, key: str) -> str | None:
        try:
            return self._git.config(key).strip() or None
        except git.GitCommandError:
            return None

    def is_plain_file(self, repo_path: str) -> bool:
        """True when git stores this file byte for byte: no clean/smudge filter (Git LFS), no end-of-line
        conversion (`text`/`eol` attributes, `core.autocrlf`), no `$Id$` expansion (`ident`), no re-encoding
        (`working-tree-encoding`). Only then may `commit_file` write its blob."""
        attributes = self._run(
            "check-attr", "filter", "eol", "text", "ident", "working-tree-encoding", "--", repo_path
        )
        if any(not line.endswith(": unspecified") for line in attributes.splitlines() if line.strip()):
            return False
        return (self._config("core.autocrlf") or "false").lower() in ("false", "0", "no", "off")

    def blob_id(self, repo_path: str, data: bytes, filters: bool = True) -> str:
        """The blob id `data` would get as `repo_path` (git's clean filters and conversion applied, or none)."""
        where = [f"--path={repo_path}"] if filters else ["--no-filters"]
        return self._run("hash-object", *where, "--stdin", input=data).strip()

    def blob_at(self, commit: str, repo_path: str) -> str:
        return self._run("rev-parse", f"{commit}:{repo_path}").strip()

    def sync_index(self, repo_paths: list[str], plain: bool = False) -> None:
        """Index entries of these paths become HEAD's (after `commit_file`, for a kept experiment). A `plain`
        file (no filters: `is_plain_file`) has its entry written in-process where `index_file` vouches for it."""
        done = self._known.rewriting(repo_paths)
        if not (plain and self._entry_in_process("HEAD", repo_paths, restore=False)):
            self._run("reset", "-q", "HEAD", "--", *repo_paths)
        done()

    def restore_paths(self, commit: str, repo_paths: list[str], plain: bool = False) -> None:
        """Index and working tree of these paths become their content at `commit`. A path absent there only
        leaves the index: the file itself is never deleted, since a run that staged it (`git add -A`) may have
        staged an untracked file of the user's, and nothing proves the run created it. One `plain` file is
        written, with its index entry, in-process where `index_file` vouches for it."""
        if not repo_paths:
            return
        present = [p for p in repo_paths if self._in_tree(commit, p)]
        absent = [p for p in repo_paths if p not in present]
        done = self._known.rewriting(present if not absent else [])
        if present and not (plain and not absent and self._entry_in_process(commit, present, restore=True)):
            self._run("checkout", "-q", commit, "--", *present)
        if absent:
            self._run("reset", "-q", commit, "--", *absent)
        done()

    def unstage(self, repo_paths: list[str], plain: bool = False) -> None:
        """Index entries of these paths become HEAD's; the work tree is untouched."""
        done = self._known.rewriting(repo_paths)
        if not (plain and self._entry_in_process("HEAD", repo_paths, restore=False)):
            self._run("reset", "-q", "--", *repo_paths)
        done()

    def _entry_in_process(self, commit: str, repo_paths: list[str], restore: bool) -> bool:
        """One path's index entry (and, to `restore`, its file) made `commit`'s without a git process; False
        when git must do it (`index_file` says when)."""
        if len(repo_paths) != 1:
            return False
        try:
            found = self._objects.entry(self.head_commit() if commit == "HEAD" else commit, repo_paths[0])
            if found is None or found[1] not in REGULAR_MODES:
                return False
            content = self._objects.read(found[0]) if restore else None
        except (ValueError, OSError, git.GitError):
            return False
        if content is not None and content[0] != b"blob":
            return False
        data = None if content is None else content[1]
        index = self._worktree_dir / "index"
        return set_entry(index, self.top, repo_paths[0], found[0], found[1], data)

    def set_ref(self, ref: str, commit: str) -> None:
        """Create or move a ref outside refs/heads (where discarded ideas are kept), without a git process."""
        self._write_ref(self.git_dir / ref, commit)

    def move_branch(self, branch: str, commit: str, message: str) -> None:
        """Point the session's `branch` (named, never whatever is checked out) at `commit`, as git does it: a
        lock file renamed over the loose ref, then reflog entries for the branch, and for HEAD when HEAD is on
        it. Index and work tree are untouched."""
        if not branch.startswith(SESSION_BRANCHES):
            raise SessionError(
                f"refusing to move {branch}: the server only moves its own autoresearch/ branches"
            )
        self._refuse_symbolic(branch)
        common = self.git_dir
        old = self.resolve_branch(branch)
        self._write_ref(common / "refs" / "heads" / branch, commit)
        line = f"{old} {commit} {self._identity.signature()}\t{message}\n".encode()
        logs = [common / "logs" / "refs" / "heads" / branch]
        if self.current_branch() == branch:
            logs.append(self._worktree_dir / "logs" / "HEAD")
        append_reflogs(self.git_dir, logs, line)

    def own_ref_problem(self, branch: str) -> str | None:
        """Why `branch`'s loose ref is not a plain ref the server may write, or None (`ref_files`)."""
        return own_ref_problem(self.git_dir, branch)

    def _refuse_symbolic(self, branch: str) -> None:
        problem = self.own_ref_problem(branch)
        if problem:
            raise SessionError(
                f"refusing to move {branch}: its ref is {problem}, and the server never writes through one "
                f"(it would move another branch). Put a plain ref back: git update-ref --no-deref "
                f"refs/heads/{branch} <commit>"
            )

    def replace_own_ref(self, branch: str, commit: str) -> None:
        """Replace the session branch's ref file, whatever stands there (a symbolic ref a run planted), by a
        plain ref to `commit`: the file is replaced, never written through."""
        if not branch.startswith(SESSION_BRANCHES):
            raise SessionError(f"refusing to replace {branch}: not a branch of the server's")
        self._write_ref(self.git_dir / "refs" / "heads" / branch, commit)

    def _write_ref(self, ref: Path, commit: str) -> None:
        write_ref(self.git_dir, ref, commit)

    def add_excludes(self, patterns: list[str]) -> None:
        """Keep our own files out of git through .git/info/exclude; the user's .gitignore is never edited."""
        exclude = own_dir(self.git_dir, "info") / "exclude"
        try:
            current = read_regular(exclude).decode("utf-8", "replace")
        except FileNotFoundError:
            current = ""
        except OSError as exc:
            raise SessionError(f"{exclude} is not a regular file ({exc}); move it aside") from None
        lines = set(current.splitlines())
        missing = [p for p in patterns if p not in lines]
        if missing:
            if current and not current.endswith("\n"):
                current += "\n"
            current += "# mcp-autoresearch: session files\n" + "".join(p + "\n" for p in missing)
            atomic_write(exclude, current.encode("utf-8"))  # replaces a planted symlink, never follows it

    def _in_tree(self, commit: str, repo_path: str) -> bool:
        return self._objects.entry(commit, repo_path) is not None


_OPTION_ARGS = [arg for option in GIT_OPTIONS for arg in ("-c", option)]
_found_git: tuple[str, str] | None = None  # (PATH it was looked up in, the executable found there)


def git_executable() -> str:
    """The git found on the server's PATH, looked up once per PATH (not on each of the several git processes
    of every experiment: each lookup tries every PATH directory in turn). "git" when none is found, so that
    running it fails as it did before."""
    global _found_git
    path = os.environ.get("PATH", os.defpath)
    if _found_git is None or _found_git[0] != path:
        found = shutil.which("git", path=path)
        # a relative PATH entry is looked up from each process's own directory, as before
        _found_git = (path, found if found and os.path.isabs(found) else "git")
    return _found_git[1]
