"""Attacks on parallel slots through the target's code: links planted where the server later cleans or
rebases, forged shared inputs, tampering found while other runs are in flight, kill -9 in the middle of a
rebase. The user's tree is never cleaned through a link and a result is never logged twice or kept by mistake.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_autoresearch.errors import ConfigError

from .conftest import call_ok, git, make_repo, served_here, stdio_server_pid
from .helpers.slots import private_slots_home  # noqa: F401 (the autouse fixture `slots_home`)
from .test_slots import EVALUATE, TARGET, _baseline, settings

pytestmark = pytest.mark.anyio


def _done_rows(root: Path) -> list[dict[str, Any]]:
    events = [
        json.loads(line) for line in (root / ".autoresearch/autoresearch.jsonl").read_text().splitlines()
    ]
    return [e["details"] for e in events if e["action"] == "experiment_done"]


async def test_a_rebase_never_measures_again_content_already_measured(
    tmp_path: Path, agent_for: Any, slots_home: Path
) -> None:
    """X=3 and Y=5 run at once; X=3 is kept. The agent then runs X=3,Y=5 itself (r4), and discards it. Deciding
    the stale Y=5 must not merge it into that very content and run it again: `run_experiment` refuses content
    already measured (unless asked to re-run it), and a rebase is no back door to a second draw of the noise."""
    root = make_repo(tmp_path / "proj", {"params.py": TARGET, "evaluate.py": EVALUATE})
    async with agent_for(root, settings(slot_devices=[])) as agent:
        await agent.ok("start_session", tag="tw")
        await _baseline(agent)
        await agent.edit("X = 0", "X = 3")
        first = await agent.ok("run_experiment", description="X to 3")
        await agent.edit("Y = 0", "Y = 5")
        second = await agent.ok("run_experiment", description="Y to 5")
        await agent.until_done(first["run_id"])
        await agent.until_done(second["run_id"])
        assert (await agent.ok("commit_or_reset", run_id=first["run_id"]))["decision"] == "keep"
        await agent.ok("apply_edit", content="X = 3\n\n\n\nY = 5\n")  # what the merge of Y=5 would be
        both = await agent.ok("run_experiment", description="X and Y")
        assert (await agent.until_done(both["run_id"]))["value"] == 0.0
        decided = await agent.ok("commit_or_reset", run_id=both["run_id"], discard=True)
        assert decided["decision"] == "discard"
        again = await agent.ok("commit_or_reset", run_id=second["run_id"])
        assert again["decision"] == "discard", again
        assert both["run_id"] in again["reason"], again
    rows = _done_rows(root)
    assert len(rows) == 4 and [r["run_id"] for r in rows].count(second["run_id"]) == 1


async def test_a_rebase_never_runs_content_already_in_flight(
    tmp_path: Path, agent_for: Any, slots_home: Path
) -> None:
    """As above, with the agent's X=3,Y=5 still running when the stale Y=5 is decided: no twin in flight."""
    root = make_repo(tmp_path / "proj", {"params.py": TARGET, "evaluate.py": EVALUATE})
    async with agent_for(root, settings(slot_devices=[])) as agent:
        await agent.ok("start_session", tag="tf")
        await _baseline(agent)
        await agent.edit("X = 0", "X = 3")
        first = await agent.ok("run_experiment", description="X to 3")
        await agent.edit("Y = 0", "Y = 5")
        second = await agent.ok("run_experiment", description="Y to 5")
        await agent.until_done(first["run_id"])
        await agent.until_done(second["run_id"])
        assert (await agent.ok("commit_or_reset", run_id=first["run_id"]))["decision"] == "keep"
        await agent.ok("apply_edit", content="X = 3\n\n\n\nY = 5\n")  # what the merge of Y=5 would be
        both = await agent.ok("run_experiment", description="X and Y")
        again = await agent.ok("commit_or_reset", run_id=second["run_id"])  # `both` sleeps 0.3 s: in flight
        assert again["decision"] == "discard", again
        assert both["run_id"] in again["reason"], again
        assert (await agent.until_done(both["run_id"]))["value"] == 0.0


