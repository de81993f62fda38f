"""Hostile inputs against the single-file rule: every attack is refused or detected with a clear message, and
no byte outside what the rules allow changes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from .conftest import git

pytestmark = pytest.mark.anyio

SKIP = {".git", ".autoresearch"}
LOGS = {"results.tsv", "run.log"}


def snapshot(root: Path, outside: Path) -> dict[str, str]:
    """Hash of every file of the project (but git internals and the server's logs) and of the outside dir."""
    found = {}
    for base in (root, outside):
        for dirpath, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if d not in SKIP]
            for name in files:
                path = Path(dirpath) / name
                if name in LOGS and path.parent == root:
                    continue
                try:
                    data = path.read_bytes() if not path.is_symlink() else os.readlink(path).encode()
                except OSError:
                    data = b"<unreadable>"
                found[str(path)] = hashlib.sha256(data).hexdigest()
    return found


@pytest.fixture
async def armed(ml_project: Path, agent_for, tmp_path: Path, request: pytest.FixtureRequest):
    """A session with its baseline kept, an outside directory with a secret, and some traps in the project.
    Runs are confined unless the test asks for `isolation = off` (indirect parameter)."""
    isolation = getattr(request, "param", "auto")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.py").write_text("secret\n")
    root = ml_project
    (root / "link_out.py").symlink_to(outside / "secret.py")
    (root / "link_dir").symlink_to(outside, target_is_directory=True)
    (root / "link_prepare.py").symlink_to(root / "prepare.py")
    async with agent_for(root, {"isolation": isolation}) as agent:
        await agent.ok("start_session", tag="hostile")
        await agent.experiment("baseline")
        yield agent, root, outside


PATH_ATTACKS = [
    "prepare.py",
    "./prepare.py",
    "README.md",
    "../outside/secret.py",
    "../../../../../../etc/passwd",
    "/etc/passwd",
    "{outside}/secret.py",
    "sub/../../outside/secret.py",
    "train.py/../prepare.py",
    "link_out.py",
    "link_dir/secret.py",
    "link_prepare.py",
    ".git/config",
    ".git/HEAD",
    ".git/hooks/pre-commit",
    ".git/info/exclude",
    ".autoresearch/sessions/hostile.json",
    "results.tsv",
    "TRAIN.PY",
    "Train.py",
    "train.py ",
    " train.py",
    "train.py\u200b",
    "trai\u0301n.py",
    "train.py/",
    "train.py\\..\\prepare.py",
    "~/train.py",
    "a" * 5000,
    "x/" * 3000 + "train.py",
    "",
    "   ",
    "train.py\x00.txt",
    "file:///etc/passwd",
    "{root}/../proj/prepare.py",
]


@pytest.mark.parametrize("attack", PATH_ATTACKS)
async def test_path_attacks_on_apply_edit(armed, attack: str) -> None:
    agent, root, outside = armed
    path = attack.replace("{outside}", str(outside)).replace("{root}", str(root))
    before = snapshot(root, outside)
    message = await agent.refused("apply_edit", path=path, content="pwned = True\n")
    assert "single-file rule" in message or "NUL" in message, message
    assert snapshot(root, outside) == before


async def test_unicode_lookalike_gets_a_hint(armed) -> None:
    agent, _root, _outside = armed
    assert "differ only in case" in await agent.refused("apply_edit", path="TRAIN.PY", content="x\n")


async def test_target_swapped_for_a_symlink_is_never_followed(armed) -> None:
    agent, root, outside = armed
    before_secret = (outside / "secret.py").read_text()
    (root / "train.py").unlink()
    (root / "train.py").symlink_to(outside / "secret.py")
    assert "no longer a regular file" in await agent.refused("apply_edit", content="pwned\n")
    assert "no longer a regular file" in await agent.refused("read_target")
    assert "no longer a regular file" in await agent.refused("run_experiment", description="x")
    assert (outside / "secret.py").read_text() == before_secret
    git(root, "checkout", "--", "train.py")
    assert (await agent.ok("read_target"))["total_lines"] == 5


async def test_target_hard_linked_to_the_evaluator(armed) -> None:
    agent, root, outside = armed
    evaluator = (root / "prepare.py").read_bytes()
    (root / "train.py").unlink()
    os.link(root / "prepare.py", root / "train.py")
    # The edit replaces the link with a new file: the evaluator keeps its bytes.
    await agent.ok("apply_edit", content=(root / "train.py").read_text() + "print('val_bpb: 0.1')\n")
    assert (root / "prepare.py").read_bytes() == evaluator
    assert (root / "train.py").stat().st_ino != (root / "prepare.py").stat().st_ino


