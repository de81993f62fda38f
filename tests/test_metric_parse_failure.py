"""A metric_parse that fails gives no value: never the first number of its error message (a path, a line
number of a traceback)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .test_eval_stage import project

pytestmark = pytest.mark.anyio


async def baseline_parsed_by(tmp_path: Path, agent_for: Any, parse: str) -> dict[str, Any]:
    """The baseline of the evaluation stage's project with `parse` as its metric_parse: its result."""
    root = project(tmp_path, f"metric_parse = {json.dumps(parse)}\n")
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="t")
        result: dict[str, Any] = await agent.ok("run_experiment", description="baseline", decide=True)
        return result


async def test_a_failed_metric_parse_is_a_metric_error(tmp_path: Path, agent_for: Any) -> None:
    parse = "python3 -c 'import sys; sys.exit(\"no score line in run7.log\")'"
    run = await baseline_parsed_by(tmp_path, agent_for, parse)
    assert run["status"] == "metric_error" and run.get("value") is None, run
    assert (
        "metric_parse failed (exit code 1)" in run["error"] and "no score line in run7.log" in run["error"]
    ), run


async def test_a_warning_metric_parse_prints_on_stderr_is_never_read_as_the_metric(
    tmp_path: Path, agent_for: Any
) -> None:
    """A parser that warns on stderr (a line number, a path with digits) and prints the metric on stdout: the
    value is stdout's number, not the warning's."""
    run = await baseline_parsed_by(
        tmp_path, agent_for, "echo 'warning: line 12 of the log is odd' >&2; echo 0.5"
    )
    assert run["status"] == "ok" and run["value"] == 0.5, run
