"""Issue 12, item 15: the terminal views as people use them: narrow terminals, pipes, typos, no git yet."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mcp_autoresearch.statuses import FILTERS as STATUS_FILTERS

from .conftest import GIT_ENV, run_cli

pytestmark = pytest.mark.anyio

LONG_NOTE = "smaller steps help; the oscillation is gone and the curve is smooth"
LONG_DESCRIPTION = "lower LR to 0.3 because the loss curve oscillates early in training"


async def history(agent, extra_runs: int = 0) -> None:
    """Three experiments; with `extra_runs`, that many more, each with notes as long as a run may hold."""
    await agent.ok("start_session", tag="views")
    await agent.experiment("baseline")
    await agent.edit("LR = 0.5", "LR = 0.3")
    run, _ = await agent.experiment(LONG_DESCRIPTION)
    await agent.ok("log_result", run_id=run["run_id"], notes=LONG_NOTE)
    await agent.edit("LR = 0.3", "LR = 0.9")
    await agent.experiment("higher LR")
    for number in range(extra_runs):
        await agent.edit("LR = 0.3", f"LR = 0.3{number + 1}")
        run, _ = await agent.experiment(f"LR = 0.3{number + 1}")
        for _ in range(3):
            await agent.ok(
                "log_result", run_id=run["run_id"], notes=f"note {number}: " + "lorem ipsum " * 330
            )


def cli(*args: str, columns: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **GIT_ENV}
    env.pop("COLUMNS", None)
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run(
        [sys.executable, "-m", "mcp_autoresearch", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def words_whole(text: str, phrase: str) -> bool:
    """Every word of `phrase` appears whole somewhere (a column folded one character per line breaks them)."""
    found = set(re.findall(r"[\w.;:]+", text))
    return all(word in found for word in re.findall(r"[\w.;:]+", phrase))


async def test_tables_never_fold_notes_to_one_character(ml_project: Path, agent_for) -> None:
    async with agent_for(ml_project) as agent:
        await history(agent)
    project = str(ml_project)
    for command in (["results"], ["dashboard", "--once"]):
        for columns in (None, 60, 80, 99, 100, 140):  # None: piped, rich's default width
            out = cli(*command, "--project", project, columns=columns)
            assert out.returncode == 0, out.stderr
            lines = out.stdout.splitlines()
            width = columns or 80
            assert max(len(line) for line in lines) <= width, (command, columns)
            for phrase in (LONG_NOTE, LONG_DESCRIPTION, "higher LR"):
                assert words_whole(out.stdout, phrase), (command, columns, phrase, out.stdout)
            # No line of the table is a column of single characters: every row line carries text.
            assert not any(re.fullmatch(r"[│ ]*\S?[│ ]*", line) and "│" in line for line in lines), out.stdout
            # Issue 21.6: from 80 columns (a pipe's width) the description keeps a usable width: the memory and
            # delta columns are left out first.
            header = next(line for line in lines if "description" in line)
            cell = next(part for part in header.split("┃") if "description" in part)
            assert width < 80 or len(cell) - 2 >= 28, (command, columns, header)


async def test_json_into_a_closed_pipe_and_bad_status(ml_project: Path, agent_for) -> None:
    async with agent_for(ml_project) as agent:
        await history(agent, extra_runs=8)  # over a pipe buffer of JSON (64 KiB)
    project = str(ml_project)
    assert len(cli("results", "--project", project, "--format", "json").stdout) > 65536
    for command in (
        f"{sys.executable} -m mcp_autoresearch results --project {project} --format json | head -3",
        f"{sys.executable} -m mcp_autoresearch results --project {project} | head -1",
        f"{sys.executable} -m mcp_autoresearch status --project {project} | head -1",
    ):
        out = subprocess.run(
            ["bash", "-c", f"set -o pipefail; {command}; echo exit=$? >&2"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **GIT_ENV},
        )
        assert "Traceback" not in out.stderr and "BrokenPipeError" not in out.stderr, out.stderr
        assert "Exception ignored" not in out.stderr, out.stderr
        assert re.search(r"exit=(0|141)\b", out.stderr), out.stderr

    for command in (["results"], ["dashboard", "--once"]):
        bogus = run_cli(*command, "--project", project, "--status", "bogus")
        assert bogus.returncode == 2 and bogus.stdout == ""
        assert "'bogus'" in bogus.stderr and all(s in bogus.stderr for s in STATUS_FILTERS), bogus.stderr
        assert len(bogus.stderr.strip().splitlines()) == 1
    kept = run_cli("results", "--project", project, "--status", "KEEP", "--format", "json")
    assert [row["status"] for row in json.loads(kept.stdout)] == ["keep", "keep"]


def test_detect_outside_git_says_so(tmp_path: Path) -> None:
    project = tmp_path / "nogit"
    project.mkdir()
    (project / "train.py").write_text("print('val_bpb: 1.0')\n")
    (project / "prepare.py").write_text("SEED = 1\n")
    for extra in ([], ["--json"]):
        out = run_cli("detect", "--project", str(project), *extra)
        assert out.returncode == 2, out
        assert "not inside a git repository" in out.stderr and "git init" in out.stderr
        assert "train.py" in out.stdout  # what was detected is still shown
        assert extra or "Ready" not in out.stdout
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=project, check=True)
    empty = run_cli("detect", "--project", str(project))
    assert empty.returncode == 2 and "no commits yet" in empty.stderr


async def test_plot_hint_names_a_command_that_works_from_a_clone(
    ml_project: Path, tmp_path: Path, agent_for
) -> None:
    """Without matplotlib (its import blocked in this process), the hint names the clone's install command."""
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session", tag="plot")
        await agent.experiment("baseline")
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from mcp_autoresearch.adapters.cli import main\n"
        f"raise SystemExit(main(['plot', '--project', {str(ml_project)!r}, '--out', {str(tmp_path / 'p.png')!r}]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert 'pip install ".[plot]"' in out.stderr and sys.executable in out.stderr, out.stderr
    assert "mcp-autoresearch[plot]" not in out.stderr


@pytest.mark.parametrize("args", [["detect"], ["detect", "--json"], ["--help"]])
def test_output_into_a_closed_pipe_ends_quietly(ml_project: Path, args: list[str]) -> None:
    """Issue 21.6: `detect | head` ended in a BrokenPipeError traceback. Here the reader is gone before the
    command writes anything (the worst case of `| head`): no traceback, the exit of a process stopped by SIGPIPE."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "mcp_autoresearch",
                *args,
                *(["--project", str(ml_project)] if "detect" in args else []),
            ],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **GIT_ENV},
        )
    finally:
        os.close(write)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode in (0, 141)  # --help exits 0 from argparse before its output is flushed
