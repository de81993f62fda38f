"""Git objects read in-process on the experiment's path agree with git, whether loose or packed."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from mcp_autoresearch.errors import SessionError
from mcp_autoresearch.vcs.readonly import checked_out_branch
from mcp_autoresearch.vcs.repo import Repo

from .conftest import git, make_repo


@pytest.mark.parametrize("packed", [False, True])
def test_files_and_commits_read_in_process_agree_with_git(tmp_path: Path, packed: bool) -> None:
    root = make_repo(tmp_path / "r", {"src/model.py": "LR = 1\n", "README.md": "demo\n"})
    if packed:
        git(root, "gc", "-q")  # every object packed: read through git cat-file
    repo = Repo(root)
    head = repo.head_commit()
    assert repo.show_file(head, "src/model.py") == b"LR = 1\n"
    for missing in ("nope.py", "README.md/below", "src/nope.py"):
        with pytest.raises(KeyError):
            repo.show_file(head, missing)
    commit = repo.write_commit("src/model.py", b"LR = 2\n", "experiment: LR 2", head)
    assert git(root, "show", f"{commit}:src/model.py") == "LR = 2\n"
    assert git(root, "show", f"{commit}:README.md") == "demo\n"
    assert git(root, "rev-parse", f"{commit}^").strip() == head
    assert repo.show_file(commit, "src/model.py") == b"LR = 2\n"
    assert repo.show_file("HEAD", "src/model.py") == b"LR = 1\n"  # a name, not an id: through git


def test_the_status_checks_never_rewrite_the_index(tmp_path: Path) -> None:
    """`changed_tracked_files` runs twice per experiment: it compares exactly as `git status` does, but never
    writes the index to refresh its stat data (git's optional lock)."""
    root = make_repo(tmp_path / "r", {"src/model.py": "LR = 1\n", "README.md": "demo\n"})
    repo = Repo(root)
    index = root / ".git" / "index"
    (root / "README.md").write_text("demo\n")  # the same content, newer stat data: a refresh would write
    (root / "src" / "model.py").write_text("LR = 2\n")
    before = index.stat()
    assert repo.changed_tracked_files() == ["src/model.py"]
    assert repo.changed_tracked_files() == ["src/model.py"]
    after = index.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_size,
    )
    assert not (root / ".git" / "index.lock").exists()


def test_refs_read_in_process_agree_with_git(tmp_path: Path) -> None:
    """HEAD and branches, read without a git process: loose and packed refs, a detached HEAD, a chain of
    symbolic refs, a linked work tree (its own HEAD, the shared branches), and names that leave `.git`."""
    root = make_repo(tmp_path / "r", {"a.txt": "1\n"})
    repo = Repo(root)
    main = git(root, "symbolic-ref", "--short", "HEAD").strip()
    first = git(root, "rev-parse", "HEAD").strip()
    assert (repo.head_commit(), repo.current_branch(), repo.resolve_branch(main)) == (first, main, first)
    git(root, "branch", "side")
    git(root, "commit", "-q", "--allow-empty", "-m", "two")
    second = git(root, "rev-parse", "HEAD").strip()
    git(root, "pack-refs", "--all")  # every branch only in packed-refs now
    assert not (root / ".git" / "refs" / "heads" / main).exists()
    assert (repo.head_commit(), repo.resolve_branch("side"), repo.resolve_branch(main)) == (
        second,
        first,
        second,
    )
    git(root, "symbolic-ref", "refs/heads/alias", "refs/heads/side")  # a chain: HEAD -> alias -> side
    git(root, "symbolic-ref", "HEAD", "refs/heads/alias")
    assert (repo.head_commit(), repo.current_branch()) == (first, "alias")
    git(root, "checkout", "-q", "--detach", main)
    assert (repo.head_commit(), repo.current_branch()) == (second, None)
    git(root, "worktree", "add", "-q", str(tmp_path / "wt"), "side")
    linked = Repo(tmp_path / "wt")
    assert (linked.head_commit(), linked.current_branch(), linked.resolve_branch(main)) == (
        first,
        "side",
        second,
    )
    for bad in ("../../../etc", "x/../../y", ".hidden", "a.lock"):
        with pytest.raises(ValueError):
            repo.resolve_branch(bad)
    (root / ".git" / "HEAD").write_text("ref: refs/heads/../../outside\n")
    with pytest.raises(ValueError):
        repo.head_commit()
    with pytest.raises(ValueError):
        repo.resolve_branch("missing")


