"""Review 23: a server killed with SIGKILL at each step of an experiment, the git set-ups a person may have,
a hand edit of the target between runs, and a cherry-pick of several commits left half done. Each test here
failed before its fix (or is marked xfail with the fix it needs)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters

from mcp_autoresearch.errors import ConfigError
from mcp_autoresearch.records.state import load_state, state_path
from mcp_autoresearch.session.workspace import Workspace
from mcp_autoresearch.vcs.repo import GIT_ENV

from .conftest import TRAIN_PY, Agent, git, run_cli, served_here, stdio_params

pytestmark = pytest.mark.anyio


def person_git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """git as the person runs it (their hooks and settings), allowed to fail."""
    return subprocess.run(["git", *args], cwd=root, env=GIT_ENV, capture_output=True, text=True)


async def test_a_cherry_pick_of_several_commits_stopped_then_committed_is_seen_as_under_way(
    ml_project: Path, agent_for
) -> None:
    """`git cherry-pick A B` stopped at A's conflict; the person resolves it and runs `git commit`. git removes
    CHERRY_PICK_HEAD, and only `.git/sequencer/` says that B is still to come: a session started there, and a
    later `git cherry-pick --continue` put B on the session's branch."""
    root = ml_project
    git(root, "checkout", "-q", "-b", "side")
    for line in ("side one", "side two"):
        (root / "README.md").write_text(f"{line}\n")
        git(root, "commit", "-q", "-am", line)
    git(root, "checkout", "-q", "main")
    (root / "README.md").write_text("main's own\n")
    git(root, "commit", "-q", "-am", "main's own")
    stopped = person_git(root, "cherry-pick", "side~1", "side")
    assert stopped.returncode != 0, stopped.stdout + stopped.stderr
    (root / "README.md").write_text("resolved\n")
    git(root, "commit", "-q", "-am", "resolved by hand")
    assert (root / ".git" / "sequencer").is_dir() and not (root / ".git" / "CHERRY_PICK_HEAD").exists()
    async with agent_for(root) as agent:
        refused = await agent.refused("start_session", tag="seq")
        assert "cherry-pick or revert of several commits" in refused, refused
        assert "git cherry-pick --continue" in refused and "Nothing was changed" in refused, refused
    assert git(root, "branch", "--list", "autoresearch/*") == ""


async def test_a_hand_edit_of_the_target_between_runs_is_kept_aside_before_an_edit_replaces_it(
    ml_project: Path, agent_for
) -> None:
    """After a decision the person edits the target by hand; the agent, which cannot know, then writes the whole
    file (`content=`). The person's version was gone, kept nowhere. It is kept in `.autoresearch/edits/`, and
    the answer says where; the edits the server itself left there (its own last edit, a decision's restore)
    keep nothing."""
    root = ml_project
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="hand")
        await agent.experiment("baseline")
        first = await agent.edit("LR = 0.5", "LR = 0.9")
        assert first.get("kept_aside") is None, first
        second = await agent.edit("LR = 0.9", "LR = 0.8")  # its own last edit: nothing to keep
        assert second.get("kept_aside") is None, second
        await agent.experiment("worse")  # discarded: the best's target is back
        with open(root / "train.py", "a") as target:
            target.write("# the person's own line, typed between two runs\n")
        by_hand = (root / "train.py").read_bytes()
        replaced = await agent.ok("apply_edit", content=(root / "train.py").read_text().replace("0.5", "0.3"))
        kept = replaced.get("kept_aside")
        assert kept and (root / kept).read_bytes() == by_hand, replaced
        assert kept.startswith(".autoresearch/edits/"), kept
        again = await agent.ok("apply_edit", content="LR = 0.3\n")
        assert again.get("kept_aside") is None, again
        # The same hand edit written back before every edit (a sloppy agent's own `cat > train.py`): one copy
        for _ in range(3):
            (root / "train.py").write_bytes(by_hand)
            repeated = await agent.ok("apply_edit", content="LR = 0.3\n")
            assert repeated.get("kept_aside") == kept, repeated
        assert len(list((root / ".autoresearch" / "edits").iterdir())) == 1


ATTRIBUTES = {
    "ident": "train.py ident\n",  # `$Id$` expanded on checkout, collapsed again by git's clean step
    "crlf": "train.py text=auto eol=crlf\n",
    "filter": "train.py filter=rev\n",  # a clean filter: the blob holds every line reversed
}


