"""Review 38: hidden data that git still holds (committed in a nested repository, moved out of the project,
an earlier version, stored before a filter, packed, borrowed from another store, beside an odd name, large):
whatever a check of the history says, every run's view covers the repositories (`hidden_repositories`), so the
candidate reads none of it. And the folder of every run's TMPDIR hidden where it is not /tmp
(`run_tmpdirs.hidden_parent`), in a slot too. Real git repositories, real runs under the real keeper, the real
MCP client."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from mcp_autoresearch.sandbox.policy import probe_isolation

from .conftest import git, make_repo
from .helpers.hidden_in_git import (
    GITIGNORE,
    KEY_SCORER,
    forget_commit,
    key_config,
    key_files,
    never_read,
)
from .helpers.needs import require
from .helpers.slot_tmpdirs import SECRET, SLOT_EVALUATE, slot_b_reads_slot_a
from .helpers.slots import private_slots_home  # noqa: F401 (the autouse fixture `slots_home`)

pytestmark = pytest.mark.anyio

ISOLATION = probe_isolation("auto")


def _needs_view() -> None:
    require(ISOLATION.namespaces, "CI must give runs a private view", "namespaces are unavailable here")


# --- 1. Hidden data whose content git still holds, where the check does not look --------------------------------


async def test_hidden_data_committed_in_a_nested_dataset_repository_is_unreadable(
    tmp_path: Path, agent_for
) -> None:
    """The hidden answers live in `data/`, a dataset cloned into the project (its own git repository, ignored by
    the project's). `data/key.txt` is hidden; its blob (reachable, in data/.git) is readable by every run."""
    _needs_view()
    root = make_repo(
        tmp_path / "proj",
        {
            "objective.py": "X = 5\nprint(X)\n",
            "scorer.py": KEY_SCORER,
            "autoresearch.toml": key_config("data/key.txt", "data/key.txt"),
            ".gitignore": GITIGNORE + "data/\n",
        },
    )
    make_repo(root / "data", {"key.txt": "answer 3.14159\n", "README": "the test split\n"})
    (root / "out").mkdir()
    await never_read(agent_for, root, "data/key.txt")


async def test_hidden_data_moved_out_of_the_project_but_still_in_its_history_is_unreadable(
    tmp_path: Path, agent_for
) -> None:
    """The key was committed in the project (commit 1), then removed from it (commit 2, `git rm`) and moved to
    a folder beside the project, which `hidden` names by its absolute path. Nothing pruned, nothing rewritten:
    commit 1 holds it, every run may read .git."""
    _needs_view()
    root = make_repo(
        tmp_path / "proj",
        {
            "objective.py": "X = 5\nprint(X)\n",
            "scorer.py": KEY_SCORER,
            "key.txt": "answer 3.14159\n",
            ".gitignore": GITIGNORE,
        },
    )
    secret = tmp_path / "secret"
    secret.mkdir()
    git(root, "rm", "-q", "--cached", "key.txt")
    (root / "key.txt").rename(secret / "key.txt")
    (root / "autoresearch.toml").write_text(key_config(str(secret / "key.txt"), str(secret / "key.txt")))
    git(root, "add", "autoresearch.toml")
    git(root, "commit", "-q", "-m", "the key moved out of the project")
    assert "answer 3.14159" in git(root, "show", "HEAD~1:key.txt")
    (root / "out").mkdir()
    await never_read(agent_for, root, "key.txt")


async def test_hidden_data_whose_earlier_version_is_still_an_object_is_unreadable(
    tmp_path: Path, agent_for
) -> None:
    """The key was committed, then removed from history (amended, reflog expired) but not pruned; the user then
    appended a line to it (a note, one more test row). The hash of the current content is not an object; the
    earlier version's is, and holds the same answer."""
    _needs_view()
    root = make_repo(
        tmp_path / "proj",
        key_files(),
    )
    forget_commit(root, "key.txt")
    (root / "key.txt").write_text("answer 3.14159\nregenerated 2026-12-06\n")
    (root / "out").mkdir()
    await never_read(agent_for, root, "key.txt")


async def test_hidden_data_stored_before_gitattributes_normalised_it_is_unreadable(
    tmp_path: Path, agent_for
) -> None:
    """A key written on Windows (CRLF) was committed, then removed from history as the refusal says, not pruned;
    the project has since added the common `* text=auto` to .gitattributes."""
    _needs_view()
    root = make_repo(
        tmp_path / "proj",
        {
            "objective.py": "X = 5\nprint(X)\n",
            "scorer.py": KEY_SCORER,
            "autoresearch.toml": key_config("key.txt"),
            ".gitignore": GITIGNORE,
        },
        commit=False,
    )
    (root / "key.txt").write_bytes(b"answer 3.14159\r\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial, with the key")
    (root / ".gitattributes").write_text("* text=auto\n")
    git(root, "add", ".gitattributes")
    forget_commit(root, "key.txt")
    stored = git(root, "hash-object", "--no-filters", "key.txt").strip()
    assert git(root, "cat-file", "-t", stored).strip() == "blob"  # still there, as the file is now
    (root / "out").mkdir()
    await never_read(agent_for, root, None)  # the session starts; the data stays out of reach


async def test_hidden_data_beside_an_odd_name_in_a_hidden_folder_is_unreadable(
    tmp_path: Path, agent_for
) -> None:
    """`data/` is hidden; `data/key.txt` was committed and removed as the refusal says, not pruned (refused, as
    review 37 made it). A folder copied from a Mac also holds `Icon\\r`: the session is accepted."""
    _needs_view()
    root = make_repo(
        tmp_path / "proj",
        {
            "objective.py": "X = 5\nprint(X)\n",
            "scorer.py": KEY_SCORER,
            "autoresearch.toml": key_config("data", "data/key.txt"),
            "data/key.txt": "answer 3.14159\n",
            ".gitignore": GITIGNORE + "data/\n",
        },
        commit=False,
    )
    git(root, "add", "-A", "-f")
    git(root, "commit", "-q", "-m", "initial, with the key")
    forget_commit(root, "data/key.txt")
    (root / "out").mkdir()
    (root / "data" / "Icon\r").write_bytes(b"")
    await never_read(agent_for, root, None)  # the session starts; the data stays out of reach


async def test_a_large_hidden_test_set_still_in_gits_objects_is_unreadable(tmp_path: Path, agent_for) -> None:
    _needs_view()
    root = make_repo(
        tmp_path / "proj",
        {
            "objective.py": "X = 5\nprint(X)\n",
            "scorer.py": KEY_SCORER,
            "autoresearch.toml": key_config("labels.txt", "labels.txt"),
            ".gitignore": GITIGNORE,
        },
    )
    row = b"answer 3.14159 " + b"0" * 48 + b"\n"
    with open(root / "labels.txt", "wb") as file:
        for _ in range((65 * 1024 * 1024) // len(row)):
            file.write(row)
    git(root, "add", "labels.txt")
    git(root, "commit", "-q", "-m", "the test set")
    forget_commit(root, "labels.txt")
    (root / "out").mkdir()
    await never_read(agent_for, root, None)  # the session starts; the data stays out of reach


async def test_hidden_data_stored_in_a_pack_or_an_alternate_store_is_unreadable(
    tmp_path: Path, agent_for
) -> None:
    """Held: the blob packed (every object in one pack, no loose object left) is found, and so is a
    blob in an alternate object store (`objects/info/alternates`), as cat-file reads both."""
    _needs_view()
    files = {
        "objective.py": "X = 5\nprint(X)\n",
        "scorer.py": KEY_SCORER,
        "autoresearch.toml": key_config("key.txt"),
        "key.txt": "answer 3.14159\n",
        ".gitignore": GITIGNORE,
    }
    root = make_repo(tmp_path / "proj", files)
    forget_commit(root, "key.txt")
    every = git(root, "cat-file", "--batch-all-objects", "--batch-check=%(objectname)")
    subprocess.run(
        ["git", "pack-objects", "-q", ".git/objects/pack/pack"],
        cwd=root,
        input=every,
        text=True,
        check=True,
        capture_output=True,
    )
    git(root, "prune-packed")
    assert not [p for p in (root / ".git" / "objects").iterdir() if len(p.name) == 2]  # no loose object left
    (root / "out").mkdir()
    await never_read(agent_for, root, None)  # the session starts; the data stays out of reach
    other = make_repo(tmp_path / "store", {"k": "answer 3.14159\n"})
    plain = make_repo(tmp_path / "proj2", {k: v for k, v in files.items() if k != "key.txt"})
    (plain / "key.txt").write_text("answer 3.14159\n")
    (plain / ".gitignore").write_text(GITIGNORE + "key.txt\n")
    git(plain, "commit", "-qam", "the key ignored")
    (plain / ".git" / "objects" / "info" / "alternates").write_text(str(other / ".git" / "objects") + "\n")
    (plain / "out").mkdir()
    await never_read(agent_for, plain, None)  # the session starts; the data stays out of reach


# --- 2. The folder of every run's TMPDIR, where it holds the project or the slots ---------------------------------


@pytest.fixture(name="scratch")
def _scratch(monkeypatch: pytest.MonkeyPatch):
    """The server's TMPDIR in a scratch folder of the user's, not under /tmp (a cluster's scratch disk)."""
    scratch = Path.home() / f".review38-tmp-{uuid.uuid4().hex[:8]}"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    yield scratch
    shutil.rmtree(scratch, ignore_errors=True)


async def test_a_run_cannot_read_another_slots_tmpdir_when_tmpdir_holds_the_project(
    tmp_path: Path, agent_for, scratch: Path
) -> None:
    """Held: TMPDIR=/scratch/$USER with the project in /scratch/$USER/proj. `hidden_parent` hides nothing for the
    project itself, but a slot's run is rooted in its checkout (under the slots folder, not under TMPDIR), so the
    folder is hidden there and slot B finds nothing of slot A's. (Where the checkouts are under TMPDIR too, it
    is not: see the strict xfail below.)"""
    _needs_view()
    root = make_repo(scratch / "proj", {"params.py": "X = 0\n\n\n\nY = 0\n", "evaluate.py": SLOT_EVALUATE})
    log = await slot_b_reads_slot_a(agent_for, root, tmp_path / "sync")
    assert SECRET not in log, f"slot B read slot A's private TMPDIR: {log[:400]}"


async def test_a_run_cannot_read_another_slots_tmpdir_when_the_slots_are_under_tmpdir(
    tmp_path: Path, agent_for, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _needs_view()
    monkeypatch.setenv("AUTORESEARCH_SLOTS_DIR", str(scratch / "slots"))
    root = make_repo(tmp_path / "proj", {"params.py": "X = 0\n\n\n\nY = 0\n", "evaluate.py": SLOT_EVALUATE})
    log = await slot_b_reads_slot_a(agent_for, root, tmp_path / "sync")
    assert SECRET not in log, f"slot B read slot A's private TMPDIR: {log[:400]}"


async def test_a_run_cannot_read_another_slots_tmpdir_when_tmpdir_is_a_symlink(
    tmp_path: Path, agent_for, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Held: TMPDIR a symlink to the scratch folder: the view hides the folder it leads to, each run's own
    TMPDIR (named through the link) stays writable, and slot B finds nothing of slot A's."""
    _needs_view()
    link = Path.home() / f".review38-link-{uuid.uuid4().hex[:8]}"
    link.symlink_to(scratch)
    try:
        monkeypatch.setattr(tempfile, "tempdir", str(link))
        root = make_repo(
            tmp_path / "proj", {"params.py": "X = 0\n\n\n\nY = 0\n", "evaluate.py": SLOT_EVALUATE}
        )
        log = await slot_b_reads_slot_a(agent_for, root, tmp_path / "sync")
        assert SECRET not in log, f"slot B read slot A's private TMPDIR: {log[:400]}"
    finally:
        os.unlink(link)
