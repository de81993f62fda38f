"""Review 48f: the last fixes broken on purpose. finish's hint that removes the session (`clean_hint`), the
dashboard's target line, the run command detected for a library whose tests are test_*.py at the root, and
`branch_in_operation`: with the names a real repository may hold (shell characters, wide characters, more files
than listed, bytes that are not UTF-8). Real git, real processes, the real server and CLI."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from mcp_autoresearch.setup.project import load_project
from mcp_autoresearch.vcs.repo import Repo
from mcp_autoresearch.vcs.unfinished import branch_in_operation

from .conftest import GIT_ENV, git, make_repo, run_cli
from .test_new_user6 import dashboard_of

pytestmark = pytest.mark.anyio

SETUP_PY = "from setuptools import setup\nsetup(name='slugs', packages=['slugs'])\n"


def library_with_root_tests(tmp_path: Path, tests: dict[bytes, str]) -> Path:
    """A single-module library (setup.py, slugs/) whose test modules sit at the root, under the names given."""
    root = make_repo(tmp_path / "slugs", {"setup.py": SETUP_PY, "slugs/__init__.py": "X = 1\n"}, commit=False)
    for name, text in tests.items():
        (root / os.fsdecode(name)).write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return root


def run_detected(root: Path) -> subprocess.CompletedProcess[str]:
    """The detected run command, run by a shell in the project as a run's command is."""
    command = load_project(root).info.run_command
    assert command is not None
    return subprocess.run(command, shell=True, cwd=root, capture_output=True, text=True, timeout=120)


def test_root_test_names_a_shell_would_split_or_expand_all_run(tmp_path: Path) -> None:
    """Root test modules named `test_a b.py`, `test_$(touch pwned).py` and `-k_test.py` (pytest collects all
    three) went into the run command as they are: the shell split the first ('file or directory not found:
    test_a'), ran the command substitution of the second (a file name of a cloned repository ran a command),
    and pytest read the third as its option -k. Every root test must run, and nothing in a name be executed."""
    test = "def test_it() -> None:\n    assert True\n"
    root = library_with_root_tests(
        tmp_path, {b"test_a b.py": test, b"test_$(touch pwned).py": test, b"-k_test.py": test}
    )
    ran = run_detected(root)
    assert ran.returncode == 0 and "3 passed" in ran.stdout, ran.stdout + ran.stderr
    assert not (root / "pwned").exists()


def test_more_root_tests_than_listed_all_run(tmp_path: Path) -> None:
    """25 test modules at the root: the run command listed the first 20 only, so 5 never ran and a change
    breaking what they test was measured (and kept) as faster. Every root test must run."""
    root = library_with_root_tests(
        tmp_path, {f"test_{i:02}.py".encode(): f"def test_{i}() -> None:\n    pass\n" for i in range(25)}
    )
    ran = run_detected(root)
    assert ran.returncode == 0 and "25 passed" in ran.stdout, ran.stdout + ran.stderr


def test_a_root_test_name_that_is_not_utf8_leaves_a_command_that_runs(tmp_path: Path) -> None:
    """A root test module whose name is not UTF-8 (`test_\\xff.py`) went into the run command as a surrogate,
    which no process can be given: every run failed to start (UnicodeEncodeError) and the baseline with it.
    The command must be one a shell can be given, and run the other tests (pytest's own cache fails on such a
    name after the tests, so it is left out)."""
    test = "def test_it() -> None:\n    assert True\n"
    root = library_with_root_tests(tmp_path, {b"test_\xff.py": test, b"test_plain.py": test})
    command = load_project(root).info.run_command
    assert command is not None
    command.encode()  # a process can be given it
    ran = run_detected(root)
    assert ran.returncode == 0 and "1 passed" in ran.stdout, ran.stdout + ran.stderr


async def one_run_session(root: Path, agent_for, tag: str) -> None:
    """Session `tag` started on what is checked out, its baseline run and decided."""
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag=tag)
        await agent.experiment("baseline")


def paste(root: Path, command: str) -> subprocess.CompletedProcess[str]:
    """What a person gets pasting `command` into bash in the project."""
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(["bash", "-c", command], cwd=root, capture_output=True, text=True, env=env)


