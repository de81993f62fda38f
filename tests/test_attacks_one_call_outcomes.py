"""Attacks on one call per experiment where the first review (test_attacks_one_call) did not look, through the real
MCP client on real repositories: combine and branch_from followed by a one-call run (with slots too, and after a
restart); runs that end without a value under decide=true (metric_error, checks_failed, disk_full, a metric too
large for the keep rule's arithmetic, a run given up by its client); the evaluation stage and the holdout; the
sequential rule (re-measurements, polled with wait_s=0); and the text an agent reads (content[0].text) against the
structured content: always strict JSON, and the de-duplication of `decided` never hides a field that differs
(`text_says_all`, applied to every one-call result here). The HTTP transport: test_attacks_one_call_http."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest

from .conftest import git, make_repo
from .helpers.slots import private_slots_home  # noqa: F401 (the autouse fixture `slots_home`)
from .test_disk_full import FILLER, full_project, small_disk  # noqa: F401 (fixtures)
from .test_tree_engine import TREE_PY, done_rows, target

pytestmark = pytest.mark.anyio

# The decision's fields the run's result names otherwise (test_one_call's _SAME_AS in adapters/server.py).
SAME_AS = {"prev": "best_value"}


def edits(old: str, new: str) -> list[dict[str, str]]:
    return [{"old_text": old, "new_text": new}]


def strict_json(text: str) -> dict[str, Any]:
    """`text` parsed as JSON, which has no Infinity, -Infinity or NaN (Python's json reads them)."""

    def refuse(name: str) -> None:
        pytest.fail(f"the text is not JSON: it holds {name}: {text[:300]}")

    parsed: dict[str, Any] = json.loads(text, parse_constant=refuse)
    return parsed


def text_says_all(result: Any) -> dict[str, Any]:
    """The structured content of a one-call result, after checking the agent's text against it: the text is strict
    JSON, every run field of the text is the structured one, and every decision field left out of the text's
    `decided` is null or said by the run under the same (or its) name with the same value."""
    assert not result.is_error, result.content[0].text
    raw = result.content[0].text
    text = strict_json(raw)
    whole = result.structured_content
    for key, value in text.items():
        if key != "decided":
            assert whole[key] == value or (isinstance(value, dict) and value.items() <= whole[key].items()), (
                key
            )
    decided = whole.get("decided")
    if decided is None:
        assert "decided" not in text
        return whole
    for key, value in decided.items():
        if value is None or key in text["decided"]:
            assert value is None or text["decided"][key] == value, key
            continue
        said = text.get(SAME_AS.get(key, key))
        assert said == value, f"decided.{key} = {value!r} is left out of the text, which says {said!r}"
    return whole


async def one_call(agent: Any, **args: Any) -> dict[str, Any]:
    return text_says_all(await agent.client.call_tool("run_experiment", {**args, "decide": True}))


KNOBS = {"target_file": "train.py", "run_command": "python train.py"}


@pytest.fixture
def knobs(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "knobs", {"train.py": TREE_PY, "prepare.py": "# fixed\n"})


async def test_combine_then_one_call_is_judged_against_the_better_and_recorded_after_a_restart(
    knobs: Path, agent_for: Any
) -> None:
    root = knobs
    async with agent_for(root, KNOBS) as agent:
        await agent.ok("start_session", tag="co")
        await one_call(agent, description="baseline")  # r1: 10
        await one_call(agent, description="A to 3", edits=edits("A = 5", "A = 3"))  # r2: 8
        r3 = await one_call(agent, description="A to 1", edits=edits("A = 3", "A = 1"))  # r3: 6
        assert r3["decided"]["best"] is True
        await agent.ok("branch_from", run_id="r2")
        r4 = await one_call(agent, description="B to 4", edits=edits("B = 5", "B = 4"))  # r4: 7 vs r2's 8
        assert (r4["decided"]["decision"], r4["decided"]["parent"], r4["decided"]["best"]) == (
            "keep",
            "r2",
            False,
        )
        assert r4["best_value"] == 8 and r4["decided"]["prev"] == 8

        merged = await agent.ok("combine", run_a="r4", run_b="r3")
        assert merged["parent"] == "r3" and sorted(merged["combined"]) == ["r3", "r4"]
        # The merge, and an edit on top of it, run and are decided in one call against r3 (6), not r2 or r4.
        r5 = await one_call(agent, description="r3 + r4, B to 3", edits=edits("B = 4", "B = 3"))
        assert r5["value"] == 4 and r5["parent"] == "r3" and r5["best_value"] == 6
        assert (r5["decided"]["decision"], r5["decided"]["parent"], r5["decided"]["best"]) == (
            "keep",
            "r3",
            True,
        )
        head = git(root, "rev-parse", "autoresearch/co").strip()
        assert r5["decided"]["branch_head"] == head == r5["decided"]["commit"]
        before = await agent.ok("query_results", view="tree")

    rows = done_rows(root)
    assert sorted(rows["r5"]["combined"]) == ["r3", "r4"] and rows["r5"]["parent"] == "r3"
    async with agent_for(
        root, KNOBS
    ) as agent:  # a restart: the tree as it was, and the next call builds on it
        await agent.ok("start_session", tag="co")
        assert await agent.ok("query_results", view="tree") == before
        r6 = await one_call(agent, description="A to 0", edits=edits("A = 1", "A = 0"))
        assert (r6["parent"], r6["best_value"], r6["decided"]["decision"]) == ("r5", 4, "keep")
    assert "A = 0" in target(root) and "B = 3" in target(root)


NO_METRIC = 'print("no number today")\n'


async def test_a_run_without_a_metric_or_failing_its_checks_is_decided_in_one_call(
    knobs: Path, agent_for: Any
) -> None:
    root = knobs
    checks = {
        **KNOBS,
        "checks_command": "python -c \"import sys; sys.exit('B = 2' in open('train.py').read())\"",
    }
    async with agent_for(root, checks) as agent:
        await agent.ok("start_session", tag="nm")
        await one_call(agent, description="baseline")
        best = target(root)
        lost = await one_call(agent, description="no metric", content=best.replace('print(f"val_bpb', "#"))
        assert lost["status"] == "metric_error" and lost["value"] is None
        assert lost["decided"]["decision"] == "crash" and target(root) == best
        failed = await one_call(agent, description="checks fail", edits=edits("B = 5", "B = 2"))
        assert failed["status"] == "checks_failed" and failed["decided"]["decision"] != "keep"
        assert target(root) == best
        assert git(root, "rev-parse", "autoresearch/nm").strip() == failed["decided"]["branch_head"]
        counts = (await agent.ok("query_results"))["counts"]
    assert sum(counts.values()) == 3


# Finite values whose differences are not: 1.7e308 - -1.7e308, or the median of two runs of -1.7e308, is inf.
HUGE_PY = "X = -1\nprint(f'score: {X * 1.7e308!r}')\n"


async def test_a_metric_too_large_to_compare_is_a_metric_error_and_the_text_stays_json(
    tmp_path: Path, agent_for: Any
) -> None:
    """A value the keep rule's arithmetic overflows on (its median, its difference to the best) was decided
    into inf, which the journal refused: the decision failed with an internal error. It is a metric_error now,
    decided as a crash in the same call."""
    root = make_repo(tmp_path / "huge", {"train.py": HUGE_PY, "prepare.py": "# fixed\n"})
    settings = {**KNOBS, "metric_name": "score", "metric_direction": "higher_is_better"}
    async with agent_for(root, settings) as agent:
        await agent.ok("start_session", tag="hg")
        base = await one_call(agent, description="baseline")
        assert base["status"] == "metric_error" and "beyond" in base["error"]
        assert base["decided"]["decision"] == "crash"
        assert (await agent.ok("query_results"))["counts"]["crash"] == 1  # decided: the session goes on
    rows = (root / "results.tsv").read_text().splitlines()[1:]
    assert [row.split("\t")[3] for row in rows] == ["crash"]


async def test_a_noisy_metric_too_large_for_its_variance_is_a_metric_error(
    tmp_path: Path, agent_for: Any
) -> None:
    """The sequential rule squares the differences between runs: values near 1e200 overflowed there (an internal
    error on every decision of the baseline)."""
    from .test_noise import project

    root = project(tmp_path, "VALUES 1e200 1.1e200 0.9e200\n")
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="hn")
        base = await one_call(agent, description="baseline")
        assert base["status"] == "metric_error" and base["decided"]["decision"] == "crash"
        assert (await agent.ok("query_results"))["counts"]["crash"] == 1


