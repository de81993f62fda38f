"""Attacks on one call per experiment (run_experiment with edits/content and decide, wait_experiment with
decide), through the real MCP client in memory and raw JSON-RPC over stdio, on real repositories: what a client
reads in the published tools, null arguments, two one-call requests at once (with and without slots), the edit's
refusals, runs that tamper, hang, fail their checks or regress at their re-measurement, branch_from, a run in
flight, a client cancelling during the decision, SIGTERM and kill -9 mid-call, and restarts after them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from .conftest import HANG_TIMEOUT_S, git, make_repo
from .helpers.slots import private_slots_home  # noqa: F401 (the autouse fixture `slots_home`)
from .test_attacks_requests import INITIALIZE, RawStdio
from .test_attacks_sigterm import WAIT, _actions, _marker, _restarted, _Server, _terminated
from .test_attacks_stdio_pipes import CALL, _processes, _run_project, _until
from .test_slots import project as slots_project
from .test_slots import settings as slots_settings

pytestmark = pytest.mark.anyio


async def test_a_tool_that_may_decide_is_not_published_as_read_only(ml_project: Path, agent_for: Any) -> None:
    """wait_experiment(decide=true) commits or resets as commit_or_reset does: a client that runs read-only
    tools without asking the user must not be told it only reads, nor that run_experiment never resets."""
    async with agent_for(ml_project) as agent:
        tools = {tool.name: tool for tool in (await agent.client.list_tools()).tools}
    decider = tools["commit_or_reset"].annotations
    assert decider.destructive_hint is True
    for name in ("wait_experiment", "run_experiment"):
        hints = tools[name].annotations
        assert hints.read_only_hint is False, f"{name} may decide a run but says it only reads"
        assert hints.destructive_hint is True, f"{name} may reset the target as commit_or_reset does"


async def one_call(agent: Any, answers: dict[str, Any], name: str, description: str, text: str) -> None:
    answers[name] = await agent.client.call_tool(
        "run_experiment", {"description": description, "content": text, "decide": True}
    )


async def test_two_one_call_requests_at_once_run_each_its_own_edit(ml_project: Path, agent_for: Any) -> None:
    """Two run_experiment(content=..., decide=true) at once: the run that starts runs the content its own call
    wrote (never the other call's, under its description), and the other call is refused whole."""
    root = ml_project
    base_text = (root / "train.py").read_text()
    async with agent_for(root, {"time_budget": 1, "timeout": HANG_TIMEOUT_S}) as agent:
        await agent.ok("start_session", tag="race")
        await agent.ok("run_experiment", description="baseline", decide=True)
        for attempt in range(12):
            texts = {
                name: base_text.replace("LR = 0.5", f"LR = 0.{attempt}{digit}")
                for name, digit in (("A", 1), ("B", 2))
            }
            answers: dict[str, Any] = {}
            async with anyio.create_task_group() as group:
                for name in texts:
                    group.start_soon(one_call, agent, answers, name, f"{name}{attempt}", texts[name])
            for name, answer in answers.items():
                if answer.is_error:
                    continue
                run = answer.structured_content
                ran = git(root, "show", f"{run['commit']}:train.py")
                assert ran == texts[name], (
                    f"the run of {name}{attempt} ran the other call's edit: {run['edit']['diff']}"
                )
                assert run["edit"]["sha256_after"] and run["decided"] is not None
            # Leave the target as the best holds it, for the next pair (a refused call's edit stays made).
            await agent.ok("query_results")
            best = git(root, "show", "HEAD:train.py")
            if (root / "train.py").read_text() != best:
                await agent.ok("apply_edit", content=best)


async def test_what_apply_edit_refuses_one_call_refuses_and_runs_nothing(
    ml_project: Path, agent_for: Any
) -> None:
    """The edit of run_experiment is apply_edit's: NUL, a lone surrogate, too large, a target swapped for a
    link out of the project: each refused, nothing written, nothing run, nothing logged."""
    root = ml_project
    outside = root.parent / "outside.py"
    outside.write_text("SECRET = 1\n")
    async with agent_for(root, {"timeout": HANG_TIMEOUT_S}) as agent:
        await agent.ok("start_session", tag="edits")
        await agent.ok("run_experiment", description="baseline", decide=True)
        before = (root / "train.py").read_text()
        head = git(root, "rev-parse", "HEAD").strip()
        refusals = {
            "NUL": {"content": before + "\x00"},
            "surrogate": {"content": before + "\ud800"},
            "too large": {"content": "#" * (4 * 1024 * 1024 + 1)},
            "NUL edit": {"edits": [{"old_text": "LR = 0.5", "new_text": "LR = 0.3\x00"}]},
            "201 edits": {"edits": [{"old_text": "LR = 0.5", "new_text": "LR = 0.5"}] * 201},
        }
        for name, change in refusals.items():
            answer = await agent.client.call_tool(
                "run_experiment", {"description": name, "decide": True, **change}
            )
            assert answer.is_error, f"{name}: accepted"
            assert "Traceback" not in answer.content[0].text
            assert (root / "train.py").read_text() == before, name
        (root / "train.py").unlink()
        (root / "train.py").symlink_to(outside)
        refused = await agent.refused(
            "run_experiment", description="link", content="SECRET = 2\n", decide=True
        )
        assert "regular file" in refused
        assert outside.read_text() == "SECRET = 1\n"  # never written through the link
        (root / "train.py").unlink()
        (root / "train.py").write_text(before)
        assert (await agent.ok("query_results"))["total"] == 1  # the baseline only
    assert git(root, "rev-parse", "HEAD").strip() == head


async def test_a_run_that_tampers_or_times_out_is_never_kept_by_decide(
    ml_project: Path, agent_for: Any
) -> None:
    """decide=true on a run that writes a file it must not, or runs past its timeout: decided as a crash, the
    branch does not move, the protected file is restored, and a restart reads the same table."""
    root = ml_project
    better = (root / "train.py").read_text().replace("LR = 0.5", "LR = 0.1")
    async with agent_for(root, {"timeout": 2}) as agent:
        await agent.ok("start_session", tag="bad")
        await agent.ok("run_experiment", description="baseline", decide=True)
        head = git(root, "rev-parse", "HEAD").strip()
        tamper = better + "open('prepare.py', 'a').write('SEED = 2\\n')\n"
        tampered = await agent.ok("run_experiment", description="tamper", content=tamper, decide=True)
        assert tampered["status"] in ("tampered", "crash"), tampered["status"]
        assert tampered["decided"]["decision"] == "crash"
        assert (root / "prepare.py").read_text() == "# fixed evaluation\nSEED = 1\n"
        hang = better + "import time\ntime.sleep(3600)\n"
        hung = await agent.ok("run_experiment", description="hang", content=hang, decide=True)
        assert hung["status"] == "timeout" and hung["decided"]["decision"] == "crash"
        assert git(root, "rev-parse", "HEAD").strip() == head
        counts = (await agent.ok("query_results"))["counts"]
    assert counts["keep"] == 1 and counts["crash"] == 2 and not counts.get("discard")
    async with agent_for(root, {"timeout": 2}) as agent:
        resumed = await agent.ok("start_session", tag="bad")
        assert resumed is not None
        again = await agent.ok("query_results")
        assert again["counts"] == counts and again["total"] == 3
        assert git(root, "rev-parse", "HEAD").strip() == head


async def _slots_baseline_decided(agent: Any) -> None:
    """start_session, then the baseline (in every slot at once) run and decided in one call and its waits."""
    await agent.ok("start_session", tag="s1")
    done = await agent.ok("run_experiment", description="baseline", decide=True)
    while done.get("decided") is None:
        done = await agent.ok("wait_experiment", decide=True)


def _kill_all(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def _raw_session(root: Path, tag: str) -> RawStdio:
    raw = RawStdio(root)
    raw.send(INITIALIZE)
    assert "result" in raw.answer_to(0)
    raw.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    raw.send({**CALL, "id": 1, "params": {"name": "start_session", "arguments": {"tag": tag}}})
    assert "result" in raw.answer_to(1)
    return raw


def _call(raw: RawStdio, request_id: int, tool: str, **arguments: Any) -> dict[str, Any]:
    raw.send({**CALL, "id": request_id, "params": {"name": tool, "arguments": arguments}})
    answer = raw.answer_to(request_id)["result"]
    assert not answer.get("isError"), answer
    return dict(answer["structuredContent"])


def test_a_server_killed_during_a_one_call_experiment_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """kill -9 while run_experiment(edits, decide=true) waits for its run: the next server's start_session
    finds the run, logs it once as never finished, git, results.tsv and the JSONL log agree, and the same idea
    can run again and be decided in one call."""
    marker = f"sleep {800 + time.monotonic_ns() % 100_000}"
    script = f". ./params.sh; if [ $K = 2 ] && [ ! -e go ]; then {marker}; fi; echo score: $K"
    root = make_repo(
        tmp_path / "p",
        {
            "params.sh": "K=1\n",
            "run.sh": script + "\n",
            "autoresearch.toml": 'target_file = "params.sh"\nmetric_name = "score"\n'
            'run_command = "sh run.sh"\nmetric_direction = "higher"\n',
        },
    )
    raw = _raw_session(root, "k9")
    try:
        base = _call(raw, 2, "run_experiment", description="baseline", decide=True)
        assert base["decided"]["decision"] == "keep"
        head = git(root, "rev-parse", "HEAD").strip()
        arguments = {
            "description": "K two",
            "edits": [{"old_text": "K=1", "new_text": "K=2"}],
            "decide": True,
        }
        raw.send(
            {**CALL, "id": 3, "params": {"name": "run_experiment", "arguments": {**arguments, "wait_s": 600}}}
        )
        sleeping = _until(lambda: _processes(marker), "the run's command to start")
        raw.server.kill()
        raw.server.wait()
    finally:
        raw.close()
    _kill_all(sleeping)  # the run's command, if it outlived its server
    (root / "go").write_text("")  # the same idea, run again, no longer waits
    raw = _raw_session(root, "k9")
    try:
        table = _call(raw, 2, "query_results")
        assert table["total"] == 2, table
        found = {row["run_id"]: (row["status"], row["run_status"]) for row in table["rows"]}
        assert found == {"r1": ("keep", "ok"), "r2": ("crash", "interrupted")}, table["rows"]
        assert git(root, "rev-parse", "HEAD").strip() == head
        again = _call(raw, 3, "run_experiment", description="K two again", content="K=2\n", decide=True)
        assert again["decided"]["decision"] == "keep", again
        final = _call(raw, 4, "query_results")
        assert final["total"] == 3
    finally:
        raw.close()
    rows = (root / "results.tsv").read_text().splitlines()[1:]
    assert len(rows) == 3, rows
    assert [row.split("\t")[3] for row in rows] == ["keep", "crash", "keep"]  # each run logged once


def _deciding_in_one_call(tmp_path: Path, marker: str) -> tuple[_Server, Path]:
    """A server whose run_experiment(decide=true) (request 2) kept the baseline and is running the holdout stage
    (`holdout_command`, `marker`) inside the same call: the decision is being made."""
    root = _run_project(tmp_path, "echo done")
    config = root / "autoresearch.toml"
    stages = f'eval_command = "echo score: 1"\nholdout_command = "{marker}"\neval_timeout = 3000\n'
    config.write_text(config.read_text() + stages)
    git(root, "commit", "-qam", "holdout")
    server = _Server(root).started()
    arguments = {**WAIT, "decide": True}
    server.send({**CALL, "id": 2, "params": {"name": "run_experiment", "arguments": arguments}})
    _until(lambda: _processes(marker), "the holdout stage to start")
    return server, root


def test_a_client_that_cancels_while_the_decision_is_made_finds_it_whole(tmp_path: Path) -> None:
    """The client cancels run_experiment(decide=true) while its decision runs the holdout: the decision stands
    whole (the branch on the baseline, logged once) and commit_or_reset answers it, no traceback anywhere."""
    marker = _marker(2100)
    server, root = _deciding_in_one_call(tmp_path, marker)
    try:
        server.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2}})
        server.send({"jsonrpc": "2.0", "id": 3, "method": "ping"})
        assert server.answer_to(3)["result"] == {}  # the cancel was read; request 2 gets no answer
        for process in _processes(marker):  # the holdout ends (as when its command fails)
            process.kill()
        decide = {"name": "commit_or_reset", "arguments": {"run_id": "r1"}}
        server.send({**CALL, "id": 4, "params": decide})
        answer = server.answer_to(4)["result"]
        assert answer.get("isError") is not True, answer
        decided = answer["structuredContent"]
        assert decided["decision"] == "keep" and decided["reason"] == "already decided", decided
        assert git(root, "rev-parse", "HEAD").strip() == decided["branch_head"]
        assert _actions(root).count("experiment_done") == 1, _actions(root)
    finally:
        server.close()
    assert "Traceback" not in server.errors(), server.errors()
    _restarted(root)
    assert _actions(root).count("experiment_done") == 1, _actions(root)