async def test_the_clean_hint_names_a_branch_with_shell_characters_as_one_word(
    ml_project: Path, agent_for
) -> None:
    """A session started on the person's branch `lr(0.3)'s-try` (a name git accepts): finish's hint 'to remove
    the session: git checkout lr(0.3)'s-try, then mcp-autoresearch clean --tag p' is a bash syntax error when
    pasted. The checkout it names must work when pasted, and clean then remove the session."""
    root = ml_project
    git(root, "checkout", "-q", "-b", "lr(0.3)'s-try")
    await one_run_session(root, agent_for, "p")
    summary = run_cli("finish", "--project", str(root)).stdout
    line = next(x for x in summary.splitlines() if x.startswith("to remove the session: "))
    checkout, _, rest = line.removeprefix("to remove the session: ").partition(", then ")
    assert rest == "mcp-autoresearch clean --tag p", line
    pasted = paste(root, checkout)
    assert pasted.returncode == 0, (line, pasted.stderr)
    assert git(root, "branch", "--show-current").strip() == "lr(0.3)'s-try"
    assert run_cli("clean", "--project", str(root), "--tag", "p", "--yes").returncode == 0


async def test_the_clean_hint_never_names_a_branch_that_is_gone(ml_project: Path, agent_for) -> None:
    """The session started on `try-lr`, which the person deleted since (the session's branch checked out):
    finish's hint said 'git checkout try-lr, then mcp-autoresearch clean --tag g', whose checkout fails
    ('pathspec did not match'), and clean's refusal named it too. Neither may send the person to a branch that
    no longer exists."""
    root = ml_project
    git(root, "checkout", "-q", "-b", "try-lr")
    await one_run_session(root, agent_for, "g")
    git(root, "branch", "-q", "-D", "try-lr")
    summary = run_cli("finish", "--project", str(root)).stdout
    assert "to remove the session: " in summary, summary
    assert "git checkout try-lr" not in summary, summary
    refused = run_cli("clean", "--project", str(root), "--tag", "g", "--yes")
    assert refused.returncode == 2 and "git checkout try-lr" not in refused.stderr, refused.stderr


async def test_the_dashboard_shows_a_target_of_wide_characters_whole(tmp_path: Path, agent_for) -> None:
    """A target named in CJK (two columns a character): the title was chosen by its length in characters (74 of
    them fit at 80 columns), so a title of 70 characters but about 100 columns was put in the border, which cut
    the target short ('模型训练/优化器的学习率调度' without '.py'). It must be shown whole, and no line be wider than the terminal."""
    from rich.cells import cell_len

    target = "模型训练/优化器的学习率调度.py"
    shown = await dashboard_of(tmp_path, agent_for, target)
    assert target in shown, shown
    assert max(cell_len(line) for line in shown.splitlines()) <= 80, shown


def test_a_branch_named_in_bytes_that_are_not_utf8_is_seen_being_rebased(tmp_path: Path) -> None:
    """A person's branch whose name is not UTF-8 (b'\\xe9t\\xe9', Latin-1), stopped in a rebase: git keeps
    `refs/heads/\\xe9t\\xe9` in rebase-merge/head-name, which was decoded with U+FFFD and never equalled the
    branch (a surrogate-escaped str, as argv gives it): `finish --land` would move it under the rebase."""
    root = make_repo(tmp_path / "r", {"a.txt": "base\n"})
    name = os.fsdecode(b"\xe9t\xe9")
    git(root, "checkout", "-q", "-b", name)
    (root / "a.txt").write_text("theirs\n")
    git(root, "commit", "-q", "-am", "on the branch")
    git(root, "checkout", "-q", "main")
    (root / "a.txt").write_text("ours\n")
    git(root, "commit", "-q", "-am", "on main")
    git(root, "checkout", "-q", name)
    stopped = subprocess.run(
        ["git", "rebase", "-m", "main"], cwd=root, capture_output=True, env={**os.environ, **GIT_ENV}
    )
    assert stopped.returncode != 0 and (root / ".git" / "rebase-merge" / "head-name").exists()
    said = branch_in_operation(Repo(root), name)
    assert said is not None and "being rebased" in said


async def test_the_clean_hint_after_a_detached_start_is_not_one_clean_refuses(
    ml_project: Path, agent_for
) -> None:
    """A session started on a detached HEAD (no branch to go back to), its branch checked out: finish's hint was
    the bare 'mcp-autoresearch clean --tag d', which clean refuses ('checked out in this worktree'). The hint
    must say that a checkout comes first."""
    root = ml_project
    git(root, "checkout", "-q", "--detach")
    await one_run_session(root, agent_for, "d")
    summary = run_cli("finish", "--project", str(root)).stdout
    line = next(x for x in summary.splitlines() if x.startswith("to remove the session: "))
    assert line == "to remove the session: git checkout BRANCH, then mcp-autoresearch clean --tag d", line
    refused = run_cli("clean", "--project", str(root), "--tag", "d", "--yes")
    assert refused.returncode == 2 and "git checkout BRANCH" in refused.stderr, refused.stderr