async def test_a_slot_replaced_by_a_link_to_the_user_tree_is_never_cleaned_through(
    tmp_path: Path, agent_for: Any, slots_home: Path
) -> None:
    """Unconfined, a run replaces another (idle) slot's directory with a link to the user's project: the check
    of idle slots after the run, and the next run's `prepare` there, must not clean the user's tree as if it
    were the slot (deleting untracked files and the server's own folder, rewriting tracked files)."""
    root = make_repo(
        tmp_path / "proj", {"params.py": TARGET, "evaluate.py": EVALUATE, "lib.py": "HELP = 1\n"}
    )
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
        run = await agent.until_done(hostile["run_id"])
        assert (root / "user_notes.txt").exists(), (
            "the server cleaned the user's tree through the slot's link"
        )
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
        done = await agent.until_done(other["run_id"])
        assert done["status"] == "ok" and done["value"] == 3.0, done
        await agent.until_done(slow["run_id"])
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
        await agent.until_done(hostile["run_id"])
        await agent.ok("commit_or_reset", run_id=hostile["run_id"])
        await agent.ok("apply_edit", content="X = 0\n\n\n\nY = 5\n")
        after = await agent.ok("run_experiment", description="after, in the same slot")
        assert after["slot"] == hostile["slot"]
        run = await agent.until_done(after["run_id"])
        assert run["status"] == "ok", run
    assert (root / "data" / "notes.txt").exists(), (
        "the server deleted the user's file through a link in a slot"
    )
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
        run = await agent.until_done(hostile["run_id"])
        assert run["status"] == "tampered", run
        assert (await agent.ok("commit_or_reset", run_id=hostile["run_id"]))["decision"] != "keep"
        await agent.ok("apply_edit", content="X = 3\n\n\n\nY = 5\n")
        honest = await agent.ok("run_experiment", description="honest, in the same slot")
        assert honest["slot"] == hostile["slot"]
        run = await agent.until_done(honest["run_id"])
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
        await agent.until_done(first["run_id"])
        kept = await agent.ok("commit_or_reset", run_id=first["run_id"])
        assert kept["decision"] == "keep"
        assert (root / "params.py").read_text() == "X = 3\n\n\n\nY = 4\n", kept["next_step"]
        assert "merged" in kept["next_step"]


async def test_a_tree_too_deep_for_rmtree_left_in_a_slot_does_not_break_the_slot(
    tmp_path: Path, agent_for: Any, slots_home: Path
) -> None:
    """Unconfined, a run leaves in its slot a directory nested deeper than Python's recursion limit: the next
    `prepare` there must still remove it (shutil.rmtree raises RecursionError, not OSError), not fail every
    later run in that slot with an internal error."""
    root = make_repo(tmp_path / "proj", {"params.py": TARGET, "evaluate.py": EVALUATE})
    deep = (
        "import os\n"
        "if not os.path.exists('junk'):\n"
        "    os.mkdir('junk'); fd = os.open('junk', os.O_RDONLY)\n"
        "    for _ in range(1500):\n"
        "        os.mkdir('d', dir_fd=fd); new = os.open('d', os.O_RDONLY, dir_fd=fd); os.close(fd); fd = new\n"
        "    os.close(os.open('f', os.O_CREAT | os.O_WRONLY, dir_fd=fd)); os.close(fd)\n"
    )
    async with agent_for(root, settings(isolation="off", slot_devices=[])) as agent:
        await agent.ok("start_session", tag="dp")
        await _baseline(agent)
        await agent.ok("apply_edit", content=deep + "X = 3\nY = 0\n")
        hostile = await agent.ok("run_experiment", description="deep tree in the slot")
        run = await agent.until_done(hostile["run_id"])
        assert run["status"] == "ok", run
        await agent.ok("commit_or_reset", run_id=hostile["run_id"])
        await agent.ok("apply_edit", content="X = 3\n\n\n\nY = 5\n")
        after = await agent.ok("run_experiment", description="after, in the same slot")
        assert after["slot"] == hostile["slot"]
        run = await agent.until_done(after["run_id"])
        assert run["status"] == "ok" and run["value"] == 0.0, run
    left = [slot for slot in slots_home.glob("*/*") if (slot / "junk").exists()]
    for slot in left:
        _flatten(slot / "junk")
        if (slot / "junk").is_dir():
            os.rmdir(slot / "junk")
    assert not left, "the deep tree stayed in the slot"


