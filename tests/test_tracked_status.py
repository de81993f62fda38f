"""The check after a run answers from stat data only when git would answer the same: no git process when the
run touched no tracked file, git (and the right answer) whenever anything it looks at may have changed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mcp_autoresearch.vcs.repo import Repo
from mcp_autoresearch.vcs.tracked import read_index

from .conftest import git, make_repo

FILES = {"model.py": "LR = 1\n", "data/eval.py": "EVAL = 1\n", "README.md": "demo\n"}


def _aged(root: Path) -> None:
    """The files as a user's tree has them: written well before the session (not racily clean)."""
    old = time.time() - 3600
    for name in FILES:
        os.utime(root / name, (old, old))
    git(root, "update-index", "--refresh")
    time.sleep(0.15)  # beyond the racy window: ctime cannot be aged, only waited out


def _statuses(trace: Path) -> int:
    return trace.read_text().count(" status ") if trace.exists() else 0


@pytest.fixture()
def candidate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Repo, Path, Path]:
    """A repository with the candidate committed by the server, as before a run: (repo, root, git trace)."""
    root = make_repo(tmp_path / "r", FILES)
    git(root, "checkout", "-q", "-b", "autoresearch/t")
    _aged(root)
    trace = tmp_path / "trace"
    monkeypatch.setenv("GIT_TRACE", str(trace))
    repo = Repo(root)
    (root / "model.py").write_text("LR = 2\n")
    assert repo.changed_tracked_files() == ["model.py"]  # the check before the run: git status
    repo.commit_file("autoresearch/t", "model.py", b"LR = 2\n", "experiment: LR 2", repo.head_commit())
    assert _statuses(trace) == 1
    return repo, root, trace


def test_a_run_that_touched_no_tracked_file_is_checked_without_git(
    candidate: tuple[Repo, Path, Path],
) -> None:
    repo, root, trace = candidate
    (root / "run.log").write_text("score: 1\n")  # untracked files come and go
    (root / "data" / "cache.bin").write_bytes(b"x")
    assert repo.changed_tracked_files() == ["model.py"]  # the check after the run
    assert _statuses(trace) == 1


@pytest.mark.parametrize("plain", [False, True])
@pytest.mark.parametrize("decision", ["keep", "discard"])
def test_the_loop_runs_git_status_once_per_session(
    candidate: tuple[Repo, Path, Path], decision: str, plain: bool
) -> None:
    """After the decision (the server's own git command on the target alone, or its in-process write of the
    target's index entry for a plain target) and the next edit, the check before the next run is answered from
    the target's content and the others' stat data; every answer is git's own."""
    repo, root, trace = candidate
    candidate_commit = repo.head_commit()
    parent = git(root, "rev-parse", "HEAD~1").strip()
    for step in range(3):
        assert repo.changed_tracked_files() == ["model.py"] == _git_status(root)  # after the run
        if decision == "keep":
            repo.sync_index(["model.py"], plain=plain)
        else:
            repo.restore_paths(parent, ["model.py"], plain=plain)
            repo.move_branch("autoresearch/t", parent, "discard")
        assert repo.changed_tracked_files() == [] == _git_status(root)
        content = f"LR = {step + 3}\n".encode()
        (root / "model.py").write_bytes(content)  # the next edit
        assert repo.changed_tracked_files() == ["model.py"] == _git_status(root)  # the check before the run
        parent = repo.head_commit()
        candidate_commit = repo.commit_file("autoresearch/t", "model.py", content, "experiment", parent)
    assert candidate_commit == repo.head_commit()
    own = 1 + 3 * 3  # the one before the first run, then the test's own
    assert _statuses(trace) == own
    (root / "README.md").write_text("edited by the user\n")  # between experiments: git sees it
    assert repo.changed_tracked_files() == ["README.md", "model.py"]
    assert _statuses(trace) == own + 1


@pytest.mark.parametrize(
    "tamper",
    ["same size, times put back", "file replaced", "folder swapped for a link", "index rewritten", "deleted"],
)
def test_anything_a_run_changes_is_seen_by_git(candidate: tuple[Repo, Path, Path], tamper: str) -> None:
    repo, root, trace = candidate
    victim = root / "data" / "eval.py"
    before = victim.stat()
    if tamper == "same size, times put back":
        victim.write_text("EVAL = 2\n")
        os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    elif tamper == "file replaced":
        (root / "new.py").write_text("EVAL = 2\n")
        os.replace(root / "new.py", victim)
        os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    elif tamper == "folder swapped for a link":
        os.rename(root / "data", root / "elsewhere")  # the same files, reached through a link
        os.symlink("elsewhere", root / "data")
    elif tamper == "index rewritten":
        git(root, "update-index", "--assume-unchanged", "data/eval.py")
        victim.write_text("EVAL = 2\n")
    else:
        victim.unlink()
    changed = repo.changed_tracked_files()
    assert _statuses(trace) == 2  # git ran, and answered
    assert changed == _git_status(root)
    if tamper != "same size, times put back":  # (git trusts a ctime in the same second: see the report)
        assert "data/eval.py" in changed or tamper == "index rewritten"


def _git_status(root: Path) -> list[str]:
    out = git(root, "--no-optional-locks", "status", "--porcelain=v1", "--untracked-files=no")
    return sorted(line[3:] for line in out.splitlines())


def test_a_file_changed_just_before_the_check_is_never_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file written within the file system's clock granularity of the snapshot may get the same times from a
    later write of the same size: it is left to git ("racily clean", as git calls it)."""
    root = make_repo(tmp_path / "r", FILES)
    trace = tmp_path / "trace"
    monkeypatch.setenv("GIT_TRACE", str(trace))
    repo = Repo(root)
    (root / "README.md").write_text("demo\n")  # just written: racy
    assert repo.changed_tracked_files() == []
    (root / "README.md").write_text("DEMO\n")
    assert repo.changed_tracked_files() == ["README.md"]
    assert _statuses(trace) == 2


@pytest.mark.parametrize("kind", ["split", "version 4"])
def test_an_index_of_another_layout_is_read_or_left_to_git(tmp_path: Path, kind: str) -> None:
    """A split index keeps its entries in another file: never trusted here. Version 4 (prefix-compressed
    paths) is read, path for path."""
    root = make_repo(tmp_path / "r", FILES)
    if kind == "split":
        git(root, "update-index", "--split-index")
    else:
        git(root, "update-index", "--index-version", "4")
    data = (root / ".git" / "index").read_bytes()
    entries = read_index(data)
    if kind == "split":
        assert entries is None
    else:
        assert entries is not None and sorted(entries) == sorted(FILES)
        assert entries["data/eval.py"] == (git(root, "rev-parse", "HEAD:data/eval.py").strip(), 0o100644)
