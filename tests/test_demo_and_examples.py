"""The main job: `mcp-autoresearch demo`, and the scripted agent against each bundled example."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import anyio
import pytest
from mcp import Client

from mcp_autoresearch.adapters.demo import prepare
from mcp_autoresearch.adapters.scripted_agent import ScriptedAgent, propose, server_params

from .conftest import git, run_cli

# The two tests of one `demo --experiments 12` share its run (on one worker: `--dist loadgroup`).
DEMO_OF_12 = pytest.mark.xdist_group("demo12")


@pytest.fixture(scope="module")
def demo_of_12(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """`mcp-autoresearch demo --experiments 12`, run once: its project folder and what it printed."""
    out = tmp_path_factory.mktemp("demo-of-12") / "demo"
    return out, run_cli("demo", "--experiments", "12", "--keep-dir", str(out))


@DEMO_OF_12
def test_demo_end_to_end(demo_of_12: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, result = demo_of_12
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    rows = (out / "results.tsv").read_text().splitlines()
    assert len(rows) == 1 + 12 + 1  # header, baseline, 12 experiments
    statuses = [row.split("\t")[3] for row in rows[1:]]
    assert statuses[0] == "keep" and "keep" in statuses[1:], statuses
    # The branch head is the best kept commit.
    best_line = min(
        (row for row in rows[1:] if row.split("\t")[3] == "keep"), key=lambda r: float(r.split("\t")[2])
    )
    head = git(out, "rev-parse", "--short=7", "HEAD").strip()
    assert best_line.split("\t")[0] == head
    assert git(out, "status", "--porcelain", "--untracked-files=no") == ""
    for line in ("results.tsv", "autoresearch.jsonl", "mcp-autoresearch dashboard"):
        assert line in result.stdout
    assert result.stdout.count(" keep ") + result.stdout.count(" discard ") >= 12
    # Issue 21.6: experiments are numbered as runs are (r1, the baseline, first), not from #0.
    numbered = [line.split()[0] for line in result.stdout.splitlines() if re.match(r"r\d+ ", line)]
    assert numbered[:13] == [f"r{n}" for n in range(1, 14)], result.stdout
    assert not re.search(r"^#\d", result.stdout, re.MULTILINE)
    # The header is right above the rows: the project's line comes before it, not between it and the rows.
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("run   from"))
    assert lines[header + 1].startswith("r1 ") and lines[header - 1].startswith("project: "), result.stdout


@DEMO_OF_12
def test_the_demo_branches_from_an_earlier_node(
    demo_of_12: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """Issue 23.7: the demo's agent branches (branch_from) when its line stalls, and says so plainly."""
    out, result = demo_of_12
    assert result.returncode == 0, result.stderr
    said = re.search(r"branching from (r\d+) \(", result.stdout)
    assert said, result.stdout
    events = [
        json.loads(line) for line in (out / ".autoresearch" / "autoresearch.jsonl").read_text().splitlines()
    ]
    done = [e["details"] for e in events if e["action"] == "experiment_done"]
    # The run after the branch started from that node, which was not the latest kept one (the greedy parent).
    latest_kept, branched = None, []
    for row in done:
        if row["parent"] != latest_kept:
            branched.append(row)
        if row["status"] == "keep":
            latest_kept = row["run_id"]
    assert branched and branched[0]["parent"] == said.group(1), (branched, said.group(0))
    assert f"research tree: branch_from {said.group(1)}" in result.stdout
    # The work tree ends on the best (the agent branches back to it).
    assert git(out, "status", "--porcelain", "--untracked-files=no") == ""


def test_demo_with_slots_keeps_them_busy(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = run_cli("demo", "--experiments", "10", "--slots", "3", "--keep-dir", str(out))
    assert result.returncode == 0, result.stderr
    rows = (out / "results.tsv").read_text().splitlines()
    assert len(rows) == 1 + 10 + 1
    events = [
        json.loads(line) for line in (out / ".autoresearch" / "autoresearch.jsonl").read_text().splitlines()
    ]
    done = [e["details"] for e in events if e["action"] == "experiment_done"]
    assert len({d["run_id"] for d in done}) == 11
    assert {d.get("slot") for d in done[1:]} <= {0, 1, 2} and len({d.get("slot") for d in done[1:]}) >= 2
    starts = [e for e in events if e["action"] in ("experiment_start", "experiment_done")]
    # Runs overlapped: a second one started before the first candidate's row was written.
    assert [e["action"] for e in starts[2:4]] == ["experiment_start", "experiment_start"]
    assert git(out, "status", "--porcelain", "--untracked-files=no") == ""
    assert (tmp_path / "demo-slots").is_dir()  # the checkouts live beside the project, not in it


def test_demo_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("mine")
    result = run_cli("demo", "--keep-dir", str(tmp_path))
    assert result.returncode == 2 and "not empty" in result.stderr
    assert (tmp_path / "x").read_text() == "mine"


@pytest.mark.parametrize("example", ["tune", "bundle"])
def test_scripted_agent_on_each_example(tmp_path: Path, example: str) -> None:
    if example == "bundle" and shutil.which("node") is None:
        pytest.skip("the bundle example needs Node.js")
    project = prepare(example, str(tmp_path / example))

    async def main():
        async with Client(server_params(str(project))) as client:
            return await ScriptedAgent(client, log=lambda _line: None).loop(8, seed=3, tag="t")

    summary = anyio.run(main)
    assert summary.experiments == 9
    assert summary.results["total"] == 9
    assert summary.results["counts"]["keep"] >= 1
    events = (project / ".autoresearch" / "autoresearch.jsonl").read_text()
    assert events.count('"experiment_notes"') >= 1


def test_proposals_change_one_thing() -> None:
    import random

    content = "A = 1.5\nB = 3\nprint(A * B)\n"
    rng = random.Random(0)
    for _ in range(50):
        proposal = propose(content, rng)
        assert proposal is not None and content.count(proposal.old) == 1
        assert proposal.old != proposal.new
