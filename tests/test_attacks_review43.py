"""Review 43: the user's identity read by one git process at each session's start (`Repo.ensure_identity`,
`vcs/identity.py`), and the CLI's collector off while a command imports (`_imports_done`).

Each identity check compares what the server writes itself (`write_commit`, reflog lines) with what git writes
for the same configuration, in the same repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mcp_autoresearch.vcs.repo import Repo

from .conftest import TRAIN_PY, git, make_repo

IDENTITY_ENV = ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL")


@pytest.fixture
def bare_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No identity anywhere but what the test sets: no GIT_AUTHOR_*/GIT_COMMITTER_* in the environment, an empty
    HOME and XDG_CONFIG_HOME (no global configuration). The repository's first commit is made with `-c`."""
    for name in IDENTITY_ENV:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    root = tmp_path / "r"
    root.mkdir()
    (root / "model.py").write_text("LR = 1\n")
    for args in (["init", "-q", "-b", "main"], ["add", "model.py"], ["commit", "-q", "-m", "initial"]):
        subprocess.run(
            ["git", "-c", "user.name=First", "-c", "user.email=first@example.com", *args],
            cwd=root,
            check=True,
            capture_output=True,
        )
    return root


def _plain_git(root: Path, *args: str | bytes) -> bytes:
    """git with the process's own environment (the test's identity, not conftest's GIT_ENV)."""
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True).stdout


def _ident_line(root: Path, commit: str, field: str) -> bytes:
    """The raw `author`/`committer` header of a commit object, without its time."""
    header = _plain_git(root, "cat-file", "commit", commit).split(b"\n\n")[0]
    line = next(x for x in header.split(b"\n") if x.startswith(field.encode() + b" "))
    return line.removeprefix(field.encode() + b" ").rsplit(b" ", 2)[0]


def _ours_and_gits(root: Path) -> tuple[bytes, bytes]:
    """The author line of a commit the server writes itself and of one `git commit` writes, same repository."""
    repo = Repo(root)
    repo.ensure_identity()
    ours = repo.write_commit("model.py", b"LR = 2\n", "experiment", repo.head_commit())
    _plain_git(root, "commit", "-q", "--allow-empty", "-m", "by git")
    return _ident_line(root, ours, "author"), _ident_line(root, "HEAD", "author")


# -- findings (fixed) ----------------------------------------------------------------------------------------------------


def test_an_identity_that_is_not_utf8_does_not_stop_the_servers_commits(bare_identity: Path) -> None:
    root = bare_identity
    _plain_git(root, "config", "user.name", b"Ren\xe9 Latin")  # as an old ~/.gitconfig in Latin-1 holds it
    _plain_git(root, "config", "user.email", "rene@example.com")
    ours, gits = _ours_and_gits(root)  # git converts the name to UTF-8 ("did not conform to UTF-8")
    assert ours == gits


@pytest.mark.parametrize("name", ['"Ann Example"', "Ann Example.", "Ann Example\u00a0", "Ann Example,"])
def test_the_servers_commits_spell_the_configured_name_as_git_does(bare_identity: Path, name: str) -> None:
    root = bare_identity
    _plain_git(root, "config", "user.name", name)
    _plain_git(root, "config", "user.email", "ann@example.com")
    ours, gits = _ours_and_gits(root)
    assert ours == gits, (ours, gits)


