"""Where the deciding number comes from (evaluation, server, self-reported): one definition, said on every
surface that shows the number (detect, detect_project, start_session, the briefing, query_results, the JSONL,
status, results, dashboard), and `integrity = "required"`, which refuses a self-reported session."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mcp_autoresearch.measure.provenance import metric_provenance

from .conftest import git, make_repo, run_cli

pytestmark = pytest.mark.anyio

ML_FIX = "README, 'The ML recipe'"


@pytest.mark.parametrize(
    ("settings", "source"),
    [
        ({"eval_command": "python score.py out/answer.txt", "metric_name": "score"}, "evaluation"),
        ({"eval_command": "python score.py", "metric_measure": "wall_time_s"}, "evaluation"),
        ({"metric_measure": "size_kb:dist !*.map"}, "server"),
        ({"metric_measure": "wall_time_s"}, "server"),
        # A value read from output wins over the measurement: the run prints it.
        ({"metric_measure": "wall_time_s", "metric_regex": "took (\\S+)"}, "self-reported"),
        ({"metric_measure": "size_kb:dist", "metric_parse": "cat result.txt"}, "self-reported"),
        ({"metric_name": "val_bpb", "target_file": "train.py"}, "self-reported"),
        ({}, "self-reported"),
    ],
)
def test_one_definition_of_where_the_value_comes_from(settings: dict[str, Any], source: str) -> None:
    found = metric_provenance(settings)
    assert found.source == source
    assert (found.fix is not None) == (source == "self-reported")
    assert found.line().startswith(f"{source}: ")


def test_the_fix_proposes_an_evaluation_stage_only_where_it_would_work() -> None:
    """A pipe into a scorer splits into a run that writes a file and an evaluation that reads it; karpathy's
    layout points at the ML recipe; anything else gets the general move, never an invented command."""
    piped = metric_provenance(
        {"run_command": "python objective.py | python scorer.py", "metric_name": "score"}
    )
    assert piped.fix is not None
    assert 'run_command = "mkdir -p out && python objective.py > out/run-output.txt"' in piped.fix
    assert 'eval_command = "python scorer.py < out/run-output.txt"' in piped.fix
    into_writable = metric_provenance(
        {"run_command": "./objective | ./score --last", "writable": ["results"]}
    )
    assert into_writable.fix is not None
    assert 'eval_command = "./score --last < results/run-output.txt"' in into_writable.fix
    assert "mkdir" not in into_writable.fix
    ml = metric_provenance(
        {"run_command": "uv run train.py", "target_file": "train.py", "metric_name": "val_bpb"}
    )
    assert ml.fix is not None and ML_FIX in ml.fix
    for command in ("a | b | c", "a && b | c", "make; ./bench | tail -1", "a || b", "python run.py"):
        fix = metric_provenance({"run_command": command}).fix
        assert fix is not None and "eval_command =" not in fix, command
        assert "set eval_command to the scorer" in fix


async def test_every_mcp_surface_labels_a_self_reported_session(ml_project: Path, agent_for: Any) -> None:
    async with agent_for(ml_project) as agent:
        info = await agent.ok("detect_project")
        assert info["provenance"]["source"] == "self-reported"
        assert ML_FIX in info["provenance"]["fix"]
        assert info["ready"] is True  # integrity = "any" (the default) allows it, labelled
        started = await agent.ok("start_session", tag="label")
        assert started["provenance"] == info["provenance"]
        await agent.experiment("baseline")
        results = await agent.ok("query_results")
        assert results["provenance"]["source"] == "self-reported"
        briefing = (await agent.client.read_resource("autoresearch://briefing")).contents[0].text
        assert "Metric source: self-reported: read from the run's own output" in briefing
        assert ML_FIX in briefing
        resumed = await agent.ok("start_session", tag="label")
        assert "Metric source: self-reported" in resumed["briefing"]
        prompt = (await agent.client.get_prompt("loop", {})).messages[0].content.text
        assert "Where the value comes from: self-reported: read from the run's own output" in prompt
    events = [
        json.loads(line)
        for line in (ml_project / ".autoresearch/autoresearch.jsonl").read_text().splitlines()
    ]
    labelled = {e["action"]: e["details"].get("provenance") for e in events}
    assert labelled["session_start"] == "self-reported"
    assert labelled["experiment_done"] == "self-reported"


async def test_a_size_the_server_measures_is_labelled_server(tmp_path: Path, agent_for: Any) -> None:
    root = make_repo(
        tmp_path / "p",
        {
            "build.py": "import os\nos.makedirs('out', exist_ok=True)\nopen('out/app.bin', 'w').write('x' * 4000)\n",
            "autoresearch.toml": 'target_file = "build.py"\nrun_command = "python build.py"\n'
            'metric_name = "app_kb"\nmetric_measure = "size_kb:out"\nwritable = ["out"]\n',
        },
    )
    async with agent_for(root) as agent:
        info = await agent.ok("detect_project")
        assert info["provenance"] == {
            "source": "server",
            "reason": "the size of out, measured by the server itself; whether the run did its work is its own "
            "exit status (a change that stops it early with status 0 measures as a gain)",
            "fix": None,
        }
        assert (await agent.ok("start_session", tag="size"))["provenance"]["source"] == "server"
        _, decision = await agent.experiment("baseline")
        assert decision["decision"] == "keep"
        assert (await agent.ok("query_results"))["provenance"]["source"] == "server"
    done = [json.loads(line) for line in (root / ".autoresearch/autoresearch.jsonl").read_text().splitlines()]
    assert [e["details"]["provenance"] for e in done if e["action"] == "experiment_done"] == ["server"]


async def test_integrity_required_refuses_a_self_reported_session(ml_project: Path, agent_for: Any) -> None:
    async with agent_for(ml_project, {"integrity": "required"}) as agent:
        info = await agent.ok("detect_project")
        assert info["integrity"] == "required"
        assert info["ready"] is False
        assert "integrity = required, but the metric is self-reported" in info["message"]
        refusal = await agent.refused("start_session", tag="strict")
        assert "integrity = required, but the metric is self-reported" in refusal
        assert ML_FIX in refusal and 'integrity = "any"' in refusal
    assert "autoresearch/strict" not in git(ml_project, "branch", "--list")
    # With an evaluation stage the same setting lets the session start.
    evaluated = {"integrity": "required", "eval_command": "python prepare.py"}
    async with agent_for(ml_project, evaluated) as agent:
        started = await agent.ok("start_session", tag="strict")
        assert started["provenance"]["source"] == "evaluation"


async def test_integrity_required_refuses_to_resume_a_self_reported_session(
    ml_project: Path, agent_for: Any
) -> None:
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session", tag="before")
    (ml_project / "autoresearch.toml").write_text('integrity = "required"\n')
    async with agent_for(ml_project) as agent:
        refusal = await agent.refused("start_session", tag="before")
        assert "integrity = required, but the metric is self-reported" in refusal
        assert "no session is active" not in await agent.refused("query_results")


def test_integrity_is_checked_like_every_key(ml_project: Path) -> None:
    (ml_project / "autoresearch.toml").write_text('integrity = "strict"\n')
    out = run_cli("detect", "--project", str(ml_project))
    assert out.returncode == 2
    assert "invalid value 'strict' for 'integrity'" in out.stderr and "'any' or 'required'" in out.stderr


def test_detect_says_where_the_number_comes_from(ml_project: Path) -> None:
    out = run_cli("detect", "--project", str(ml_project))
    assert out.returncode == 0, out.stderr
    assert "  source:     self-reported: read from the run's own output" in out.stdout
    assert "  fix:        export the trained model as data from train.py" in out.stdout
    strict = run_cli("detect", "--project", str(ml_project), "--integrity", "required")
    assert "integrity = required, but the metric is self-reported" in strict.stdout
    evaluated = run_cli("detect", "--project", str(ml_project), "--eval-command", "python score.py")
    assert "evaluation:   python score.py (after each run" in evaluated.stdout
    assert "  source:     evaluation: read from the output of eval_command" in evaluated.stdout
    assert "  fix:" not in evaluated.stdout
    as_json = json.loads(run_cli("detect", "--project", str(ml_project), "--json").stdout)
    assert as_json["provenance"]["source"] == "self-reported"


async def test_status_results_and_dashboard_say_it(ml_project: Path, agent_for: Any) -> None:
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session", tag="term")
        await agent.experiment("baseline")
    status = run_cli("status", "--project", str(ml_project))
    assert "Metric source: self-reported" in status.stdout, status.stderr
    results = run_cli("results", "--project", str(ml_project))
    assert "metric source: self-reported" in " ".join(results.stdout.split()), results.stderr
    dashboard = run_cli("dashboard", "--once", "--project", str(ml_project))
    assert "metric source: self-reported" in " ".join(dashboard.stdout.split()), dashboard.stderr


async def test_finish_says_it_and_the_squashed_commit_records_it(ml_project: Path, agent_for: Any) -> None:
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session", tag="land")
        await agent.experiment("baseline")
        await agent.edit("LR = 0.5", "LR = 0.3")
        _, decision = await agent.experiment("lower LR")
        assert decision["decision"] == "keep"
    summary = run_cli("finish", "--project", str(ml_project))
    assert "  source:     self-reported: read from the run's own output" in summary.stdout, summary.stderr
    landed = run_cli("finish", "--project", str(ml_project), "--land", "result", "--squash")
    assert landed.returncode == 0, landed.stderr
    message = git(ml_project, "log", "-1", "--format=%B", "result")
    assert "each measured by mcp-autoresearch (metric source: self-reported)" in message


async def test_the_label_cannot_change_within_a_session(ml_project: Path, agent_for: Any) -> None:
    """eval_command is one of the session's rules: a session that began self-reported stays so, labelled."""
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session", tag="fixed")
    async with agent_for(ml_project, {"eval_command": "python prepare.py"}) as agent:
        refusal = await agent.refused("start_session", tag="fixed")
        assert "the configuration changed since session 'fixed' started (eval_command: None ->" in refusal