@pytest.mark.parametrize("attributes", list(ATTRIBUTES))
async def test_a_kept_target_with_attributes_is_committed_as_git_would_commit_it(
    ml_project: Path, agent_for, attributes: str
) -> None:
    """The server writes the candidate's blob in-process for a "plain" target. `is_plain_file` asked git about
    `filter`, `eol` and `text`, not `ident` (nor `working-tree-encoding`): a target with `$Id$` expanded by a
    checkout was committed expanded, where git commits `$Id$`, and `git status` then showed it changed. The
    kept commit holds what `git hash-object --path` (git's own clean step) makes of the file, and the tree is
    clean."""
    root = ml_project
    if attributes == "filter":
        git(root, "config", "filter.rev.clean", "rev")
        git(root, "config", "filter.rev.smudge", "rev")
    (root / ".gitattributes").write_text(ATTRIBUTES[attributes])
    (root / "train.py").write_text("# $Id$\n" + (root / "train.py").read_text())
    git(root, "add", ".gitattributes", "train.py")
    git(root, "commit", "-q", "-m", "attributes")
    (root / "train.py").unlink()
    git(root, "checkout", "--", "train.py")  # as a clone leaves it: $Id$ expanded, CRLF written
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="attr")
        await agent.experiment("baseline")
        await agent.edit("0.5", "0.3")
        _run, decision = await agent.experiment("better")
        assert decision["decision"] == "keep", decision
    expected = git(root, "hash-object", "--path", "train.py", "train.py").strip()
    assert git(root, "rev-parse", "HEAD:train.py").strip() == expected
    assert git(root, "status", "--porcelain", "--untracked-files=no") == ""


def set_up(root: Path, setup: str, marker: Path) -> None:
    """One of the git set-ups a person may have, made in `root` (committed, clean)."""
    hook = f"#!/bin/sh\necho \"$0 $(tr '\\\\0' ' ' < /proc/$PPID/cmdline)\" >> {marker}\n"  # and who ran it
    if setup == "sparse":  # README.md outside the sparse set: skip-worktree, absent from the work tree
        git(root, "sparse-checkout", "set", "--no-cone", "/train.py", "/prepare.py", "/.gitattributes")
    elif setup == "index-v4":
        git(root, "config", "index.version", "4")
        git(root, "update-index", "--index-version", "4")
    elif setup == "split-index":
        git(root, "config", "core.splitIndex", "true")
        git(root, "update-index", "--split-index")
    elif setup == "untracked-cache":
        git(root, "config", "core.untrackedCache", "true")
        git(root, "update-index", "--untracked-cache")
        git(root, "status")
    elif setup == "hooks":
        hooks = root.parent / "hooks"
        hooks.mkdir()
        for name in (
            "pre-commit",
            "post-commit",
            "post-checkout",
            "reference-transaction",
            "post-index-change",
        ):
            (hooks / name).write_text(hook)
            (hooks / name).chmod(0o755)
        git(root, "config", "core.hooksPath", str(hooks))
    elif setup == "fsmonitor":
        script = root.parent / "fsmonitor"
        script.write_text(hook + "exit 1\n")
        script.chmod(0o755)
        git(root, "config", "core.fsmonitor", str(script))
    elif setup == "ignorecase":
        git(root, "config", "core.ignorecase", "true")


SETUPS = ["sparse", "index-v4", "split-index", "untracked-cache", "hooks", "fsmonitor", "ignorecase"]


