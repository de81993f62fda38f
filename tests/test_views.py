"""Issue 5: the loop prompt, the briefing, resources, and the terminal views (results, status, dashboard, plot)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from mcp_autoresearch.readers.briefing import MAX_CHARS, briefing_from
from mcp_autoresearch.readers.plot import plotting_available, series
from mcp_autoresearch.records.rows import Row
from mcp_autoresearch.records.state import Best, SessionState

from .conftest import run_cli

pytestmark = pytest.mark.anyio


async def make_history(agent) -> None:
    await agent.ok("start_session", tag="views")
    await agent.experiment("baseline")
    await agent.edit("LR = 0.5", "LR = 0.3")
    run, _ = await agent.experiment("lower LR")
    await agent.ok("log_result", run_id=run["run_id"], notes="smaller steps help")
    await agent.edit("LR = 0.3", "LR = 0.9")
    await agent.experiment("higher LR")
    await agent.edit("LR = 0.3", "LR = 0.3\nraise SystemExit(2)")
    await agent.experiment("broken idea")


async def test_prompt_and_resources(ml_project: Path, agent_for) -> None:
    async with agent_for(ml_project) as agent:
        client = agent.client
        prompts = (await client.list_prompts()).prompts
        assert [p.name for p in prompts] == ["loop"]
        assert [a.name for a in prompts[0].arguments] == ["focus"]
        fresh = await client.get_prompt("loop", {})
        text = fresh.messages[0].content.text
        assert "NEVER STOP" in text and "apply_edit" in text and "commit_or_reset" in text
        assert "val_bpb" in text and "train.py" in text and "No session yet" in text
        await make_history(agent)
        focused = (await client.get_prompt("loop", {"focus": "optimizer schedule"})).messages[0].content.text
        assert "Concentrate your ideas on: optimizer." in focused
        assert "Where the session stands" in focused and "lower LR" in focused

        tsv = (await client.read_resource("autoresearch://results")).contents[0].text
        assert (
            tsv.splitlines()[0] == "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
            and len(tsv.splitlines()) == 5
        )
        briefing = (await client.read_resource("autoresearch://briefing")).contents[0].text
        assert "Best 1.2" in briefing and "smaller steps help" in briefing and "broken idea" in briefing
        config = json.loads((await client.read_resource("autoresearch://config")).contents[0].text)
        assert (
            config["target_file"] == "train.py"
            and config["config_source"]["target_file"] == "auto-detected (ml)"
        )
        uris = {str(r.uri) for r in (await client.list_resources()).resources}
        if plotting_available():
            png = (await client.read_resource("autoresearch://progress.png")).contents[0]
            import base64

            data = base64.b64decode(png.blob)
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
            assert "autoresearch://progress.png" in uris


def _state(direction: str, best: float, baseline: float) -> SessionState:
    return SessionState(
        tag="x",
        branch="autoresearch/x",
        base_commit="a" * 40,
        created_at="",
        target_file="t.py",
        metric_name="m",
        metric_direction=direction,
        readonly_hashes={},
        best=Best(value=best, commit="b" * 40, run_id="r2", description="best idea", nonblank_lines=3),
        baseline_value=baseline,
    )


def _rows(count: int) -> list[Row]:
    rows = []
    for i in range(count):
        status = "keep" if i % 10 == 0 else ("crash" if i % 7 == 0 else "discard")
        rows.append(
            Row(
                run_id=f"r{i + 1}",
                commit=f"{i:07x}",
                metric="m",
                value=None if status == "crash" else i,
                status=status,
                run_status="ok" if status != "crash" else "timeout",
                description=f"idea number {i} " + "x" * 200,
                prev=None,
                delta=None,
                memory_gb=None,
                duration_s=1.0,
                error="killed" if status == "crash" else None,
                tag="x",
                timestamp="",
                notes=[f"note {i} " + "y" * 300],
                best=status == "keep",  # the greedy loop: every keep became the best
            )
        )
    return rows


@pytest.mark.parametrize(
    ("direction", "best", "baseline", "gain"),
    [("lower_is_better", 0.9, 1.0, "improvement 0.1"), ("higher_is_better", 0.8, 0.5, "improvement 0.3")],
)
def test_briefing_is_bounded_and_direction_aware(
    direction: str, best: float, baseline: float, gain: str
) -> None:
    text = briefing_from(_state(direction, best, baseline), _rows(5000), "python train.py")
    assert len(text) <= MAX_CHARS
    assert gain in text
    assert "idea number 4999" in text and "note 4999" in text  # newest ideas are listed with notes
    assert "idea number 10 " not in text  # old ones are summarised, not listed
    assert "since the last keep" in text
    assert "older experiments" in text
    assert briefing_from(_state(direction, best, baseline), _rows(5000), "python train.py") == text


def test_the_plot_numbers_experiments_as_every_view_does_and_draws_crashes() -> None:
    """The plot's x is the experiment's number as the tables and the web page give it (r1 = 1, the baseline),
    crashes are drawn (not only counted in the title), and the running best is held to the last experiment."""
    rows = _rows(30)
    drawn = series(rows, "lower_is_better")
    by_run = {r.run_id: r for r in rows}
    assert [n for n, _, _ in drawn.kept] == [1, 11, 21]
    assert drawn.crashed == [8, 15, 22, 29]
    for n, value in drawn.discarded:
        assert by_run[f"r{n}"].value == value and by_run[f"r{n}"].status == "discard"
    assert drawn.running_best[0] == (1, 0) and drawn.running_best[-1] == (30, 0)
    higher = series(rows, "higher_is_better")
    assert [v for _, v in higher.running_best] == [0, 10, 20, 20]


async def test_cli_views(ml_project: Path, agent_for, tmp_path: Path) -> None:
    async with agent_for(ml_project) as agent:
        await make_history(agent)
    project = str(ml_project)
    table = run_cli("results", "--project", project)
    assert table.returncode == 0 and "lower LR" in table.stdout and "discard" in table.stdout
    only_keep = run_cli("results", "--project", project, "--status", "keep", "--format", "json")
    assert [r["status"] for r in json.loads(only_keep.stdout)] == ["keep", "keep"]
    tsv = run_cli("results", "--project", project, "--format", "tsv").stdout
    assert tsv.startswith("commit\tmetric\tvalue\tstatus\tdescription\n") and len(tsv.splitlines()) == 5
    karpathy = run_cli("results", "--project", project, "--format", "karpathy").stdout
    assert karpathy == (ml_project / "results.tsv").read_text()  # karpathy's layout writes its format
    frame = list(csv.DictReader(io.StringIO(karpathy), delimiter="\t"))
    assert list(frame[0]) == ["commit", "val_bpb", "memory_gb", "status", "description"]
    assert [r["status"] for r in frame] == ["keep", "keep", "discard", "crash"]
    assert frame[0]["memory_gb"] == "0.5" and frame[3]["val_bpb"] == "0.000000"
    status = run_cli("status", "--project", project)
    assert "Best 1.2" in status.stdout and "broken idea" in status.stdout
    dashboard = run_cli("dashboard", "--project", project, "--once")
    assert dashboard.returncode == 0
    for figure in (
        "total 4",
        "keep 2",
        "discard 1",
        "crash 1",
        "keep rate 50%",
        "best 1.2",
        "improvement 0.2",
        "server: not running",
        "recent experiments",
    ):
        assert figure in dashboard.stdout, figure
    filtered = run_cli("dashboard", "--project", project, "--once", "--status", "crash")
    assert "broken idea" in filtered.stdout and "higher LR" not in filtered.stdout
    out = tmp_path / "progress.png"
    plot = run_cli("plot", "--project", project, "--out", str(out))
    if plotting_available():
        assert plot.returncode == 0
        data = out.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(data) < 2_000_000
    else:
        assert plot.returncode == 2 and 'pip install ".[plot]"' in plot.stderr
    none = run_cli("status", "--project", str(tmp_path))
    assert none.returncode == 2 and "no session" in none.stderr


async def test_a_resource_that_cannot_be_read_says_why(tmp_path: Path, agent_for) -> None:
    """The briefing and results resources of a project with no session yet, or whose session record is
    unreadable, answer with the engine's message (what to do), not the SDK's bare 'Error reading resource'."""
    from mcp.shared.exceptions import MCPError

    from .test_eval_stage import project

    root = project(tmp_path)
    async with agent_for(root) as agent:
        with pytest.raises(MCPError) as no_session:
            await agent.client.read_resource("autoresearch://briefing")
        assert "start_session" in str(no_session.value), no_session.value
        await agent.ok("start_session", tag="t")
        await agent.experiment("baseline")
    (root / ".autoresearch" / "sessions" / "t.own.json").write_text("{")
    async with agent_for(root) as agent:
        for uri in ("autoresearch://briefing", "autoresearch://results"):
            with pytest.raises(MCPError) as unreadable:
                await agent.client.read_resource(uri)
            assert "t.own.json is unreadable" in str(unreadable.value) and "move it aside" in str(
                unreadable.value
            ), unreadable.value
