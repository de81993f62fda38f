"""Review 45a: forge the number. The candidate (the target's code, run by the server) tries to make the evaluation
stage print its number, or a view show a number the candidate chose without saying "self-reported".

Each attack is a real run through the real server (the MCP client), confined where this machine allows it."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from mcp_autoresearch.sandbox.policy import probe_isolation

from .conftest import Agent, git, run_cli, stdio_params
from .helpers.needs import require
from .test_attacks_evaluation import PLANT_USERCUSTOMIZE, python_reading_user_site
from .test_confinement import NO_LANDLOCK, NO_NAMESPACES
from .test_eval_stage import project as stage_project

pytestmark = pytest.mark.anyio

ISOLATION = probe_isolation("auto")

HONEST_SCORER = """\
import sys
print(f"score: {float(open(sys.argv[1]).read().split()[0]):.6f}")
"""


async def test_an_evaluation_that_runs_a_script_in_a_persistent_cache_is_refused(
    tmp_path: Path, agent_for
) -> None:
    """`persistent` entries are as writable to a run as `writable` ones (and never moved aside): an eval_command
    whose scorer lies in one (`python3 cache/scorer.py`, a build cache the user keeps across runs) runs whatever
    the last run left there. The target rewrites the scorer to print 0.000001; the session was accepted, labelled
    "evaluation", and kept the forged number. It must be refused as a scorer in a `writable` path is, or never
    take the planted scorer's number."""
    require(ISOLATION.confined, "CI must confine runs", "Landlock is unavailable here")
    root = stage_project(tmp_path, 'persistent = ["cache"]\n')
    config = (root / "autoresearch.toml").read_text()
    (root / "autoresearch.toml").write_text(
        config.replace("python3 scorer.py out/answer.txt", "python3 cache/scorer.py out/answer.txt")
    )
    (root / ".gitignore").write_text((root / ".gitignore").read_text() + "cache/\n")
    (root / "cache").mkdir()
    (root / "cache" / "scorer.py").write_text(HONEST_SCORER)
    plant = "open('cache/scorer.py', 'w').write('print(\"score: 0.000001\")\\n')\n"
    git(root, "commit", "-qam", "the scorer in a kept cache")
    async with agent_for(root) as agent:
        started = await agent.client.call_tool("start_session", {})
        if started.is_error:
            text = started.content[0].text
            assert "cache" in text and "scorer.py" in text, text
            return
        _, base = await agent.experiment("baseline")
        await agent.edit("X = 5\n", "X = 4\n" + plant)
        run, _ = await agent.experiment("plant")
    assert run["value"] == 4.0, run  # (it was 0.000001, kept, with the label "evaluation")


KEY_SCORER = """\
import sys
key = float(open("cache/data/key.txt").read())
print(f"score: {abs(float(open(sys.argv[1]).read().split()[0]) - key):.6f}")
"""


async def test_hidden_data_in_a_persistent_cache_is_refused(tmp_path: Path, agent_for) -> None:
    """`hidden` data beneath a `persistent` entry (the ML recipe's `~/.cache/autoresearch/val.npz` with `~/.cache`
    kept across runs): the run cannot read the covered file, but it can write the folder holding it. It renames
    the folder away (a folder holding a mount point may move) and writes its own key where the scorer reads it;
    the scorer then compares the run's answer with the run's key: 0, kept, labelled "evaluation". A hidden entry
    that overlaps a `writable` one is refused; one in a `persistent` entry must be too, or the planted key never
    count. (A `persistent` link that leads out of the project is refused already.)"""
    require(ISOLATION.namespaces, "CI must give runs a private view", "namespaces are unavailable here")
    root = stage_project(tmp_path, 'persistent = ["cache"]\nhidden = ["cache/data/key.txt"]\n', KEY_SCORER)
    (root / ".gitignore").write_text((root / ".gitignore").read_text() + "cache/\n")
    (root / "cache" / "data").mkdir(parents=True)
    (root / "cache" / "data" / "key.txt").write_text("3\n")
    git(root, "commit", "-qam", "the key in a kept cache")
    plant = """
    import os
    try:
        os.rename("cache/data", "cache/moved")
        os.makedirs("cache/data")
        open("cache/data/key.txt", "w").write("4\\n")
    except OSError as exc:
        print("held:", exc)
    """
    async with agent_for(root) as agent:
        started = await agent.client.call_tool("start_session", {})
        if started.is_error:
            text = started.content[0].text
            assert "data/key.txt" in text and "persistent" in text, text
            return
        _, base = await agent.experiment("baseline")
        assert base["value"] == 2.0, base
        await agent.edit("X = 5\n", "X = 4\n" + textwrap.dedent(plant))
        run, _ = await agent.experiment("plant")
    assert run["value"] == 1.0, run  # |4 - 3|: the user's key (it was 0, the run's own key)


ANSWER_IN_CACHE = "X = 5\nopen('cache/answer.txt', 'w').write(str(X))\n"


