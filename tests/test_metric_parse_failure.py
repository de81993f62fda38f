"""A metric_parse that fails gives no value: never the first number of its error message (a path, a line
number of a traceback)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .test_eval_stage import project

pytestmark = pytest.mark.anyio


async def test_a_failed_metric_parse_is_a_metric_error(tmp_path: Path, agent_for: Any) -> None:
    parse = "python3 -c 'import sys; sys.exit(\"no score line in run7.log\")'"
    root = project(tmp_path, f"metric_parse = {json.dumps(parse)}\n")
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="t")
        run = await agent.ok("run_experiment", description="baseline")
        while run["status"] == "running":
            run = await agent.ok("wait_experiment", run_id=run["run_id"])
    assert run["status"] == "metric_error" and run.get("value") is None, run
    assert (
        "metric_parse failed (exit code 1)" in run["error"] and "no score line in run7.log" in run["error"]
    ), run