def test_sigterm_while_a_one_call_experiment_is_decided(tmp_path: Path) -> None:
    """SIGTERM while run_experiment(decide=true) runs the holdout of its keep: the server leaves, the holdout's
    command is ended, the decision, logged before the holdout, stands at the next start."""
    marker = _marker(2200)
    server, root = _deciding_in_one_call(tmp_path, marker)
    try:
        _terminated(server, root, marker)  # the holdout's command ended, logged once, again after a restart
    finally:
        server.close()
    rows = (root / "results.tsv").read_text().splitlines()[1:]
    assert [row.split("\t")[3] for row in rows] == ["keep"], rows


async def test_a_run_decided_to_run_again_is_answered_as_running(
    tmp_path: Path, agent_for: Any, slots_home: Path
) -> None:
    """Slots: wait_experiment(decide=true) decides the second of two improvements 'rerun' (built on the old
    best, merged onto the new one, running again). Broke: the answer said status 'ok' with the old value while
    the run ran again, and next_step said wait_experiment() without decide=true."""
    root = slots_project(tmp_path)
    async with agent_for(root, slots_settings()) as agent:
        await _slots_baseline_decided(agent)
        for description, old, new in (("X", "X = 0", "X = 3"), ("Y", "Y = 0", "Y = 5")):
            change = [{"old_text": old, "new_text": new}]
            await agent.ok("run_experiment", description=description, edits=change, decide=True)
        decided: list[dict[str, Any]] = []
        while len(decided) < 2:
            done = await agent.ok("wait_experiment", decide=True)
            if done.get("decided") is not None:
                decided.append(done)
        first, second = decided
        assert first["decided"]["decision"] == "keep"
        assert second["decided"]["decision"] == "rerun", second["decided"]
        assert second["status"] == "running" or second["value"] == 0.0, second  # never the first run's view
        assert "decide=true" in second["next_step"], second["next_step"]
        final = second
        while final["status"] == "running":
            final = await agent.ok("wait_experiment", run_id=second["run_id"], decide=True)
        assert final["decided"]["decision"] == "keep" and final["value"] == 0.0
        assert git(root, "rev-parse", "HEAD").strip() == final["decided"]["branch_head"]
        assert (await agent.ok("query_results"))["total"] == 3


