"""Review 18: attacks of the target's code on what a run can see and hold while it runs (what earlier runs left
beside it, the view's hidden folders, the machine's memory), through the real server (the MCP client) in the real
sandbox, or the real keeper. Each test here failed before its fix (or is a strict xfail naming the fix)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_autoresearch.sandbox.policy import probe_isolation

from .helpers.needs import require
from .test_eval_stage import project as stage_project

pytestmark = pytest.mark.anyio

ISOLATION = probe_isolation("auto")

# The candidate answers with what the previous run left in `out/`, moved aside by the server before this run into
# `.autoresearch/outputs/<tag>/`: it computes nothing, and is one line long.
COPIES_THE_LAST_ANSWER = "import glob; print(open(sorted(glob.glob('.autoresearch/outputs/**/answer.txt', recursive=True))[-1]).read())\n"


async def test_a_run_cannot_answer_with_the_outputs_an_earlier_run_left(tmp_path: Path, agent_for) -> None:
    """Every run starts from empty output directories: what the previous run left is moved aside into
    `.autoresearch/outputs/<tag>/run-<id>/`. That folder was readable to the next run: a candidate that computes
    nothing and prints the best's answer from there was scored as the best, and kept as equal and simpler."""
    require(ISOLATION.confined or ISOLATION.namespaces, "CI confines runs", "runs are not confined here")
    root = stage_project(tmp_path)
    async with agent_for(root) as agent:
        await agent.ok("start_session")
        _, base = await agent.experiment("baseline")
        assert base["decision"] == "keep", base
        await agent.ok("apply_edit", content=COPIES_THE_LAST_ANSWER)
        run, decision = await agent.experiment("computes nothing, copies the best's answer")
    assert decision["decision"] != "keep", (run, decision)
    assert run["status"] == "crash" and "IndexError" in Path(run["log_path"]).read_text(), run
