"""Attacks on parallel slots through the target's code: links planted where the server later writes or deletes,
shared inputs swapped for forged data, deep output trees, and keeps that could lose the agent's unrun edit.
Real repositories, real runs, the real MCP client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .conftest import git, make_repo
from .test_slots import EVALUATE, TARGET, _baseline, _need_landlock, settings, wait_first

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def slots_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "slots-home"
    monkeypatch.setenv("AUTORESEARCH_SLOTS_DIR", str(home))
    return home


async def _until_done(agent: Any, run_id: str) -> dict[str, Any]:
    run = await agent.ok("wait_experiment", run_id=run_id)
    while run["status"] == "running":
        run = await agent.ok("wait_experiment", run_id=run_id)
    return run


async def test_a_slot_replaced_by_a_link_to_the_user_tree_is_never_cleaned_through(
    tmp_path: Path, agent_for: Any, slots_home: Path
) -> None:
    """Unconfined, a run replaces another (idle) slot's directory with a link to the user's project: the check
    of idle slots after the run, and the next run's `prepare` there, must not clean the user's tree as if it
    were the slot (deleting untracked files and the server's own folder, rewriting tracked files)."""
    root = make_repo(tmp_path / "proj", {"params.py": TARGET, "evaluate.py": EVALUATE, "lib.py": "HELP = 1\n"})
    (root / "user_notes.txt").write_text("mine\n")
    swap = (
        "import glob, os, shutil\n"
        f"for other in glob.glob({str(slots_home)!r} + '/*/1'):\n"
        "    if not os.path.islink(other) and os.path.realpath(other) != os.path.realpath(os.getcwd()):\n"
        f"        shutil.rmtree(other); os.symlink({str(root)!r}, other)\n"
    )
    async with agent_for(root, settings(isolation="off", slot_devices=[])) as agent:
        await agent.ok("start_session", tag="tl")
        await _baseline(agent)
        await agent.ok("apply_edit", content=swap + "X = 3\nY = 0\n")
        hostile = await agent.ok("run_experiment", description="slot 1 becomes a link to the project")
        assert hostile["slot"] == 0
        run = await _until_done(agent, hostile["run_id"])
        assert (root / "user_notes.txt").exists(), "the server cleaned the user's tree through the slot's link"
        assert (root / ".autoresearch" / "autoresearch.jsonl").exists()
        assert run["status"] == "tampered", run
        await agent.ok("commit_or_reset", run_id=hostile["run_id"])
        # The agent's next idea waits, unrun, in the user's tree while two honest runs use both slots.
        await agent.ok("apply_edit", content="X = 3\nimport time; time.sleep(1)\n\n\nY = 0\n")
        slow = await agent.ok("run_experiment", description="slow honest")
        await agent.ok("apply_edit", content="X = 0\n\n\n\nY = 5\n")
        other = await agent.ok("run_experiment", description="Y to 5")
        assert other["slot"] == 1
        await agent.ok("apply_edit", content="X = 1\n\n\n\nY = 0\n")  # unrun
        done = await _until_done(agent, other["run_id"])
        assert done["status"] == "ok" and done["value"] == 3.0, done
        await _until_done(agent, slow["run_id"])
        assert (root / "params.py").read_text() == "X = 1\n\n\n\nY = 0\n"
    assert (root / "user_notes.txt").read_text() == "mine\n"
    assert (root / "lib.py").read_text() == "HELP = 1\n"
    for slot in slots_home.glob("*/*"):
        assert not slot.is_symlink()


async def test_a_link_above_a_shared_input_never_deletes_the_users_files(
    tmp_path: Path, agent_for: Any, slots_home: Path
) -> None:
    """A shared input below a directory the server makes in the slot (`data/train`): a run that replaces that
    directory with a link to the user's `data` must not make the next restore delete the user's files there."""
    root = make_repo(tmp_path / "proj", {"params.py": TARGET, "evaluate.py": EVALUATE})
    (root / "data" / "train").mkdir(parents=True)
    (root / "data" / "train" / "set.txt").write_text("train\n")
    (root / "data" / "notes.txt").write_text("the user's untracked notes\n")
    swap = (
        "import os, shutil\n"
        "if os.path.isdir('data') and not os.path.islink('data'):\n"
        f"    shutil.rmtree('data'); os.symlink({str(root / 'data')!r}, 'data')\n"
    )
    overrides = settings(isolation="off", slot_devices=[], shared_inputs=["data/train"])
    async with agent_for(root, overrides) as agent:
        await agent.ok("start_session", tag="sh")
        await _baseline(agent)
        await agent.ok("apply_edit", content=swap + "X = 3\nY = 0\n")
        hostile = await agent.ok("run_experiment", description="data becomes a link")
        await _until_done(agent, hostile["run_id"])
        await agent.ok("commit_or_reset", run_id=hostile["run_id"])
        await agent.ok("apply_edit", content="X = 0\n\n\n\nY = 5\n")
        after = await agent.ok("run_experiment", description="after, in the same slot")
        assert after["slot"] == hostile["slot"]
        run = await _until_done(agent, after["run_id"])
        assert run["status"] == "ok", run
    assert (root / "data" / "notes.txt").exists(), "the server deleted the user's file through a link in a slot"
    assert (root / "data" / "train" / "set.txt").read_text() == "train\n"


EVALUATE_DATA = """\
import runpy
ns = runpy.run_path("params.py")
offset = float(open("data/offset.txt").read())
print(f"score: {abs(ns['X'] - 3) + abs(ns['Y'] - 5) + offset:.6f}")
"""


async def test_a_shared_input_swapped_for_forged_data_is_caught_and_never_reaches_the_next_run(
    tmp_path: Path, agent_for: Any, slots_home: Path
) -> None:
    """Unconfined, a run replaces its slot's link to a read-only shared input with a directory of forged data.
    In the user's tree (one slot) a change to that data is tampering; in a slot it must be too, and the forged
    copy must not stay in the slot for the next candidate measured there."""
    root = make_repo(tmp_path / "proj", {"params.py": TARGET, "evaluate.py": EVALUATE_DATA})
    (root / "data").mkdir()
    (root / "data" / "offset.txt").write_text("0\n")
    forge = (
        "import os\n"
        "if os.path.islink('data'):\n"
        "    os.unlink('data'); os.mkdir('data'); open('data/offset.txt', 'w').write('-100\\n')\n"
    )
    overrides = settings(
        isolation="off", slot_devices=[], shared_inputs=["data"], readonly_files=["evaluate.py", "data"]
    )
    async with agent_for(root, overrides) as agent:
        await agent.ok("start_session", tag="fd")
        await _baseline(agent)
        await agent.ok("apply_edit", content=forge + "X = 3\nY = 0\n")
        hostile = await agent.ok("run_experiment", description="forged data")
        run = await _until_done(agent, hostile["run_id"])
        assert run["status"] == "tampered", run
        assert (await agent.ok("commit_or_reset", run_id=hostile["run_id"]))["decision"] != "keep"
        await agent.ok("apply_edit", content="X = 3\n\n\n\nY = 5\n")
        honest = await agent.ok("run_experiment", description="honest, in the same slot")
        assert honest["slot"] == hostile["slot"]
        run = await _until_done(agent, honest["run_id"])
        assert run["status"] == "ok" and run["value"] == 0.0, run
    assert (root / "data" / "offset.txt").read_text() == "0\n"


async def test_keeping_a_change_never_loses_the_unrun_edit_of_a_filtered_target(
    tmp_path: Path, agent_for: Any
) -> None:
    """A target git converts (`text eol=lf`, as `* text=auto` or `core.autocrlf` make common): the agent's edit
    not yet run must survive a keep, merged or kept aside, as it does for a plain target."""
    root = make_repo(
        tmp_path / "proj",
        {"params.py": TARGET, "evaluate.py": EVALUATE, ".gitattributes": "*.py text eol=lf\n"},
    )
    async with agent_for(root, settings(slot_devices=[])) as agent:
        await agent.ok("start_session", tag="eol")
        await _baseline(agent)
        await agent.edit("X = 0", "X = 3")
        first = await agent.ok("run_experiment", description="X to 3")
        await agent.edit("Y = 0", "Y = 4")  # the next idea, not yet run
        await _until_done(agent, first["run_id"])
        kept = await agent.ok("commit_or_reset", run_id=first["run_id"])
        assert kept["decision"] == "keep"
        content = (root / "params.py").read_text()
        aside = [p.read_text() for p in (root / ".autoresearch").glob("edits/*")]
        assert "Y = 4" in content or any("Y = 4" in a for a in aside), (content, kept["next_step"])
        assert "Y = 4" in content or "edit" in kept["next_step"]


async def test_a_deep_tree_in_a_slots_output_does_not_break_the_slot(
    tmp_path: Path, agent_for: Any, slots_home: Path
) -> None:
    """Confined, a run may write only its slot's outputs, but what it leaves there stays: a directory nested
    thousands deep must not make the slot unusable (git's walk of the slot before each run)."""
    _need_landlock()
    root = make_repo(tmp_path / "proj", {"params.py": TARGET, "evaluate.py": EVALUATE})
    deep = (
        "import os\n"
        "if os.path.isdir('out'):\n"
        "    fd = os.open('out', os.O_RDONLY)\n"
        "    for _ in range(20000):\n"
        "        os.mkdir('d', dir_fd=fd); new = os.open('d', os.O_RDONLY, dir_fd=fd); os.close(fd); fd = new\n"
        "    os.close(fd)\n"
    )
    async with agent_for(root, settings(slot_devices=[], writable=["out"])) as agent:
        await agent.ok("start_session", tag="dp")
        await _baseline(agent)
        await agent.ok("apply_edit", content=deep + "X = 3\nY = 0\n")
        hostile = await agent.ok("run_experiment", description="deep tree in out/")
        run = await _until_done(agent, hostile["run_id"])
        assert run["status"] == "ok", run
        await agent.ok("commit_or_reset", run_id=hostile["run_id"])
        await agent.ok("apply_edit", content="X = 3\n\n\n\nY = 5\n")
        after = await agent.ok("run_experiment", description="after, in the same slot")
        assert after["slot"] == hostile["slot"]
        run = await _until_done(agent, after["run_id"])
        assert run["status"] == "ok" and run["value"] == 0.0, run
    assert git(root, "status", "--porcelain", "--untracked-files=no") == ""