def test_an_identity_given_by_the_environment_is_every_commits(
    bare_identity: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = bare_identity
    for name in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        monkeypatch.setenv(name, "Env Ann")
    for name in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(name, "env@example.com")
    (root / ".gitattributes").write_text("model.py filter=kept\n")  # not plain: its blob made by git
    _plain_git(root, "add", ".gitattributes")
    _plain_git(root, "commit", "-q", "-m", "attributes")
    _plain_git(root, "checkout", "-q", "-b", "autoresearch/env")
    repo = Repo(root)
    repo.ensure_identity()
    ours = repo.write_commit("model.py", b"LR = 2\n", "experiment", repo.head_commit())
    by_git = repo.write_commit("model.py", b"LR = 3\n", "experiment 2", ours, plain=False)
    expected = b"Env Ann <env@example.com>"
    assert _ident_line(root, ours, "author") == expected
    assert (_ident_line(root, by_git, "author"), _ident_line(root, by_git, "committer")) == (
        expected,
        expected,
    )


# -- held --------------------------------------------------------------------------------------------------------


def test_identity_keys_in_other_case_and_in_subsections_are_read_as_git_reads_them(
    bare_identity: Path,
) -> None:
    """`[User] NAME` is user.name to git (sections and keys are case-insensitive); `[user "x"] name` is not; a value
    that would end the identity line's fields early adds no header line."""
    root = bare_identity
    with (root / ".git" / "config").open("a") as config:
        config.write("[User]\n\tNAME = Ann Example\n\tEMail = ann@example.com\n")
        config.write('[user "x"]\n\tname = Mallory\n\temail = m@example.com\n')
        config.write('[user "name"]\n\temail = m2@example.com\n')
    ours, gits = _ours_and_gits(root)
    assert ours == gits == b"Ann Example <ann@example.com>"
    _plain_git(root, "config", "user.email", "a@b> 1 +0000\nparent 0000000000000000000000000000000000000000")
    repo = Repo(root)
    repo.ensure_identity()
    commit = repo.write_commit("model.py", b"LR = 3\n", "experiment", repo.head_commit())
    header = _plain_git(root, "cat-file", "commit", commit).split(b"\n\n")[0].split(b"\n")
    assert [line.split(b" ")[0] for line in header] == [b"tree", b"parent", b"author", b"committer"]
    _plain_git(root, "fsck", "--strict", "--no-dangling")


@pytest.mark.anyio
async def test_the_identity_is_read_again_at_the_next_sessions_start(
    tmp_path: Path, agent_for, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server reads the identity when a session starts: the user's change between two sessions is in the
    second session's commits and reflog lines (within one session the first read holds, by design)."""
    for name in IDENTITY_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    root = make_repo(tmp_path / "proj", {"train.py": TRAIN_PY, "prepare.py": "SEED = 1\n"})
    authors = []
    for tag, name in (("one", "First Name"), ("two", "Second Name")):
        git(root, "config", "user.name", name)
        git(root, "config", "user.email", f"{tag}@example.com")
        async with agent_for(root) as agent:
            await agent.ok("start_session", tag=tag)
            await agent.experiment("baseline")
            line = next(x for x in (root / "train.py").read_text().splitlines() if x.startswith("LR = "))
            lower = f"LR = {float(line.split()[-1]) - 0.1:.2f}"
            await agent.edit(line, lower)
            _, decision = await agent.experiment(lower)
            assert decision["decision"] == "keep", decision
        tip = git(root, "rev-parse", f"autoresearch/{tag}").strip()
        authors.append(_ident_line(root, tip, "author"))
        reflog = (root / ".git" / "logs" / "refs" / "heads" / "autoresearch" / tag).read_bytes()
        assert f"{name} <{tag}@example.com>".encode() in reflog.splitlines()[-1], reflog
    assert authors == [b"First Name <one@example.com>", b"Second Name <two@example.com>"]


# -- outside the diff: a configuration of many unknown keys ------------------------------------------------------


def test_a_configuration_of_many_unknown_keys_is_refused_in_a_bounded_line(tmp_path: Path) -> None:
    """A hostile repository's autoresearch.toml of 60,000 unknown keys (700 KB): each key got a difflib
    suggestion (10 s of CPU a load, and the configuration is loaded again by later calls) and the error named
    them all. It names the first few, each cut short, and how many more; a typo still gets its suggestion."""
    from mcp_autoresearch.errors import ConfigError
    from mcp_autoresearch.setup.config import validate_values

    raw = {"time_bugdet": 3, "k" * 5000: 1, **{f"unknown_key_{n}": n for n in range(60_000)}}
    with pytest.raises(ConfigError) as refused:
        validate_values(raw, "autoresearch.toml")
    message = str(refused.value)
    assert "'time_bugdet' (did you mean 'time_budget'?)" in message, message[:300]
    assert "and 59997 more" in message and len(message) < 2000, message[:300]


@pytest.mark.anyio
async def test_a_squash_landed_by_finish_carries_the_sessions_identity(
    tmp_path: Path, agent_for, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`finish --land --squash` writes its commit with git, and decided for itself which neutral identity git
    needed (the whole neutral one as soon as no email was configured): with only `user.name` set, the session's
    own commits were the user's name with the neutral email, the squash the neutral name. One rule now
    (`Identity`), for both."""
    for name in IDENTITY_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    root = make_repo(tmp_path / "proj", {"train.py": TRAIN_PY, "prepare.py": "SEED = 1\n"})
    git(root, "config", "user.name", "Ann Example")  # no email anywhere
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="one")
        await agent.experiment("baseline")
        await agent.edit("LR = 0.5", "LR = 0.3")
        _, decision = await agent.experiment("lower LR")
        assert decision["decision"] == "keep", decision
    kept = _ident_line(root, "autoresearch/one", "author")
    assert kept == b"Ann Example <autoresearch@localhost>"
    git(root, "checkout", "-q", "main")
    landed = subprocess.run(
        ["mcp-autoresearch", "finish", "--project", str(root), "--land", "main", "--squash"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert landed.returncode == 0, landed.stderr
    assert _ident_line(root, "main", "author") == _ident_line(root, "main", "committer") == kept