async def test_null_for_every_optional_argument_of_one_call_is_not_given(
    ml_project: Path, agent_for: Any
) -> None:
    """A client that sends null for each optional argument it leaves unset (as for text and numbers, null is
    "not given"). Broke: decide=null, rerun=null and discard=null were refused as not booleans."""
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session", tag="nulls")
        nulls = {"rerun": None, "edits": None, "content": None, "wait_s": None, "decide": None}
        run = await agent.ok("run_experiment", description="baseline", **nulls)
        assert run["status"] == "ok" and run.get("decided") is None  # null decides nothing, as omitted
        waited = await agent.ok("wait_experiment", run_id=None, wait_s=None, decide=None)
        assert waited["run_id"] == run["run_id"] and waited.get("decided") is None
        decided = await agent.ok("commit_or_reset", run_id=None, discard=None)
        assert decided["decision"] == "keep"


async def test_after_branch_from_the_one_call_decides_its_own_run_against_its_parent(
    ml_project: Path, agent_for: Any
) -> None:
    """branch_from a discarded run, then one call: the edit lands on that run's target, the run's parent is that
    run, and the decision judges it against that parent; a keep better than the best moves the branch."""
    root = ml_project
    async with agent_for(root, {"time_budget": 1, "timeout": HANG_TIMEOUT_S}) as agent:
        await agent.ok("start_session", tag="tree")
        await agent.ok("run_experiment", description="baseline", decide=True)
        kept = await agent.ok(
            "run_experiment",
            description="0.3",
            edits=[{"old_text": "LR = 0.5", "new_text": "LR = 0.3"}],
            decide=True,
        )
        worse = await agent.ok(
            "run_experiment",
            description="0.9",
            edits=[{"old_text": "LR = 0.3", "new_text": "LR = 0.9"}],
            decide=True,
        )
        assert kept["decided"]["decision"] == "keep" and worse["decided"]["decision"] == "discard"
        await agent.ok("branch_from", run_id=worse["run_id"])
        branched = await agent.ok(
            "run_experiment",
            description="0.2",
            edits=[{"old_text": "LR = 0.9", "new_text": "LR = 0.2"}],
            decide=True,
        )
        decided = branched["decided"]
        assert branched["parent"] == worse["run_id"] and decided["run_id"] == branched["run_id"]
        assert decided["prev"] == 1.8 and decided["decision"] == "keep" and decided["best"] is True
        assert git(root, "rev-parse", "HEAD").strip() == decided["branch_head"]
        assert "LR = 0.2" in git(root, "show", "HEAD:train.py")
        table = await agent.ok("query_results")
        assert table["total"] == 4, table