@pytest.mark.parametrize("setup", SETUPS)
async def test_the_loop_in_a_persons_git_set_up_leaves_git_as_git_would(
    ml_project: Path, agent_for, tmp_path: Path, setup: str
) -> None:
    """A keep and a discard in a repository set up as a person may have it: the kept blob is what git would
    commit, index and work tree agree with HEAD as `git status` sees them, the sparse set and the index's format
    are kept, hooks and fsmonitor never run, and the person's files are untouched."""
    root = ml_project
    marker = tmp_path / "ran"
    set_up(root, setup, marker)
    before_sparse = git(root, "ls-files", "-t")
    marker.unlink(missing_ok=True)  # what the person's own git calls above ran
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="setup")
        await agent.experiment("baseline")
        await agent.edit("0.5", "0.3")
        _run, kept = await agent.experiment("better")
        assert kept["decision"] == "keep", kept
        await agent.edit("0.3", "0.9")
        _run, discarded = await agent.experiment("worse")
        assert discarded["decision"] == "discard", discarded
        if setup == "ignorecase":  # git may take TRAIN.PY for train.py; the server names one file only
            refused = await agent.refused("apply_edit", path="TRAIN.PY", content="LR = 0.1\n")
            assert "train.py" in refused, refused
        summary = await agent.ok("query_results")
    assert not marker.exists(), marker.read_text()  # before the checks below run git as the person does
    assert sorted(r["status"] for r in summary["rows"]) == ["discard", "keep", "keep"], summary["rows"]
    expected = git(root, "hash-object", "--path", "train.py", "train.py").strip()
    assert git(root, "rev-parse", "HEAD:train.py").strip() == expected
    assert git(root, "status", "--porcelain", "--untracked-files=no") == ""
    assert git(root, "diff-index", "--cached", "HEAD") == ""
    assert git(root, "ls-files", "-t") == before_sparse  # skip-worktree flags as they were
    assert (root / "my_notes.txt").read_text() == "the user's own untracked work\n"
    if setup == "sparse":
        assert not (root / "README.md").exists()
    if setup == "index-v4":
        assert (root / ".git" / "index").read_bytes()[4:8] == b"\0\0\0\4"


def test_a_target_outside_the_sparse_checkout_is_refused_clearly(ml_project: Path) -> None:
    """The target is outside the person's sparse set (flagged skip-worktree, absent from the work tree): the
    server refuses to serve it, saying the file does not exist, and nothing of git's is changed."""
    root = ml_project
    git(root, "sparse-checkout", "set", "--no-cone", "/prepare.py", "/README.md")
    assert not (root / "train.py").exists()
    before = git(root, "ls-files", "-t"), git(root, "for-each-ref")
    rules = {"target_file": "train.py", "run_command": "python train.py", "metric_name": "val_bpb"}
    with pytest.raises(ConfigError, match="target_file 'train.py' does not exist"):
        Workspace(root, rules)
    assert (git(root, "ls-files", "-t"), git(root, "for-each-ref")) == before


KILL_HELPER = Path(__file__).parent / "helpers" / "kill_at"
HAND_LINE = "# the person's own line, typed while the run waited for its decision\n"
BETTER, WORSE, AFTER = "LR = 0.3", "LR = 0.9", "LR = 0.15"  # 1.2 (kept), 1.8 (discarded), 1.05 (kept)

# (name, the step the test arms the kill before, the function killed at, before/after, a text of its arguments)
KILLS = [
    ("edit written", "edit", "mcp_autoresearch.session.editing:atomic_write", "after", ""),
    ("candidate not committed", "run", "mcp_autoresearch.vcs.repo:Repo.commit_file", "before", ""),
    ("candidate committed", "run", "mcp_autoresearch.vcs.repo:Repo.commit_file", "after", ""),
    ("git watched, run not started", "run", "mcp_autoresearch.vcs.planted:GitWatch.before_run", "after", ""),
    (
        "run checked, not recorded",
        "run",
        "mcp_autoresearch.lifecycle.running:Runs.check_after_run",
        "after",
        "",
    ),
    ("run recorded, not released", "run", "mcp_autoresearch.lifecycle.running:Runs.record", "after", ""),
    (
        "keep decided, not applied",
        "keep",
        "mcp_autoresearch.lifecycle.decisions:Decider.finish",
        "before",
        "",
    ),
    ("keep's index synced", "keep", "mcp_autoresearch.vcs.repo:Repo.sync_index", "after", ""),
    (
        "keep logged, state not saved",
        "keep",
        "mcp_autoresearch.records.journal:Journal.log_experiment_done",
        "after",
        "",
    ),
    (
        "discard decided, not applied",
        "discard",
        "mcp_autoresearch.lifecycle.decisions:Decider.finish",
        "before",
        "",
    ),
    ("discard's target restored", "discard", "mcp_autoresearch.vcs.repo:Repo.restore_paths", "after", ""),
    (
        "discard's file written, not its index",
        "discard",
        "mcp_autoresearch.vcs.index_file:atomic_write",
        "after",
        "",
    ),
    (
        "hand edit kept aside, not restored",
        "hand",
        "mcp_autoresearch.vcs.repo:Repo.restore_paths",
        "before",
        "",
    ),
    ("discard's branch moved", "discard", "mcp_autoresearch.vcs.repo:Repo.move_branch", "after", "discard"),
    (
        "discard logged, state not saved",
        "discard",
        "mcp_autoresearch.records.journal:Journal.log_experiment_done",
        "after",
        "",
    ),
    ("finish's branch written", "finish", "mcp_autoresearch.session.landing:git", "after", "update-ref"),
    ("clean's branch deleted", "clean", "mcp_autoresearch.session.landing:git", "after", "update-ref"),
]