async def test_the_sequential_rule_in_one_call_re_measures_and_says_every_figure(
    tmp_path: Path, agent_for: Any
) -> None:
    """A promising candidate run again, the best re-measured to judge it, the keep re-measured: all inside one
    call, with the same figures as test_noise's three calls, and the text hides none that differs."""
    from .test_noise import events, project

    root = project(tmp_path)
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="k")
        base = await one_call(agent, description="baseline")
        assert base["values"] == [1.0, 1.1, 0.9] and base["decided"]["keep_rule"] == "sequential"
        run = await one_call(agent, description="much better", content="VALUES 0.5 0.52 0.48\n")
        decided = run["decided"]
        assert run["values"] == [0.5, 0.52] and decided["decision"] == "keep"
        assert decided["best_values"] == [1.0, 1.1, 0.9, 1.0, 1.1, 0.9] and decided["remeasured"] == [
            0.48,
            0.5,
        ]
        worse = await one_call(agent, description="worse than the new best", content="VALUES 0.6 0.6 0.6\n")
        assert worse["decided"]["best_values"] == [0.5, 0.52, 0.48, 0.5]
        assert worse["decided"]["decision"] == "discard" and (root / "cand.txt").read_text().startswith(
            "VALUES 0.5"
        )
    done = events(root, "experiment_done")
    assert [d["status"] for d in done] == ["keep", "keep", "discard"]
    assert done[1]["remeasured"] == [0.48, 0.5]