async def wait_and_decide(agent: Any, answers: list[dict[str, Any]], run_id: str) -> None:
    run = {"status": "running"}
    while run["status"] == "running":
        run = await agent.ok("wait_experiment", run_id=run_id, decide=True)
    answers.append(run)


async def test_two_waits_that_decide_the_same_run_decide_it_once(ml_project: Path, agent_for: Any) -> None:
    """Two wait_experiment(run_id, decide=true) at once on the same run: one decision, logged once, both answers
    carry it (the second as already decided)."""
    root = ml_project
    async with agent_for(root, {"time_budget": 1, "timeout": HANG_TIMEOUT_S}) as agent:
        await agent.ok("start_session", tag="twice")
        await agent.ok("run_experiment", description="baseline", decide=True)
        change = [{"old_text": "LR = 0.5", "new_text": "LR = 0.3"}]
        started = await agent.ok("run_experiment", description="0.3", edits=change, decide=True, wait_s=0)
        answers: list[dict[str, Any]] = []
        async with anyio.create_task_group() as group:
            for _ in range(2):
                group.start_soon(wait_and_decide, agent, answers, started["run_id"])
        decisions = sorted(answer["decided"]["reason"] == "already decided" for answer in answers)
        assert [answer["decided"]["decision"] for answer in answers] == ["keep", "keep"]
        assert decisions == [False, True] or started.get("decided") is not None, answers
        assert (await agent.ok("query_results"))["total"] == 2
    rows = (root / "results.tsv").read_text().splitlines()[1:]
    assert [row.split("\t")[3] for row in rows] == ["keep", "keep"]