def killing_params(root: Path, armed: Path, at: str, when: str, match: str) -> StdioServerParameters:
    params = stdio_params(root)
    assert params.env is not None
    params.env.update(
        PYTHONPATH=str(KILL_HELPER), AR_KILL_AT=f"{at}:{when}", AR_KILL_ARMED=str(armed), AR_KILL_MATCH=match
    )
    return params


def killing_cli(root: Path, armed: Path, at: str, when: str, match: str, *args: str) -> int:
    env = {**os.environ, **GIT_ENV, **killing_params(root, armed, at, when, match).env}  # type: ignore[dict-item]
    done = subprocess.run(
        [sys.executable, "-m", "mcp_autoresearch", *args], cwd=root, env=env, capture_output=True
    )
    return done.returncode


def table(root: Path) -> list[tuple[str, str]]:
    """(run id, status) of every row of results.tsv and of the JSONL's decisions, which must agree."""
    lines = (root / ".autoresearch" / "autoresearch.jsonl").read_text().splitlines()
    done = [json.loads(x)["details"] for x in lines if '"experiment_done"' in x]
    logged = [(d["run_id"], d["status"]) for d in done]
    for details in done:  # every logged run's commit stays reachable from a ref (a node, the branch)
        assert git(root, "for-each-ref", "--contains", details["commit"]), details
    header, *rows = (root / "results.tsv").read_text().splitlines()
    assert len(rows) == len(logged), (rows, logged)
    ids = [run_id for run_id, _ in logged]
    assert len(ids) == len(set(ids)), logged  # nothing logged twice
    return logged


def persons_files(root: Path) -> dict[str, str]:
    return {name: (root / name).read_text() for name in ("README.md", "prepare.py", "my_notes.txt")}


async def drive_to(agent: Agent, root: Path, step: str, armed: Path) -> None:
    """The loop up to `step`, the kill armed right before the call that makes it."""
    await agent.ok("start_session", tag="k")
    await agent.experiment("baseline")
    if step in ("edit", "run", "keep"):
        if step == "edit":
            armed.touch()
        await agent.edit("LR = 0.5", BETTER)
        if step == "run":
            armed.touch()
        run = await agent.ok("run_experiment", description="better")
        run = await agent.until_done(run["run_id"])
        if step == "keep":
            armed.touch()
        await agent.ok("commit_or_reset", run_id=run["run_id"])
        return
    await agent.edit("LR = 0.5", BETTER)
    await agent.experiment("better")
    await agent.edit(BETTER, WORSE)
    run = await agent.until_done((await agent.ok("run_experiment", description="worse"))["run_id"])
    if step == "hand":
        with open(root / "train.py", "a") as target:
            target.write(HAND_LINE)
    if step in ("discard", "hand"):
        armed.touch()
    await agent.ok("commit_or_reset", run_id=run["run_id"])


def check_after_restart(root: Path, person: dict[str, str], rows: list[tuple[str, str]]) -> None:
    """The table true to git: the branch and HEAD on the best kept row's commit, the work tree clean but for the
    target, the person's files as they were."""
    state = load_state(root, "k")
    assert state is not None and state.best is not None
    kept = [run_id for run_id, status in rows if status == "keep"]
    assert state.best.run_id == kept[-1], (state.best, rows)
    assert git(root, "rev-parse", "autoresearch/k").strip() == state.best.commit
    assert git(root, "rev-parse", "HEAD").strip() == state.best.commit
    assert git(root, "status", "--porcelain", "-uno").split() in ([], ["M", "train.py"])
    assert persons_files(root) == person