def _flatten(top: Path) -> None:
    """Remove a tree nested too deep for shutil.rmtree (pytest's own cleanup uses it), one level at a time."""
    while (top / "d").is_dir():
        if (top / "d" / "d").is_dir():
            os.rename(top / "d" / "d", top / "up")
            os.rmdir(top / "d")
            os.rename(top / "up", top / "d")
        else:
            for name in os.listdir(top / "d"):
                os.unlink(top / "d" / name)
            os.rmdir(top / "d")


async def test_another_session_cannot_start_while_runs_are_in_flight(
    tmp_path: Path, agent_for: Any, slots_home: Path
) -> None:
    """With one slot, start_session(tag=other) is refused while a run is in flight; with slots the runs are in
    `inflight`, not `pending`: switching sessions then would leave the old session's runs running (beyond the
    slots limit, next to the new session's), and their after-run checks would put HEAD back on the old branch
    and restore the new session's target under the agent."""
    root = make_repo(tmp_path / "proj", {"params.py": TARGET, "evaluate.py": EVALUATE})
    async with agent_for(root, settings(slot_devices=[])) as agent:
        await agent.ok("start_session", tag="one")
        await _baseline(agent)
        await agent.ok("apply_edit", content="X = 3\nimport time; time.sleep(1.5)\n\n\nY = 0\n")
        slow = await agent.ok("run_experiment", description="slow")
        refused = await agent.refused("start_session", tag="two")
        assert slow["run_id"] in refused or "in flight" in refused, refused
        await agent.until_done(slow["run_id"])
    assert git(root, "rev-parse", "--abbrev-ref", "HEAD").strip() == "autoresearch/one"


async def test_unconfined_tampering_found_after_another_runs_end_is_held_against_every_run_in_flight(
    tmp_path: Path, agent_for: Any, slots_home: Path
) -> None:
    """Unconfined, a slow run rewrites a file of the user's tree (here the server's JSONL) and sleeps; a fast
    honest run in the other slot ends first, and the check after it finds the change. The slow run did it: it
    must not come out clean and be kept while only the honest run is blamed."""
    root = make_repo(tmp_path / "proj", {"params.py": TARGET, "evaluate.py": EVALUATE})
    jsonl = root / ".autoresearch" / "autoresearch.jsonl"
    forge = f"open({str(jsonl)!r}, 'a').write('{{}}\\n')\nimport time; time.sleep(1.5)\n"
    async with agent_for(root, settings(slot_devices=[], isolation="off")) as agent:
        await agent.ok("start_session", tag="blame")
        await _baseline(agent)
        await agent.ok("apply_edit", content=forge + "X = 3\nY = 0\n")
        hostile = await agent.ok("run_experiment", description="writes the JSONL, then waits")
        await agent.ok("apply_edit", content="X = 0\n\n\n\nY = 5\n")
        honest = await agent.ok("run_experiment", description="honest and fast")
        first = await agent.until_done(honest["run_id"])
        assert first["status"] == "tampered"  # the change is found after it; who made it is unknown
        await agent.ok("commit_or_reset", run_id=honest["run_id"])
        run = await agent.until_done(hostile["run_id"])
        assert run["status"] == "tampered", run
        decision = await agent.ok("commit_or_reset", run_id=hostile["run_id"])
        assert decision["decision"] != "keep", decision
        results = await agent.ok("query_results")
        assert results["best"]["value"] == 8.0


