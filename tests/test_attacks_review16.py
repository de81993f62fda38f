"""Review 16: the agent's own attacks, through its tool calls (a hostile or sloppy LLM wanting a better table), and
on the viewers that show what it wrote. Each test here failed before its fix."""

from __future__ import annotations

import json
import linecache
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from mcp_autoresearch.readers.plot import plotting_available

from .conftest import run_cli

ANSWER_X = 'import runpy\nprint(abs(runpy.run_path("params.py")["X"] - 3))\n'
SCORE_ANSWER = 'import sys\nprint(f"score: {float(open(sys.argv[1]).read())}")\n'

pytestmark = pytest.mark.anyio


@pytest.mark.skipif(not plotting_available(), reason="the plot extra (matplotlib) is not installed")
async def test_a_description_with_dollar_signs_never_breaks_the_plot(
    ml_project: Path, agent_for: Any
) -> None:
    """matplotlib reads text between two '$' as TeX: a kept run's description such as `lr $\\frac{$` (or any
    unbalanced TeX) made `mcp-autoresearch plot` fail with a traceback, and `cost $5 to $10` was drawn as math.
    The agent's text is drawn as it is."""
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session", tag="dollars")
        run = await agent.ok(
            "run_experiment", description="baseline lr $\\frac{$ cost $5 to $10", decide=True
        )
        assert run["decided"]["decision"] == "keep"
    out = ml_project.parent / "progress.png"
    plot = run_cli("plot", "--project", str(ml_project), "--out", str(out))
    assert plot.returncode == 0, plot.stderr
    assert "Traceback" not in plot.stderr
    assert out.read_bytes().startswith(b"\x89PNG")


async def test_a_run_id_typed_with_a_leading_zero_is_recorded_as_the_run_it_names(
    ml_project: Path, agent_for: Any
) -> None:
    """`branch_from('r02')` and `log_result('r03', ...)` found runs r2 and r3 (the number is read), but the records
    kept the agent's spelling: the JSONL named the parent `r02` and the notes' run `r03`. The server's own tree
    read them back by number, but the web page (and any reader of the JSONL) did not: r3 was drawn as a second
    root and its note was lost. Every record names a run as it was logged."""
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session", tag="zeros")
        await agent.ok("run_experiment", description="baseline", decide=True)
        worse = [{"old_text": "LR = 0.5", "new_text": "LR = 0.9"}]
        await agent.ok("run_experiment", description="worse", edits=worse, decide=True)
        branched = await agent.ok("branch_from", run_id="r02")
        assert branched["parent"] == "r2"
        closer = [{"old_text": "LR = 0.9", "new_text": "LR = 0.8"}]
        run = await agent.ok("run_experiment", description="from r2", edits=closer, decide=True)
        assert run["run_id"] == "r3" and run["decided"]["parent"] == "r2"
        noted = await agent.ok("log_result", run_id="r03", notes="typed with a zero")
        assert noted["run_id"] == "r3"
        await agent.ok("branch_from", run_id="r01")
        wider = [{"old_text": "peak_vram_mb: 512.0", "new_text": "peak_vram_mb: 256.0"}]
        await agent.ok("run_experiment", description="less memory", edits=wider, decide=True)
        combined = await agent.ok("combine", run_a="r004", run_b="r03")
        assert set(combined["combined"]) == {"r3", "r4"}
        run = await agent.ok("run_experiment", description="both", decide=True)
        assert sorted(run["decided"].get("combined") or []) in ([], ["r3", "r4"])

    from mcp_autoresearch.readers.web.data import SessionView

    view = SessionView(ml_project)
    view.refresh()
    rows = {row.run_id: row for row in view.rows}
    assert rows["r3"].parent == "r2"
    assert rows["r3"].notes == ["typed with a zero"]
    nodes = {node["run_id"]: node for node in view.tree()["nodes"]}
    assert nodes["r3"]["depth"] == 2
    # A journal an older server wrote with the agent's spelling reads the same on the page.
    journal = ml_project / ".autoresearch" / "autoresearch.jsonl"
    lines = journal.read_text().splitlines()
    older = [json.loads(line) for line in lines]
    for event in older:
        details = event["details"]
        if details.get("run_id") == "r3":
            details["run_id"] = "r03" if event["action"] == "experiment_notes" else "r3"
            if details.get("parent") == "r2":
                details["parent"] = "r02"
    journal.write_text("".join(json.dumps(event) + "\n" for event in older))
    assert '"r02"' in journal.read_text() and '"r03"' in journal.read_text()
    again = SessionView(ml_project)
    again.refresh()
    rows = {row.run_id: row for row in again.rows}
    assert rows["r3"].parent == "r2" and rows["r3"].notes == ["typed with a zero"]


