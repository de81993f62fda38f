"""Attacks on the single-file rule: only the target changes. Paths, links and look-alike names given to
`apply_edit`; runs that write the evaluator, the read-only files, the settings (CLAUDE.md) or beside them, or
through a writable entry. Each attack is refused, or undone and named, and no other byte changes.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from .conftest import git
from .helpers.attacks import (
    NEEDS_LANDLOCK,
    _log_text,
    armed_session,  # noqa: F401 (fixtures)
    attack,
    snapshot,
)
from .helpers.session_attacks import run_attack

pytestmark = pytest.mark.anyio


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


async def test_edit_of_a_binary_target_is_refused(armed) -> None:
    agent, root, _outside = armed
    (root / "train.py").write_bytes(b"\xff\xfe\x00binary")
    message = await agent.refused("apply_edit", edits=[{"old_text": "binary", "new_text": "x"}])
    assert "not UTF-8" in message
    assert (root / "train.py").read_bytes() == b"\xff\xfe\x00binary"


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


@pytest.mark.parametrize("isolation", ["off", "auto"])
async def test_run_cannot_raise_its_own_timeout(ml_project: Path, agent_for, isolation: str) -> None:
    root = ml_project
    rules = {"max_experiments": 3, "isolation": isolation}
    async with agent_for(root, rules) as agent:
        await agent.ok("start_session", tag="rules")
        await agent.experiment("baseline")
        code = (
            "open('CLAUDE.md', 'w').write('## autoresearch\\n- timeout: 99999\\n- max_experiments: 1000\\n')"
        )
        await run_attack(agent, code)
    if not (root / "CLAUDE.md").exists():  # a confined run may not write the project root
        async with agent_for(root, rules) as agent:
            assert (await agent.ok("start_session", tag="rules"))["resumed"] is True
        return
    async with agent_for(root, rules) as agent:
        message = await agent.refused("start_session", tag="rules")
        assert "configuration changed" in message and "timeout" in message
    # The experiment budget is not a rule of the measurement: a raised one lets the session go on, and says so.
    (root / "CLAUDE.md").write_text("## autoresearch\n- max_experiments: 1000\n")
    async with agent_for(root, {"isolation": isolation}) as agent:
        resumed = await agent.ok("start_session", tag="rules")
        assert resumed["budget_changed"] == ["max_experiments: 3 -> 1000 (from the configuration)"]


# (b) links, renames, .git, TMPDIR, file attributes
@NEEDS_LANDLOCK
async def test_links_and_renames_into_a_writable_dir_are_refused(ml_project: Path, agent_for):
    """REFER: a protected file cannot be hard-linked or moved into `out/` (then written there), the writable
    directory itself cannot be moved, and a symlink planted in it does not carry writes out. Removing the empty
    `out/` is answered as done (a build may remove and recreate its outputs) but it stays where it is."""
    root = ml_project
    code = """
    import os
    steps = {
        'link-evaluator': lambda: os.link('prepare.py', 'out/p.py'),
        'move-evaluator': lambda: os.rename('prepare.py', 'out/p.py'),
        'move-notes': lambda: os.rename('my_notes.txt', 'out/n.txt'),
        'move-out': lambda: os.rename('out', 'out2'),
        'remove-out': lambda: (os.rmdir('out'), os.path.isdir('out') or (_ for _ in ()).throw(OSError(0, 'gone'))),
        'write-through-symlink': lambda: (os.symlink('../prepare.py', 'out/s.py'), open('out/s.py', 'w')),
        'link-git-config': lambda: os.link('.git/config', 'out/config'),
    }
    for what, step in steps.items():
        try:
            step()
            print('REACHED', what)
        except OSError as exc:
            print('refused', what, exc.strerror)
    """
    evaluator, notes = (root / "prepare.py").read_bytes(), (root / "my_notes.txt").read_bytes()
    async with agent_for(root, {"writable": ["out"]}) as agent:
        run, decision = await attack(agent, code)
    text = _log_text(run)
    assert "REACHED remove-out" in text, text  # answered as done, and still there (checked below)
    assert text.count("REACHED") == 1 and text.count("refused") == 6, text
    assert (root / "prepare.py").read_bytes() == evaluator and (root / "my_notes.txt").read_bytes() == notes
    assert (root / "out").is_dir() and not (root / "out" / "p.py").exists()


@NEEDS_LANDLOCK
async def test_a_nested_writable_entry_cannot_be_swapped_for_a_link(ml_project: Path, agent_for):
    """writable = ["out", "out/cache"]: a run replaces out/cache with a link to the project; the next run must
    not get write access through it (the grant is opened by path, following links)."""
    root = ml_project
    swap = """
    import os, shutil
    shutil.rmtree('out/cache', ignore_errors=True)
    os.symlink('..', 'out/cache')
    """
    delete = """
    import os
    for name in ('my_notes.txt', 'prepare.py'):
        try:
            os.remove(name); print('REACHED', name)
        except OSError as exc:
            print('refused', name, exc.strerror)
    """
    async with agent_for(root, {"writable": ["out", "out/cache"]}) as agent:
        run, decision = await attack(agent, swap)
        assert run["status"] == "ok", (run, _log_text(run))
        await agent.ok(
            "apply_edit",
            content=(root / "train.py")
            .read_text()
            .replace("LR = 0.4", "LR = 0.3")
            .replace(textwrap.dedent(swap), textwrap.dedent(delete)),
        )
        run, decision = await agent.experiment("deletes through the link")
    assert (root / "my_notes.txt").exists(), _log_text(run)
    assert "REACHED" not in _log_text(run)


@NEEDS_LANDLOCK
async def test_gos_writable_bin_is_no_way_into_the_servers_folder(ml_project: Path, agent_for):
    """`.autoresearch/bin` (Go's default) is writable: nothing beside it is, through `..`, links or renames."""
    root = ml_project
    code = """
    import glob, os
    # (the sessions' folder is hidden from runs in their private view: then its name alone)
    state = (glob.glob('.autoresearch/sessions/*.json') or ['.autoresearch/sessions/k.json'])[0]
    steps = {
        'dotdot': lambda: open('.autoresearch/bin/../sessions/forged.json', 'w'),
        'state-through-dotdot': lambda: open('.autoresearch/bin/../' + state[len('.autoresearch/'):], 'a'),
        'link-state': lambda: os.link(state, '.autoresearch/bin/state.json'),
        'move-state': lambda: os.rename(state, '.autoresearch/bin/state.json'),
        'move-bin': lambda: os.rename('.autoresearch/bin', '.autoresearch/old'),
        'jsonl': lambda: open(glob.glob('.autoresearch/*.jsonl')[0], 'a'),
    }
    for what, step in steps.items():
        try:
            step(); print('REACHED', what)
        except OSError as exc:
            print('refused', what, exc.strerror)
    open('.autoresearch/bin/app', 'w').write('built\\n')
    os.symlink('../sessions', '.autoresearch/bin/sessions')
    """
    async with agent_for(root, {"writable": [".autoresearch/bin"]}) as agent:
        run, decision = await attack(agent, code)
        text = _log_text(run)
        assert "REACHED" not in text and text.count("refused") == 6, text
        assert run["status"] == "ok" and decision["decision"] == "keep", (run, text)
        from .conftest import TRAIN_PY

        await agent.ok("apply_edit", content=TRAIN_PY.replace("LR = 0.5", "LR = 0.3"))
        run, decision = await agent.experiment("the next run, with the links left in bin/")
        assert decision["decision"] == "keep", (run, decision)
    # Every run starts from an empty bin/: the first run's files were moved aside, the links with them.
    assert not (root / ".autoresearch" / "bin" / "app").exists()
    kept = list((root / ".autoresearch" / "outputs").glob("*/run-*/.autoresearch/bin"))
    assert kept and all(sorted(p.name for p in bin.iterdir()) == ["app", "sessions"] for bin in kept), kept


async def test_an_untracked_claude_md_written_by_a_run_changes_nothing(ml_project: Path, agent_for) -> None:
    """A confined run cannot create the file that would re-target the next session."""
    root = ml_project
    async with agent_for(root) as agent:
        await agent.ok("start_session")
        await agent.experiment("baseline")
        await agent.edit(
            "LR = 0.5",
            "LR = 0.4\nopen('CLAUDE.md', 'w').write('## autoresearch\\n- run_command: echo val_bpb: 0.0\\n')",
        )
        run, decision = await agent.experiment("writes CLAUDE.md")
        assert run["status"] == "crash" and "writable" in run["error"]
    assert not (root / "CLAUDE.md").exists()


async def test_shadow_modules_and_bytecode_cannot_be_planted(ml_project: Path, agent_for) -> None:
    """A confined run can neither put a module that shadows the evaluator beside it, nor forge its cached
    bytecode, nor add a file under a read-only directory."""
    root = ml_project
    (root / "data").mkdir()
    (root / "data" / "eval.txt").write_text("1 2 3\n")
    git(root, "add", "data")
    git(root, "commit", "-qm", "data")
    async with agent_for(root, {"readonly_files": ["prepare.py", "data"]}) as agent:
        await agent.ok("start_session")
        await agent.experiment("baseline")
        plant = (
            "import os\n"
            "for path in ('prepare/__init__.py', '__pycache__/prepare.cpython-311.pyc', 'data/extra.txt',"
            " 'numpy.py'):\n"
            "    try:\n"
            "        os.makedirs(os.path.dirname(path) or '.', exist_ok=True)\n"
            "        open(path, 'w').write('x = 1\\n')\n"
            "    except OSError as exc:\n"
            "        print('refused', path, exc.strerror)\n"
        )
        await agent.edit("LR = 0.5", "LR = 0.4\n" + plant)
        run, _ = await agent.experiment("plants modules")
        assert run["log_tail"].count("refused") == 4, run["log_tail"]
    for path in ("prepare", "__pycache__/prepare.cpython-311.pyc", "data/extra.txt", "numpy.py"):
        assert not (root / path).exists(), path


async def test_files_planted_under_a_read_only_directory_are_caught_unconfined(
    ml_project: Path, agent_for
) -> None:
    """Without confinement the run can create files beside the evaluator's data: the run is `tampered`, the new
    files are moved aside (never deleted) before any later run, and the next run is honest."""
    root = ml_project
    (root / "data").mkdir()
    (root / "data" / "eval.txt").write_text("1 2 3\n")
    git(root, "add", "data")
    git(root, "commit", "-qm", "data")
    overrides = {"readonly_files": ["prepare.py", "data"], "isolation": "off"}
    async with agent_for(root, overrides) as agent:
        await agent.ok("start_session")
        await agent.experiment("baseline")
        plant = "import os\nos.makedirs('data/sub', exist_ok=True)\nopen('data/sub/override.txt', 'w').write('0')\n"
        await agent.edit("LR = 0.5", "LR = 0.4\n" + plant)
        run, decision = await agent.experiment("plants data")
        assert run["status"] == "tampered" and "data/sub/override.txt" in run["error"], run
        assert decision["decision"] != "keep"
        assert not (root / "data" / "sub" / "override.txt").exists()
        aside = root / ".autoresearch" / "tampered" / run["run_id"] / "data" / "sub" / "override.txt"
        assert aside.read_text() == "0"
        (root / "data" / "by_hand.txt").write_text("a person's file\n")
        refused = await agent.refused("run_experiment", description="next")
        assert "data/by_hand.txt" in refused
    assert (root / "data" / "by_hand.txt").read_text() == "a person's file\n"