async def test_parent_directory_swapped_for_a_symlink(tmp_path: Path, agent_for) -> None:
    from .conftest import make_repo

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model.py").write_text("mine\n")
    root = make_repo(
        tmp_path / "p",
        {
            "src/model.py": "K = 1\nprint(f'score: {K}')\n",
            "autoresearch.toml": (
                'target_file = "src/model.py"\nrun_command = "python3 src/model.py"\nmetric_name = "score"\n'
            ),
        },
    )
    async with agent_for(root) as agent:
        await agent.ok("start_session")
        (root / "src").rename(root / "src_real")
        (root / "src").symlink_to(outside, target_is_directory=True)
        assert "symlink" in await agent.refused("apply_edit", content="pwned\n")
    assert (outside / "model.py").read_text() == "mine\n"


async def test_deleted_target_is_refused_before_a_run(armed) -> None:
    agent, root, _outside = armed
    (root / "train.py").unlink()
    assert "was deleted" in await agent.refused("run_experiment", description="empty")
    assert "was deleted" in await agent.refused("read_target")


async def test_oversized_and_binary_arguments(armed) -> None:
    agent, root, outside = armed
    before = snapshot(root, outside)
    assert "NUL" in await agent.refused("apply_edit", content="x = 1\x00\n")
    assert "limit" in await agent.refused("apply_edit", content="#" * (4 * 1024 * 1024 + 10))
    message = await agent.refused("run_experiment", description="d" * 5000)
    assert "description" in message
    assert "notes" in await agent.refused("log_result", run_id="r1", notes="n" * 9000)
    too_many = [{"old_text": f"nope{i}", "new_text": ""} for i in range(201)]
    assert "edits" in await agent.refused("apply_edit", edits=too_many)
    assert "not usable" in await agent.refused("start_session", tag="x" * 100)
    assert "no run with id" in await agent.refused("wait_experiment", run_id="../../etc")
    assert snapshot(root, outside) == before


async def test_edit_of_a_binary_target_is_refused(armed) -> None:
    agent, root, _outside = armed
    (root / "train.py").write_bytes(b"\xff\xfe\x00binary")
    message = await agent.refused("apply_edit", edits=[{"old_text": "binary", "new_text": "x"}])
    assert "not UTF-8" in message
    assert (root / "train.py").read_bytes() == b"\xff\xfe\x00binary"


@pytest.mark.parametrize("armed", ["off", "auto"], indirect=True)
async def test_git_internals_and_state_written_by_a_run_do_not_fool_the_loop(armed) -> None:
    agent, root, _outside = armed
    await agent.edit(
        "LR = 0.5",
        "LR = 0.1\nimport subprocess, sys; done = subprocess.run(['git', 'commit', '-q', "
        "'--allow-empty', '-m', 'forged keep']); sys.exit(done.returncode)",
    )
    run = await agent.ok("run_experiment", description="commit from inside the run")
    if "landlock" in (await agent.ok("start_session", tag="hostile"))["isolation"]:
        assert run["status"] == "crash"  # .git is read-only to a confined run: the commit fails
    else:
        assert run["status"] == "tampered" and "session branch" in run["error"]
    decision = await agent.ok("commit_or_reset", run_id=run["run_id"])
    assert decision["decision"] == "crash"
    assert "forged keep" not in git(root, "log", "--format=%s", "-3")


@pytest.mark.parametrize("armed", ["off", "auto"], indirect=True)
async def test_run_that_replaces_the_evaluator_with_a_directory(armed) -> None:
    agent, root, _outside = armed
    await agent.edit(
        "LR = 0.5",
        "LR = 0.1\nimport os, shutil\nos.remove('prepare.py'); os.mkdir('prepare.py')\n"
        "open('prepare.py/x', 'w').write('x')",
    )
    run = await agent.ok("run_experiment", description="evaluator becomes a directory")
    if "landlock" in (await agent.ok("start_session", tag="hostile"))["isolation"]:
        assert run["status"] == "crash" and "prepare.py" in run["error"] and "writable" in run["error"]
        assert (root / "prepare.py").is_file()
    else:
        assert run["status"] == "tampered" and "prepare.py" in run["error"]
    decision = await agent.ok("commit_or_reset", run_id=run["run_id"])
    assert decision["decision"] == "crash"
    # Whatever could not be put back is named before the next run, with what to do.
    if not (root / "prepare.py").is_file():
        message = await agent.refused("run_experiment", description="next")
        assert "prepare.py" in message
