"""What stopped or misled a new user on real projects fetched from the registries (a single-module Python
library whose tests sit at the root, a folder of shell scripts scored by an evaluation stage): real repositories,
the real configuration loader, real runs through the real server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mcp_autoresearch.setup.project import load_project

from .conftest import git, make_repo, run_cli
from .test_landing import flat_session

pytestmark = pytest.mark.anyio

LIBRARY = """\
def underscore(word: str) -> str:
    return word.replace("-", "_").lower()
"""
ROOT_TESTS = """\
from slugs import underscore


def test_underscore() -> None:
    assert underscore("Device-Type") == "device_type"
"""


def single_module_library(tmp_path: Path) -> Path:
    """The shape of `inflection` (PyPI): setup.py, the package, and its tests in test_<name>.py at the root."""
    files = {
        "setup.py": "from setuptools import setup\nsetup(name='slugs', packages=['slugs'])\n",
        "slugs/__init__.py": LIBRARY,
        "test_slugs.py": ROOT_TESTS,
    }
    return make_repo(tmp_path / "slugs", files)


def test_tests_at_the_root_are_run(tmp_path: Path) -> None:
    """inflection 0.5.1 keeps its 455 tests in test_inflection.py beside the package, where pytest collects them:
    detection found no tests/ directory, set no run command ('run command: -') and sent the user off to write
    one. The detected command must run the root's tests, and pass on the unmodified library."""
    root = single_module_library(tmp_path)
    info = load_project(root).info
    assert info.run_command is not None and info.run_command.endswith("-m pytest -q -x test_slugs.py"), info
    assert info.target_file == "slugs/__init__.py"
    assert not [w for w in info.warnings if "set run_command to what exercises" in w], info.warnings
    ran = subprocess.run(info.run_command, shell=True, cwd=root, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0 and "1 passed" in ran.stdout, ran.stdout + ran.stderr


def test_the_missing_tests_warning_goes_once_run_command_is_set(tmp_path: Path) -> None:
    """A package without tests: the user did what the warning said (run_command in autoresearch.toml) and
    `detect` still said 'no tests/ directory ...: set run_command', beside the run command they had set."""
    files = {"setup.py": "from setuptools import setup\n", "slugs/__init__.py": LIBRARY}
    root = make_repo(tmp_path / "bare", files)
    warned_until_set(root, "set run_command to what exercises the code", "python3 -c 'import slugs'")


def warned_until_set(root: Path, said: str, command: str) -> None:
    """`detect` warns with `said` until autoresearch.toml gives run_command `command`, then no more."""
    assert [w for w in load_project(root).info.warnings if said in w]
    (root / "autoresearch.toml").write_text(f"run_command = {json.dumps(command)}\n")
    info = load_project(root).info
    assert info.run_command == command
    assert not [w for w in info.warnings if said in w], info.warnings


SCORER = """\
x = float(open("out/answer.txt").read())
print(f"score: {(x - 1) ** 2}")
"""
OBJECTIVE = """\
import os
X = 3
os.makedirs("out", exist_ok=True)
if X > 0:
    open("out/answer.txt", "w").write(str(X))
"""
EVAL_CONFIG = """\
target_file = "objective.py"
run_command = "python3 objective.py"
eval_command = "python3 scorer.py"
metric_name = "score"
writable = ["out"]
readonly_files = ["scorer.py"]
hidden = []
"""


async def test_a_failed_scorer_says_why(tmp_path: Path, agent_for) -> None:
    """A candidate that wrote no answer: the scorer raised FileNotFoundError, and the agent was told 'the
    evaluation stage (eval_command) failed: exit code 1; see its log r2-eval.log', an empty file (the traceback
    is on the scorer's stderr, in r2-eval.stderr.log, which neither the error nor log_tail named). The error
    must say why, and name the log that holds it."""
    root = make_repo(
        tmp_path / "ev", {"objective.py": OBJECTIVE, "scorer.py": SCORER, "autoresearch.toml": EVAL_CONFIG}
    )
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="t")
        base = await agent.ok("run_experiment", description="baseline", decide=True)
        assert base["status"] == "ok" and base["value"] == 4.0, base
        run = await agent.ok(
            "run_experiment",
            description="no answer",
            edits=[{"old_text": "X = 3", "new_text": "X = 0"}],
            decide=True,
        )
    assert run["status"] == "metric_error", run
    error = run["error"]
    assert "exit code 1: FileNotFoundError" in error and "out/answer.txt" in error, error
    assert "r2-eval.stderr.log" in error, error