HOLDOUT_EXTRA = 'holdout_command = "python3 holdout.py out/answer.txt"\n'


async def test_the_evaluation_stage_and_the_holdout_in_one_call(tmp_path: Path, agent_for: Any) -> None:
    """eval_command gives the value and holdout_command runs after each keep, inside the one call: the holdout's
    values reach neither the text nor the structured content, each keep has its holdout record, and an
    evaluation that fails is a metric_error decided as a crash."""
    from .test_eval_stage import HOLDOUT, project

    root = project(tmp_path, HOLDOUT_EXTRA, files={"holdout.py": HOLDOUT})
    values = [f"{x * 1.2345678 + 0.0137:.7f}" for x in (5, 4, 6)]
    texts: list[str] = []
    async with agent_for(root) as agent:

        async def call(**args: Any) -> dict[str, Any]:
            result = await agent.client.call_tool("run_experiment", {**args, "decide": True})
            texts.append(result.content[0].text + json.dumps(result.structured_content))
            return text_says_all(result)

        await agent.ok("start_session", tag="x")
        assert (await call(description="baseline"))["decided"]["decision"] == "keep"
        kept = await call(description="x4", edits=edits("X = 5", "X = 4"))
        assert kept["value"] == 4 and kept["decided"]["decision"] == "keep"
        worse = await call(description="x6", edits=edits("X = 4", "X = 6"))
        assert worse["decided"]["decision"] == "discard"
        broken = await call(description="no answer", edits=edits("print(X)", "print('nothing')"))
        assert broken["status"] == "metric_error" and broken["decided"]["decision"] == "crash"
        assert "evaluation" in broken["error"]
        query = await agent.ok("query_results")
    assert "kept improvements hold 1 of 1" in query["holdout"]
    for value in values:
        for text in texts:
            assert value not in text and value.rstrip("0") not in text
    records = [
        json.loads(line) for line in (root / ".autoresearch" / "holdout" / "x.jsonl").read_text().splitlines()
    ]
    assert [(r["run_id"], r["baseline"]) for r in records] == [("r1", True), ("r2", False)]


# Output an agent reads in the log tail: non-ASCII, line and paragraph separators, escapes, NUL, bytes that are not
# UTF-8, a very long line.
ODD_OUTPUT = r"""
import sys
sys.stdout.buffer.write(b"caf\xc3\xa9 \xe2\x80\xa8 \xe2\x80\xa9 \x1b[31mred\x1b[0m \x00 \xff\xfe \xed\xa0\x80 \x7f\n")
sys.stdout.write("x" * 20000 + "\n")
sys.stdout.write("\u00e9\u4e2d\U0001f600 \"quoted\" back\\slash\n")
"""


