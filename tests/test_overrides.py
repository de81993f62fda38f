"""Issue 8: the user picks the target (and other settings) on the server's command line; the agent never can."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mcp import Client

from .conftest import make_repo, run_cli, stdio_params

pytestmark = pytest.mark.anyio

FILES = {
    "train.py": "print('val_bpb: 1.0')\n",
    "prepare.py": "",
    "model.py": "print('accuracy: 0.5')\n",
    "eval.py": "",
    "autoresearch.toml": 'target_file = "train.py"\ntime_budget = 60\nmetric_name = "val_bpb"\n',
    "alt.toml": 'target_file = "eval.py"\nrun_command = "python3 eval.py"\n',
}

FLAGS = [
    "--target",
    "model.py",
    "--run-command",
    "python3 model.py",
    "--metric",
    "accuracy",
    "--direction",
    "higher",
    "--time-budget",
    "12",
    "--readonly",
    "eval.py",
    "--readonly",
    "prepare.py",
]


def test_every_flag_through_detect_and_precedence_over_toml(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "p", FILES)
    out = run_cli("detect", "--project", str(root), "--json", *FLAGS)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["target_file"] == "model.py"
    assert info["run_command"] == "python3 model.py"
    assert info["metric_name"] == "accuracy"
    assert info["metric_direction"] == "higher_is_better"
    assert info["time_budget"] == 12 and info["timeout"] == 24
    assert info["readonly_files"] == ["eval.py", "prepare.py"]
    for key in (
        "target_file",
        "run_command",
        "metric_name",
        "metric_direction",
        "time_budget",
        "readonly_files",
    ):
        assert info["config_source"][key] == "command line", key


def test_long_direction_form_and_config_file(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "p", FILES)
    out = run_cli(
        "detect",
        "--project",
        str(root),
        "--json",
        "--direction",
        "higher_is_better",
        "--config",
        str(root / "alt.toml"),
    )
    info = json.loads(out.stdout)
    assert info["metric_direction"] == "higher_is_better"
    assert info["target_file"] == "eval.py"  # alt.toml replaces autoresearch.toml
    assert info["config_source"]["target_file"] == str(root / "alt.toml")
    assert info["config_source"]["time_budget"] == "default"


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--direction", "sideways"], "metric_direction"),
        (["--time-budget", "soon"], "time_budget"),
        (["--target", "missing.py"], "does not exist"),
        (["--target", "prepare.py", "--readonly", "prepare.py"], "readonly"),
        (["--target", "../../etc/passwd"], "outside the project"),
        (["--config", "nope.toml"], "no such file"),
    ],
)
def test_bad_flag_values_exit_2_before_serving(tmp_path: Path, flags: list[str], fragment: str) -> None:
    root = make_repo(tmp_path / "p", FILES)
    for command in ("detect", "serve"):
        out = run_cli(command, "--project", str(root), *flags)
        assert out.returncode == 2, (command, flags, out.stderr)
        assert fragment in out.stderr and "Traceback" not in out.stderr


async def test_flags_through_a_real_stdio_server(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "p", FILES)
    async with Client(stdio_params(root, *FLAGS)) as client:
        info = (await client.call_tool("detect_project", {})).structured_content
        assert info["target_file"] == "model.py" and info["config_source"]["target_file"] == "command line"
        await client.call_tool("start_session", {})
        # No tool argument can move the target: apply_edit's path must name model.py.
        refused = await client.call_tool("apply_edit", {"path": "train.py", "content": "x"})
        assert refused.is_error and "single-file rule" in refused.content[0].text
        run = (await client.call_tool("run_experiment", {"description": "baseline"})).structured_content
        assert run["metric_name"] == "accuracy" and run["value"] == 0.5
        other = await client.call_tool("start_session", {"tag": "other"})
        assert other.is_error and "before starting another session" in other.content[0].text
        schema_names = set()
        for tool in (await client.list_tools()).tools:
            schema_names |= set(tool.input_schema.get("properties", {}))
    assert not schema_names & {
        "target",
        "target_file",
        "run_command",
        "metric",
        "metric_name",
        "readonly_files",
        "direction",
        "metric_direction",
    }
