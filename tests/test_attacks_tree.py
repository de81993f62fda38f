"""Attacks on the research tree (issue 23): branch_from and combine with odd run ids, a run that forges the
session's node refs so that a later branch_from restores content the server never measured, and the tree's
other promises, through the real MCP client on real git and real runs."""

from __future__ import annotations

import json
import os
import textwrap
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from .conftest import git, make_repo
from .helpers.slots import private_slots_home  # noqa: F401 (the autouse fixture `slots_home`)
from .test_slots import project as slots_project
from .test_slots import settings as slot_settings

pytestmark = pytest.mark.anyio

# Two knobs on lines far apart; lower is better (A + B).
TREE_PY = """\
A = 5

# spacer between the two knobs

B = 5
print(f"val_bpb: {A + B:.6f}")
"""

CONFIG = {"target_file": "train.py", "run_command": "python train.py"}


@pytest.fixture
def knobs(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "knobs", {"train.py": TREE_PY, "prepare.py": "# fixed\n"})


async def step(agent: Any, old: str, new: str, description: str) -> dict[str, Any]:
    await agent.edit(old, new)
    _run, decision = await agent.experiment(description)
    return decision


def done_rows(root: Path) -> dict[str, dict[str, Any]]:
    lines = (root / ".autoresearch" / "autoresearch.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    return {e["details"]["run_id"]: e["details"] for e in events if e["action"] == "experiment_done"}


# The run's extra code: a commit whose train.py is better than any measured (A = 0) and whose prepare.py (the
# evaluation) is the run's own, written as the session's node ref of the baseline r1.
FORGE_NODE_REF = textwrap.dedent(
    """
    import os, subprocess
    def _g(*args, data=None, env=None):
        return subprocess.run(["git", *args], input=data, capture_output=True, check=True,
                              env=env).stdout.decode().strip()
    _env = dict(os.environ, GIT_INDEX_FILE=os.path.abspath(".forge-index"), GIT_AUTHOR_NAME="x",
                GIT_AUTHOR_EMAIL="x@x", GIT_COMMITTER_NAME="x", GIT_COMMITTER_EMAIL="x@x")
    _root = _g("rev-list", "--max-parents=0", "HEAD")
    _g("read-tree", _root, env=_env)
    _forged = "A = 0\\n\\n# spacer between the two knobs\\n\\nB = 5\\n" + 'print(f"val_bpb: {A + B:.6f}")\\n'
    for _name, _text in (("train.py", _forged), ("prepare.py", "# forged evaluation\\n")):
        _blob = _g("hash-object", "-w", "--stdin", data=_text.encode())
        _g("update-index", "--add", "--cacheinfo", f"100644,{_blob},{_name}", env=_env)
    _commit = _g("commit-tree", _g("write-tree", env=_env), "-p", _root, "-m", "forged", env=_env)
    os.unlink(".forge-index")
    _ref = os.path.join(_g("rev-parse", "--git-common-dir"), "refs", "autoresearch", "tr", "r1")
    os.makedirs(os.path.dirname(_ref), exist_ok=True)
    open(_ref, "w").write(_commit + "\\n")
    """
)


@pytest.mark.parametrize("isolation", ["off", "auto"])
async def test_a_forged_node_ref_never_brings_unmeasured_content_or_other_files_into_a_lineage(
    knobs: Path, agent_for: Any, isolation: str
) -> None:
    root = knobs
    async with agent_for(root, {**CONFIG, "isolation": isolation}) as agent:
        await agent.ok("start_session", tag="tr")
        _run, base = await agent.experiment("baseline")  # r1: 10
        assert base["value"] == 10
        baseline_target = (root / "train.py").read_text()
        await step(agent, "A = 5", "A = 3", "A to 3")  # r2: 8, the best
        # r3: a discarded run (B = 9: 12) whose code writes refs/autoresearch/tr/r1 to a forged commit.
        await agent.edit("B = 5", "B = 9")
        await agent.edit('print(f"val_bpb', FORGE_NODE_REF.strip() + '\nprint(f"val_bpb')
        run, decision = await agent.experiment("forges the baseline's node ref")
        assert decision["decision"] != "keep", (run, decision)

        branched = await agent.ok("branch_from", run_id="r1")
        # The baseline's content comes back, as measured: never the forged A = 0.
        assert (root / "train.py").read_text() == baseline_target
        assert (root / "prepare.py").read_text() == "# fixed\n"
        assert branched["value"] == 10
        r4 = await step(agent, "B = 5", "B = 4", "B to 4 on the baseline")  # 9: beats r1, not the best (8)
        assert r4["parent"] == "r1"
        # Whatever the lineage of r4, only the target differs from the user's commit along it.
        changed = git(root, "diff", "--name-only", "main", r4["commit"]).split()
        assert changed == ["train.py"], changed
        assert "forged" not in git(root, "log", "--format=%s", r4["commit"])


@pytest.mark.parametrize(
    "run_id",
    ["../r1", "refs/heads/main", "HEAD", "main", "r0", "-1", "r1\x00", "r1 r2", "r" + "9" * 5000, "", " "],
)
async def test_branch_from_an_odd_run_id_is_refused_clearly_and_changes_nothing(
    knobs: Path, agent_for: Any, run_id: str
) -> None:
    root = knobs
    async with agent_for(root, CONFIG) as agent:
        await agent.ok("start_session", tag="odd")
        await agent.experiment("baseline")
        await step(agent, "A = 5", "A = 3", "A to 3")
        before = (root / "train.py").read_text(), git(root, "rev-parse", "autoresearch/odd")
        state = (root / ".autoresearch").joinpath("state.json")
        state_before = state.read_bytes() if state.exists() else b""
        message = await agent.refused("branch_from", run_id=run_id)
        assert "Traceback" not in message and len(message) < 2000, message
        assert "query_results" in message or "run" in message, message
        assert (root / "train.py").read_text() == before[0]
        assert git(root, "rev-parse", "autoresearch/odd") == before[1]
        if state_before:
            assert state.read_bytes() == state_before
        refused = await agent.refused("combine", run_a="r2", run_b=run_id)
        assert "Traceback" not in refused and len(refused) < 2000, refused


# The run's extra code: prepare.py rewritten with the same size, its times put back.
SAME_SIZE_REWRITE = textwrap.dedent(
    """
    import os
    _st = os.stat("prepare.py")
    _old = open("prepare.py").read()
    if "fixed" in _old:
        open("prepare.py", "w").write(_old.replace("fixed", "FIXED"))
        os.utime("prepare.py", ns=(_st.st_atime_ns, _st.st_mtime_ns))
    """
)


async def test_a_branched_candidate_that_rewrites_another_file_with_its_times_put_back_is_caught(
    knobs: Path, agent_for: Any
) -> None:
    root = knobs
    async with agent_for(root, {**CONFIG, "isolation": "off"}) as agent:
        await agent.ok("start_session", tag="tr")
        await agent.experiment("baseline")  # r1: 10
        await step(agent, "A = 5", "A = 3", "A to 3")  # r2: 8
        await step(agent, "A = 3", "A = 1", "A to 1")  # r3: 6, the best
        best = git(root, "rev-parse", "autoresearch/tr").strip()
        await agent.ok("branch_from", run_id="r2")  # a parent that is not the best
        await agent.edit("B = 5", "B = 0")  # 3: better than r2 and than the best
        await agent.edit('print(f"val_bpb', SAME_SIZE_REWRITE.strip() + '\nprint(f"val_bpb')
        run, decision = await agent.experiment("B to 0, and prepare.py rewritten")
        assert run["status"] == "tampered" and "prepare.py" in run["error"], run
        assert decision["decision"] != "keep" and decision["best"] is not True, decision
        assert (root / "prepare.py").read_text() == "# fixed\n"
        assert git(root, "rev-parse", "autoresearch/tr").strip() == best
        assert git(root, "diff", "--name-only", "main", "autoresearch/tr").split() == ["train.py"]


def set_zone(monkeypatch: pytest.MonkeyPatch, zone: str) -> None:
    monkeypatch.setenv("TZ", zone)
    time.tzset()


async def test_max_hours_counts_the_same_when_the_server_restarts_in_another_time_zone(
    knobs: Path, agent_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session's start is one moment: a server restarted under another TZ (a host moved, a container with
    another zone) neither gains hours nor loses them. The start was written as naive local time: restarted 26
    hours east it read as 26 hours ago (the budget spent at once, as here); restarted 26 hours west, as 26 hours
    in the future, so up to 26 hours passed uncounted (the budget escaped)."""
    root = knobs
    try:
        set_zone(monkeypatch, "Etc/GMT+12")  # UTC-12
        async with agent_for(root, CONFIG) as agent:
            started = await agent.ok("start_session", tag="tz", max_hours=10)
            assert started["budget"].startswith("budget: 0 h of 10 h"), started["budget"]
        set_zone(monkeypatch, "Etc/GMT-14")  # UTC+14: a naive local start reads as 26 hours earlier
        async with agent_for(root, CONFIG) as agent:
            await agent.ok("start_session", tag="tz")
            await agent.experiment("baseline")
            results = await agent.ok("query_results")
            assert results["hours_used"] < 1, results["budget"]
    finally:
        monkeypatch.undo()
        time.tzset()


async def test_slots_on_two_parents_both_beating_the_best_leave_the_branch_on_the_measured_best(
    tmp_path: Path, agent_for: Any
) -> None:
    """r4 is built on the best, r5 on the baseline; both beat the best. r5 is decided first (the best moves to
    another lineage); r4, built on an older best, is stale: never kept unmeasured. Runs in flight cannot be
    branched from or combined."""
    root = slots_project(tmp_path)  # score |X - 3| + |Y - 5|; baseline 8
    async with agent_for(root, slot_settings()) as agent:
        await agent.ok("start_session", tag="both")
        await agent.ok("run_experiment", description="baseline")
        await agent.ok("commit_or_reset", run_id=(await agent.until_done())["run_id"])  # r1: 8
        await agent.edit("X = 0", "X = 3")
        await agent.ok("run_experiment", description="X to 3")
        await agent.ok("commit_or_reset", run_id=(await agent.until_done())["run_id"])  # r2: 5, the best
        await agent.edit("Y = 0", "Y = 4")
        assert (await agent.ok("run_experiment", description="Y to 4"))["run_id"] == "r3"  # 1, on the best
        assert "no run 'r3'" in await agent.refused("branch_from", run_id="r3")  # in flight
        assert "no run 'r3'" in await agent.refused("combine", run_a="r2", run_b="r3")
        await agent.ok("branch_from", run_id="r1")
        await agent.edit("X = 0", "X = 2")
        await agent.edit("Y = 0", "Y = 5")
        assert (await agent.ok("run_experiment", description="X 2, Y 5 on r1"))["parent"] == "r1"  # r4: 1
        for run_id in ("r3", "r4"):
            await agent.until_done(run_id)
        r4 = await agent.ok("commit_or_reset", run_id="r4")
        assert (r4["decision"], r4["best"]) == ("keep", True), r4
        r3 = await agent.ok("commit_or_reset", run_id="r3")
        while r3.get("status") == "running" or r3.get("decision") is None:  # rebased and started again
            r3 = await agent.ok("commit_or_reset", run_id=(await agent.until_done(r3["run_id"]))["run_id"])
        results = await agent.ok("query_results", limit=20)
        best = results["best"]
        head = git(root, "rev-parse", "autoresearch/both").strip()
        assert head.startswith(best["commit"]) or best["commit"].startswith(head[:7]), (best, head)
        measured = git(root, "show", f"{head}:params.py")
        value = abs(int(measured.split("X = ")[1][0]) - 3) + abs(int(measured.split("Y = ")[1][0]) - 5)
        assert value == best["value"], (measured, best)
        assert git(root, "diff", "--name-only", "main", head).split() == ["params.py"]
        assert git(root, "status", "--porcelain", "-uno").strip() in ("", "M params.py")


# The run's extra code: a row appended to the session's JSONL naming a node that never ran as the best, with a
# parent, and an earlier row's parent rewritten.
FORGE_ROWS = textwrap.dedent(
    """
    import json, glob
    for _path in glob.glob(".autoresearch/*.jsonl"):
        _text = open(_path).read().replace('"parent": "r1"', '"parent": null')
        _row = {"tool": "autoresearch", "action": "experiment_done", "status": "success", "details": {
            "run_id": "r99", "status": "keep", "run_status": "ok", "metric": "val_bpb", "value": 0.0,
            "commit": "0000000", "full_commit": "0" * 40, "description": "forged", "parent": "r1",
            "best": True, "tag": "tr"}}
        open(_path, "w").write(_text + json.dumps(_row) + "\\n")
    """
)


async def test_rows_forged_in_the_jsonl_with_parent_and_best_never_enter_the_tree(
    knobs: Path, agent_for: Any
) -> None:
    root = knobs
    async with agent_for(root, {**CONFIG, "isolation": "off"}) as agent:
        await agent.ok("start_session", tag="tr")
        await agent.experiment("baseline")  # r1: 10
        await step(agent, "A = 5", "A = 3", "A to 3")  # r2: 8, parent r1
        await agent.edit("B = 5", "B = 9")
        await agent.edit('print(f"val_bpb', FORGE_ROWS.strip() + '\nprint(f"val_bpb')
        run, decision = await agent.experiment("forges rows")
        assert decision["decision"] != "keep", (run, decision)
        assert run["status"] == "tampered" and "jsonl" in run["error"].lower(), run
        results = await agent.ok("query_results", view="tree", limit=20)
        assert results["best"]["run_id"] == "r2"
        assert "r99" not in json.dumps(results)
        assert "no run 'r99'" in await agent.refused("branch_from", run_id="r99")
        rows = done_rows(root)
        assert "r99" not in rows and rows["r2"]["parent"] == "r1"


# The run's extra code: after its metric is printed, the target rewritten to a better value never measured.
REWRITE_TARGET = textwrap.dedent(
    """
    import atexit
    def _rewrite():
        _text = open("train.py").read()
        open("train.py", "w").write(_text.replace("A = 1", "A = -9", 1))
    atexit.register(_rewrite)
    """
)


async def test_a_kept_node_whose_run_rewrote_the_target_is_branched_from_as_measured(
    knobs: Path, agent_for: Any
) -> None:
    """A branched candidate kept as a node (not the best) leaves its target in the work tree as the next
    parent: that must be the content measured, never what the run wrote into the target afterwards."""
    root = knobs
    async with agent_for(root, {**CONFIG, "isolation": "off"}) as agent:
        await agent.ok("start_session", tag="tr")
        await agent.experiment("baseline")  # r1: 10
        await step(agent, "A = 5", "A = 3", "A to 3")  # r2: 8
        await step(agent, "B = 5", "B = 2", "B to 2")  # r3: 5, the best
        await agent.ok("branch_from", run_id="r1")
        await agent.edit("A = 5", "A = 1")  # 6: beats r1, not the best
        await agent.edit(
            'print(f"val_bpb', 'print(f"val_bpb: {A + B:.6f}")\n' + REWRITE_TARGET.strip() + "\n#"
        )
        run, decision = await agent.experiment("A to 1, rewritten after")
        committed = git(root, "show", f"{run['commit']}:train.py") if run.get("commit") else None
        assert run["status"] == "tampered" and "train.py" in run["error"], run
        if decision["decision"] == "keep":
            assert (root / "train.py").read_text() == committed, run
        else:
            assert "A = -9" not in (root / "train.py").read_text()


def set_start(root: Path, tag: str, start: datetime) -> None:
    """Write the session's recorded start into the server's record and its public copy."""
    for name in (f"{tag}.own.json", f"{tag}.json"):
        path = root / ".autoresearch" / "sessions" / name
        data = json.loads(path.read_text())
        data.get("state", data)["created_at"] = start.astimezone().isoformat(timespec="seconds")
        path.write_text(json.dumps(data))


async def test_a_spent_max_hours_is_not_reset_by_editing_the_sessions_records_while_the_server_runs(
    knobs: Path, agent_for: Any
) -> None:
    root = knobs
    config = {**CONFIG, "max_hours": 1}
    async with agent_for(root, config) as agent:
        await agent.ok("start_session", tag="h")
        await agent.experiment("baseline")
    set_start(root, "h", datetime.now() - timedelta(hours=2))  # a session started two hours ago
    async with agent_for(root, config) as agent:
        assert "0 h left" in (await agent.ok("start_session", tag="h"))["budget"]
        set_start(root, "h", datetime.now())  # the agent's shell, between two calls
        await agent.edit("A = 5", "A = 3")
        refused = await agent.refused("run_experiment", description="A to 3")
        assert "max_hours (1 h) reached" in refused, refused
        assert "0 h left" in (await agent.ok("query_results"))["budget"]


async def test_a_non_target_file_changed_by_the_agent_after_branch_from_is_refused_at_the_start(
    knobs: Path, agent_for: Any
) -> None:
    """After branch_from (the server's own git command on the target rewrote the index), prepare.py rewritten
    with the same size and its times put back by the agent's shell: run_experiment must refuse, never commit a
    candidate measured with another evaluation."""
    root = knobs
    async with agent_for(root, CONFIG) as agent:
        await agent.ok("start_session", tag="tr")
        await agent.experiment("baseline")  # r1: 10
        await step(agent, "A = 5", "A = 3", "A to 3")  # r2: 8
        await step(agent, "A = 3", "A = 1", "A to 1")  # r3: 6, the best
        await agent.ok("query_results")
        await agent.ok("branch_from", run_id="r2")
        prepare = root / "prepare.py"
        st = prepare.stat()
        prepare.write_text("# FIXED\n")
        os.utime(prepare, ns=(st.st_atime_ns, st.st_mtime_ns))
        await agent.edit("B = 5", "B = 4")
        refused = await agent.refused("run_experiment", description="B to 4 on r2")
        assert "prepare.py" in refused, refused
        assert len(done_rows(root)) == 3


@pytest.mark.parametrize("tool", ["combine", "branch_from"])
async def test_a_target_folder_swapped_for_a_link_out_of_the_project_is_never_written_through(
    tmp_path: Path, agent_for: Any, tool: str
) -> None:
    """The agent's shell moves the target's folder away and puts a link to a folder outside the project in its
    place; combine and branch_from write the target: never through that link."""
    root = make_repo(tmp_path / "nested", {"src/train.py": TREE_PY, "prepare.py": "# fixed\n"})
    outside = tmp_path / "outside"
    config = {"target_file": "src/train.py", "run_command": "python src/train.py", "metric_name": "val_bpb"}
    async with agent_for(root, config) as agent:
        await agent.ok("start_session", tag="ln")
        await agent.experiment("baseline")  # r1: 10
        await step(agent, "A = 5", "A = 3", "A to 3")  # r2: 8
        await step(agent, "A = 3", "A = 1", "A to 1")  # r3: 6, the best
        await agent.ok("branch_from", run_id="r2")
        await step(agent, "B = 5", "B = 4", "B to 4 on r2")  # r4: 7, a node beside the best
        (root / "src").rename(tmp_path / "src-moved")
        outside.mkdir()
        (outside / "train.py").write_text("the outside file\n")
        (root / "src").symlink_to(outside, target_is_directory=True)
        if tool == "combine":
            answer = await agent.client.call_tool("combine", {"run_a": "r3", "run_b": "r4"})
        else:
            answer = await agent.client.call_tool("branch_from", {"run_id": "r1"})
        assert (outside / "train.py").read_text() == "the outside file\n", answer
        assert sorted(p.name for p in outside.iterdir()) == ["train.py"]
        assert answer.is_error and "is a symlink; nothing changed" in answer.content[0].text, answer


async def test_a_spent_experiment_budget_is_not_escaped_by_starting_a_new_session(
    knobs: Path, agent_for: Any
) -> None:
    root = knobs
    async with agent_for(root, {**CONFIG, "max_experiments": 2}) as agent:
        await agent.ok("start_session", tag="a")
        await agent.experiment("baseline")
        await step(agent, "A = 5", "A = 3", "A to 3")
        await agent.edit("A = 3", "A = 2")
        assert "max_experiments (2) reached" in await agent.refused("run_experiment", description="A to 2")
        await agent.edit("A = 2", "A = 3")  # back to the best: the project is clean for a new session
        answer = await agent.client.call_tool("start_session", {"tag": "b"})
        if not answer.is_error:
            answer = await agent.client.call_tool("run_experiment", {"description": "a fresh budget"})
        assert answer.is_error and "budget" in answer.content[0].text, answer
        assert "session 'a' has spent its budget" in answer.content[0].text, answer
    # A person raises the budget in the configuration: a new session may start.
    async with agent_for(root, {**CONFIG, "max_experiments": 5}) as agent:
        assert (await agent.ok("start_session", tag="b"))["branch"] == "autoresearch/b"