async def test_odd_characters_in_the_log_tail_and_description_keep_the_text_json(
    ml_project: Path, agent_for: Any
) -> None:
    root = ml_project
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="odd")
        await one_call(agent, description="baseline")
        content = (root / "train.py").read_text().replace("LR = 0.5", "LR = 0.3") + ODD_OUTPUT
        run = await one_call(agent, description='caf\u00e9 \u2028 "q" \\ \t tab \U0001f600', content=content)
        assert run["decided"]["decision"] == "keep" and "café" in run["log_tail"]
        big = "\n".join(f"# line {i} " + "é" * 50 for i in range(3000)) + "\n"
        huge = await one_call(
            agent, description="a very large diff", content=big + (root / "train.py").read_text()
        )
        assert huge["edit"]["lines_added"] == 3000 and huge["decided"]["decision"] in ("keep", "discard")
        assert len(huge["edit"]["diff"]) <= 8000


async def test_a_one_call_run_that_fills_the_disk(full_project: Path, agent_for: Any) -> None:  # noqa: F811
    """A run that fills the disk is decided in its own call (crash, disk_full, the target back on the best); the
    next one-call edit is refused before it is written while the disk is full; once space is back it runs."""
    from .test_disk_full import _logged

    root = full_project
    async with agent_for(root, {"writable": ["out"], "keep_rule": "greedy"}) as agent:
        await agent.ok("start_session", tag="full")
        await one_call(agent, description="baseline")
        best = target(root)
        filled = await one_call(
            agent,
            description="fill the disk",
            edits=edits("LR = 0.5", "LR = 0.4\n" + textwrap.dedent(FILLER)),
        )
        assert filled["status"] == "disk_full" and filled["decided"]["decision"] == "crash", filled
        assert "free space" in filled["next_step"] and target(root) == best
        refused = await agent.refused(
            "run_experiment", description="too early", edits=edits("LR = 0.5", "LR = 0.3"), decide=True
        )
        assert "disk" in refused and "out/fill.bin" in refused, refused
        assert target(root) == best  # refused before the edit
        (root / "out" / "fill.bin").unlink()
        again = await one_call(agent, description="after freeing space", edits=edits("LR = 0.5", "LR = 0.3"))
        assert again["status"] == "ok" and again["decided"]["decision"] == "keep"
    assert _logged(root) == ["keep", "crash", "keep"]


SLOW = "import time\ntime.sleep(600)\n"


async def _give_up_on_first_progress(client: Any, args: dict[str, Any]) -> str:
    """run_experiment(args, decide=true), given up by the client as soon as the server reports progress (the
    server then waits for the run, so the cancellation reaches it). Returns the run id the text of progress names
    (the call never answers)."""
    with anyio.CancelScope() as scope:

        async def progressed(*_args: Any) -> None:
            scope.cancel()

        await client.call_tool(
            "run_experiment", {**args, "decide": True, "wait_s": 300}, progress_callback=progressed
        )
        raise AssertionError("run_experiment returned before any progress")
    return "r2"


async def test_a_one_call_run_given_up_by_its_client_is_decided_and_may_run_again(
    ml_project: Path, agent_for: Any
) -> None:
    """The client gives up run_experiment(edits, decide=true) while its run goes on: the run is cancelled, the next
    wait_experiment(run_id, decide=true) decides it (crash, the target back on the best, logged once), and the
    same idea, which a cancelled run says nothing about, runs again in one call."""
    root = ml_project
    async with agent_for(root, {"timeout": 300, "keep_rule": "greedy"}) as agent:
        await agent.ok("start_session", tag="gu")
        await one_call(agent, description="baseline")
        best = target(root)
        slow = best.replace("LR = 0.5", "LR = 0.3") + SLOW
        run_id = await _give_up_on_first_progress(agent.client, {"description": "slow", "content": slow})
        run = text_says_all(
            await agent.client.call_tool("wait_experiment", {"run_id": run_id, "decide": True})
        )
        while run["status"] == "running":
            run = text_says_all(
                await agent.client.call_tool("wait_experiment", {"run_id": run_id, "decide": True})
            )
        assert run["status"] == "cancelled" and run["decided"]["decision"] == "crash", run
        assert target(root) == best
        quick = best.replace("LR = 0.5", "LR = 0.3")
        again = await one_call(agent, description="LR 0.3, not slow", content=quick)
        assert again["status"] == "ok" and again["decided"]["decision"] == "keep"
        cancelled_again = await one_call(agent, description="the cancelled one again", content=slow, wait_s=0)
        assert cancelled_again.get("already_measured") is not True, "a cancelled run measured nothing"


