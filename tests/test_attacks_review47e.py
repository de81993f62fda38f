"""Hostile review 47e: break the fixes of reviews 45a-46d (the evaluation stage's `persistent` rules, the session's
`runs_unconfined` flag, the object-format check, the filtered target's commit, the refused write's answer, the
server's log lines, `branch_in_operation`), as the target's code, a hostile agent or a clumsy user would.

Real git, real runs, the real server through the MCP client."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from mcp_autoresearch.sandbox.policy import probe_isolation

from .conftest import Agent, git, make_repo, run_cli, stdio_params
from .test_attacks_review45a import answer_in_cache, refuses_the_left_answer
from .test_attacks_review45b import _set_immutable, immutable_capable  # noqa: F401 - a fixture
from .test_attacks_tree import CONFIG as TREE_CONFIG
from .test_attacks_tree import TREE_PY
from .test_confinement import NO_LANDLOCK, NO_NAMESPACES
from .test_eval_stage import project as stage_project

pytestmark = pytest.mark.anyio

ISOLATION = probe_isolation("auto")


def unconfined_server(root: Path):
    """The server under filters refusing Landlock and namespaces: runs confined by nothing (`isolation` auto)."""
    params = stdio_params(root)
    params.args = [NO_NAMESPACES, sys.executable, NO_LANDLOCK, params.command, *params.args]
    params.command = sys.executable
    return params


async def test_a_session_whose_runs_were_unconfined_is_not_resumed_under_integrity_required(
    tmp_path: Path, agent_for
) -> None:
    """Attack: a session runs (and keeps its best) where nothing confines runs: its rules say `runs_unconfined`,
    and every view says "self-reported". The user then sets `integrity = "required"` (not a frozen key) and the
    session is resumed on a machine that confines. The start check classified the configuration on this machine
    only ("evaluation") and resumed it, though the session's own numbers, its best among them, are
    self-reported (its status says so). Must hold: the resume is refused as a new session would be; the same
    session still resumes under integrity = "any"."""
    from mcp import Client

    root = stage_project(tmp_path)
    async with Client(unconfined_server(root)) as client:
        agent = Agent(client)
        started = await agent.ok("start_session", tag="loose")
        assert started["provenance"]["source"] == "self-reported", started["provenance"]
        _, base = await agent.experiment("baseline")
        assert base["decision"] == "keep", base
    shown = run_cli("status", "--project", str(root))
    assert "Metric source: self-reported" in shown.stdout, shown.stdout + shown.stderr
    config = (root / "autoresearch.toml").read_text()
    (root / "autoresearch.toml").write_text(config + 'integrity = "required"\n')
    async with agent_for(root) as agent:
        refused = await agent.client.call_tool("start_session", {"tag": "loose"})
        assert refused.is_error, refused.structured_content
        assert "self-reported" in refused.content[0].text, refused.content[0].text
    (root / "autoresearch.toml").write_text(config)
    async with agent_for(root) as agent:
        resumed = await agent.ok("start_session", tag="loose")
        assert resumed["provenance"]["source"] == "self-reported", resumed["provenance"]


@pytest.mark.usefixtures("immutable_capable")
async def test_a_decision_whose_results_tsv_was_refused_is_finished_by_the_retry_the_answer_asks_for(
    tmp_path: Path, agent_for
) -> None:
    """Attack: results.tsv is made immutable (chattr +i: a person, or a run with isolation off) before a
    decision. The decision's row reaches the JSONL, then results.tsv refuses it: the answer says to give the
    file back its permissions and call commit_or_reset again, and the state's part of the decision is put back.
    The retry, `commit_or_reset(run_id=...)` as the answer names it, found the JSONL row and answered "already
    decided", deciding nothing: the run stayed in flight, apply_edit and run_experiment said "decide run r1
    first", and every commit_or_reset said "already decided" again (only a restart got out). Must hold: the retry
    finishes the decision (the best is set, results.tsv holds the row) and the loop goes on."""
    root = make_repo(
        tmp_path / "p", {"train.py": TREE_PY, ".gitignore": "results.tsv\n.autoresearch/\nrun.log\n"}
    )
    tsv = root / "results.tsv"
    try:
        async with agent_for(root, {**TREE_CONFIG, "metric_name": "val_bpb"}) as agent:
            await agent.ok("start_session", tag="ro")
            run = await agent.ok("run_experiment", description="baseline")
            assert run["status"] == "ok", run
            _set_immutable(tsv, True)
            refused = await agent.refused("commit_or_reset", run_id="r1")
            assert "chattr -i" in refused and "results.tsv" in refused, refused
            _set_immutable(tsv, False)  # the person follows the answer
            decision = await agent.ok("commit_or_reset", run_id="r1")
            assert decision["decision"] == "keep" and decision["best"], decision
            await agent.edit("A = 5", "A = 3")
            run, decision = await agent.experiment("A to 3")
            assert decision["decision"] == "keep" and decision["prev"] == 10.0, decision
            results = await agent.ok("query_results")
        assert sorted(row["run_id"] for row in results["rows"]) == ["r1", "r2"], results["rows"]
        assert len(tsv.read_text().splitlines()) == 3, tsv.read_text()  # the header and both rows
    finally:
        _set_immutable(tsv, False)


@pytest.mark.usefixtures("immutable_capable")
async def test_a_folder_that_refuses_the_servers_copy_is_named_in_the_answer(
    tmp_path: Path, agent_for
) -> None:
    """Attack: the folder of the session's record (`.autoresearch/sessions`) is made immutable (a person, or a run
    with isolation off). Each write there makes a copy beside the file first: the refusal named that copy
    (`.../.ro.own.json.<pid>.<thread>.tmp`, a file that never existed) as the one to give back its permissions.
    Must hold: the answer names the folder that refused, never the copy; once the folder is given back, the same
    call runs."""
    root = make_repo(
        tmp_path / "p", {"train.py": TREE_PY, ".gitignore": "results.tsv\n.autoresearch/\nrun.log\n"}
    )
    sessions = root / ".autoresearch" / "sessions"
    try:
        async with agent_for(root, {**TREE_CONFIG, "metric_name": "val_bpb"}) as agent:
            await agent.ok("start_session", tag="ro")
            await agent.experiment("baseline")
            await agent.edit("A = 5", "A = 3")
            _set_immutable(sessions, True)
            refused = await agent.refused("run_experiment", description="A to 3")
            assert "chattr -i" in refused and f"change {sessions} (" in refused, refused
            assert ".tmp" not in refused, refused
            _set_immutable(sessions, False)
            run, decision = await agent.experiment("A to 3")
        assert run["value"] == 8.0 and decision["decision"] == "keep", (run, decision)
    finally:
        _set_immutable(sessions, False)


async def test_an_answer_left_in_a_linked_persistent_cache_is_not_evaluated(
    tmp_path: Path, agent_for
) -> None:
    """Attack: `persistent = ["cache"]`, where `cache` is a link to `store` (a folder of the project), and the
    evaluation reads `store/answer.txt`. The check that what the evaluation names in a cache was written by this
    run compared the words with the entry as written: `store/...` is not beneath `cache`, so nothing was
    checked. A candidate that computes nothing and writes nothing was evaluated on the best's answer, still
    there: equal, simpler, kept. Must hold: as with the cache named directly (review 45a), the run is
    `metric_error`, "not written by this run"."""
    root = answer_in_cache(tmp_path, "store/answer.txt")
    (root / ".gitignore").write_text((root / ".gitignore").read_text() + "cache\nstore/\n")
    (root / "store").mkdir()
    os.symlink("store", root / "cache")
    git(root, "commit", "-qam", "the answer in a kept cache, named through where its link leads")
    await refuses_the_left_answer(root, agent_for)