async def test_a_better_run_that_fails_its_checks_is_not_kept_by_decide(
    ml_project: Path, agent_for: Any
) -> None:
    """checks_command runs after the run and before any decision: decide=true on a better value whose checks
    fail decides it as checks_failed, never a keep, and the target holds the best again."""
    root = ml_project
    (root / "check.py").write_text(
        "import sys\nsys.exit(3 if 'LR = 0.1' in open('train.py').read() else 0)\n"
    )
    git(root, "add", "check.py")
    git(root, "commit", "-qm", "checks")
    overrides = {
        "checks_command": "python3 check.py",
        "readonly_files": ["check.py"],
        "timeout": HANG_TIMEOUT_S,
    }
    async with agent_for(root, overrides) as agent:
        await agent.ok("start_session", tag="checks")
        await agent.ok("run_experiment", description="baseline", decide=True)
        head = git(root, "rev-parse", "HEAD").strip()
        change = [{"old_text": "LR = 0.5", "new_text": "LR = 0.1"}]
        run = await agent.ok("run_experiment", description="best LR", edits=change, decide=True)
        assert run["status"] == "checks_failed", run
        assert run["decided"]["decision"] != "keep", run["decided"]
        assert git(root, "rev-parse", "HEAD").strip() == head
        assert "LR = 0.5" in (root / "train.py").read_text()


