"""Parallel slots (issue 14): several experiments in flight, each in a checkout of its own, decided one at a time
against the best at the time of the decision, through the same tools."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from .conftest import call_ok, decided_baseline, git, make_repo, served_here, stdio_server_pid
from .helpers.slots import private_slots_home  # noqa: F401 (the autouse fixture `slots_home`)

pytestmark = pytest.mark.anyio

# The metric is |X - 3| + |Y - 5|, printed after a short sleep; edits to X and Y merge cleanly.
TARGET = "X = 0\n\n\n\nY = 0\n"
EVALUATE = """\
import runpy, time, os
time.sleep(float(os.environ.get("SLEEP", "0.3")))
ns = runpy.run_path("params.py")
print(f"score: {abs(ns['X'] - 3) + abs(ns['Y'] - 5):.6f}")
print("slot", os.environ.get("AUTORESEARCH_SLOT"), "devices", os.environ.get("CUDA_VISIBLE_DEVICES"))
"""


def project(tmp_path: Path) -> Path:
    root = make_repo(tmp_path / "proj", {"params.py": TARGET, "evaluate.py": EVALUATE})
    (root / "user_notes.txt").write_text("mine\n")
    return root


def settings(**extra: Any) -> dict[str, Any]:
    return {
        "target_file": "params.py",
        "run_command": "python3 evaluate.py",
        "metric_name": "score",
        "readonly_files": ["evaluate.py"],
        "keep_rule": "greedy",
        "slots": 2,
        "slot_devices": ["0", "1"],
        **extra,
    }


async def test_two_slots_keep_merge_and_rerun(tmp_path: Path, agent_for: Any, slots_home: Path) -> None:
    root = project(tmp_path)
    async with agent_for(root, settings()) as agent:
        started = await agent.ok("start_session", tag="s1")
        assert started["slots"].startswith("2 slots (local)")
        base = await agent.ok("run_experiment", description="baseline")
        assert base["status"] == "running" and base["slot"] is None
        run = await agent.until_done()
        assert run["run_id"] == base["run_id"] and run["status"] == "ok" and run["value"] == 8.0
        assert run["values"] == [8.0, 8.0]  # one run per slot, at once
        decision = await agent.ok("commit_or_reset")
        assert decision["decision"] == "keep"
        head = git(root, "rev-parse", "HEAD").strip()

        await agent.edit("X = 0", "X = 3")
        first = await agent.ok("run_experiment", description="X to 3")
        assert first["status"] == "running" and first["slot"] == 0
        assert (root / "params.py").read_text() == TARGET  # back at the best for the next idea
        await agent.edit("Y = 0", "Y = 5")
        second = await agent.ok("run_experiment", description="Y to 5")
        assert second["slot"] == 1
        refused = await agent.refused("run_experiment", description="third")
        assert "all 2 slots are in use" in refused
        assert git(root, "rev-parse", "HEAD").strip() == head  # nothing moves while they run

        done = [await agent.until_done()]
        decided = await agent.ok("commit_or_reset", run_id=done[0]["run_id"])
        assert decided["decision"] == "keep"
        other = second if done[0]["run_id"] == first["run_id"] else first
        run = await agent.until_done(other["run_id"])
        again = await agent.ok("commit_or_reset", run_id=other["run_id"])
        assert again["decision"] == "rerun", again  # built on the old best: merged onto the new one
        run = await agent.until_done(other["run_id"])
        assert run["value"] == 0.0
        final = await agent.ok("commit_or_reset", run_id=other["run_id"])
        assert final["decision"] == "keep"
        assert (root / "params.py").read_text() == "X = 3\n\n\n\nY = 5\n"
        assert git(root, "status", "--porcelain", "--untracked-files=no") == ""
        results = await agent.ok("query_results")
        assert results["total"] == 3 and results["best"]["value"] == 0.0

    tsv = (root / "results.tsv").read_text().splitlines()
    assert len(tsv) == 4 and [line.split("\t")[3] for line in tsv[1:]] == ["keep", "keep", "keep"]
    events = [
        json.loads(line) for line in (root / ".autoresearch/autoresearch.jsonl").read_text().splitlines()
    ]
    rows = [e["details"] for e in events if e["action"] == "experiment_done"]
    assert [r.get("slot") for r in rows][0] is None and all(isinstance(r["slot"], int) for r in rows[1:])
    assert [r.get("rebases") for r in rows] == [None, None, 1]
    rebased = [e["details"] for e in events if e["action"] == "experiment_rebased"]
    assert len(rebased) == 1 and rebased[0]["run_id"] == other["run_id"]
    assert (root / "user_notes.txt").read_text() == "mine\n"


def _need_landlock() -> None:
    from mcp_autoresearch.sandbox.policy import probe_isolation

    isolation = probe_isolation("auto")
    if not isolation.confined:
        if os.environ.get("CI"):
            raise RuntimeError(f"CI must confine runs, but Landlock is unavailable here: {isolation.reason}")
        pytest.skip(f"Landlock is unavailable here: {isolation.reason}")


def attack(root: Path, slots_home: Path) -> str:
    """Target code that tries, from its slot, every write a run must not make; it reports what it managed."""
    victims = {
        "user": root / "user_notes.txt",
        "user_tracked": root / "evaluate.py",
        "server": root / ".autoresearch" / "planted",
        "own_evaluator": Path("evaluate.py"),
        "own_root": Path("sitecustomize.py"),
    }
    lines = ["import glob, os", "done = []"]
    for name, path in victims.items():
        lines.append(
            f"try:\n    open({str(path)!r}, 'a').write('x = 1\\n'); done.append({name!r})\nexcept OSError:\n    pass"
        )
    lines.append(
        f"for other in glob.glob({str(slots_home)!r} + '/*/*/evaluate.py'):\n"
        "    if os.path.dirname(os.path.abspath(other)) != os.getcwd():\n"
        "        try:\n            open(other, 'a').write('# x\\n'); done.append('other_slot')\n"
        "        except OSError:\n            pass"
    )
    lines.append("print('managed:', ','.join(done) or 'nothing')")
    return "\n".join(lines) + "\n"


async def _baseline(agent: Any) -> None:
    await agent.ok("run_experiment", description="baseline")
    await agent.until_done()
    assert (await agent.ok("commit_or_reset"))["decision"] == "keep"


async def test_a_run_in_one_slot_cannot_touch_another_slot_the_user_tree_or_the_server(
    tmp_path: Path, agent_for: Any, slots_home: Path
) -> None:
    _need_landlock()
    root = project(tmp_path)
    async with agent_for(root, settings()) as agent:
        await agent.ok("start_session", tag="h1")
        await _baseline(agent)
        # A slow honest run holds slot 0 while the attacker runs in slot 1.
        await agent.edit("X = 0", "X = 1\nimport time; time.sleep(1.5)")
        honest = await agent.ok("run_experiment", description="slow honest")
        await agent.ok("apply_edit", content=attack(root, slots_home) + "X = 3\nY = 5\n")
        hostile = await agent.ok("run_experiment", description="attacker")
        assert hostile["slot"] == 1
        others = {p: p.read_text() for p in slots_home.glob("*/*/evaluate.py")}
        run = await agent.until_done(hostile["run_id"])
        log = Path(run["log_path"]).read_text()
        from mcp_autoresearch.sandbox.policy import probe_isolation

        if probe_isolation("auto").namespaces:
            # The project and the other slots lie beneath /tmp here, which the run's private view replaces with
            # an empty /tmp of its own: its writes there land in that copy ("managed"), never in the real files.
            assert "own_evaluator" not in log and "own_root" not in log, log
            assert {p: p.read_text() for p in others} == others
        else:
            assert "managed: nothing" in log, log
        assert run["status"] == "ok"
        honest_run = await agent.until_done(honest["run_id"])
        assert honest_run["status"] == "ok" and honest_run["value"] == 7.0
    assert (root / "user_notes.txt").read_text() == "mine\n"
    assert (root / "evaluate.py").read_text() == EVALUATE
    assert not (root / ".autoresearch" / "planted").exists()


async def test_unconfined_tampering_in_a_slot_is_caught_and_undone(
    tmp_path: Path, agent_for: Any, slots_home: Path
) -> None:
    root = project(tmp_path)
    async with agent_for(root, settings(isolation="off")) as agent:
        await agent.ok("start_session", tag="h2")
        await _baseline(agent)
        await agent.ok("apply_edit", content=attack(root, slots_home) + "X = 3\nY = 5\n")
        hostile = await agent.ok("run_experiment", description="attacker")
        run = await agent.until_done()
        assert run["run_id"] == hostile["run_id"]
        assert run["status"] == "tampered", run
        assert "evaluate.py" in run["error"] and "slot" in run["error"]
        decision = await agent.ok("commit_or_reset")
        assert decision["decision"] == "crash"
        # The user's tracked file is restored (a copy of what the run left is kept), and the slot is clean again.
        assert (root / "evaluate.py").read_text() == EVALUATE
        assert list((root / ".autoresearch" / "tampered").rglob("evaluate.py"))
        await agent.edit("X = 0", "X = 3")
        await agent.ok("run_experiment", description="honest after")
        run = await agent.until_done()
        assert run["status"] == "ok" and run["value"] == 5.0
        for slot in slots_home.glob("*/*"):
            assert not (slot / "sitecustomize.py").exists()
            assert (slot / "evaluate.py").read_text() == EVALUATE


async def test_stale_candidates_that_conflict_or_did_not_improve_are_discarded(
    tmp_path: Path, agent_for: Any
) -> None:
    root = project(tmp_path)
    async with agent_for(root, settings()) as agent:
        await agent.ok("start_session", tag="st")
        await _baseline(agent)
        await agent.edit("X = 0", "X = 3")
        a = await agent.ok("run_experiment", description="X to 3")
        await agent.edit("X = 0", "X = 2")
        b = await agent.ok("run_experiment", description="X to 2 (conflicts)")
        for run_id in (a["run_id"], b["run_id"]):
            await agent.until_done(run_id)
        assert (await agent.ok("commit_or_reset", run_id=a["run_id"]))["decision"] == "keep"
        stale = await agent.ok("commit_or_reset", run_id=b["run_id"])
        assert stale["decision"] == "discard" and "conflicts" in stale["reason"]

        await agent.edit("Y = 0", "Y = 50")
        c = await agent.ok("run_experiment", description="Y to 50 (worse)")
        await agent.edit("Y = 0", "Y = 5")
        d = await agent.ok("run_experiment", description="Y to 5")
        for run_id in (c["run_id"], d["run_id"]):
            await agent.until_done(run_id)
        assert (await agent.ok("commit_or_reset", run_id=d["run_id"]))["decision"] == "keep"
        worse = await agent.ok("commit_or_reset", run_id=c["run_id"])
        assert worse["decision"] == "discard" and "built on" in worse["reason"]
    assert (root / "params.py").read_text() == "X = 3\n\n\n\nY = 5\n"
    rows = (root / "results.tsv").read_text().splitlines()[1:]
    assert [r.split("\t")[3] for r in rows] == ["keep", "keep", "discard", "keep", "discard"]


async def test_an_edit_not_yet_run_is_merged_onto_a_kept_change(tmp_path: Path, agent_for: Any) -> None:
    root = project(tmp_path)
    async with agent_for(root, settings()) as agent:
        await agent.ok("start_session", tag="m1")
        await _baseline(agent)
        await agent.edit("X = 0", "X = 3")
        a = await agent.ok("run_experiment", description="X to 3")
        await agent.edit("Y = 0", "Y = 4")  # being prepared while a runs
        await agent.ok("wait_experiment", run_id=a["run_id"])
        run = await agent.until_done(a["run_id"])
        kept = await agent.ok("commit_or_reset", run_id=a["run_id"])
        assert kept["decision"] == "keep" and "merged" in kept["next_step"]
        assert (root / "params.py").read_text() == "X = 3\n\n\n\nY = 4\n"
        b = await agent.ok("run_experiment", description="Y to 4")
        run = await agent.until_done(b["run_id"])
        assert run["value"] == 1.0


async def test_devices_shared_inputs_and_the_baseline_under_full_load(tmp_path: Path, agent_for: Any) -> None:
    root = project(tmp_path)
    (root / "data").mkdir()
    (root / "data" / "input.txt").write_text("shared\n")
    evaluate = EVALUATE + "print('data', open('data/input.txt').read().strip())\n"
    (root / "evaluate.py").write_text(evaluate)
    git(root, "commit", "-qam", "evaluator reads data")
    async with agent_for(
        root, settings(slots=3, slot_devices=["0", "1", "2,3"], shared_inputs=["data"])
    ) as agent:
        await agent.ok("start_session", tag="d1")
        await agent.ok("run_experiment", description="baseline")
        run = await agent.until_done()
        assert run["values"] == [8.0, 8.0, 8.0]
        logs = sorted(Path(run["log_path"]).parent.glob(f"{run['run_id']}*.log"))
        text = "".join(p.read_text() for p in logs)
        for slot, devices in (("0", "0"), ("1", "1"), ("2", "2,3")):
            assert f"slot {slot} devices {devices}" in text
        assert text.count("data shared") == 3
        await agent.ok("commit_or_reset")
        briefing = (await agent.ok("start_session", tag="d1"))["briefing"]
        assert "Slots: 3 slots (local), 0 busy" in briefing


async def test_one_slot_keeps_todays_behaviour(tmp_path: Path, agent_for: Any, slots_home: Path) -> None:
    root = project(tmp_path)
    async with agent_for(root, settings(slots=1, slot_devices=[])) as agent:
        started = await agent.ok("start_session", tag="one")
        assert started["slots"] is None
        run, decision = await agent.experiment("baseline")
        assert run["status"] == "ok" and run["slot"] is None and decision["decision"] == "keep"
        await agent.edit("X = 0", "X = 3")
        run = await agent.ok("run_experiment", description="X to 3")
        assert run["status"] == "ok"  # waited for, in the user's work tree, as before
        assert "X = 3" in (root / "params.py").read_text()
        refused = await agent.refused("apply_edit", edits=[{"old_text": "Y = 0", "new_text": "Y = 1"}])
        assert "decide run" in refused
    assert not slots_home.exists()


def _stdio(root: Path, slots_home: Path) -> Any:
    from mcp import StdioServerParameters

    from .conftest import GIT_ENV

    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **GIT_ENV}
    env["AUTORESEARCH_SLOTS_DIR"] = str(slots_home)
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_autoresearch", "serve", "--project", str(root)],
        env=env,
        cwd=str(root),
    )


async def test_kill_9_with_runs_in_every_slot_loses_and_doubles_no_row(
    tmp_path: Path, slots_home: Path
) -> None:
    from mcp import Client

    from mcp_autoresearch.sandbox.processes import marked_processes

    root = project(tmp_path)
    (root / "autoresearch.toml").write_text(
        'target_file = "params.py"\nrun_command = "python3 evaluate.py"\nmetric_name = "score"\n'
        'readonly_files = ["evaluate.py"]\nkeep_rule = "greedy"\nslots = 3\ntime_budget = 30\n'
    )
    params = _stdio(root, slots_home)

    with pytest.raises(BaseException):  # noqa: B017 - the killed server surfaces as a broken connection
        async with Client(params) as client:
            await call_ok(client, "start_session", tag="k9")
            await call_ok(client, "run_experiment", description="baseline")
            run = await call_ok(client, "wait_experiment")
            await call_ok(client, "commit_or_reset", run_id=run["run_id"])
            await call_ok(client, "apply_edit", content="X = 3\n\n\n\nY = 0\n")
            fast = await call_ok(client, "run_experiment", description="fast")
            for number in (1, 2):
                await call_ok(
                    client, "apply_edit", content=f"X = 0\nimport time; time.sleep(30)\n\n\nY = {number}\n"
                )
                await call_ok(client, "run_experiment", description=f"slow {number}")
            done = await call_ok(client, "wait_experiment", run_id=fast["run_id"], wait_s=20)
            assert done["status"] == "ok"
            await anyio.sleep(0.5)
            assert len([p for s in slots_home.glob("*/*") for p in marked_processes(str(s))]) >= 2
            os.kill(stdio_server_pid(root), signal.SIGKILL)
            await call_ok(client, "query_results")

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(marked_processes(str(s)) for s in slots_home.glob("*/*")):
        await anyio.sleep(0.1)
    assert not any(marked_processes(str(s)) for s in slots_home.glob("*/*")), "runs outlived the server"

    async with served_here(root) as restarted:  # the next server: what it finds on disk is the subject
        client = restarted.client
        started = await call_ok(client, "start_session", tag="k9")
        assert sum("was in flight" in note for note in started["recovered"]) == 2
        assert (
            started["pending_run"] == fast["run_id"]
        )  # finished before the kill: still waits for its decision
        kept = await call_ok(client, "commit_or_reset", run_id=fast["run_id"])
        assert kept["decision"] == "keep"
        results = await call_ok(client, "query_results")
        assert results["total"] == 4

    events = [
        json.loads(line) for line in (root / ".autoresearch/autoresearch.jsonl").read_text().splitlines()
    ]
    done_ids = [e["details"]["run_id"] for e in events if e["action"] == "experiment_done"]
    started_ids = [e["details"]["run_id"] for e in events if e["action"] == "experiment_start"]
    assert sorted(done_ids) == sorted(set(started_ids)) and len(done_ids) == len(set(done_ids)) == 4
    statuses = {
        e["details"]["run_id"]: e["details"]["run_status"] for e in events if e["action"] == "experiment_done"
    }
    assert sorted(statuses.values()) == ["interrupted", "interrupted", "ok", "ok"]
    tsv = (root / "results.tsv").read_text().splitlines()[1:]
    assert len(tsv) == 4
    assert git(root, "status", "--porcelain", "--untracked-files=no") == ""
    assert (root / "params.py").read_text() == "X = 3\n\n\n\nY = 0\n"


NOISY = """\
import os, random, runpy
ns = runpy.run_path("params.py")
noise = random.Random(os.urandom(8)).gauss(0, 0.05)
print(f"score: {abs(ns['X'] - 3) + abs(ns['Y'] - 5) + noise:.6f}")
"""


async def test_the_sequential_rule_in_a_slot_remeasures_the_best_there(
    tmp_path: Path, agent_for: Any
) -> None:
    root = make_repo(tmp_path / "proj", {"params.py": TARGET, "evaluate.py": NOISY})
    overrides = settings(keep_rule=None, noise_runs=4, max_repeats=4, slot_devices=[])
    overrides.pop("keep_rule")
    async with agent_for(root, overrides) as agent:
        await agent.ok("start_session", tag="seq")
        await agent.ok("run_experiment", description="baseline")
        base = await agent.until_done()
        assert len(base["values"]) == 4  # two rounds of both slots
        decision = await agent.ok("commit_or_reset")
        assert decision["keep_rule"] == "sequential"
        await agent.edit("X = 0", "X = 3")
        started = await agent.ok("run_experiment", description="X to 3")
        run = await agent.until_done()
        assert run["run_id"] == started["run_id"] and run["status"] == "ok"
        kept = await agent.ok("commit_or_reset", run_id=run["run_id"])
        assert kept["decision"] == "keep" and len(kept["values"]) >= 2 and kept["probability"] > 0.9
        logs = {p.name for p in Path(run["log_path"]).parent.glob(f"{run['run_id']}-best*.log")}
        assert logs, "the best was re-measured in the candidate's slot"
    assert (root / "params.py").read_text() == "X = 3\n\n\n\nY = 0\n"


async def test_a_link_planted_in_a_slot_never_leads_the_server_into_the_user_tree(
    tmp_path: Path, agent_for: Any, slots_home: Path
) -> None:
    root = make_repo(
        tmp_path / "proj",
        {
            "params.py": TARGET,
            "evaluate.py": EVALUATE,
            "lib/util.py": "HELP = 1\n",
            "lib/data.txt": "keep me\n",
        },
    )
    swap = (
        "import os, shutil\n"
        "if os.path.isdir('lib') and not os.path.islink('lib'):\n"
        f"    shutil.rmtree('lib'); os.symlink({str(root / 'lib')!r}, 'lib')\n"
    )
    overrides = settings(isolation="off", slots=2, readonly_files=["evaluate.py", "lib"], slot_devices=[])
    async with agent_for(root, overrides) as agent:
        await agent.ok("start_session", tag="ln")
        await _baseline(agent)
        await agent.ok("apply_edit", content=swap + "X = 3\nY = 5\n")
        await agent.ok("run_experiment", description="swap lib for a link")
        run = await agent.until_done()
        assert run["status"] == "tampered" and "lib/util.py" in run["error"]
        await agent.ok("commit_or_reset")
        for number in range(3):  # every slot is put back (and sequential best swaps write no link)
            await agent.ok("apply_edit", content=f"X = {number + 4}\n\n\n\nY = 0\n")
            await agent.ok("run_experiment", description=f"after {number}")
            run = await agent.until_done()
            assert run["status"] == "ok", run
            await agent.ok("commit_or_reset")
    assert (root / "lib" / "util.py").read_text() == "HELP = 1\n"
    assert (root / "lib" / "data.txt").read_text() == "keep me\n"
    for slot in slots_home.glob("*/*"):
        assert not (slot / "lib").is_symlink() and (slot / "lib" / "util.py").read_text() == "HELP = 1\n"


async def test_clean_removes_the_slots_checkouts(tmp_path: Path, agent_for: Any, slots_home: Path) -> None:
    from .conftest import run_cli

    root = project(tmp_path)
    async with agent_for(root, settings()) as agent:
        await agent.ok("start_session", tag="gone")
        await _baseline(agent)
    homes = list(slots_home.iterdir())
    assert len(homes) == 1 and (homes[0] / "0" / "evaluate.py").exists()
    git(root, "checkout", "-q", "main")
    listed = run_cli("clean", "--project", str(root), "--tag", "gone")
    assert listed.returncode == 0 and str(homes[0]) in listed.stdout, listed.stdout + listed.stderr
    assert homes[0].exists()  # only listed without --yes
    removed = run_cli("clean", "--project", str(root), "--tag", "gone", "--yes")
    assert removed.returncode == 0, removed.stderr
    assert not homes[0].exists() and not (root / ".autoresearch" / "slots" / "gone").exists()
    assert (root / "user_notes.txt").read_text() == "mine\n" and (
        root / "evaluate.py"
    ).read_text() == EVALUATE


async def test_a_slots_folder_that_cannot_be_made_is_a_clear_error(
    tmp_path: Path, agent_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    monkeypatch.setenv("AUTORESEARCH_SLOTS_DIR", str(blocker / "slots"))
    root = project(tmp_path)
    (root / "autoresearch.toml").write_text("slots = 2\n")
    overrides = settings()
    overrides.pop("slots")
    async with agent_for(root, overrides) as agent:
        refused = await agent.refused("start_session", tag="nohome")
        assert "AUTORESEARCH_SLOTS_DIR" in refused and "Traceback" not in refused
    assert "autoresearch/nohome" not in git(root, "branch")  # refused before any session began


@pytest.mark.parametrize("slots", [1, 2], ids=["user-tree", "slots"])
async def test_a_run_a_client_gave_up_on_waits_for_its_decision_across_a_shutdown(
    tmp_path: Path, slots_home: Path, slots: int
) -> None:
    """A shutdown logs as interrupted only the runs it stopped, whatever the placement: a run a client gave up
    on before (cancelled) waits for its decision across the restart, as it ended, in the user's tree as in slots.
    (Slots logged it as interrupted, 'the server stopped during this run', which it never saw.)"""
    from mcp_autoresearch.session.workspace import Workspace

    root = project(tmp_path)
    overrides = settings(slots=slots, slot_devices=[])
    workspace = Workspace(root, overrides)
    session = decided_baseline(workspace, "gave-up")
    session.apply_edit(None, "import time\ntime.sleep(120)\nX = 3\n\n\n\nY = 0\n", None, None)
    run_id = session.start_run("X to 3, slowly")
    assert isinstance(run_id, str)
    handle = session.run_handle(run_id)
    session.cancel_run("the client gave up waiting", run_id)
    assert handle is not None and handle.wait(120)
    workspace.shutdown()

    resumed = Workspace(root, overrides)
    try:
        resumed.start_session()
        assert resumed.session.view(run_id).status == "cancelled"  # not logged: it waits for its decision
        decision = resumed.session.commit_or_reset(run_id)
        assert decision.decision != "keep"
        row = resumed.session.journal.get(run_id)
        assert row is not None and row.run_status == "cancelled", row
    finally:
        resumed.shutdown()


def test_a_writable_entry_of_the_work_tree_by_its_full_path_is_refused_with_slots(tmp_path: Path) -> None:
    """With slots each run writes its own checkout's copy of an output: `writable = ["/abs/proj/out"]` named the
    work tree's `out/` in every slot (read-only there: every honest run failed). Refused, saying how to write it;
    relative, it is accepted."""
    from mcp_autoresearch.errors import ConfigError
    from mcp_autoresearch.setup.project import load_project

    root = project(tmp_path)
    with pytest.raises(ConfigError, match=r"full path.*write it relative to the project \('out'\)"):
        load_project(str(root), settings(writable=[str(root / "out")]))
    assert load_project(str(root), settings(writable=["out"])).config.writable == ["out"]
