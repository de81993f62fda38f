"""Attacks on the logs of the evaluation stage, as the target's code would make them: each a real run through the
real server (the MCP client) in the real sandbox. The promise attacked: what a scorer printed about hidden data
never reaches a run: not the next run, not the run's own next repetition, not a run in another slot."""

from __future__ import annotations

import json
import shutil
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest

from mcp_autoresearch.sandbox.policy import probe_isolation

from .conftest import git
from .helpers.needs import require
from .helpers.slots import private_slots_home  # noqa: F401 (the autouse fixture `slots_home`)
from .test_attacks_evaluation import VERBOSE_SCORER
from .test_eval_stage import candidate, project

pytestmark = pytest.mark.anyio

ISOLATION = probe_isolation("auto")

READ_EVALUATION_LOGS = """
import glob, re
for path in glob.glob(".autoresearch/runs/*/*-eval*.log"):
    found = re.findall(r"expected ([0-9.]+)", open(path).read())
    if found:
        X = float(found[-1])
"""


def secret_project(tmp_path: Path, extra: str) -> Path:
    """The evaluation stage's project with hidden data, and a scorer that prints it on its stderr."""
    scorer = VERBOSE_SCORER.replace(
        '"secret/answer.txt"', repr(str(tmp_path / "proj" / "secret" / "answer.txt"))
    )
    root = project(tmp_path, 'hidden = ["secret"]\n' + extra, scorer=scorer)
    (root / "secret").mkdir()
    (root / "secret" / "answer.txt").write_text("3.14159\n")
    return root


async def test_what_the_scorer_printed_of_a_runs_first_repetition_never_reaches_its_second(
    tmp_path: Path, agent_for: Any
) -> None:
    """With `repeats`, every repetition is evaluated right after it ran: the second repetition's view hides the
    first one's evaluation logs, which hold what the scorer printed about the hidden data."""
    require(ISOLATION.namespaces, "CI must give runs a private view", "namespaces are unavailable here")
    root = secret_project(tmp_path, "repeats = 2\n")
    async with agent_for(root) as agent:
        run, _ = await candidate(agent, READ_EVALUATION_LOGS)
    assert run["status"] == "ok" and run["values"] == [0.85841, 0.85841], run


async def test_what_the_scorer_printed_in_an_earlier_session_never_reaches_a_run(
    tmp_path: Path, agent_for: Any
) -> None:
    """The evaluation logs of another session of the project (another tag, its own runs folder) hold what the
    scorer printed about the same hidden data: a run's view hides them too."""
    require(ISOLATION.namespaces, "CI must give runs a private view", "namespaces are unavailable here")
    root = secret_project(tmp_path, "")
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="first")
        await agent.experiment("baseline")
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="second")
        _, base = await agent.experiment("baseline")
        assert base["decision"] == "keep", base
        await agent.edit("X = 5\n", "X = 4\n" + textwrap.dedent(READ_EVALUATION_LOGS))
        run, _ = await agent.experiment("attack")
    assert run["status"] == "ok" and run["value"] == 0.85841, run


async def test_the_holdout_logs_of_an_earlier_session_never_reach_a_run(
    tmp_path: Path, agent_for: Any
) -> None:
    """An earlier session measured a holdout (its logs hold what the scorer printed about hidden data); a later
    session without holdout_command still hides the holdout's folder from its runs."""
    require(ISOLATION.namespaces, "CI must give runs a private view", "namespaces are unavailable here")
    root = secret_project(tmp_path, 'holdout_command = "python3 scorer.py out/answer.txt"\n')
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="first")
        await agent.experiment("baseline")
    config = root / "autoresearch.toml"
    config.write_text(
        config.read_text().replace('holdout_command = "python3 scorer.py out/answer.txt"\n', "")
    )
    git(root, "commit", "-qam", "no holdout any more")
    assert "expected 3.14159" in (root / ".autoresearch" / "holdout" / "first" / "r1.stderr.log").read_text()
    read_holdout = READ_EVALUATION_LOGS.replace(
        ".autoresearch/runs/*/*-eval*.log", ".autoresearch/holdout/*/*.log"
    )
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="second")
        await agent.experiment("baseline")
        await agent.edit("X = 5\n", "X = 4\n" + textwrap.dedent(read_holdout))
        run, _ = await agent.experiment("attack")
    assert run["status"] == "ok" and run["value"] == 0.85841, run