async def test_a_writable_entry_above_the_slots_never_opens_one_slot_to_another(
    tmp_path: Path, agent_for: Any, slots_home: Path
) -> None:
    """Confined, each slot is read-only to the others' runs. A `writable` entry such as `~/.cache` (the slots'
    default home is below it) is accepted for a single run, since it holds nothing of the project; with slots it
    would let a run in one slot rewrite another slot's evaluator while that slot measures a candidate."""
    from .test_slots import _need_landlock, attack

    _need_landlock()
    root = make_repo(tmp_path / "proj", {"params.py": TARGET, "evaluate.py": EVALUATE})
    (root / "user_notes.txt").write_text("mine\n")
    slots_home.mkdir(parents=True)
    with pytest.raises(
        ConfigError, match="slots' checkouts"
    ):  # refused with the configuration, before a session
        async with agent_for(root, settings(slot_devices=[], writable=[str(slots_home)])):
            pass
    (root / "autoresearch.toml").write_text(
        f"writable = [{str(slots_home / 'x')!r}]\n"
    )  # inside: refused too
    async with agent_for(root, settings(slot_devices=[])) as agent:
        refused = await agent.refused("start_session", tag="wr")
        assert "slots' checkouts" in refused
    assert "autoresearch/wr" not in git(root, "branch")
    (root / "autoresearch.toml").unlink()
    async with agent_for(root, settings(slot_devices=[])) as agent:  # and without it, the attack fails
        await agent.ok("start_session", tag="wr")
        await _baseline(agent)
        await agent.ok("apply_edit", content=attack(root, slots_home) + "X = 3\nY = 5\n")
        hostile = await agent.ok("run_experiment", description="attacker")
        run = await agent.until_done(hostile["run_id"])
        log = Path(run["log_path"]).read_text()
        assert "other_slot" not in log, log


async def test_kill_9_during_a_rebased_rerun_logs_the_run_once(tmp_path: Path, slots_home: Path) -> None:
    """The server is killed while a stale candidate runs again, merged onto the new best: after the restart it
    is logged once (interrupted), nothing else is lost or doubled, and the branch holds only measured content."""
    import json
    import signal

    from mcp import Client

    from .test_slots import _stdio

    root = make_repo(tmp_path / "proj", {"params.py": TARGET, "evaluate.py": EVALUATE})
    (root / "autoresearch.toml").write_text(
        'target_file = "params.py"\nrun_command = "python3 evaluate.py"\nmetric_name = "score"\n'
        'readonly_files = ["evaluate.py"]\nkeep_rule = "greedy"\nslots = 2\ntime_budget = 30\n'
    )
    params = _stdio(root, slots_home)

    async def done(client: Any, run_id: str) -> dict[str, Any]:
        run = await call_ok(client, "wait_experiment", run_id=run_id)
        while run["status"] == "running":
            run = await call_ok(client, "wait_experiment", run_id=run_id)
        return run

    with pytest.raises(BaseException):  # noqa: B017 - the killed server surfaces as a broken connection
        async with Client(params) as client:
            await call_ok(client, "start_session", tag="rb")
            await call_ok(client, "run_experiment", description="baseline")
            base = await call_ok(client, "wait_experiment")
            await call_ok(client, "commit_or_reset", run_id=base["run_id"])
            await call_ok(client, "apply_edit", content="X = 3\n\n\n\nY = 0\n")
            first = await call_ok(client, "run_experiment", description="X to 3")
            await call_ok(
                client,
                "apply_edit",
                content="X = 0\n\n\n\nY = 5\nimport time; time.sleep(float(X == 3) * 30)\n",
            )
            second = await call_ok(client, "run_experiment", description="Y to 5, slow once merged")
            await done(client, first["run_id"])
            await done(client, second["run_id"])
            assert (await call_ok(client, "commit_or_reset", run_id=first["run_id"]))["decision"] == "keep"
            again = await call_ok(client, "commit_or_reset", run_id=second["run_id"])
            assert again["decision"] == "rerun"
            await anyio.sleep(0.5)
            os.kill(stdio_server_pid(root), signal.SIGKILL)
            await call_ok(client, "query_results")

    async with served_here(root) as restarted:  # the next server: what it finds on disk is the subject
        client = restarted.client
        await call_ok(client, "start_session", tag="rb")
        results = await call_ok(client, "query_results")
        assert results["total"] == 3 and results["best"]["value"] == 5.0

    events = [
        json.loads(line) for line in (root / ".autoresearch/autoresearch.jsonl").read_text().splitlines()
    ]
    done_ids = [e["details"]["run_id"] for e in events if e["action"] == "experiment_done"]
    started_ids = [e["details"]["run_id"] for e in events if e["action"] == "experiment_start"]
    assert sorted(done_ids) == sorted(started_ids) and len(done_ids) == len(set(done_ids)) == 3
    statuses = {
        e["details"]["run_id"]: e["details"]["run_status"] for e in events if e["action"] == "experiment_done"
    }
    assert statuses[second["run_id"]] == "interrupted"
    assert len((root / "results.tsv").read_text().splitlines()) == 4
    assert (root / "params.py").read_text() == "X = 3\n\n\n\nY = 0\n"
    assert git(root, "show", "HEAD:params.py") == "X = 3\n\n\n\nY = 0\n"


