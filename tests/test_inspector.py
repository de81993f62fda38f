"""A real third-party client: the official MCP Inspector (npm) in CLI mode against our stdio server.

tests/install-deps.sh installs it into .ci/inspector (MCP_INSPECTOR may point elsewhere). Without it the test
skips, saying why, and fails under CI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import GIT_ENV

DEFAULT = Path(__file__).parents[1] / ".ci" / "inspector" / "node_modules" / ".bin" / "mcp-inspector"
INSPECTOR = os.environ.get("MCP_INSPECTOR") or (str(DEFAULT) if DEFAULT.exists() else None)


def inspector(root: Path, *method: str) -> dict:
    command = [
        INSPECTOR,
        "--cli",
        sys.executable,
        "-m",
        "mcp_autoresearch",
        "serve",
        "--project",
        str(root),
        *method,
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, **GIT_ENV})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_inspector_lists_tools_and_calls_them(ml_project: Path) -> None:
    if not INSPECTOR:
        missing = "the MCP Inspector is not installed (bash tests/install-deps.sh installs it with npm)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Inspector: {missing}")
        pytest.skip(missing)
    tools = inspector(ml_project, "--method", "tools/list")["tools"]
    names = {tool["name"] for tool in tools}
    assert {"detect_project", "query_results", "run_experiment", "commit_or_reset"} <= names
    detected = inspector(ml_project, "--method", "tools/call", "--tool-name", "detect_project")
    assert detected["structuredContent"]["project_type"] == "ml"
    no_session = inspector(
        ml_project, "--method", "tools/call", "--tool-name", "query_results", "--tool-arg", "limit=5"
    )
    assert no_session["isError"] is True and "start_session" in no_session["content"][0]["text"]