# The first candidate waits until the second one runs: its evaluation then prints the hidden answer while the
# second run is in flight, in a log that did not exist when the second run's view was made. The two runs and the
# test signal each other through a folder outside the project that both slots may write (`SIGNALS`): every wait
# ends on its event (the bound of 600 tries only ends a run the test has given up on).
WAIT_FOR_THE_OTHER = """
import os, time
for _ in range(600):
    if os.path.exists(os.path.join(SIGNALS, "second-started")):
        break
    time.sleep(0.05)
"""
READ_THE_OTHERS_EVALUATION = """
import glob, os, re, time
open(os.path.join(SIGNALS, "second-started"), "w").close()
for _ in range(600):
    if os.path.exists(os.path.join(SIGNALS, "first-evaluated")):
        break
    time.sleep(0.05)
found = []
for path in glob.glob(RUNS + "/*/*-eval*.log"):
    try:
        found += re.findall(r"expected ([0-9.]+)", open(path).read())
    except OSError:
        pass
if found:
    X = float(found[-1])
"""


async def test_what_a_scorer_prints_in_another_slot_never_reaches_a_run_in_flight(
    tmp_path: Path, agent_for: Any, slots_home: Path
) -> None:
    require(ISOLATION.namespaces, "CI must give runs a private view", "namespaces are unavailable here")
    signals = Path(tempfile.mkdtemp(prefix=".autoresearch-test-signals-", dir=Path.home()))
    try:
        root = secret_project(tmp_path, 'slots = 2\nslot_devices = ["0", "1"]\n')
        config = (root / "autoresearch.toml").read_text()
        (root / "autoresearch.toml").write_text(
            config.replace('writable = ["out"]', f'writable = ["out", "{signals}"]')
        )
        git(root, "commit", "-qam", "a folder outside the project both slots may write")
        names = f"RUNS = {str(root / '.autoresearch' / 'runs')!r}\nSIGNALS = {str(signals)!r}\n"
        async with agent_for(root) as agent:
            await agent.ok("start_session")
            _, base = await agent.experiment("baseline")
            assert base["decision"] == "keep", base
            await agent.edit("X = 5\n", "X = 4\n" + names + textwrap.dedent(WAIT_FOR_THE_OTHER))
            first = await agent.ok("run_experiment", description="waits for the other")
            await agent.edit("X = 5\n", "X = 4\n" + names + textwrap.dedent(READ_THE_OTHERS_EVALUATION))
            second = await agent.ok("run_experiment", description="reads the other's evaluation")
            assert first["slot"] != second["slot"], (first, second)
            evaluated = await agent.until_done(first["run_id"])  # its scorer printed the answer meanwhile
            assert evaluated["status"] == "ok", evaluated
            (signals / "first-evaluated").touch()
            done = await agent.until_done(second["run_id"])
        assert done["status"] == "ok" and done["value"] != 0.0, done
    finally:
        shutil.rmtree(signals, ignore_errors=True)


async def test_metric_parse_reads_the_holdouts_own_log(tmp_path: Path, agent_for: Any) -> None:
    """metric_parse reads the holdout's log as it reads the evaluation's: the holdout's folder is hidden from runs,
    not from the stage that parses the holdout's own output (its error message, a path with a digit in it, gave
    the holdout's value)."""
    parse = "grep '^score:' \"$AUTORESEARCH_LOG\" | tail -1 | awk '{print $2}'"
    extra = f'holdout_command = "python3 scorer.py out/answer.txt"\nmetric_parse = {json.dumps(parse)}\n'
    root = project(tmp_path / "proj7", extra)
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="t")
        run, decision = await agent.experiment("baseline")
    assert run["value"] == 5.0 and decision["decision"] == "keep", (run, decision)
    [record] = [
        json.loads(line) for line in (root / ".autoresearch" / "holdout" / "t.jsonl").read_text().splitlines()
    ]
    assert record["holdout"] == 5.0 and record["error"] is None, record
