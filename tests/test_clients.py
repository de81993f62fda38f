"""Issue 12: what other MCP clients read. Self-contained schemas (the official TypeScript SDK client, 1.22.0 and
latest, lists and calls every tool), optional arguments as plain types, file content that is itself JSON, and
the descriptions an LLM reads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from mcp_autoresearch.statuses import FILTERS as STATUS_FILTERS

from .conftest import GIT_ENV, Agent, make_repo, stdio_params

TOOLS = {
    "detect_project",
    "start_session",
    "read_target",
    "apply_edit",
    "run_experiment",
    "wait_experiment",
    "commit_or_reset",
    "log_result",
    "query_results",
    "branch_from",
    "combine",
}
REPO_ROOT = Path(__file__).resolve().parent.parent
TS_CLIENT = Path(__file__).with_name("ts_client.mjs")
# `.ci/run` installs both versions here (npm aliases sdk-1.22.0 and sdk-latest); MCP_TS_CLIENT_DIR overrides.
TS_MODULES = Path(os.environ.get("MCP_TS_CLIENT_DIR") or REPO_ROOT / ".ci" / "tsclient" / "node_modules")


def walk(schema: Any, where: str = "#"):
    """Every (path, node) of a JSON schema."""
    yield where, schema
    if isinstance(schema, dict):
        for key, value in schema.items():
            yield from walk(value, f"{where}/{key}")
    elif isinstance(schema, list):
        for index, item in enumerate(schema):
            yield from walk(item, f"{where}/{index}")


@pytest.mark.anyio
async def test_published_schemas_are_self_contained_and_plain(ml_project: Path, agent_for) -> None:
    async with agent_for(ml_project) as agent:
        tools = {tool.name: tool for tool in (await agent.client.list_tools()).tools}
        prompts = (await agent.client.list_prompts()).prompts
    assert set(tools) == TOOLS
    for tool in tools.values():
        for kind, schema in (("input", tool.input_schema), ("output", tool.output_schema)):
            assert schema is not None and schema.get("type") == "object", (tool.name, kind)
            for where, node in walk(schema):
                if isinstance(node, dict):
                    assert "$ref" not in node and "$defs" not in node, f"{tool.name} {kind} {where}"
        # Optional arguments: a plain type, the default in the description (no anyOf, no null).
        for where, node in walk(tool.input_schema):
            if isinstance(node, dict):
                for union in ("anyOf", "oneOf", "allOf"):
                    assert union not in node, f"{tool.name} {where}: {union}"
                assert node.get("type") != "null" and "null" not in (node.get("type") or []), where
                assert not ("default" in node and node["default"] is None), f"{tool.name} {where}"
        required = set(tool.input_schema.get("required", []))
        for name, prop in tool.input_schema.get("properties", {}).items():
            assert prop.get("description"), f"{tool.name}.{name} has no description"
            assert "type" in prop, f"{tool.name}.{name} has no plain type"
            if name not in required:
                assert "default" in prop["description"].lower(), f"{tool.name}.{name}: default not stated"
        # Nested too (the objects inside `edits`): every property described, of one plain type (review 24).
        for where, node in walk(tool.input_schema):
            if isinstance(node, dict) and isinstance(node.get("properties"), dict):
                for name, prop in node["properties"].items():
                    assert prop.get("description"), f"{tool.name} {where}.{name} has no description"
                    assert isinstance(prop.get("type"), str), (
                        f"{tool.name} {where}.{name}: {prop.get('type')}"
                    )
    edits = tools["apply_edit"].input_schema["properties"]["edits"]
    assert edits["type"] == "array" and edits["items"]["required"] == ["old_text", "new_text"]

    # Item 9: what an LLM reads without opening a nested schema.
    run = tools["run_experiment"].description
    assert "'running'" in run and "wait_experiment" in run and "commit_or_reset" in run
    assert "old_text" in tools["apply_edit"].description and "new_text" in tools["apply_edit"].description
    assert "old_text" in edits["description"] and "new_text" in edits["description"]
    status = tools["query_results"].input_schema["properties"]["status"]
    assert status["type"] == "string" and status["enum"] == list(STATUS_FILTERS)
    assert {"keep", "discard", "crash", "timeout", "metric_error"} <= set(status["enum"])
    (loop,) = prompts
    assert [(a.name, bool(a.description), a.required) for a in loop.arguments] == [("focus", True, False)]
    best = tools["query_results"].output_schema["properties"]["best"]["anyOf"][0]
    assert best["properties"]["value"]["type"] == "number"


@pytest.mark.anyio
async def test_omitted_and_null_optional_arguments_are_accepted(ml_project: Path, agent_for) -> None:
    async with agent_for(ml_project) as agent:
        client = agent.client
        started = await agent.ok("start_session", tag=None)
        assert started["branch"].startswith("autoresearch/")
        whole = await agent.ok("read_target", start_line=None, end_line=None)
        assert whole["start_line"] == 1 and whole["end_line"] == whole["total_lines"]
        part = await agent.ok("read_target", start_line=2)
        assert part["content"].startswith("WIDTH")
        run = await agent.ok("run_experiment", description="baseline", wait_s=None)
        assert run["status"] == "ok"
        decision = await agent.ok("commit_or_reset", run_id=None)
        assert decision["decision"] == "keep"
        rows = await agent.ok("query_results", status=None)
        assert rows["total"] == 1
        assert (await agent.ok("query_results", status="keep"))["rows"][0]["run_id"] == "r1"
        bogus = await client.call_tool("query_results", {"status": "bogus"})
        assert bogus.is_error and "keep" in bogus.content[0].text


JSON_PROJECT = {
    "params.json": '{"lr": 0.5}\n',
    "run.py": (
        "import json\n"
        "params = json.load(open('params.json'))\n"
        "lr = params['lr'] if isinstance(params, dict) else 0.9\n"
        "print(f'loss: {abs(lr - 0.1) + 1:.6f}')\n"
    ),
    "autoresearch.toml": 'target_file = "params.json"\nrun_command = "python3 run.py"\nmetric_name = "loss"\n',
}


@pytest.mark.anyio
async def test_json_and_null_content_are_written_as_text(tmp_path: Path, agent_for) -> None:
    """The SDK JSON-decodes string arguments: `content` must stay text whatever it looks like."""
    root = make_repo(tmp_path / "jsonproj", JSON_PROJECT)
    target = root / "params.json"
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="json")
        await agent.experiment("baseline")
        for content in ('{"lr": 0.1}', "null", "[1, 2]", "true", '"just a string"', "5", "lr: 0.2\n"):
            edit = await agent.ok("apply_edit", content=content)
            assert target.read_text() == content, content
            assert edit["path"] == "params.json"
        await agent.ok("apply_edit", content='{"lr": 0.1}')
        run, decision = await agent.experiment("lr 0.1")
        assert run["value"] == 1.0 and decision["decision"] == "keep"
    # Over stdio too: the subprocess server, the real client, a JSON object and "null" as content.
    async with Client(stdio_params(root)) as client:
        agent = Agent(client)
        await agent.ok("start_session", tag="json")
        await agent.ok("apply_edit", content='{"lr": 0.3}', path="params.json")
        assert json.loads(target.read_text()) == {"lr": 0.3}
        await agent.ok("apply_edit", content="null")
        assert target.read_text() == "null"


def ts_sdk(version: str) -> Path:
    """The installed TypeScript SDK, or a skip (locally) / a failure (in CI) saying how to install it."""
    node = shutil.which("node")
    sdk = TS_MODULES / f"sdk-{version}"
    missing = None
    if node is None:
        missing = "node is not installed"
    elif not (sdk / "package.json").is_file():
        missing = (
            f"@modelcontextprotocol/sdk@{version} is not installed in {TS_MODULES} (.ci/run installs it)"
        )
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the TypeScript SDK client: {missing}")
        pytest.skip(missing)
    return sdk


@pytest.mark.parametrize("version", ["1.22.0", "latest"])
def test_typescript_sdk_client_lists_and_calls_every_tool(version: str, ml_project: Path) -> None:
    sdk = ts_sdk(version)
    out = subprocess.run(
        ["node", str(TS_CLIENT), str(sdk), sys.executable, str(ml_project)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **GIT_ENV},
    )
    assert out.returncode == 0, out.stderr[-4000:]
    report = json.loads(out.stdout)
    if version != "latest":
        assert report["version"] == version
    assert set(report["tools"]) == TOOLS and report["prompts"] == ["loop"]
    assert set(report["calls"]) == TOOLS, "every tool is called"
    decisions = [d["decision"] for d in report["calls"]["commit_or_reset"]]
    assert decisions == ["keep", "keep", "keep", "discard"]  # the last: a sibling, combined with the best
    assert report["calls"]["combine"][0]["combined"] == ["r3", "r4"]
    assert report["calls"]["query_results"][0]["best"]["description"] == "LR 0.2"
    assert "LR = 0.2" in (ml_project / "train.py").read_text()