async def test_a_one_call_run_given_up_as_soon_as_it_started_is_cancelled(
    ml_project: Path, agent_for: Any
) -> None:
    """The client gives up run_experiment(edits, decide=true) the moment its run printed its first line, before
    any progress report: while the server's first trip to a worker thread, which starts the run, still waits for
    it (`QUICK_WAIT_S`). The run is cancelled all the same (it does not go on for its 600 s), and wait_experiment
    decides it."""
    root = ml_project
    async with agent_for(root, {"timeout": 300, "keep_rule": "greedy"}) as agent:
        await agent.ok("start_session", tag="gq")
        await one_call(agent, description="baseline")
        best = target(root)
        # Its first line before anything else (the training below takes longer than the first trip waits).
        slow = 'print("started", flush=True)\n' + best.replace("LR = 0.5", "LR = 0.3") + SLOW
        log = root / ".autoresearch" / "runs" / "gq" / "r2.log"
        with anyio.CancelScope() as scope:

            async def give_up_once_started() -> None:
                while not (log.is_file() and "started" in log.read_text(errors="replace")):
                    await anyio.sleep(0.005)
                scope.cancel()

            async with anyio.create_task_group() as group:
                group.start_soon(give_up_once_started)
                await agent.client.call_tool(
                    "run_experiment", {"description": "slow", "content": slow, "decide": True, "wait_s": 300}
                )
                raise AssertionError("run_experiment returned although its run sleeps for 600 s")
        run = text_says_all(await agent.client.call_tool("wait_experiment", {"run_id": "r2", "decide": True}))
        while run["status"] == "running":
            run = text_says_all(
                await agent.client.call_tool("wait_experiment", {"run_id": "r2", "decide": True})
            )
        assert run["status"] == "cancelled" and run["decided"]["decision"] == "crash", run
        assert target(root) == best


def test_the_text_of_a_decided_result_is_json_whatever_floats_it_holds() -> None:
    """The text of a result with `decided` was written by json.dumps, which writes inf and NaN as `Infinity` and
    `NaN` (not JSON), where the text of every other result (pydantic) writes null, as the structured content goes
    on the wire. No metric reaches the keep rule beyond ±1e150 now, but the text must be JSON whatever it holds."""
    from mcp_autoresearch.adapters.result_text import tool_result
    from mcp_autoresearch.models import DecisionResult, RunResult

    decided = DecisionResult(
        run_id="r2",
        decision="keep",
        reason="improved",
        value=2.0,
        prev=float("nan"),
        delta=float("inf"),
        commit=None,
        branch_head="abc",
        next_step="log_result",
    )
    for run in (
        RunResult(run_id="r2", status="ok", metric_name="m", value=2.0, next_step="x", spread=float("inf")),
        RunResult(
            run_id="r2",
            status="ok",
            metric_name="m",
            value=2.0,
            next_step="x",
            spread=float("-inf"),
            decided=decided,
        ),
    ):
        text = tool_result(run).content[0].text
        parsed = strict_json(text)
        assert parsed["value"] == 2.0 and parsed.get("spread") is None