# The score is 10 + X, and 5 worse for a negative X from the run numbered by ../state/flip on (a counter in a
# writable directory outside the project): a candidate judged better whose re-measurement after the keep is worse.
FLIPPING = """\
import pathlib, runpy
x = runpy.run_path("params.py")["X"]
counter = pathlib.Path("../state/count")
n = int(counter.read_text()) if counter.exists() else 0
counter.write_text(str(n + 1))
flip = int(pathlib.Path("../state/flip").read_text())
print(f"score: {10 + x + (5 if x < 0 and n >= flip else 0):.4f}")
"""
SEQUENTIAL = {
    "target_file": "params.py",
    "run_command": "python3 evaluate.py",
    "metric_name": "score",
    "metric_direction": "lower_is_better",
    "readonly_files": ["evaluate.py"],
    "writable": ["../state"],
    "keep_rule": "sequential",
    "noise_runs": 3,
    "max_repeats": 4,
}


async def test_decide_answers_the_decision_after_the_re_measurement_of_a_keep(
    tmp_path: Path, agent_for: Any
) -> None:
    """Sequential rule: the re-measurement after a keep runs before decide=true decides. A candidate judged
    better whose re-measurement is worse is answered as the discard it became, the branch on the best."""
    root = make_repo(tmp_path / "p", {"params.py": "X = 0\n", "evaluate.py": FLIPPING})
    state = tmp_path / "state"
    state.mkdir()
    (state / "flip").write_text("1000")
    async with agent_for(root, SEQUENTIAL) as agent:
        await agent.ok("start_session", tag="seq")
        await agent.ok("run_experiment", description="baseline", decide=True)
        kept = await agent.ok("run_experiment", description="X -2", content="X = -2\n", decide=True)
        assert kept["decided"]["decision"] == "keep" and kept["decided"]["remeasured"] == [8.0]
        head = git(root, "rev-parse", "HEAD").strip()
        (state / "flip").write_text(
            str(int((state / "count").read_text()) + 1)
        )  # its re-measurement is worse
        undone = await agent.ok("run_experiment", description="X -4", content="X = -4\n", decide=True)
        decided = undone["decided"]
        assert decided["decision"] == "discard" and decided["remeasured"] == [11.0], decided
        assert decided["regression"] and "re-measured after the keep" in decided["reason"]
        assert git(root, "rev-parse", "HEAD").strip() == head == decided["branch_head"]
        assert (root / "params.py").read_text() == "X = -2\n"
        assert (await agent.ok("query_results"))["counts"] == {"keep": 2, "discard": 1, "crash": 0}


async def test_a_one_call_edit_while_a_run_is_in_flight_writes_nothing(
    tmp_path: Path, agent_for: Any
) -> None:
    """Without slots the run in flight runs in the working tree: run_experiment(edits, decide=true) then is
    refused before its edit (the target is the run's), and the run is decided by the wait that sees it end."""
    root = make_repo(
        tmp_path / "p",
        {
            "params.sh": "K=1\n",
            "run.sh": "while [ ! -e go ]; do sleep 0.05; done\n. ./params.sh\necho score: $K\n",
            "autoresearch.toml": 'target_file = "params.sh"\nmetric_name = "score"\nrun_command = "sh run.sh"\n',
        },
    )
    async with agent_for(root, {"timeout": HANG_TIMEOUT_S}) as agent:
        await agent.ok("start_session", tag="busy")
        started = await agent.ok("run_experiment", description="baseline", decide=True, wait_s=0)
        assert started["status"] == "running"
        refused = await agent.refused(
            "run_experiment", description="K two", edits=[{"old_text": "K=1", "new_text": "K=2"}], decide=True
        )
        assert "the edit was made before" not in refused, refused
        assert (root / "params.sh").read_text() == "K=1\n"
        (root / "go").write_text("")
        done = started
        while done["status"] == "running":
            done = await agent.ok("wait_experiment", decide=True)
        assert done["run_id"] == started["run_id"] and done["decided"]["decision"] == "keep"
        assert done["value"] == 1.0 and (await agent.ok("query_results"))["total"] == 1


