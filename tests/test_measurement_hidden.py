"""Issue 24, item 5: a run cannot tell from the server which of its runs are judged, and a candidate fast only
while judged is caught by the re-measurement after the keep: undone under the sequential rule, reported under
the greedy one. Single runs and slots; the real server through the MCP client, real processes and git.

The target is a small program whose value is scripted: the i-th run of a content prints the i-th of the values
1.0, 1.1, 0.9 (cycling), i counted in a directory outside the project that the runs may write. The cheat reads
`AUTORESEARCH_REPEAT` where the server passes it (before this rule: the index of the run, judged while it is at
most the number of runs the rule needs) and otherwise its own count of runs, and is fast for the first two: as
many as the sequential rule needs to keep a change this much better (the greedy rule: one).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from .conftest import git, make_repo

pytestmark = pytest.mark.anyio

TARGET = """\
import hashlib, os
CHEAT = {cheat}
COUNTS = {counts!r}
path = os.path.join(COUNTS, hashlib.sha256(open(__file__, "rb").read()).hexdigest())  # runs of this content
i = 1
while True:  # one file per run, made exclusively: runs in two slots at once never take the same number
    try:
        os.close(os.open(f"{{path}}-{{i}}", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        break
    except FileExistsError:
        i += 1
fast = False
if CHEAT:
    repeat = os.environ.get("AUTORESEARCH_REPEAT")
    fast = int(repeat) <= {fast} if repeat else i <= {fast}
values = {values}
print("seed:", os.environ.get("AUTORESEARCH_SEED"), "repeat:", os.environ.get("AUTORESEARCH_REPEAT"))
print(f"score: {{values[(i - 1) % len(values)] - (0.9 if fast else 0.0):.6f}}")
"""
NOISY = [1.0, 1.1, 0.9]


def project(tmp_path: Path, values: list[float], **extra: Any) -> tuple[Path, dict[str, Any]]:
    counts = tmp_path / "counts"
    counts.mkdir()
    honest = TARGET.format(cheat=False, counts=str(counts), values=values, fast=0)
    root = make_repo(tmp_path / "proj", {"model.py": honest})
    settings = {
        "target_file": "model.py",
        "run_command": "python3 model.py",
        "metric_name": "score",
        "writable": [str(counts)],
        **extra,
    }
    return root, settings


def cheat(root: Path, values: list[float], fast: int) -> str:
    """The cheat: fast for its first `fast` runs (or, told its index, while that is at most `fast`)."""
    return TARGET.format(cheat=True, counts=str(root.parent / "counts"), values=values, fast=fast)


async def run_and_decide(agent, slots: bool, description: str) -> tuple[dict, dict]:
    if not slots:
        return await agent.experiment(description)
    started = await agent.ok("run_experiment", description=description)
    run = await agent.until_done(started["run_id"])
    return run, await agent.ok("commit_or_reset", run_id=run["run_id"])


def slot_settings(slots: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    if not slots:
        return {}
    monkeypatch.setenv("AUTORESEARCH_SLOTS_DIR", str(tmp_path / "slots-home"))
    return {"slots": 2, "slot_devices": []}


@pytest.mark.parametrize("slots", [False, True], ids=["single", "slots"])
async def test_a_candidate_fast_only_while_judged_is_not_kept(
    tmp_path: Path, agent_for, slots: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, settings = project(tmp_path, NOISY, **slot_settings(slots, monkeypatch, tmp_path))
    async with agent_for(root, settings) as agent:
        await agent.ok("start_session", tag="cheat")
        _, baseline = await run_and_decide(agent, slots, "baseline")
        assert baseline["decision"] == "keep" and baseline["keep_rule"] == "sequential"
        base = git(root, "rev-parse", "autoresearch/cheat").strip()
        await agent.ok("apply_edit", content=cheat(root, NOISY, fast=2))
        run, decision = await run_and_decide(agent, slots, "no better, but fast while judged")
        # Judged on two fast runs (0.1, 0.2: kept with P near 1 before this rule), then run twice again,
        # indistinguishably, and slow: a regression, so the keep is undone.
        assert run["values"] == [0.1, 0.2], run
        assert decision["decision"] == "discard", decision
        assert decision["remeasured"] == [0.9, 1.0]
        assert "re-measured after the keep" in decision["reason"] and decision["regression"]
        results = await agent.ok("query_results")
        assert results["best"]["run_id"] == baseline["run_id"] and results["best"]["value"] >= 0.9
    assert git(root, "rev-parse", "autoresearch/cheat").strip() == base
    # No run learnt its index from the server; each got a seed of its own.
    logs = (root / ".autoresearch" / "runs" / "cheat").glob("*.log")
    seeds = [m.group(1) for log in logs for m in re.finditer(r"seed: (\S+) repeat: None", log.read_text())]
    assert len(seeds) >= 9 and len(set(seeds)) == len(seeds) and all(s.isdigit() for s in seeds)


async def _better_while_judged_and_after(agent: Any, root: Path, slots: bool) -> tuple[dict, dict]:
    """A session, its baseline, then a candidate 0.9 better while judged (its first two runs) and 0.4 better
    after: its run and decision."""
    await agent.ok("start_session", tag="stands")
    await run_and_decide(agent, slots, "baseline")
    better = cheat(root, NOISY, fast=2).replace("(0.9 if fast else 0.0)", "(0.9 if fast else 0.4)")
    await agent.ok("apply_edit", content=better)
    return await run_and_decide(agent, slots, "much better while judged, better after")


async def test_a_keep_its_re_measurement_still_supports_stands(tmp_path: Path, agent_for) -> None:
    """Worse when re-measured than when judged, but still clearly better than its parent: the keep stands and
    the regression is reported. Broke: any regression undid the keep (a CI run discarded a change 60 noise sd
    better, its re-measurement 0.09 worse than its judged runs with the noise measured small by chance)."""
    root, settings = project(tmp_path, NOISY)
    async with agent_for(root, settings) as agent:
        run, decision = await _better_while_judged_and_after(agent, root, False)
        assert run["values"] == [0.1, 0.2] and decision["remeasured"] == [0.5, 0.6], decision
        assert decision["decision"] == "keep", decision
        assert "re-measured after the keep" in decision["regression"], decision
        assert "still show it better than its parent: the keep stands" in decision["regression"]
        assert "(a regression, reported)" in decision["reason"], decision["reason"]
        assert (await agent.ok("query_results"))["best"]["run_id"] == run["run_id"]


@pytest.mark.parametrize("slots", [False, True], ids=["single", "slots"])
async def test_a_kept_change_whose_re_measurement_stands_is_logged_at_its_re_measured_value(
    tmp_path: Path, agent_for, slots: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keep stands on the re-measured runs alone: the value logged (the decision's, the table's, the best's)
    is theirs, not the judged runs' that they showed wrong. Broke: the table logged the judged median (0.15) and
    the best the median of judged and re-measured runs (0.35), while its honest runs show 0.55."""
    root, settings = project(tmp_path, NOISY, **slot_settings(slots, monkeypatch, tmp_path))
    async with agent_for(root, settings) as agent:
        run, decision = await _better_while_judged_and_after(agent, root, slots)
        assert decision["decision"] == "keep" and decision["remeasured"] == [0.5, 0.6], decision
        assert decision["value"] == pytest.approx(0.55), decision
        results = await agent.ok("query_results")
        assert results["best"]["value"] == pytest.approx(0.55), results["best"]
        [row] = [r for r in results["rows"] if r["run_id"] == run["run_id"]]
        assert row["value"] == pytest.approx(0.55), row


async def test_a_branched_keep_standing_on_its_re_measurement_overtakes_the_best_only_on_those_runs(
    tmp_path: Path, agent_for
) -> None:
    """Branched from the baseline, a cheat far better while judged and, re-measured, better than the baseline but
    no better than the best: kept as a node, not made the best. Broke: its judged runs, shown unlike its
    re-measured ones, counted towards overtaking the best (the mean of all four, -0.7, against the best's 0.5),
    and towards its value as a parent."""
    root, settings = project(tmp_path, NOISY, noise_runs=30)  # much noise measured: the judged runs weigh
    counts = str(root.parent / "counts")
    async with agent_for(root, settings) as agent:
        await agent.ok("start_session", tag="overtake")
        _, baseline = await run_and_decide(agent, False, "baseline")
        good = TARGET.format(cheat=False, counts=counts, values=[0.5, 0.6, 0.4], fast=0)
        await agent.ok("apply_edit", content=good)
        run, best = await run_and_decide(agent, False, "honestly better: the best")
        assert best["decision"] == "keep" and best["best"] is True, best
        await agent.ok("branch_from", run_id=baseline["run_id"])
        sly = cheat(root, NOISY, fast=2).replace("(0.9 if fast else 0.0)", "(3.0 if fast else 0.4)")
        await agent.ok("apply_edit", content=sly)
        _, decision = await run_and_decide(agent, False, "far better while judged, as good as the best after")
        assert decision["values"] == [-2.0, -1.9] and decision["remeasured"] == [0.5, 0.6], decision
        assert decision["decision"] == "keep" and decision["parent"] == baseline["run_id"], decision
        assert decision["best"] is False, decision
        assert (await agent.ok("query_results"))["best"]["run_id"] == run["run_id"]
        # As a parent it stands for its re-measured runs too (broke: the median of all four, -0.7).
        await agent.ok("branch_from", run_id=decision["run_id"])
        child = TARGET.format(cheat=False, counts=counts, values=[0.45], fast=0)
        await agent.ok("apply_edit", content=child)
        _, built = await run_and_decide(agent, False, "built on the cheat's node")
        assert built["parent"] == decision["run_id"] and built["prev"] == pytest.approx(0.55), built
        assert built["best_values"][:2] == [0.5, 0.6], built


async def test_a_failed_re_measurement_undoes_the_keep_whatever_its_runs_before_the_failure(
    tmp_path: Path, agent_for
) -> None:
    """A cheat fast for its judged runs and the first re-measured one, that fails on the next: the runs it let be
    seen all beat the parent, but a failed re-measurement shows nothing. Broke: those runs alone kept it."""
    root, settings = project(tmp_path, NOISY)
    async with agent_for(root, settings) as agent:
        await agent.ok("start_session", tag="fails")
        _, baseline = await run_and_decide(agent, False, "baseline")
        crash = cheat(root, NOISY, fast=3).replace("values = ", "assert i < 4, 'crash'\nvalues = ", 1)
        await agent.ok("apply_edit", content=crash)
        run, decision = await run_and_decide(agent, False, "fast while judged, fails when re-measured")
        assert run["values"] == [0.1, 0.2] and decision["remeasured"] == [0.0], decision
        assert decision["decision"] == "discard", decision
        assert "its re-measurement after the keep failed" in decision["regression"], decision
        assert (await agent.ok("query_results"))["best"]["run_id"] == baseline["run_id"]


@pytest.mark.parametrize("slots", [False, True], ids=["single", "slots"])
async def test_under_the_greedy_rule_a_regression_after_the_keep_is_reported(
    tmp_path: Path, agent_for, slots: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, settings = project(
        tmp_path, [1.0], keep_rule="greedy", **slot_settings(slots, monkeypatch, tmp_path)
    )
    async with agent_for(root, settings) as agent:
        await agent.ok("start_session", tag="greedy")
        await run_and_decide(agent, slots, "baseline")
        await agent.ok("apply_edit", content=cheat(root, [1.0], fast=1))
        run, decision = await run_and_decide(agent, slots, "fast on its first run only")
        assert run["value"] == pytest.approx(0.1) and decision["decision"] == "keep"
        assert decision["remeasured"] == [1.0]
        assert (
            "re-measured after the keep" in decision["reason"]
            and "a regression, reported" in decision["reason"]
        )
        results = await agent.ok("query_results")
        assert results["best"]["value"] == pytest.approx(
            0.1
        )  # greedy: the judged value, as the original tool


@pytest.mark.parametrize("slots", [False, True], ids=["single", "slots"])
async def test_a_kept_best_slower_when_re_measured_later_is_reported(
    tmp_path: Path, agent_for, slots: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cheat fast for exactly as many runs as judging (2) and the re-measurement after the keep (2) take is
    kept; the next candidate that needs the best re-measured finds it slow, and says so."""
    root, settings = project(tmp_path, NOISY, **slot_settings(slots, monkeypatch, tmp_path))
    async with agent_for(root, settings) as agent:
        await agent.ok("start_session", tag="later")
        await run_and_decide(agent, slots, "baseline")
        await agent.ok("apply_edit", content=cheat(root, NOISY, fast=4))
        _, kept = await run_and_decide(agent, slots, "fast for its first four runs")
        assert kept["decision"] == "keep" and kept["remeasured"] == [0.0, 0.1] and not kept.get("regression")
        honest = TARGET.format(cheat=False, counts=str(root.parent / "counts"), values=[0.05], fast=0)
        await agent.ok("apply_edit", content=honest)
        _, decision = await run_and_decide(agent, slots, "honest, a little better than the cheat's claim")
        assert decision["best_values"][4:6] == [1.1, 0.9], decision  # the cheat's 5th and 6th runs: slow
        assert "the best, re-measured for this candidate: mean 1 over" in decision["reason"]
        assert "vs 0.1 before, worse by 0.9" in decision["reason"]
        assert "(a regression, reported)" in decision["reason"]
    done = [
        e for e in map(json.loads, (root / ".autoresearch" / "autoresearch.jsonl").read_text().splitlines())
    ]
    [logged] = [
        e["details"]
        for e in done
        if e["action"] == "experiment_done" and e["details"]["run_id"] == decision["run_id"]
    ]
    assert logged["best_regression"].startswith("the best, re-measured for this candidate")