async def test_a_scorer_that_prints_no_number_says_why(tmp_path: Path, agent_for) -> None:
    """A shell scorer (`wc -c < out/data.gz`, then the ratio) that found no output printed 'ratio: inf' and exited 0:
    the agent read 'the metric is inf (not a finite number)', the cause ('cannot open out/data.gz') only in the
    stderr log nothing named."""
    scorer = 'comp=$(wc -c < out/data.gz)\nif [ -n "$comp" ]; then echo "ratio: $((300 / comp))"; else echo "ratio: inf"; fi\n'
    config = (
        'target_file = "compress.sh"\nrun_command = "sh compress.sh"\neval_command = "sh score.sh"\n'
        'metric_name = "ratio"\nmetric_direction = "higher"\nwritable = ["out"]\nreadonly_files = ["score.sh"]\n'
        "hidden = []\n"
    )
    compress = "mkdir -p out\nprintf 'abc' > out/data.gz\n"
    root = make_repo(
        tmp_path / "sh", {"compress.sh": compress, "score.sh": scorer, "autoresearch.toml": config}
    )
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="t")
        base = await agent.ok("run_experiment", description="baseline", decide=True)
        assert base["status"] == "ok", base
        edit = {"old_text": "printf 'abc' > out/data.gz\n", "new_text": "true\n"}
        run = await agent.ok("run_experiment", description="write nothing", edits=[edit], decide=True)
    assert run["status"] == "metric_error" and "inf" in run["error"], run
    assert "its stderr ends:" in run["error"] and "out/data.gz" in run["error"], run["error"]


async def test_clean_on_the_session_branch_advises_landing_only_what_is_unlanded(
    ml_project: Path, agent_for
) -> None:
    """`clean --tag` on the session's branch: after a session that kept nothing beyond its baseline (and after
    one already landed), the refusal still said 'land the result before if you want it (mcp-autoresearch finish
    --land main)', which `finish` then refused ('nothing to land'). The way forward is the checkout alone; a
    session with kept commits on no other branch still gets the landing hint."""
    root = ml_project
    await flat_session(root, agent_for)
    refused = run_cli("clean", "--project", str(root), "--tag", "flat", "--yes")
    assert refused.returncode == 2 and "git checkout main" in refused.stderr, refused.stderr
    assert "finish --land" not in refused.stderr, refused.stderr
    assert "nothing to land" in run_cli("finish", "--project", str(root), "--land", "main").stderr
    summary = run_cli("finish", "--project", str(root)).stdout  # where it says how to remove the session
    assert "to remove the session: git checkout main, then mcp-autoresearch clean --tag flat" in summary, (
        summary
    )
    assert "Best lineage (1 node): r1" in run_cli("status", "--project", str(root)).stdout

    git(root, "checkout", "-q", "main")
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="kept")
        await agent.experiment("baseline")
        await agent.edit("LR = 0.5", "LR = 0.3")
        _, decision = await agent.experiment("lower LR")
    assert decision["decision"] == "keep", decision
    unlanded = run_cli("clean", "--project", str(root), "--tag", "kept", "--yes")
    assert unlanded.returncode == 2 and "finish --land main" in unlanded.stderr, unlanded.stderr
    landing = run_cli("finish", "--project", str(root), "--session", "kept", "--land", "main")
    assert landing.returncode == 0, landing.stderr
    assert "when done with the session: git checkout main, then mcp-autoresearch clean" in landing.stdout
    landed = run_cli("clean", "--project", str(root), "--tag", "kept", "--yes")
    assert landed.returncode == 2 and "git checkout main" in landed.stderr, landed.stderr
    assert "finish --land" not in landed.stderr, landed.stderr


def test_the_missing_build_script_warning_goes_once_run_command_is_set(tmp_path: Path) -> None:
    """`ms` (npm) has no build script: the user set run_command as the warning said, and `detect` still said
    "package.json has no 'build' script; set run_command to what builds the bundle" beside it."""
    files = {
        "package.json": '{"name": "ms", "main": "index.js", "scripts": {"test": "mocha"}}',
        "index.js": "1\n",
    }
    root = make_repo(tmp_path / "ms", files)
    warned_until_set(root, "no 'build' script", "mkdir -p dist && cp index.js dist/ms.js")


async def test_the_dashboard_shows_a_long_target_whole_at_80_columns(tmp_path: Path, agent_for) -> None:
    """`dashboard --once` in a pipe (80 columns): the panel's title held the target last and its border cut it
    short ('inflection/__init_…'). The target must be shown whole: in the title where it fits, else on a line of
    its own."""
    target = "a_package_with_a_long_name/submodule_of_it/__init__.py"
    shown = await dashboard_of(tmp_path, agent_for, target)
    assert f"target: {target}" in shown, shown
    assert max(len(line) for line in shown.splitlines()) <= 80, shown


async def dashboard_of(tmp_path: Path, agent_for, target: str) -> str:
    """`dashboard --once` (80 columns: a pipe) of a session on a project whose target is `target`, after its
    baseline."""
    config = f'target_file = "{target}"\nrun_command = "echo score: 1.0"\nmetric_name = "score"\n'
    root = make_repo(tmp_path / "dash", {target: "1\n", "autoresearch.toml": config})
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="wide")
        await agent.experiment("baseline")
    shown = run_cli("dashboard", "--project", str(root), "--once")
    assert shown.returncode == 0, shown.stderr
    return shown.stdout