async def test_branch_from_or_combine_then_a_restart_then_one_call(knobs: Path, agent_for: Any) -> None:
    """The server restarts between branch_from (or combine) and the one call that runs the idea: the call is still
    judged against the chosen parent, and a combine is still recorded as a merge."""
    root = knobs
    async with agent_for(root, KNOBS) as agent:
        await agent.ok("start_session", tag="rs")
        await one_call(agent, description="baseline")  # r1: 10
        await one_call(agent, description="A to 3", edits=edits("A = 5", "A = 3"))  # r2: 8
        await one_call(agent, description="A to 1", edits=edits("A = 3", "A = 1"))  # r3: 6, the best
        await agent.ok("branch_from", run_id="r2")
    async with agent_for(root, KNOBS) as agent:
        await agent.ok("start_session", tag="rs")
        r4 = await one_call(agent, description="B to 4", edits=edits("B = 5", "B = 4"))  # 7: better than r2
        assert (r4["parent"], r4["best_value"], r4["decided"]["decision"]) == ("r2", 8, "keep"), r4
        await agent.ok("combine", run_a="r3", run_b="r4")
    async with agent_for(root, KNOBS) as agent:
        await agent.ok("start_session", tag="rs")
        r5 = await one_call(agent, description="r3 + r4")  # 5
        assert (r5["parent"], r5["best_value"], r5["decided"]["decision"]) == ("r3", 6, "keep"), r5
        assert r5["decided"]["best"] is True
    assert sorted(done_rows(root)["r5"].get("combined") or []) == ["r3", "r4"]


async def test_an_edit_that_changes_nothing_is_not_said_to_be_made(ml_project: Path, agent_for: Any) -> None:
    """run_experiment(content=the target as it is) is refused (nothing to run); the refusal said "the edit was made
    before: the target holds it", as if a change had been written."""
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session", tag="same")
        await one_call(agent, description="baseline")
        same = (ml_project / "train.py").read_text()
        for args in ({"content": same}, {"edits": edits("LR = 0.5", "LR = 0.5")}):
            refused = await agent.refused("run_experiment", description="same", decide=True, **args)
            assert "unchanged" in refused and "changed nothing" in refused, refused
            assert "the edit was made" not in refused, refused
        assert (ml_project / "train.py").read_text() == same


async def test_the_sequential_rule_polled_with_wait_s_0_decides_after_every_run(
    tmp_path: Path, agent_for: Any
) -> None:
    """run_experiment(decide=true, wait_s=0) then wait_experiment(decide=true, wait_s=0) over and over: no poll
    decides between the candidate's runs, the best's re-measurement or the keep's re-measurement."""
    from .test_noise import project

    root = project(tmp_path)
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="p")
        await one_call(agent, description="baseline")
        run = await one_call(agent, description="much better", content="VALUES 0.5 0.52 0.48\n", wait_s=0)
        while run["status"] == "running":
            assert run.get("decided") is None
            run = text_says_all(
                await agent.client.call_tool(
                    "wait_experiment", {"run_id": run["run_id"], "decide": True, "wait_s": 0}
                )
            )
        decided = run["decided"]
        assert run["values"] == [0.5, 0.52] and decided["decision"] == "keep", run
        assert decided["best_values"] == [1.0, 1.1, 0.9, 1.0, 1.1, 0.9] and decided["remeasured"] == [
            0.48,
            0.5,
        ]


async def _decided(agent: Any, run: dict[str, Any]) -> dict[str, Any]:
    while run["status"] == "running":
        run = text_says_all(
            await agent.client.call_tool("wait_experiment", {"run_id": run["run_id"], "decide": True})
        )
    return run


async def test_with_slots_two_ideas_then_branch_from_in_one_call(
    tmp_path: Path,
    agent_for: Any,
    slots_home: Path,  # noqa: F811
) -> None:
    """With slots: two one-call ideas from the best run side by side; the first to finish is kept against the
    baseline, the other is merged onto it, run again and decided by the same wait (rerun, then keep). Then
    branch_from the baseline and one call: judged against the baseline, not the best."""
    from .test_slots import project as slots_project
    from .test_slots import settings as slots_settings

    root = slots_project(tmp_path)
    async with agent_for(root, slots_settings()) as agent:
        await agent.ok("start_session", tag="sc")
        await _decided(agent, await one_call(agent, description="baseline"))  # r1: 8
        x = await one_call(agent, description="X to 3", edits=edits("X = 0", "X = 3"))  # 5 alone
        y = await one_call(agent, description="Y to 5", edits=edits("Y = 0", "Y = 5"))  # 3 alone
        x, y = await _decided(agent, x), await _decided(agent, y)
        rows = done_rows(root)
        first, second = sorted(("r2", "r3"), key=lambda run_id: rows[run_id]["parent"] != "r1")
        assert rows[first]["parent"] == "r1" and rows[second]["parent"] == first, rows
        assert [rows[r]["status"] for r in ("r2", "r3")] == ["keep", "keep"]
        assert {x["value"], y["value"]} == {0.0, 5.0 if first == "r2" else 3.0}
        assert (root / "params.py").read_text() == "X = 3\n\n\n\nY = 5\n"

        await agent.ok("branch_from", run_id="r1")
        side = await _decided(
            agent, await one_call(agent, description="Y to 4", edits=edits("Y = 0", "Y = 4"))
        )
        assert side["value"] == 4 and side["parent"] == "r1" and side["best_value"] == 8
        assert (side["decided"]["decision"], side["decided"]["best"]) == ("keep", False), side
        best = (await agent.ok("query_results"))["best"]
        assert best["value"] == 0 and git(root, "rev-parse", "autoresearch/sc").strip().startswith(
            best["commit"]
        )


