"""Attacks on the evaluation stage (issue 19) as the target's code would make them, or as an agent sending odd
tool arguments: each a real run through the real server (the MCP client) in the real sandbox.

The promises attacked: a kept value comes from a process the target's code never ran in, reading only what this
run produced; holdout values never reach the agent; hidden data is unreadable by runs; the label is never wrong
in the honest direction.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from mcp_autoresearch.isolation import probe_isolation

from .conftest import git, make_repo
from .helpers.needs import require

pytestmark = pytest.mark.anyio

ISOLATION = probe_isolation("auto")

OBJECTIVE = "X = 5\nprint(X)\n"
CONFIG = """\
target_file = "objective.py"
run_command = "python3 objective.py > out/answer.txt"
eval_command = "python3 scorer.py out/answer.txt"
metric_name = "score"
metric_direction = "lower"
readonly_files = ["scorer.py"]
writable = ["out"]
keep_rule = "greedy"
timeout = 60
"""
# The scorer gives the run's answer, unless the run's output shows it read the hidden key: then 50.
LEAK_SCORER = """\
import os, sys
leaked = open("out/leak.txt").read() if os.path.exists("out/leak.txt") else ""
bad = "KEY-42" in leaked
print(f"score: {50.0 if bad else float(open(sys.argv[1]).read().split()[0]):.6f}")
"""


def project(tmp_path: Path, extra: str = "", scorer: str = LEAK_SCORER, files: dict[str, str] | None = None) -> Path:
    root = make_repo(
        tmp_path / "proj",
        {
            "objective.py": OBJECTIVE,
            "scorer.py": scorer,
            "autoresearch.toml": CONFIG + extra,
            ".gitignore": "out/\nsecret/\n.autoresearch/\nrun.log\nresults.tsv\n",
            **(files or {}),
        },
    )
    (root / "out").mkdir()
    return root


async def candidate(agent: Any, code: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Baseline, then one experiment whose target runs `code` and answers 4."""
    await agent.ok("start_session")
    _, base = await agent.experiment("baseline")
    assert base["decision"] == "keep", base
    await agent.edit("X = 5\n", "X = 4\n" + textwrap.dedent(code))
    return await agent.experiment("attack")


async def test_hidden_data_once_committed_is_refused(tmp_path: Path, agent_for) -> None:
    """The refusal of a tracked hidden path says to untrack it and commit: done so, the file's blob is still in
    .git's objects (an earlier commit), which a run reads with `git log -p`. A session must refuse a hidden path
    that any commit of the repository holds."""
    require(ISOLATION.namespaces, "CI must give runs a private view", "namespaces are unavailable here")
    root = project(tmp_path, 'hidden = ["key.txt"]\n', files={"key.txt": "KEY-42\n"})
    git(root, "rm", "-q", "--cached", "key.txt")
    (root / ".gitignore").write_text((root / ".gitignore").read_text() + "key.txt\n")
    git(root, "commit", "-qam", "untrack the key, as the refusal says")
    code = """
    import subprocess
    found = subprocess.run(["git", "log", "--all", "-p"], capture_output=True, text=True).stdout
    open("out/leak.txt", "w").write(found)
    """
    async with agent_for(root) as agent:
        started = await agent.client.call_tool("start_session", {})
        if started.is_error:
            assert "key.txt" in started.content[0].text and "commit" in started.content[0].text
            return
        _, base = await agent.experiment("baseline")
        await agent.edit("X = 5\n", "X = 4\n" + textwrap.dedent(code))
        run, _ = await agent.experiment("attack")
    assert run["value"] == 4.0, (run, (root / "out" / "leak.txt").read_text()[:300])


@pytest.mark.parametrize(
    "eval_command", ["tail -n 1 run.log", 'grep score "$AUTORESEARCH_RUN_LOG"'], ids=["run.log", "env"]
)
async def test_an_evaluation_that_reads_the_run_log_is_self_reported(
    tmp_path: Path, agent_for, eval_command: str
) -> None:
    """An eval_command that only prints the run's own log (run.log, or $AUTORESEARCH_RUN_LOG) passes on what the
    target printed: the target forges the value, so the label must not say "evaluation", and integrity =
    "required" must refuse the session."""
    root = project(tmp_path, scorer="")
    config = (root / "autoresearch.toml").read_text()
    config = config.replace('run_command = "python3 objective.py > out/answer.txt"', 'run_command = "python3 objective.py"')
    config = config.replace('eval_command = "python3 scorer.py out/answer.txt"', f"eval_command = {eval_command!r}")
    (root / "objective.py").write_text('print("score: 5.0")\n')
    (root / "autoresearch.toml").write_text(config)
    git(root, "commit", "-qam", "the run prints its score; the evaluation passes it on")
    async with agent_for(root) as agent:
        started = await agent.ok("start_session")
        await agent.experiment("baseline")
        await agent.edit('print("score: 5.0")\n', 'print("score: 0.000001")\n')
        run, decision = await agent.experiment("one print")
        assert run["value"] == 0.000001 and decision["decision"] == "keep"  # forged by one print
        assert started["provenance"]["source"] == "self-reported", started["provenance"]
        results = await agent.ok("query_results")
        assert results["provenance"]["source"] == "self-reported"
    async with agent_for(root, {"integrity": "required"}) as agent:
        assert "self-reported" in await agent.refused("start_session")