async def test_a_rebase_that_fails_half_way_never_lets_the_old_result_keep_the_merged_commit(
    tmp_path: Path, agent_for: Any, slots_home: Path
) -> None:
    """Unconfined, a third run makes the server's JSONL unwritable (a link in its place) just after a keep, so
    the stale candidate's rebase fails while being logged. The candidate must stay as it ran: decided again
    later, it is merged and measured again; never kept on its old value with the merged commit, which no run
    measured."""
    root = make_repo(tmp_path / "proj", {"params.py": TARGET, "evaluate.py": EVALUATE})
    jsonl = root / ".autoresearch" / "autoresearch.jsonl"
    block = (
        "import os, shutil, time\n"
        f"j = {str(jsonl)!r}\n"
        "while open(j).read().count('experiment_done') < 2:\n"
        "    time.sleep(0.02)\n"
        "shutil.copy(j, j + '.copy'); os.unlink(j); os.symlink(j + '.copy', j)\n"
        "time.sleep(2)\n"
    )
    async with agent_for(root, settings(slots=3, slot_devices=[], isolation="off")) as agent:
        await agent.ok("start_session", tag="half")
        await _baseline(agent)
        await agent.ok("apply_edit", content="X = 3\n\n\n\nY = 0\n")
        first = await agent.ok("run_experiment", description="X to 3")
        await agent.ok("apply_edit", content="X = 0\n\n\n\nY = 5\n")
        second = await agent.ok("run_experiment", description="Y to 5")
        await agent.ok("apply_edit", content=block + "X = 0\nY = 1\n")
        blocker = await agent.ok("run_experiment", description="blocks the JSONL")
        await agent.until_done(first["run_id"])
        assert (await agent.until_done(second["run_id"]))["value"] == 3.0
        assert (await agent.ok("commit_or_reset", run_id=first["run_id"]))["decision"] == "keep"
        # Awaited, not a fixed delay (that failed under load): the blocker has put its link in place of the JSONL.
        while not jsonl.is_symlink():
            blocking = await agent.ok("wait_experiment", run_id=blocker["run_id"], wait_s=0.1)
            assert blocking["status"] == "running" or jsonl.is_symlink(), blocking
        for _ in range(2):  # while the JSONL cannot be written, deciding fails, with nothing half done
            await agent.client.call_tool("commit_or_reset", {"run_id": second["run_id"]})
        await agent.until_done(blocker["run_id"])
        await agent.client.call_tool("commit_or_reset", {"run_id": blocker["run_id"]})
        await agent.until_done(
            second["run_id"]
        )  # merged onto the new best meanwhile, it may be running again
        decision = await agent.ok("commit_or_reset", run_id=second["run_id"])
        while decision["decision"] == "rerun":
            await agent.until_done(second["run_id"])
            decision = await agent.ok("commit_or_reset", run_id=second["run_id"])
        assert decision["decision"] == "keep" and decision["value"] == 0.0, decision
        assert git(root, "show", f"{decision['commit']}:params.py") == "X = 3\n\n\n\nY = 5\n"