# What the agent may be told when start_session(tag=other) races its own one-call experiment: each names what
# really happened. Before the fix the switch looked at the runs without the session's lock: it missed a run being
# started and refused with "tracked files have uncommitted changes ... a person must commit or stash them" (the
# candidate, committed in-process, differs from the index while it runs): advice that, followed, breaks the run.
CLEAR_SWITCH_REFUSAL = "of session 'a' is"  # "run r2 of session 'a' is starting; finish it ..."
CLEAR_RUN_REFUSALS = ("the first run of a session is the unmodified baseline", "was left for session 'b'")


async def _race_a_switch_with_an_experiment(agent: Any, yields: int) -> tuple[Any, Any]:
    """run_experiment(edits, decide) and start_session(tag='b') at once; the switch is sent after `yields` yields
    to the other task (no wall-clock wait). Their answers."""
    import anyio

    answers: dict[str, Any] = {}

    async def experiment() -> None:
        edits = [{"old_text": "LR = 0.5", "new_text": "LR = 0.3"}]
        args = {"description": "lower LR", "edits": edits, "decide": True}
        answers["run"] = await agent.client.call_tool("run_experiment", args)

    async def switch() -> None:
        for _ in range(yields):
            await anyio.sleep(0)
        answers["switch"] = await agent.client.call_tool("start_session", {"tag": "b"})

    async with anyio.create_task_group() as group:
        group.start_soon(experiment)
        group.start_soon(switch)
    return answers["run"], answers["switch"]


async def test_start_session_racing_a_one_call_experiment_answers_what_happened(
    tmp_path: Path, agent_for: Any
) -> None:
    from .conftest import TRAIN_PY, git, make_repo

    for trial in range(5):  # the race is won by either side; each trial yields a different number of times
        root = make_repo(tmp_path / f"proj{trial}", {"train.py": TRAIN_PY, "prepare.py": "SEED = 1\n"})
        async with agent_for(root) as agent:
            await agent.ok("start_session", tag="a")
            await agent.ok("run_experiment", description="baseline", decide=True)
            run, switched = await _race_a_switch_with_an_experiment(agent, trial * 3)
        if switched.is_error:  # the run won: it was made in session a, and decided there
            assert CLEAR_SWITCH_REFUSAL in switched.content[0].text, switched.content[0].text
            assert not run.is_error and run.structured_content["decided"]["decision"] == "keep"
            assert git(root, "rev-parse", "--abbrev-ref", "HEAD").strip() == "autoresearch/a"
        else:  # the switch won: nothing ran, nothing was written
            assert run.is_error and any(s in run.content[0].text for s in CLEAR_RUN_REFUSALS), run.content[
                0
            ].text
            assert git(root, "rev-parse", "--abbrev-ref", "HEAD").strip() == "autoresearch/b"
        assert git(root, "status", "--porcelain", "--untracked-files=no") == ""


HELD_HOLDOUT = """\
import os, sys, time
score = float(open(sys.argv[1]).read())
while score == 2 and not os.path.exists(os.path.join(SIGNALS, "go")):  # held until the test lets it go
    time.sleep(0.01)
print(f"score: {score}")
"""


def _thread_in(function: str, file: str, line_holds: str = "") -> bool:
    """Whether a thread of this process is in `function` of `file`, at a line holding `line_holds`."""
    for frame in sys._current_frames().values():
        while frame is not None:
            code = frame.f_code
            if code.co_name == function and code.co_filename.endswith(file):
                return line_holds in _line_of(frame)
            frame = frame.f_back
    return False


