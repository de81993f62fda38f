"""Issue 12, item 19: when the person is done. `finish` summarises a session and lands its kept commits on a
branch the user names (fast-forward or one squashed commit); `clean --tag` removes a finished session's refs
and files. Real git repositories, the real CLI, a real server holding the project lock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import git, run_cli

pytestmark = pytest.mark.anyio


async def session_with_history(agent) -> None:
    """Baseline 1.4; kept 1.2 (LR 0.3) and 1.1 (LR 0.2); one discarded idea (LR 0.9)."""
    await agent.ok("start_session", tag="done")
    await agent.experiment("baseline")
    await agent.edit("LR = 0.5", "LR = 0.3")
    await agent.experiment("lower LR")
    await agent.edit("LR = 0.3", "LR = 0.9")
    await agent.experiment("much higher LR")
    await agent.edit("LR = 0.3", "LR = 0.2")
    await agent.experiment("LR 0.2")


def refs(root: Path) -> dict[str, str]:
    lines = git(root, "for-each-ref", "--format=%(refname) %(objectname)").split("\n")
    return dict(line.split(" ") for line in lines if line)


def finish(root: Path, *args: str):
    return run_cli("finish", "--project", str(root), *args)


def clean(root: Path, *args: str):
    return run_cli("clean", "--project", str(root), *args)


async def test_finish_summarises_and_lands_by_fast_forward(ml_project: Path, agent_for) -> None:
    root = ml_project
    async with agent_for(root) as agent:
        await session_with_history(agent)
        # A server holds the project: the summary is fine, landing is refused and changes nothing.
        before = refs(root)
        held = finish(root, "--land", "main")
        assert held.returncode == 2 and "server holds this project" in held.stderr and "pid" in held.stderr
        assert refs(root) == before
    base = git(root, "rev-parse", "main").strip()
    session_head = git(root, "rev-parse", "autoresearch/done").strip()

    summary = finish(root)
    assert summary.returncode == 0, summary.stderr
    out = summary.stdout
    for expected in (
        "session done",
        "experiments:  4 (keep 3, discard 1, crash 0)",
        "baseline:     1.4",
        "best:         1.1",
        "improvement:  0.3 (+21.43%)",
        "kept commits (2, oldest first)",
        "can fast-forward: main",
        "--land main --squash",
        "clean --tag done",
    ):
        assert expected in out, (expected, out)
    kept = out[out.index("kept commits") :]
    assert kept.index("lower LR") < kept.index("LR 0.2") and "much higher LR" not in out

    # Dirty tracked file: refused, nothing moves.
    (root / "README.md").write_text("edited by the user\n")
    dirty = finish(root, "--land", "main")
    assert dirty.returncode == 2 and "README.md" in dirty.stderr and refs(root) == before
    git(root, "checkout", "--", "README.md")

    for bad in ("autoresearch/done", "-f", "no..dots"):
        refused = finish(root, "--land", bad)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, bad
    assert finish(root, "--squash").returncode == 2

    landed = finish(root, "--land", "main")
    assert landed.returncode == 0, landed.stderr
    assert "by fast-forward (2 kept commit(s))" in landed.stdout
    assert git(root, "rev-parse", "main").strip() == session_head
    assert git(root, "rev-parse", "autoresearch/done").strip() == session_head  # the session branch stays
    assert git(root, "branch", "--show-current").strip() == "autoresearch/done"  # nothing checked out
    assert (root / "my_notes.txt").read_text() == "the user's own untracked work\n"
    assert git(root, "merge-base", "--is-ancestor", base, "main") == ""
    again = finish(root, "--land", "main")
    assert again.returncode == 0 and "nothing to do" in again.stdout


async def test_squash_onto_a_checked_out_branch_and_diverged_refusal(ml_project: Path, agent_for) -> None:
    root = ml_project
    async with agent_for(root) as agent:
        await session_with_history(agent)
    best_tree = git(root, "rev-parse", "autoresearch/done^{tree}").strip()
    git(root, "checkout", "-q", "main")
    base = git(root, "rev-parse", "main").strip()

    landed = finish(root, "--land", "main", "--squash")
    assert landed.returncode == 0, landed.stderr
    assert git(root, "rev-parse", "main^").strip() == base  # one commit on top of the old tip
    assert git(root, "rev-parse", "main^{tree}").strip() == best_tree
    message = git(root, "log", "-1", "--format=%B", "main")
    assert "val_bpb 1.4 -> 1.1" in message and "- lower LR" in message and "- LR 0.2" in message
    assert "much higher LR" not in message
    assert "LR = 0.2" in (root / "train.py").read_text()  # the checked-out branch's files followed
    assert git(root, "status", "--porcelain", "--untracked-files=no") == ""

    # A branch that moved on its own is never rewritten.
    git(root, "checkout", "-q", "-b", "elsewhere", base)
    (root / "README.md").write_text("the user's own change\n")
    git(root, "commit", "-qam", "user work")
    tip = git(root, "rev-parse", "elsewhere").strip()
    diverged = finish(root, "--land", "elsewhere")
    assert diverged.returncode == 2 and "diverged" in diverged.stderr and "user work" in diverged.stderr
    assert git(root, "rev-parse", "elsewhere").strip() == tip

    created = finish(root, "--land", "result")  # a new branch of the user's choice
    assert created.returncode == 0 and git(root, "rev-parse", "result^{tree}").strip() == best_tree


async def test_clean_says_what_it_removes_then_removes_only_that(ml_project: Path, agent_for) -> None:
    root = ml_project
    async with agent_for(root) as agent:
        await session_with_history(agent)
        held = clean(root, "--tag", "done", "--yes")
        assert held.returncode == 2 and "server holds this project" in held.stderr
    for dry_run_or_not in ((), ("--yes",)):  # refused before any "will remove" list (nothing goes)
        checked_out = clean(root, "--tag", "done", *dry_run_or_not)
        assert checked_out.returncode == 2 and "checked out" in checked_out.stderr
        assert "will remove" not in checked_out.stdout, checked_out.stdout
    assert "autoresearch/done" in git(root, "branch")
    git(root, "checkout", "-q", "main")

    listed = clean(root, "--tag", "done")
    assert listed.returncode == 0
    for expected in (
        "branch     autoresearch/done",
        "1 discarded idea(s) under refs/autoresearch/done/",
        ".autoresearch/sessions/done.json",
        ".autoresearch/runs/done/",
        "2 kept commit(s) are on no other branch",
        "nothing was removed",
    ):
        assert expected in listed.stdout, (expected, listed.stdout)
    assert "refs/heads/autoresearch/done" in refs(root)

    assert finish(root, "--land", "main").returncode == 0
    assert "on no other branch" not in clean(root, "--tag", "done").stdout
    jsonl = (root / ".autoresearch" / "autoresearch.jsonl").read_text()
    main_before = git(root, "rev-parse", "main").strip()

    removed = clean(root, "--tag", "done", "--yes")
    assert removed.returncode == 0, removed.stderr
    assert not [ref for ref in refs(root) if "autoresearch" in ref]
    assert not (root / ".autoresearch" / "sessions" / "done.json").exists()
    assert not (root / ".autoresearch" / "runs" / "done").exists()
    assert (root / ".autoresearch" / "autoresearch.jsonl").read_text() == jsonl
    assert git(root, "rev-parse", "main").strip() == main_before
    assert (root / "my_notes.txt").read_text() == "the user's own untracked work\n"
    assert (root / "results.tsv").exists()  # the server's table of the last session is kept
    assert "no session" in run_cli("status", "--project", str(root)).stderr

    gone = clean(root, "--tag", "done")
    assert gone.returncode == 2 and "no session 'done'" in gone.stderr
    for bad in ("../x", "Done", "-rf"):
        assert clean(root, "--tag", bad).returncode == 2, bad


async def flat_session(root: Path, agent_for) -> None:
    """Session `flat` on `ml_project`: its baseline, then a worse change, discarded (nothing kept beyond the
    baseline)."""
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="flat")
        await agent.experiment("baseline")
        await agent.edit("LR = 0.5", "LR = 0.9")
        await agent.experiment("worse")


async def test_a_session_without_improvement_has_nothing_to_land(ml_project: Path, agent_for) -> None:
    root = ml_project
    await flat_session(root, agent_for)
    summary = finish(root)
    assert summary.returncode == 0 and "nothing to land" in summary.stdout
    refused = finish(root, "--land", "main")
    assert refused.returncode == 2 and "nothing to land" in refused.stderr
    assert json.loads(run_cli("results", "--project", str(root), "--format", "json").stdout)[1]["status"] == (
        "discard"
    )


async def test_finish_and_clean_name_the_branch_the_session_started_from(ml_project: Path, agent_for) -> None:
    """Issue 21.6: on a repository whose branch is `master`, the hints named `main`."""
    git(ml_project, "branch", "-m", "main", "master")
    async with agent_for(ml_project) as agent:
        await session_with_history(agent)
    summary = run_cli("finish", "--project", str(ml_project), "--session", "done")
    assert summary.returncode == 0, summary.stderr
    assert "--land master" in summary.stdout and "main" not in summary.stdout, summary.stdout
    refused = run_cli("clean", "--project", str(ml_project), "--tag", "done", "--yes")
    assert refused.returncode == 2
    assert "git checkout master" in refused.stderr and "--land master" in refused.stderr, refused.stderr
    assert "main" not in refused.stderr
