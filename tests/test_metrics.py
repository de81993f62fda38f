"""Metrics the server measures itself: a build output must be one this run wrote (or one newer than the target's
last change), and web bundles are measured without their source maps. Real runs, real files."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from mcp_autoresearch.lifecycle.experiment import Experiment, ExperimentResult
from mcp_autoresearch.setup.config import ConfigValues, build_config
from mcp_autoresearch.setup.project import describe_measure, load_project

from .conftest import make_repo

BUILD = "mkdir -p dist && head -c 2048 /dev/zero > dist/app.js && head -c 8192 /dev/zero > dist/app.js.map"


def run(root: Path, command: str, measure: str = "size_kb:dist") -> ExperimentResult:
    config = build_config(
        {
            "run_command": command,
            "metric_name": "bundle_kb",
            "metric_measure": measure,
            "target_file": "src/app.js",
        }
    )
    return Experiment(config, root, "r1", root / ".autoresearch" / "runs").run()


def previous_build_then_edit(root: Path) -> None:
    """dist/ from an earlier build, then the agent's edit of the target."""
    (root / "dist").mkdir(parents=True)
    (root / "dist/app.js").write_bytes(b"x" * 1024)
    time.sleep(0.05)  # past the filesystem clock's granularity
    (root / "src").mkdir(exist_ok=True)
    (root / "src/app.js").write_text("export const broken = (\n")


def test_a_build_output_the_run_did_not_write_is_a_metric_error(tmp_path: Path) -> None:
    """Item 12.1: a build tool that exits 0 after an error and leaves the previous dist/ is not 'unchanged'."""
    previous_build_then_edit(tmp_path)
    result = run(tmp_path, "echo 'error: Unexpected end of input' >&2; exit 0")
    assert result.status == "metric_error"
    assert result.value is None
    assert "dist/ was not written by this run" in result.error
    assert "src/app.js" in result.error


def test_a_build_output_the_run_wrote_is_measured(tmp_path: Path) -> None:
    previous_build_then_edit(tmp_path)
    result = run(tmp_path, BUILD)
    assert result.status == "ok" and result.value == 10.0  # 2 KB of code + 8 KB of source map


def test_an_output_newer_than_the_target_is_up_to_date(tmp_path: Path) -> None:
    """An incremental build (cargo, go build) that finds its output up to date leaves it alone: still valid,
    as the output was built after the target last changed (a baseline, or a repeat)."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src/app.js").write_text("ok\n")
    time.sleep(0.05)
    (tmp_path / "dist").mkdir()
    (tmp_path / "dist/app.js").write_bytes(b"x" * 1024)
    result = run(tmp_path, "echo 'nothing to do'")
    assert result.status == "ok" and result.value == 1.0


def test_a_small_output_can_be_measured_in_bytes(tmp_path: Path) -> None:
    """A 244-byte bundle read 0.238281 in KB, a 1-byte gain 0.000976562: `size_b:` measures bytes, and detection
    and the config describe it so."""
    previous_build_then_edit(tmp_path)
    result = run(tmp_path, "mkdir -p dist && printf '%0244d' 0 > dist/app.js", "size_b:dist")
    assert result.status == "ok" and result.value == 244.0
    assert describe_measure("size_b:dist !*.map") == (
        "size of 'dist' in bytes, leaving out *.map, after the run (measured by the server; an output not "
        "written by the run is a metric_error)"
    )
    with pytest.raises(ValueError, match="size_b:<path>, size_kb:<path> or size_mb:<path>"):
        ConfigValues.model_validate({"metric_measure": "size_gb:dist"})
    assert ConfigValues.model_validate({"metric_measure": "size_b:dist"}).metric_measure == "size_b:dist"


def test_source_maps_can_be_left_out(tmp_path: Path) -> None:
    previous_build_then_edit(tmp_path)
    result = run(tmp_path, BUILD, "size_kb:dist !*.map")
    assert result.status == "ok" and result.value == 2.0


def test_node_bundle_size_leaves_source_maps_out_and_says_so(tmp_path: Path) -> None:
    package = {"scripts": {"build": "vite build"}}
    root = make_repo(tmp_path / "w", {"package.json": json.dumps(package), "src/index.ts": "export {}\n"})
    project = load_project(root)
    assert project.config.metric_measure == "size_kb:dist !*.map"
    assert "source maps" in project.info.metric_source
    assert "not written by the run" in project.info.metric_source
    configured = make_repo(
        tmp_path / "c",
        {
            "package.json": json.dumps(package),
            "src/index.ts": "export {}\n",
            "autoresearch.toml": 'metric_name = "kb"\nmetric_measure = "size_kb:build !*.map !*.LICENSE.txt"\n',
        },
    )
    source = load_project(configured).info.metric_source
    assert "'build'" in source and "*.map" in source and "*.LICENSE.txt" in source


# A bundler that, like some real ones, reports a syntax error and still exits 0, leaving the previous dist/.
BUILD_JS = """\
const fs = require("fs");
const source = fs.readFileSync("src/index.js", "utf8");
try { new Function(source); } catch (e) { console.error("error: " + e.message); process.exit(0); }
fs.mkdirSync("dist", { recursive: true });
fs.writeFileSync("dist/index.js", source.replace(/\\s+/g, " "));
fs.writeFileSync("dist/index.js.map", "x".repeat(5000));
"""


@pytest.mark.anyio
@pytest.mark.skipif(shutil.which("npm") is None, reason="needs node and npm")
async def test_a_silently_failing_node_build_is_not_kept(tmp_path: Path, agent_for) -> None:
    package = {"name": "w", "main": "dist/index.js", "scripts": {"build": "node build.js"}}
    root = make_repo(
        tmp_path / "web",
        {
            "package.json": json.dumps(package),
            ".gitignore": "dist/\nnode_modules/\n",
            "build.js": BUILD_JS,
            "src/index.js": "const unused = 1;\nmodule.exports = function add(a, b) { return a + b; };\n",
        },
    )
    async with agent_for(root) as agent:
        info = await agent.ok("detect_project")
        assert info["target_file"] == "src/index.js" and "source maps" in info["metric_source"]
        await agent.ok("start_session", tag="web")
        baseline, decision = await agent.experiment("baseline")
        assert baseline["status"] == "ok" and decision["decision"] == "keep"
        await agent.edit("const unused = 1;\n", "const broken = (;\n")
        run, decision = await agent.experiment("shorter but broken")
        assert run["status"] == "metric_error" and "not written by this run" in run["error"]
        assert decision["decision"] == "crash"
    # After the first build dist/index.js exists, and the next server still targets the source.
    assert load_project(root).info.target_file == "src/index.js"