@pytest.mark.parametrize(("name", "step", "at", "when", "match"), KILLS, ids=[k[0] for k in KILLS])
async def test_a_server_killed_at_each_step_resumes_with_a_true_table(
    ml_project: Path, tmp_path: Path, name: str, step: str, at: str, when: str, match: str
) -> None:
    """SIGKILL of the real server over stdio at each step of an experiment, of its decision, of `finish` and of
    `clean` (the process kills itself at that exact call: tests/helpers/kill_at). A new server (`served_here`)
    resumes the session: every run is logged once, the branch and HEAD are on the best, the person's files are untouched,
    and the loop goes on."""
    root, armed = ml_project, tmp_path / "armed"
    person = persons_files(root)
    params = killing_params(root, armed, at, when, match)
    with anyio.fail_after(600):  # a guard against a hang, never reached by a server that answers
        if step in ("finish", "clean"):
            async with served_here(root) as agent:
                await drive_to(agent, root, "keep", armed)
            armed.touch()
            if step == "finish":
                assert killing_cli(root, armed, at, when, match, "finish", "--land", "landed") == -9
                landed = run_cli("finish", "--land", "landed", cwd=root)
                assert landed.returncode == 0, landed.stderr
                assert (
                    git(root, "rev-parse", "landed").strip()
                    == git(root, "rev-parse", "autoresearch/k").strip()
                )
                return
            git(root, "checkout", "-q", "main")  # clean refuses while the session's branch is checked out
            assert killing_cli(root, armed, at, when, match, "clean", "--tag", "k", "--yes") == -9
            again = run_cli("clean", "--tag", "k", "--yes", cwd=root)
            assert again.returncode == 0, again.stdout + again.stderr
            assert not state_path(root, "k").exists(), again.stdout + again.stderr
            assert git(root, "for-each-ref", "refs/autoresearch/") == ""
            assert git(root, "branch", "--list", "autoresearch/*") == ""
            assert persons_files(root) == person
            return
        with contextlib.suppress(BaseException):  # the server dies under the call
            async with Client(params) as client:
                await drive_to(Agent(client), root, step, armed)
        assert not armed.exists(), f"the server never reached {at}"
        async with served_here(root) as agent:  # the next server: what it finds on disk is the subject
            resumed = await agent.ok("start_session", tag="k")
            assert resumed["resumed"] is True, resumed
            state = load_state(root, "k")
            assert state is not None
            for waiting in list(state.inflight):  # finished before the kill: it waits for its decision
                await agent.ok("commit_or_reset", run_id=waiting.run_id)
            rows = table(root)
            assert [status for _, status in rows] == EXPECTED[name], rows
            check_after_restart(root, person, rows)
            # the agent's edit, run or not; put back to the best (the baseline) after an interrupted run
            expected = "LR = 0.5" if name == "run checked, not recorded" else BETTER
            assert expected in (root / "train.py").read_text()
            if step == "hand":
                kept = [p.read_text() for p in (root / ".autoresearch" / "edits").iterdir()]
                assert kept and all(HAND_LINE in text for text in kept), kept
            await agent.ok("apply_edit", content=TRAIN_PY.replace("LR = 0.5", AFTER))
            _run, decision = await agent.experiment("after the restart")
            assert decision["decision"] == "keep", decision
        rows = table(root)
        assert [status for _, status in rows] == [*EXPECTED[name], "keep"], rows
        check_after_restart(root, person, rows)


START_UNDONE = ["keep"]  # the baseline; the run whose start was cut short is undone, its edit kept
EXPECTED = {
    "edit written": ["keep"],
    "candidate not committed": START_UNDONE,
    "candidate committed": START_UNDONE,
    "git watched, run not started": START_UNDONE,
    "run checked, not recorded": ["keep", "crash"],  # interrupted
    "run recorded, not released": ["keep", "keep"],
    "keep decided, not applied": ["keep", "keep"],
    "keep's index synced": ["keep", "keep"],
    "keep logged, state not saved": ["keep", "keep"],
    "discard decided, not applied": ["keep", "keep", "discard"],
    "discard's target restored": ["keep", "keep", "discard"],
    "discard's branch moved": ["keep", "keep", "discard"],
    "discard's file written, not its index": ["keep", "keep", "discard"],
    "hand edit kept aside, not restored": ["keep", "keep", "discard"],
    "discard logged, state not saved": ["keep", "keep", "discard"],
}
