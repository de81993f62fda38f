"""A real third-party client: the official MCP Inspector (npm) in CLI mode, against our stdio server as a user
starts it (`mcp-inspector --cli <command>`), and against one HTTP server through a whole session.

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
from .helpers.ports import free_port
from .helpers.serving import serving

DEFAULT = Path(__file__).parents[1] / ".ci" / "inspector" / "node_modules" / ".bin" / "mcp-inspector"
INSPECTOR = os.environ.get("MCP_INSPECTOR") or (str(DEFAULT) if DEFAULT.exists() else None)


def _cli() -> list[str]:
    """The Inspector's CLI mode itself: `mcp-inspector --cli` starts a second node process for it,
    `cli/build/index.js` beside its own script (about 0.7 s of CPU a call more)."""
    assert INSPECTOR is not None
    program = Path(INSPECTOR).resolve().with_name("index.js")
    return ["node", str(program)] if program.exists() else [INSPECTOR, "--cli"]


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


def test_inspector_calls_every_tool_through_a_session(ml_project: Path) -> None:
    """Every tool, each with the arguments the Inspector's CLI types from its schema (`--tool-arg key=value`), over
    HTTP to one server (a stdio server per call cost a server's start each, 19 of them; the test above covers
    stdio)."""
    if not INSPECTOR:
        missing = "the MCP Inspector is not installed (bash tests/install-deps.sh installs it with npm)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Inspector: {missing}")
        pytest.skip(missing)
    port = free_port()
    argv = ["serve", "--project", str(ml_project), "--transport", "http", "--port", str(port)]
    for _server in serving(argv, b"serving MCP over HTTP at"):
        _every_tool(ml_project, f"http://127.0.0.1:{port}/mcp")


def _every_tool(ml_project: Path, url: str) -> None:
    def inspector_http(*method: str) -> dict:
        command = [*_cli(), url, "--transport", "http", *method]
        out = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout)

    def call(tool: str, *args: str) -> dict:
        flags = [item for arg in args for item in ("--tool-arg", arg)]
        result = inspector_http("--method", "tools/call", "--tool-name", tool, *flags)
        assert result.get("isError") is not True, result
        return result["structuredContent"]

    names = {tool["name"] for tool in inspector_http("--method", "tools/list")["tools"]}
    called = set()
    assert call("detect_project")["project_type"] == "ml"
    assert call("start_session", "tag=insp")["branch"] == "autoresearch/insp"
    baseline = call("run_experiment", "description=baseline", "wait_s=40")
    if baseline["status"] == "running":
        baseline = call("wait_experiment", f"run_id={baseline['run_id']}", "wait_s=40")
    assert call("commit_or_reset", f"run_id={baseline['run_id']}")["decision"] == "keep"
    view = call("read_target", "start_line=1", "end_line=2")
    assert view["content"].startswith("LR = 0.5")
    call("apply_edit", "content=" + (ml_project / "train.py").read_text().replace("LR = 0.5", "LR = 0.2"))
    run = call("run_experiment", "description=lower LR", "wait_s=40")
    run = call("wait_experiment", f"run_id={run['run_id']}", "wait_s=40")
    assert run["status"] == "ok" and run["value"] == pytest.approx(1.1)
    assert call("commit_or_reset", f"run_id={run['run_id']}")["decision"] == "keep"
    assert (
        call("log_result", f"run_id={run['run_id']}", "notes=a lower LR helps")["added"] == "a lower LR helps"
    )
    # The research tree: a sibling of the kept run (from the baseline), then the two combined, then the best again.
    assert call("branch_from", "run_id=r1")["parent"] == "r1"
    assert "LR = 0.5" in (ml_project / "train.py").read_text()
    sibling = (ml_project / "train.py").read_text().replace("step 1 loss 2.0", "step 1 loss 1.9")
    call("apply_edit", "content=" + sibling)
    side = call("run_experiment", "description=another loss line", "wait_s=40")
    side = call("wait_experiment", f"run_id={side['run_id']}", "wait_s=40")
    assert call("commit_or_reset", f"run_id={side['run_id']}")["decision"] == "discard"
    merged = call("combine", f"run_a={run['run_id']}", f"run_b={side['run_id']}")
    assert merged["parent"] == run["run_id"] and merged["combined"] == [run["run_id"], side["run_id"]]
    assert (
        "LR = 0.2" in (ml_project / "train.py").read_text()
        and "loss 1.9" in (ml_project / "train.py").read_text()
    )
    assert call("branch_from", f"run_id={run['run_id']}")["parent"] == run["run_id"]
    assert call("query_results", "limit=5")["counts"]["keep"] == 2
    called |= {"detect_project", "start_session", "run_experiment", "wait_experiment", "commit_or_reset"}
    called |= {"read_target", "apply_edit", "log_result", "query_results", "branch_from", "combine"}
    assert called == names
