"""Review 44: the readers read the checked-out branch without GitPython (`vcs/readonly.checked_out_branch`). Read
first with `git rev-parse`, it disagreed with the session's `Repo` (git's discovery follows GIT_DIR, a ceiling
and drops the system's `safe.directory` under GIT_CONFIG_NOSYSTEM): the readers, and a restarted server's
Workspace, which asks `current_session` without a Repo, showed or resumed another session than the one checked
out. Now found from the path alone, as `Repo` finds it (`git_dirs`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mcp_autoresearch.records.current import current_session
from mcp_autoresearch.session.workspace import Workspace
from mcp_autoresearch.vcs.readonly import checked_out_branch
from mcp_autoresearch.vcs.repo import Repo

from .conftest import GIT_ENV, TRAIN_PY, git, make_repo


def two_sessions(root: Path) -> None:
    """Sessions a and b, b opened last by the server; then a person checks out a by hand: a is current."""
    workspace = Workspace(root)
    workspace.start_session("a")
    workspace.start_session("b")
    git(root, "checkout", "-q", "autoresearch/a")


def status(root: Path, env: dict[str, str]) -> str:
    out = subprocess.run(
        ["mcp-autoresearch", "status", "--project", str(root)],
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV, **env},
        timeout=120,
    )
    return out.stdout + out.stderr


def project(tmp_path: Path) -> Path:
    root = make_repo(
        tmp_path / "proj", {"train.py": TRAIN_PY, "prepare.py": "# fixed evaluation\nSEED = 1\n"}
    )
    two_sessions(root)
    assert git(root, "branch", "--show-current").strip() == "autoresearch/a"
    assert (root / ".autoresearch" / "current").read_text().strip() == "b"  # opened last, not checked out
    return root


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("chown") is None, reason="needs to give the repo away")
def test_a_repository_of_another_user_trusted_system_wide_shows_the_checked_out_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = project(tmp_path)
    subprocess.run(
        ["chown", "-R", "nobody", str(root)], check=True
    )  # a shared lab directory, a mounted volume
    system = tmp_path / "gitconfig"
    system.write_text("[safe]\n\tdirectory = *\n")  # /etc/gitconfig, as container images and CI set it
    env = {"GIT_CONFIG_SYSTEM": str(system)}
    plain = subprocess.run(
        ["git", "branch", "--show-current"],
        cwd=root,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    assert plain.stdout.strip() == "autoresearch/a"  # git itself trusts it
    monkeypatch.setenv("GIT_CONFIG_SYSTEM", str(system))
    assert Repo(root).current_branch() == "autoresearch/a"  # the session's reader
    shown = status(root, env)
    assert checked_out_branch(root) == "autoresearch/a" and current_session(root) == "a", shown[:80]
    assert "session a" in shown and "session b" not in shown


def test_git_dir_in_the_environment_does_not_choose_the_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = project(tmp_path)
    other = make_repo(tmp_path / "dotfiles", {"x": "1\n"})
    git(other, "checkout", "-q", "-b", "autoresearch/b")
    env = {"GIT_DIR": str(other / ".git")}  # exported for a bare dotfiles repository, or set in a git hook
    monkeypatch.setenv("GIT_DIR", env["GIT_DIR"])
    assert Repo(root).current_branch() == "autoresearch/a"
    shown = status(root, env)
    assert checked_out_branch(root) == "autoresearch/a", shown[:80]
    assert "session a" in shown and "session b" not in shown


def test_a_ceiling_directory_does_not_hide_the_branch_of_a_subdirectory_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    top = make_repo(tmp_path / "r", {"sub/model.py": "LR = 1\n"})
    git(top, "checkout", "-q", "-b", "autoresearch/one")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(top))
    assert Repo(top / "sub").current_branch() == "autoresearch/one"
    assert checked_out_branch(top / "sub") == "autoresearch/one"


def test_a_head_the_ref_files_cannot_read_is_no_traceback_for_the_readers(tmp_path: Path) -> None:
    """HEAD at `refs/heads/.invalid` (git's marker of another ref format) or holding garbage: the readers
    (`status`) said nothing useful but a ValueError's traceback; they now show the session opened last."""
    root = project(tmp_path)
    for head in ("ref: refs/heads/.invalid\n", "garbage\n"):
        (root / ".git" / "HEAD").write_text(head)
        shown = status(root, dict(os.environ))
        assert "Traceback" not in shown and "session b" in shown, shown[:400]