async def test_a_log_forged_between_runs_is_restored_before_a_decision_and_held_against_the_forger(
    tmp_path: Path, agent_for: Any, slots_home: Path
) -> None:
    """Unconfined, a slow run forges the JSONL after the honest run in the other slot has ended. Deciding the
    honest run meanwhile must not append its row to the forged log (it is put back first), and the forger, which
    no after-run check of its own sees (the log is already restored), must not come out clean."""
    root = make_repo(tmp_path / "proj", {"params.py": TARGET, "evaluate.py": EVALUATE})
    jsonl = root / ".autoresearch" / "autoresearch.jsonl"
    # The forger waits for each step of the test (files beside the project), not for a time: on a slow machine
    # the honest run took longer than a fixed second, and the forgery landed while it still ran.
    go, forged, done = (tmp_path / name for name in ("go", "forged", "done"))
    forge = (
        "import os, time\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
        f'open({str(jsonl)!r}, \'a\').write(\'{{"action": "experiment_done", "details": {{}}}}\\n\')\n'
        f"open({str(forged)!r}, 'w').close()\n"
        f"while not os.path.exists({str(done)!r}): time.sleep(0.01)\n"
    )
    async with agent_for(root, settings(slot_devices=[], isolation="off")) as agent:
        await agent.ok("start_session", tag="forge")
        await _baseline(agent)
        await agent.ok("apply_edit", content=forge + "X = 3\nY = 0\n")
        hostile = await agent.ok("run_experiment", description="forges the log later")
        await agent.ok("apply_edit", content="X = 0\n\n\n\nY = 5\n")
        honest = await agent.ok("run_experiment", description="honest and fast")
        first = await agent.until_done(honest["run_id"])
        assert first["status"] == "ok", first
        go.touch()  # the honest run has ended: the forger writes now, and still runs
        while not forged.exists():
            await anyio.sleep(0.01)
        kept = await agent.ok("commit_or_reset", run_id=honest["run_id"])
        assert kept["decision"] == "keep"
        lines = jsonl.read_text().splitlines()
        assert all('"details": {}' not in line for line in lines)  # the forged line is gone
        done.touch()
        run = await agent.until_done(hostile["run_id"])
        assert run["status"] == "tampered" and "autoresearch.jsonl" in run["error"], run
        assert (await agent.ok("commit_or_reset", run_id=hostile["run_id"]))["decision"] == "crash"
    rows = (root / "results.tsv").read_text().splitlines()[1:]
    assert [r.split("\t")[3] for r in rows] == ["keep", "keep", "crash"]


async def test_git_config_planted_by_a_run_cut_short_by_kill_9_is_undone_and_named(
    tmp_path: Path, slots_home: Path
) -> None:
    """Unconfined, a run in a slot plants a git setting in the user's repository and is still running when the
    server is killed: the next server undoes it before git runs, and the interrupted run says so."""
    import signal

    from mcp import Client

    from .test_slots import _stdio

    root = make_repo(tmp_path / "proj", {"params.py": TARGET, "evaluate.py": EVALUATE})
    (root / "autoresearch.toml").write_text(
        'target_file = "params.py"\nrun_command = "python3 evaluate.py"\nmetric_name = "score"\n'
        'readonly_files = ["evaluate.py"]\nkeep_rule = "greedy"\nslots = 2\nisolation = "off"\n'
    )
    plant = (
        "import subprocess, time\n"
        f"subprocess.run(['git', '-C', {str(root)!r}, 'config', 'core.fsmonitor', 'touch /tmp/pwned-by-run'])\n"
        "time.sleep(30)\n"
    )
    params = _stdio(root, slots_home)

    with pytest.raises(BaseException):  # noqa: B017 - the killed server surfaces as a broken connection
        async with Client(params) as client:
            await call_ok(client, "start_session", tag="gc")
            await call_ok(client, "run_experiment", description="baseline")
            run = await call_ok(client, "wait_experiment")
            await call_ok(client, "commit_or_reset", run_id=run["run_id"])
            await call_ok(client, "apply_edit", content=plant + "X = 3\nY = 0\n")
            await call_ok(client, "run_experiment", description="plants a git setting")
            deadline = anyio.current_time() + 20
            while "fsmonitor" not in (root / ".git" / "config").read_text():
                assert anyio.current_time() < deadline
                await anyio.sleep(0.1)
            os.kill(stdio_server_pid(root), signal.SIGKILL)
            await call_ok(client, "query_results")
    async with served_here(root) as restarted:  # the next server: what it finds on disk is the subject
        client = restarted.client
        started = await call_ok(client, "start_session", tag="gc")
        assert any("was in flight" in note for note in started["recovered"])
        assert "fsmonitor" not in (root / ".git" / "config").read_text()
        results = await call_ok(client, "query_results")
        [row] = [r for r in results["rows"] if r["description"] == "plants a git setting"]
        assert row["run_status"] == "interrupted"
    events = (root / ".autoresearch" / "autoresearch.jsonl").read_text()
    assert "git configuration" in events and "fsmonitor" not in (root / ".git" / "config").read_text()