async def test_a_refusal_the_edit_cannot_change_comes_before_the_edit(
    ml_project: Path, agent_for: Any
) -> None:
    """An empty description or a spent budget refuses the run whatever the edit: run_experiment(edits) refuses
    before writing it. Broke: the edit was written, then the run refused ('the edit was made before')."""
    root = ml_project
    async with agent_for(root, {"timeout": HANG_TIMEOUT_S}) as agent:
        await agent.ok("start_session", tag="first", max_experiments=2)
        await agent.ok("run_experiment", description="baseline", decide=True)
        change = [{"old_text": "LR = 0.5", "new_text": "LR = 0.3"}]
        for description in ("", "  \n\t "):
            refused = await agent.refused(
                "run_experiment", description=description, edits=change, decide=True
            )
            assert "description is empty" in refused and "the edit was made" not in refused, refused
            assert "LR = 0.5" in (root / "train.py").read_text()
        await agent.ok("run_experiment", description="0.3", edits=change, decide=True)
        before = (root / "train.py").read_text()
        again = [{"old_text": "LR = 0.3", "new_text": "LR = 0.2"}]
        refused = await agent.refused("run_experiment", description="0.2", edits=again, decide=True)
        assert "budget is spent" in refused and "the edit was made" not in refused, refused
        assert (root / "train.py").read_text() == before
        assert (await agent.ok("query_results"))["total"] == 2


def test_kill_9_while_a_one_call_experiment_is_decided(tmp_path: Path) -> None:
    """kill -9 while run_experiment(decide=true) runs the holdout of its keep (the decision logged before it):
    the next start_session finds the keep logged once, git on it, and nothing decided twice."""
    marker = _marker(2300)
    server, root = _deciding_in_one_call(tmp_path, marker)
    try:
        holdout = _processes(marker)
        server.server.kill()
        server.server.wait()
    finally:
        server.close()
    _kill_all(holdout)  # the holdout's command, if it outlived its server
    _restarted(root)
    assert _actions(root).count("experiment_done") == 1, _actions(root)
    rows = (root / "results.tsv").read_text().splitlines()[1:]
    assert [row.split("\t")[3] for row in rows] == ["keep"], rows
    assert git(root, "rev-parse", "--short", "HEAD").strip() == rows[0].split("\t")[0]


async def test_with_slots_two_one_call_requests_at_once_run_each_its_own_edit(
    tmp_path: Path, agent_for: Any, slots_home: Path
) -> None:
    """Slots: two run_experiment(content=..., decide=true) at once, each placed in a slot of its own: each
    candidate commit holds its own call's content, and the target holds the best again."""
    root = slots_project(tmp_path)
    async with agent_for(root, slots_settings()) as agent:
        await _slots_baseline_decided(agent)
        for attempt in range(4):
            texts = {
                name: f"X = {attempt * 10 + digit}\n\n\n\nY = 0\n" for name, digit in (("A", 1), ("B", 2))
            }
            answers: dict[str, Any] = {}
            async with anyio.create_task_group() as group:
                for name in texts:
                    group.start_soon(one_call, agent, answers, name, f"{name}{attempt}", texts[name])
            started = []
            for name, answer in answers.items():
                assert not answer.is_error, answer.content[0].text
                run = answer.structured_content
                assert git(root, "show", f"{run['commit']}:params.py") == texts[name], (name, run["edit"])
                started.append(run["run_id"])
            assert git(root, "show", "HEAD:params.py") == (root / "params.py").read_text()
            for run_id in started:
                run = {"status": "running"}
                while run["status"] == "running" or run.get("decided") is None:
                    run = await agent.ok("wait_experiment", run_id=run_id, decide=True)
