"""One definition of baseline, best and improvement (standing.py), the same in every view: the briefing,
query_results, `status`, `finish`, the web page's data and the dashboard. Before anything but the baseline is kept the
improvement is 0: a re-measurement of the baseline is not progress (the briefing used to report the noise)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from mcp_autoresearch.readers.web.data import SessionView

from .conftest import make_repo, run_cli

pytestmark = pytest.mark.anyio

# A noisy metric whose noise is a fixed sequence (a counter in a writable directory outside the project, which
# runs keep: the outputs inside it start empty every run), so that the session takes the same path on every
# machine.
EVALUATE = """\
import pathlib, runpy
x = runpy.run_path("params.py")["X"]
counter = pathlib.Path("../state/count")
n = int(counter.read_text()) if counter.exists() else 0
counter.write_text(str(n + 1))
noise = [0.0, 1.0, -1.0, -1.0, 0.6, 0.7, 0.5, 3.0]
print(f"score: {10 + x + (noise[n] if n < len(noise) else (-0.2, 0.1, 0.2, -0.1)[n % 4]):.4f}")
"""
SETTINGS = {
    "target_file": "params.py",
    "run_command": "mkdir -p out && python3 evaluate.py",
    "metric_name": "score",
    "metric_direction": "lower_is_better",
    "readonly_files": ["evaluate.py"],
    "writable": ["out", "../state"],
    "keep_rule": "sequential",
    "noise_runs": 3,
    "max_repeats": 4,
}


def numbers(text: str, label: str) -> list[float]:
    found = re.search(label + r"\s*(-?[0-9.]+)", text)
    assert found, (label, text)
    return [float(found.group(1))]


async def views(agent: Any, root: Path) -> dict[str, dict[str, Any]]:
    query = await agent.ok("query_results")
    briefing = (await agent.client.read_resource("autoresearch://briefing")).contents[0].text
    status = run_cli("status", "--project", str(root), cwd=root)  # the briefing, from the files
    assert status.returncode == 0, status.stderr
    finish = run_cli("finish", "--project", str(root), "--session", "s", cwd=root)  # what would be landed
    assert finish.returncode == 0, finish.stderr
    page = SessionView(root)
    page.refresh()
    web = page.summary()
    dashboard = run_cli("dashboard", "--project", str(root), "--once", cwd=root)
    assert dashboard.returncode == 0, dashboard.stderr
    pattern = r"Baseline ([0-9.]+)\. Best ([0-9.]+) .*?; improvement (-?[0-9.e-]+)"
    brief, stat = re.search(pattern, briefing), re.search(pattern, status.stdout)
    assert brief and stat, (briefing, status.stdout)
    dash = re.search(r"baseline ([0-9.]+) → best ([0-9.]+): improvement (-?[0-9.e-]+)", dashboard.stdout)
    trend = re.search(r"▲[▲ ]* best ([0-9.]+)", dashboard.stdout)  # the label of the trend's kept marks
    assert dash and trend, dashboard.stdout
    return {
        "query_results": {
            "baseline": query["baseline"],
            "best": query["best"]["value"],
            "gain": query["improvement"],
        },
        "briefing": dict(zip(("baseline", "best", "gain"), map(float, brief.groups()), strict=True)),
        "status": dict(zip(("baseline", "best", "gain"), map(float, stat.groups()), strict=True)),
        "finish": {
            "baseline": numbers(finish.stdout, "baseline:")[0],
            "best": numbers(finish.stdout, "best:")[0],
            "gain": numbers(finish.stdout, "improvement:")[0],
        },
        "web": {"baseline": web["baseline"], "best": web["best"]["value"], "gain": web["improvement"]},
        "dashboard": dict(zip(("baseline", "best", "gain"), map(float, dash.groups()), strict=True)),
        "dashboard trend": {"best": float(trend.group(1))},
    }


def agree(seen: dict[str, dict[str, Any]]) -> dict[str, float]:
    exact = seen["query_results"]
    for name, view in seen.items():
        for key in view:
            assert view[key] == pytest.approx(exact[key], abs=1e-5), (name, key, seen)
    return exact


async def test_every_view_shows_the_same_baseline_best_and_improvement(
    tmp_path: Path, agent_for: Any
) -> None:
    root = make_repo(
        tmp_path / "proj", {"params.py": "X = 0\n", "evaluate.py": EVALUATE, ".gitignore": "out/\n"}
    )
    async with agent_for(root, SETTINGS) as agent:
        await agent.ok("start_session", tag="s")
        await agent.experiment("baseline")
        # A candidate that looks better at its first run: the best is re-measured (higher, by the sequence)
        # before the candidate's second run, which is much worse: discarded.
        await agent.ok("apply_edit", content="X = -0.1\n")
        run, decision = await agent.experiment("X = -0.1")
        assert decision["decision"] == "discard", decision
        query = await agent.ok("query_results")
        assert query["best_runs"] > 3, "the baseline was re-measured (the case that showed noise as progress)"
        # Its row shows the value it was judged by; the briefing says why the best differs from it.
        briefing = (await agent.client.read_resource("autoresearch://briefing")).contents[0].text
        assert f"(the median of its {query['best_runs']} runs) at " in briefing, briefing
        seen = agree(await views(agent, root))
        assert (
            seen["gain"] == 0 and seen["best"] == seen["baseline"] != 10.0
        )  # the median of every baseline run
        assert query["improvement_pct"] == 0 and query["improvement_interval"] is None

        await agent.ok("apply_edit", content="X = -6\n")
        run, decision = await agent.experiment("X = -6")
        assert decision["decision"] == "keep", decision
        seen = agree(await views(agent, root))
        assert 5 < seen["gain"] < 7
        low, high = (await agent.ok("query_results"))["improvement_interval"]
        assert low < seen["gain"] < high
        page = SessionView(root)
        page.refresh()
        assert page.summary()["improvement_interval"] == [low, high]
