"""Issue 12: what other MCP clients read. Self-contained schemas: the official TypeScript SDK client (1.22.0 and
latest) lists and calls every tool."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import GIT_ENV

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
async def test_published_schemas_are_self_contained(ml_project: Path, agent_for) -> None:
    async with agent_for(ml_project) as agent:
        tools = {tool.name: tool for tool in (await agent.client.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        for kind, schema in (("input", tool.input_schema), ("output", tool.output_schema)):
            assert schema is not None and schema.get("type") == "object", (tool.name, kind)
            for where, node in walk(schema):
                if isinstance(node, dict):
                    assert "$ref" not in node and "$defs" not in node, f"{tool.name} {kind} {where}"
    assert tools["apply_edit"].input_schema["properties"]["edits"]["anyOf"][0]["items"]["required"] == [
        "old_text",
        "new_text",
    ]
    best = tools["query_results"].output_schema["properties"]["best"]["anyOf"][0]
    assert best["properties"]["value"]["type"] == "number"


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
    assert decisions == ["keep", "keep", "keep"]
    assert report["calls"]["query_results"][0]["best"]["description"] == "LR 0.2"
    assert "LR = 0.2" in (ml_project / "train.py").read_text()