def answer_in_cache(tmp_path: Path, scored: str) -> Path:
    """The evaluation stage's project (uncommitted changes), whose run writes its answer to `cache/answer.txt`
    (ANSWER_IN_CACHE), `persistent = ["cache"]`, and whose scorer reads `scored`."""
    root = stage_project(tmp_path, 'persistent = ["cache"]\n')
    config = (root / "autoresearch.toml").read_text()
    config = config.replace(
        'run_command = "python3 objective.py > out/answer.txt"', 'run_command = "python3 objective.py"'
    )
    (root / "autoresearch.toml").write_text(config.replace("scorer.py out/answer.txt", f"scorer.py {scored}"))
    (root / "objective.py").write_text(ANSWER_IN_CACHE)
    return root


async def test_an_answer_an_earlier_run_left_in_a_persistent_cache_is_not_evaluated(
    tmp_path: Path, agent_for
) -> None:
    """The evaluation reads the answer from a `persistent` entry inside the project (kept across runs, so never
    moved aside as the `writable` outputs are). A candidate that computes nothing and writes nothing hands the
    evaluation the best's answer, an earlier run's: equal, and simpler (fewer lines), so kept. A file the
    evaluation names there that is just as it was before the run must make the run `metric_error`, as it does
    beneath a `writable` entry outside the project."""
    root = answer_in_cache(tmp_path, "cache/answer.txt")
    (root / ".gitignore").write_text((root / ".gitignore").read_text() + "cache/\n")
    (root / "cache").mkdir()
    git(root, "commit", "-qam", "the answer in a kept cache")
    await refuses_the_left_answer(root, agent_for)


async def refuses_the_left_answer(root: Path, agent_for) -> None:
    """A kept baseline, then a candidate that computes and writes nothing: `metric_error`, never kept."""
    async with agent_for(root) as agent:
        await agent.ok("start_session")
        _, base = await agent.experiment("baseline")
        assert base["decision"] == "keep", base
        await agent.edit(ANSWER_IN_CACHE, "")
        run, decision = await agent.experiment("computes nothing")
    assert run["status"] == "metric_error" and decision["decision"] != "keep", (run, decision)
    assert "was not written by this run" in run["error"], run["error"]


async def test_an_evaluation_after_runs_nothing_confines_is_not_labelled_evaluation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`isolation = "auto"` (the default) where the machine has neither Landlock nor namespaces (a container that
    refuses both; any machine but Linux): runs are confined by nothing, as with `isolation = "off"`, so a run
    plants a usercustomize.py that the scorer's Python runs and prints the score. The session said "evaluation"
    (its label read the setting, not what the machine gives) and `integrity = "required"` accepted it. It must
    be labelled self-reported, in start_session and in the views that read the session's rules, and refused
    under integrity = "required"."""
    from mcp import Client

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the user site-packages the attack writes
    python_reading_user_site(monkeypatch)
    root = stage_project(tmp_path)

    def unconfined():  # the server under filters refusing Landlock and namespaces
        params = stdio_params(root)
        params.args = [NO_NAMESPACES, sys.executable, NO_LANDLOCK, params.command, *params.args]
        params.command = sys.executable
        return params

    async with Client(unconfined()) as client:
        agent = Agent(client)
        started = await agent.ok("start_session")
        assert started["isolation"].startswith("none"), started["isolation"]
        await agent.experiment("baseline")
        await agent.edit("X = 5\n", "X = 5\n" + textwrap.dedent(PLANT_USERCUSTOMIZE))
        run, decision = await agent.experiment("plant")
        assert run["value"] == 0.000001 and decision["decision"] == "keep", run  # the forgery works: say so
        assert started["provenance"]["source"] == "self-reported", started["provenance"]
        results = await agent.ok("query_results")
        assert results["provenance"]["source"] == "self-reported", results["provenance"]
    # a reader, on a machine that confines: it reads the session's rules
    shown = run_cli("status", "--project", str(root))
    assert "Metric source: self-reported" in shown.stdout, shown.stdout + shown.stderr
    (root / "autoresearch.toml").write_text(
        (root / "autoresearch.toml").read_text() + 'integrity = "required"\n'
    )
    async with Client(unconfined()) as client:
        assert "self-reported" in await Agent(client).refused("start_session", tag="strict")


async def test_hidden_data_where_a_linked_persistent_cache_leads_is_refused_at_the_start(
    tmp_path: Path, agent_for
) -> None:
    """`persistent = ["cache"]` where `cache` is a link to `store/`, and `hidden` names `store/data/key.txt`: a
    run writes `store` through the link, so it could replace the key as above. The overlap was checked with the
    entry as written only: the session started, and every run (the baseline too) was refused later. Must hold:
    refused at the start, naming the persistent entry."""
    root = stage_project(tmp_path, 'persistent = ["cache"]\nhidden = ["store/data/key.txt"]\n', KEY_SCORER)
    (root / ".gitignore").write_text((root / ".gitignore").read_text() + "cache\nstore/\n")
    (root / "store" / "data").mkdir(parents=True)
    (root / "store" / "data" / "key.txt").write_text("3\n")
    (root / "cache").symlink_to("store")
    git(root, "commit", "-qam", "the key where the kept cache leads")
    async with agent_for(root) as agent:
        refused = await agent.refused("start_session")
    assert "store/data/key.txt" in refused and "persistent entry 'cache'" in refused, refused
