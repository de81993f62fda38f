"""Issue 13: decisions that hold up under noise, through the real server, real processes and real git.

The evaluator prints the i-th number of the target's `VALUES` line, where i counts the runs of that content so
far (the evaluator keeps the count in a directory outside the project, `writable` to it; cycling), so every
run's value is chosen by the test: the noise is scripted, not random.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import git, make_repo, run_cli

pytestmark = pytest.mark.anyio

COUNT = """\
f="$COUNTS/$(cksum < cand.txt | cut -d' ' -f1)"; i=$(( $(cat "$f" 2>/dev/null || echo 0) + 1 )); echo "$i" > "$f"
"""
EVALUATE = (
    COUNT
    + """\
awk -v i="$i" '$1 == "VALUES" { n = NF - 1; printf "score: %s\\n", $(2 + (i - 1) % n) }' cand.txt
"""
)
NOISY = "VALUES 1.0 1.1 0.9\n"  # mean 1.0, sd 0.1


def project(tmp_path: Path, values: str = NOISY, **settings: object) -> Path:
    counts = tmp_path / "counts"  # the runs of each content so far, kept by the evaluator
    counts.mkdir(exist_ok=True)
    config = {
        "target_file": "cand.txt",
        "run_command": f"COUNTS={counts} sh evaluate.sh",
        "writable": [str(counts)],
        "metric_name": "score",
        "readonly_files": ["evaluate.sh"],
        **settings,
    }
    toml = "".join(f"{key} = {json.dumps(value)}\n" for key, value in config.items())
    return make_repo(
        tmp_path / "noisy", {"cand.txt": values, "evaluate.sh": EVALUATE, "autoresearch.toml": toml}
    )


def events(root: Path, action: str) -> list[dict]:
    lines = (root / ".autoresearch" / "autoresearch.jsonl").read_text().splitlines()
    return [e["details"] for e in map(json.loads, lines) if e["action"] == action]


def tsv_rows(root: Path) -> list[list[str]]:
    return [line.split("\t") for line in (root / "results.tsv").read_text().splitlines()[1:]]


async def try_values(agent, values: str, description: str) -> tuple[dict, dict]:
    await agent.ok("apply_edit", content=values)
    return await agent.experiment(description)


async def test_noise_measured_at_start_and_shown(tmp_path: Path, agent_for) -> None:
    root = project(tmp_path)
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="n")
        run, decision = await agent.experiment("baseline")
        # noise_runs (3) runs of the unmodified baseline: its 1st, 2nd and 3rd.
        assert run["values"] == [1.0, 1.1, 0.9] and run["value"] == 1.0
        assert decision["decision"] == "keep" and decision["keep_rule"] == "sequential"
        results = await agent.ok("query_results")
        assert results["keep_rule"] == "sequential" and results["noise_sd"] == pytest.approx(0.1)
        briefing = (await agent.client.read_resource("autoresearch://briefing")).contents[0].text
        assert "sequential" in briefing and "sd 0.1" in briefing
        info = await agent.ok("detect_project")
        assert "session n: keep rule: sequential" in info["keep_rule"] and "sd 0.1" in info["keep_rule"]
    status = run_cli("status", "--project", str(root)).stdout  # the briefing from the files: the same rule
    assert "Keep rule: sequential (" in status and "noise sd 0.1 " in status, status
    # A new server, no tool called yet: the rule the baseline chose, not how it would be chosen.
    async with agent_for(root) as agent:
        prompt = (await agent.client.get_prompt("loop", {})).messages[0].content.text
        assert "Keep rule: session n: keep rule: sequential" in prompt and "sd 0.1" in prompt, prompt
        assert "\nKeep rule: sequential (" in prompt  # in its briefing too
        info = await agent.ok("detect_project")
        assert "session n: keep rule: sequential" in info["keep_rule"] and "sd 0.1" in info["keep_rule"]
    assert tsv_rows(root) == [[tsv_rows(root)[0][0], "score", "1.000000", "keep", "baseline"]]
    [done] = events(root, "experiment_done")
    assert done["values"] == [1.0, 1.1, 0.9]


async def test_deterministic_metric_needs_two_runs_and_stays_greedy(tmp_path: Path, agent_for) -> None:
    root = project(tmp_path, "VALUES 5.0\n")
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="d")
        run, decision = await agent.experiment("baseline")
        assert run["values"] == [5.0, 5.0] and decision["keep_rule"] == "greedy"
        run, decision = await try_values(agent, "VALUES 4.0\n", "smaller")
        assert run.get("values") is None and run["value"] == 4.0  # one run, as today
        assert decision["decision"] == "keep" and "improved by 1" in decision["reason"]
        results = await agent.ok("query_results")
        assert results["keep_rule"] == "greedy" and results["noise_sd"] == 0


async def test_explicit_greedy_is_todays_rule(tmp_path: Path, agent_for) -> None:
    root = project(tmp_path, keep_rule="greedy")
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="g")
        run, _ = await agent.experiment("baseline")
        assert run["value"] == 1.0 and run.get("values") is None  # no noise runs
        run, decision = await try_values(agent, "VALUES 0.99 5 5\n", "a lucky draw")
        assert decision["decision"] == "keep" and decision["keep_rule"] == "greedy"


async def test_clearly_worse_is_discarded_after_one_run(tmp_path: Path, agent_for) -> None:
    root = project(tmp_path)
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="w")
        await agent.experiment("baseline")
        run, decision = await try_values(agent, "VALUES 1.5 0.1 0.1\n", "worse")
        assert run["value"] == 1.5 and run.get("values") is None and run["would_keep"] is False
        assert decision["decision"] == "discard" and decision["reason"].startswith(
            "discard (not better than the best)"
        )
        # every decision shows the values, the estimate with its interval, the probability and the rule
        assert decision["values"] == [1.5] and decision["best_values"] == [1.0, 1.1, 0.9]
        assert decision["estimate"] == pytest.approx(-0.5)
        low, high = decision["interval"]
        assert low < -0.5 < high and 0 < decision["probability"] < 0.1


async def test_promising_candidate_reruns_best_remeasured_and_kept(tmp_path: Path, agent_for) -> None:
    root = project(tmp_path)
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="k")
        await agent.experiment("baseline")
        base = git(root, "rev-parse", "HEAD").strip()
        run, decision = await try_values(agent, "VALUES 0.5 0.52 0.48\n", "much better")
        # One run never keeps; the best was re-measured to 3x the challenger's runs before its second run,
        # with its own content and the repeat numbers going on (4, 5, 6 -> 1.0, 1.1, 0.9 again).
        assert run["values"] == [0.5, 0.52] and run["value"] == pytest.approx(0.51)
        assert decision["decision"] == "keep" and decision["reason"].startswith("keep (P >=")
        assert decision["best_values"] == [1.0, 1.1, 0.9, 1.0, 1.1, 0.9]
        assert decision["probability"] >= 0.999
        # kept, so run again as many times as it was judged (its 3rd and 4th runs): no regression
        assert decision["remeasured"] == [0.48, 0.5] and decision.get("regression") is None
        assert git(root, "rev-parse", "HEAD~1").strip() == base
        assert (root / "cand.txt").read_text() == "VALUES 0.5 0.52 0.48\n"
        assert git(root, "status", "--porcelain", "--untracked-files=no") == ""
        # the new best's runs are its own, the re-measurement included; the next challenger is judged against them
        run, decision = await try_values(agent, "VALUES 0.6 0.6 0.6\n", "worse than the new best")
        assert decision["best_values"] == [0.5, 0.52, 0.48, 0.5] and decision["decision"] == "discard"
    runs = sorted(p.name for p in (root / ".autoresearch" / "runs" / "k").glob("r2*.log"))
    assert runs == [
        "r2-2.log",
        "r2-3.log",
        "r2-4.log",
        "r2-best-2.log",
        "r2-best-3.log",
        "r2-best.log",
        "r2.log",
    ]
    rows = tsv_rows(root)
    assert [r[2] for r in rows] == ["1.000000", "0.510000", "0.600000"]  # one row per experiment: the median
    done = events(root, "experiment_done")
    assert done[1]["values"] == [0.5, 0.52] and done[1]["best_values"] == [1.0, 1.1, 0.9] * 2
    assert done[1]["remeasured"] == [0.48, 0.5] and "regression" not in done[1]


async def test_not_shown_better_within_max_repeats_is_discarded(tmp_path: Path, agent_for) -> None:
    root = project(tmp_path, max_repeats=3)
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="m")
        await agent.experiment("baseline")
        run, decision = await try_values(agent, "VALUES 0.85 0.95 0.9\n", "a bit better")
        assert run["values"] == [0.85, 0.95, 0.9]
        assert decision["decision"] == "discard" and "not shown better within 3 runs" in decision["reason"]
        # a near-miss: discarded within the noise of the best, listed for the agent to combine
        results = await agent.ok("query_results")
        assert results["best_runs"] == 9 and results["best"]["value"] == 1.0  # re-measured, and kept so
        assert [r["description"] for r in results["near_misses"]] == ["a bit better"]
        briefing = (await agent.client.read_resource("autoresearch://briefing")).contents[0].text
        assert "Near-misses" in briefing and "a bit better" in briefing


async def test_same_content_is_not_measured_twice_unless_rerun(tmp_path: Path, agent_for) -> None:
    root = project(tmp_path)
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="r")
        await agent.experiment("baseline")
        first, _ = await try_values(agent, "VALUES 1.5\n", "worse")
        await agent.ok("apply_edit", content="VALUES 1.5\n")
        again = await agent.ok("run_experiment", description="worse, again")
        assert again["run_id"] == first["run_id"] and again["already_measured"] is True
        assert "rerun=true" in again["next_step"]
        assert len(tsv_rows(root)) == 2 and len(events(root, "experiment_start")) == 2
        # nothing is pending: the agent edits on, or asks for a re-measurement explicitly
        rerun = await agent.ok("run_experiment", description="worse, measured again", rerun=True)
        assert rerun["run_id"] != first["run_id"] and rerun.get("already_measured") is None
        await agent.ok("commit_or_reset", run_id=rerun["run_id"])
    done = events(root, "experiment_done")
    assert len(done) == 3 and done[2]["rerun_of"] == first["run_id"]


async def test_a_resumed_session_keeps_its_rule_noise_and_the_best_runs(tmp_path: Path, agent_for) -> None:
    root = project(tmp_path)
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="s")
        await agent.experiment("baseline")
        await try_values(agent, "VALUES 0.85 0.95 0.9\n", "promising")  # re-measures the best
    async with agent_for(root) as agent:  # a new server
        started = await agent.ok("start_session", tag="s")
        assert started["resumed"] is True and "Keep rule: sequential" in started["briefing"]
        results = await agent.ok("query_results")
        runs = results["best_runs"]
        assert results["keep_rule"] == "sequential" and runs >= 9 and results["noise_df"] > runs - 1
        _, decision = await try_values(agent, "VALUES 2.0\n", "worse")
        assert decision["best_values"] == [1.0, 1.1, 0.9] * (runs // 3)


async def test_the_rule_settings_are_validated_and_fixed_for_the_session(tmp_path: Path, agent_for) -> None:
    from mcp_autoresearch.errors import ConfigError
    from mcp_autoresearch.setup.config import validate_values

    for bad in ({"keep_rule": "lucky"}, {"confidence": 1.0}, {"confidence": 0.2}, {"max_repeats": 0}):
        with pytest.raises(ConfigError):
            validate_values(bad, "test")
    root = project(tmp_path)
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="f")
        await agent.experiment("baseline")
    async with agent_for(root, {"confidence": 0.99}) as agent:
        refusal = await agent.refused("start_session", tag="f")
        assert "confidence" in refusal and "start a new session" in refusal


async def test_a_run_that_rewrites_the_target_is_caught_across_the_best_s_remeasure(
    tmp_path: Path, agent_for
) -> None:
    root = project(tmp_path, isolation="off")  # unconfined, so the run can write the target
    (root / "evaluate.sh").write_text(
        EVALUATE + 'if grep -q TAMPER cand.txt; then echo "VALUES 0.1" >> cand.txt; fi\n'
    )
    git(root, "commit", "-qam", "an evaluator that rewrites candidates marked TAMPER")
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="t")
        await agent.experiment("baseline")
        run, decision = await try_values(agent, "VALUES 0.5 0.5 0.5\n# TAMPER\n", "rewrites itself")
        assert run["status"] == "tampered" and "cand.txt" in run["error"] and decision["decision"] == "crash"
    assert (root / "cand.txt").read_text() == "VALUES 1.0 1.1 0.9\n"  # back to the best
    assert "VALUES 0.1" in (root / ".autoresearch" / "tampered" / "r2" / "cand.txt").read_text()


async def test_a_best_s_run_that_rewrites_the_target_stops_the_measurement(tmp_path: Path, agent_for) -> None:
    root = project(tmp_path, isolation="off")  # unconfined, so the run can write the target
    rewrite = 'if [ "$i" -ge 4 ]; then echo "# rewritten" >> cand.txt; fi\n'
    (root / "evaluate.sh").write_text(EVALUATE + rewrite)
    git(root, "commit", "-qam", "an evaluator that rewrites the target from the 4th run of a content on")
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="b")
        await agent.experiment("baseline")
        run, decision = await try_values(agent, "VALUES 0.5 0.5 0.5\n", "better")
        # The best's first re-measurement (its 4th run) rewrote the target: nothing is shown, nothing is kept.
        assert run["status"] == "ok" and decision["decision"] == "discard"
        assert "the best could not be re-measured (tampered" in decision["reason"]
    assert (root / "cand.txt").read_text() == NOISY  # back to the best
    kept = (root / ".autoresearch" / "tampered" / "r2" / "cand.txt").read_text()
    assert kept == NOISY + "# rewritten\n"  # what the best's run left, kept