async def test_start_session_waiting_for_a_step_does_not_hold_the_agents_other_calls(tmp_path: Path) -> None:
    """start_session(tag=other) sent during a step of the session that takes long (commit_or_reset running the
    holdout, up to eval_timeout) waits for that step (above); it waited holding the workspace's lock, which
    every call takes first, so a `read_target` of the agent got no answer until the step ended. Other calls
    answer while it waits."""
    import anyio
    from mcp import Client

    from mcp_autoresearch.adapters.server import create_server
    from mcp_autoresearch.session.workspace import Workspace

    from .conftest import make_repo

    signals = Path(tempfile.mkdtemp(prefix=".autoresearch-test-signals-", dir=Path.home()))
    try:
        holdout = f"SIGNALS = {str(signals)!r}\n" + HELD_HOLDOUT
        files = {
            "params.py": "X = 0\n",
            "answer.py": ANSWER_X,
            "score.py": SCORE_ANSWER,
            "holdout.py": holdout,
        }
        root = make_repo(tmp_path / "proj", files)
        settings = {
            "target_file": "params.py",
            "run_command": "mkdir -p out && python3 answer.py > out/answer.txt",
            "writable": ["out"],
            "eval_command": "python3 score.py out/answer.txt",
            "holdout_command": "python3 holdout.py out/answer.txt",
            "metric_name": "score",
            "readonly_files": ["answer.py", "score.py", "holdout.py"],
            "keep_rule": "greedy",
        }
        workspace = Workspace(root, settings)
        async with Client(create_server(workspace)) as client:
            assert not (await client.call_tool("start_session", {"tag": "a"})).is_error
            baseline = {"description": "baseline", "decide": True}
            first_run = await client.call_tool("run_experiment", baseline)
            assert first_run.structured_content["decided"]["decision"] == "keep", first_run.content[0].text
            answers: dict[str, Any] = {}

            async def experiment() -> None:
                edits = [{"old_text": "X = 0", "new_text": "X = 1"}]
                args = {"description": "X = 1", "edits": edits, "decide": True}
                answers["run"] = await client.call_tool("run_experiment", args)

            async def switch() -> None:
                answers["switch"] = await client.call_tool("start_session", {"tag": "b"})

            async with anyio.create_task_group() as group:
                group.start_soon(experiment)  # its keep runs the holdout, held
                while not _thread_in("run_holdout", "holdout_stage.py"):
                    assert "run" not in answers, answers["run"].content[0].text
                    await anyio.sleep(0.01)
                group.start_soon(switch)
                while not _thread_in("start_session", "workspace.py", "current.lock"):
                    await anyio.sleep(0.01)
                try:
                    # The workspace's lock, which every call takes first, is free while the switch waits.
                    free = workspace._lock.acquire(blocking=False)
                    if free:
                        workspace._lock.release()
                        answers["read"] = await client.call_tool("read_target", {})
                finally:
                    (signals / "go").touch()
            assert free, "start_session held the workspace's lock (every call's first) while it waited"
            assert not answers["read"].is_error and "X = 1" in answers["read"].content[0].text
            assert answers["run"].structured_content["decided"]["decision"] == "keep"
            assert not answers["switch"].is_error  # the step ended, nothing pending: the switch was made
    finally:
        shutil.rmtree(signals, ignore_errors=True)


def _line_of(frame: Any) -> str:
    return linecache.getline(frame.f_code.co_filename, frame.f_lineno)


async def test_a_target_whose_first_line_is_longer_than_the_view_can_still_be_read(
    ml_project: Path, agent_for: Any
) -> None:
    """A minified or generated target (a JSON config on one line), or one the agent wrote itself within the
    4 MiB limit: read_target answered truncated, with no content and no way to page through it."""
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session", tag="oneline")
        await agent.ok("run_experiment", description="baseline", decide=True)
        long_line = "CONFIG = " + repr("x" * 150_000) + "\n"
        await agent.ok("apply_edit", content=long_line + "print('val_bpb: 1.0')\n")
        view = await agent.ok("read_target")
        assert view["truncated"] and view["line_cut"] and view["content"], view | {
            "content": view["content"][:40]
        }
        assert view["content"].startswith("CONFIG = 'xxx") and view["start_line"] == view["end_line"] == 1
        rest = await agent.ok("read_target", start_line=2)  # the next line reads whole
        assert rest["content"] == "print('val_bpb: 1.0')\n" and not rest["truncated"], rest
        # A part of the line it saw is enough to change it.
        await agent.ok("apply_edit", edits=[{"old_text": "CONFIG = 'xxx", "new_text": "CONFIG = 'yyy"}])


async def test_the_web_page_shows_a_run_that_waits_for_its_decision(ml_project: Path, agent_for: Any) -> None:
    """Between a run's end and commit_or_reset (the three-call loop), the page's summary and its event stream
    failed with AttributeError ('RunOutcome' object has no attribute 'get'): the page could not load, and its
    live stream broke on every retry, until the run was decided."""
    from mcp_autoresearch.readers.web.data import SessionView

    async with agent_for(ml_project) as agent:
        await agent.ok("start_session", tag="waiting")
        run = await agent.ok("run_experiment", description="baseline")
        if run["status"] == "running":
            run = await agent.until_done(run["run_id"])
        view = SessionView(ml_project)
        view.refresh()
        (shown,) = view.live()["runs"]
        assert shown["run_id"] == run["run_id"] and shown["phase"] == "finished"
        assert shown["result_status"] == "ok" and shown["value"] == run["value"]