# FILLER (test_disk_full) into a file whose name is not UTF-8: the disk_full error names it.
ODD_NAME_FILLER = FILLER.replace("open('out/fill.bin'", "open(b'out/fill-\\xff\\xfe.bin'")


async def test_a_run_filling_the_disk_through_a_file_whose_name_is_not_utf8(
    full_project: Path,  # noqa: F811
    agent_for: Any,
) -> None:
    """The disk_full error names the largest files runs wrote; a name that is not UTF-8 reaches the text, the
    structured content and the journal as something each can hold, and the decision is made."""
    root = full_project
    async with agent_for(root, {"writable": ["out"], "keep_rule": "greedy"}) as agent:
        await agent.ok("start_session", tag="odd")
        await one_call(agent, description="baseline")
        filled = await one_call(
            agent,
            description="fill",
            edits=edits("LR = 0.5", "LR = 0.4\n" + textwrap.dedent(ODD_NAME_FILLER)),
        )
        assert filled["status"] == "disk_full" and filled["decided"]["decision"] == "crash", filled
        assert "out/fill-\\xff\\xfe.bin" in filled["error"], filled["error"]  # the bytes, escaped
        for name in os.listdir(root / "out"):
            os.unlink(root / "out" / name)
        again = await one_call(agent, description="after freeing space", edits=edits("LR = 0.5", "LR = 0.3"))
        assert again["decided"]["decision"] == "keep"
    for line in (root / ".autoresearch" / "autoresearch.jsonl").read_text().splitlines():
        json.loads(line)


# A candidate that leaves, in the output the evaluation reads, a link whose name is not UTF-8.
ODD_LINK = "import os\nos.symlink('/etc/hostname', b'out/link-\\xff')\n"


async def test_an_output_refused_under_a_name_that_is_not_utf8_is_decided(
    tmp_path: Path, agent_for: Any
) -> None:
    """The evaluation stage refuses an output holding a link, naming it: a name that is not UTF-8 reaches the
    records and the reply escaped, and the run is decided in its call."""
    from .test_eval_stage import project

    root = project(tmp_path)
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="ln")
        await one_call(agent, description="baseline")
        odd = await one_call(agent, description="odd link", edits=edits("X = 5\n", "X = 4\n" + ODD_LINK))
        assert odd["status"] == "metric_error" and odd["decided"]["decision"] == "crash", odd
        assert "link-\\xff" in odd["error"], odd["error"]
    for line in (root / ".autoresearch" / "autoresearch.jsonl").read_text().splitlines():
        json.loads(line)


async def test_a_keep_undone_by_its_re_measurement_is_not_called_a_near_miss(
    tmp_path: Path, agent_for: Any
) -> None:
    """A candidate kept on its first runs (improvement 0.49, about 6 noise sd) whose re-measurement shows it much
    worse is discarded. Its decision said "It was a near-miss (improvement +0.49, within the noise of its
    parent): a variant of it may pass", and query_results listed it among the near-misses: its runs show it
    did not hold, not that it came close."""
    from .test_noise import project

    root = project(tmp_path)
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="rg")
        await one_call(agent, description="baseline")
        run = await one_call(agent, description="lucky", content="VALUES 0.5 0.52 1.5 1.6\n")
        assert run["decided"]["decision"] == "discard" and run["decided"]["regression"], run
        assert "near-miss" not in run["next_step"], run["next_step"]
        assert [row["run_id"] for row in (await agent.ok("query_results"))["near_misses"]] == []