def test_an_object_is_never_written_through_a_planted_fan_out_link(tmp_path: Path) -> None:
    """The candidate's objects are written in-process; a symlink planted where the next object's fan-out
    folder goes (`objects/xx`) is refused, never followed out of `.git`."""
    root = make_repo(tmp_path / "r", {"model.py": "LR = 1\n"})
    repo = Repo(root)
    content = b"LR = 3\n"
    blob = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
    outside = tmp_path / "outside"
    outside.mkdir()
    fan_out = root / ".git" / "objects" / blob[:2]
    if fan_out.exists():
        shutil.rmtree(fan_out)
    fan_out.symlink_to(outside)
    with pytest.raises(SessionError, match="not a real directory"):
        repo.write_commit("model.py", content, "experiment: LR 3", repo.head_commit())
    assert list(outside.iterdir()) == []


def test_our_commits_carry_the_users_identity_read_at_each_sessions_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The author of the server's commits: the repository's `user.name`/`user.email`, read by one git process when
    a session starts (`ensure_identity`); with none set, a neutral identity; set later, the next session's."""
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no global configuration
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    root = make_repo(tmp_path / "r", {"model.py": "LR = 1\n"})
    repo = Repo(root)

    def author(content: bytes) -> str:
        commit = repo.write_commit("model.py", content, "experiment", repo.head_commit())
        return git(root, "log", "-1", "--format=%an <%ae>", commit).strip()

    repo.ensure_identity()
    assert author(b"LR = 2\n") == "autoresearch <autoresearch@localhost>"
    git(root, "config", "user.name", "Ann Example")
    git(root, "config", "--add", "user.email", "old@example.com")
    git(root, "config", "--add", "user.email", "ann@example.com")  # the last value counts, as for git
    repo.ensure_identity()
    assert author(b"LR = 3\n") == "Ann Example <ann@example.com>"
    # A value holding the identity line's delimiters adds no line to the commit object (git drops them too).
    git(root, "config", "user.name", "Ann\nparent 0000000000000000000000000000000000000000 <x>")
    repo.ensure_identity()
    commit = repo.write_commit("model.py", b"LR = 4\n", "experiment", repo.head_commit())
    header = git(root, "cat-file", "-p", commit).split("\n\n")[0].splitlines()
    assert [line.split()[0] for line in header] == ["tree", "parent", "author", "committer"], header
    assert (
        git(root, "log", "-1", "--format=%an", commit).strip()
        == "Annparent 0000000000000000000000000000000000000000 x"
    )


def test_the_readers_find_the_checked_out_branch_as_the_session_does(tmp_path: Path) -> None:
    """The report and the web page read the checked-out branch with one `git rev-parse` and the ref files
    (`checked_out_branch`), without GitPython; the session reads it through `Repo`. The two agree: at the top, in
    a subdirectory project, in a linked work tree (its own HEAD), detached, and outside a repository."""
    root = make_repo(tmp_path / "r", {"sub/model.py": "LR = 1\n"})
    git(root, "checkout", "-q", "-b", "autoresearch/one")
    linked = tmp_path / "linked"
    git(root, "worktree", "add", "-q", "-b", "autoresearch/two", str(linked))
    for where, branch in (
        (root, "autoresearch/one"),
        (root / "sub", "autoresearch/one"),
        (linked, "autoresearch/two"),
    ):
        assert checked_out_branch(where) == Repo(where).current_branch() == branch
    git(linked, "checkout", "-q", "--detach")
    assert checked_out_branch(linked) is None and Repo(linked).current_branch() is None
    assert checked_out_branch(root) == "autoresearch/one"
    (tmp_path / "plain").mkdir()
    assert checked_out_branch(tmp_path / "plain") is None
