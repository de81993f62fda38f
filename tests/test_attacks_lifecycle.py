"""Attacks on the one run lifecycle (`Runs` with `TreePlacement` and `SlotPlacement`, one recovery and shutdown in
`Decider`): cancels that come late, twice or beside a decision; a budget spent while slots run; a server stopped
while a rebased run runs again. Each call gets a clear answer, nothing of the user's work is lost, and git, the
TSV and the JSONL agree after a restart."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from .conftest import call_ok, git, make_repo, served_here, stdio_server_pid
from .helpers.slots import private_slots_home  # noqa: F401 (the autouse fixture `slots_home`)
from .test_slots import EVALUATE, TARGET, _stdio, project, settings

pytestmark = pytest.mark.anyio

SLOW = "import time; time.sleep(60)\n"  # a candidate that runs until it is stopped


def events(root: Path) -> list[dict[str, Any]]:
    lines = (root / ".autoresearch" / "autoresearch.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def agree(root: Path, tag: str) -> dict[str, dict[str, Any]]:
    """git, the TSV and the JSONL agree: every started run is logged once, in both files, and the session branch
    holds the last best row's commit. Returns the logged rows by run id."""
    logged = events(root)
    started = [e["details"]["run_id"] for e in logged if e["action"] == "experiment_start"]
    done = [e["details"] for e in logged if e["action"] == "experiment_done"]
    ids = [d["run_id"] for d in done]
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(set(started))
    assert len((root / "results.tsv").read_text().splitlines()) == len(done) + 1
    best = [d for d in done if d["best"]][-1]
    assert git(root, "rev-parse", f"autoresearch/{tag}").strip() == best["full_commit"]
    return {d["run_id"]: d for d in done}


async def _cancel_on_first_progress(client: Any, run_id: str) -> None:
    """wait_experiment(run_id), given up by the client as soon as the server reports progress (the server is then
    inside the wait, so the cancellation reaches the run)."""
    with anyio.CancelScope() as scope:

        async def progressed(*_args: Any) -> None:
            scope.cancel()

        await client.call_tool(
            "wait_experiment", {"run_id": run_id, "wait_s": 120}, progress_callback=progressed
        )
        raise AssertionError(f"wait_experiment({run_id}) returned before any progress")


async def test_two_slot_runs_given_up_at_once_are_cancelled_and_decided_once_each(
    tmp_path: Path, slots_home: Path
) -> None:
    """Two clients give up waiting for two slot runs at the same moment, then decide both at once: each run is
    cancelled (nothing else), each is logged once as a crash, the best and the user's files are untouched, and
    both slots are free again."""
    root = project(tmp_path)
    (root / "autoresearch.toml").write_text(
        'target_file = "params.py"\nrun_command = "python3 evaluate.py"\nmetric_name = "score"\n'
        'readonly_files = ["evaluate.py"]\nkeep_rule = "greedy"\nslots = 2\ntime_budget = 120\n'
    )
    async with Client(_stdio(root, slots_home)) as client:
        await call_ok(client, "start_session", tag="cc")
        await call_ok(client, "run_experiment", description="baseline")
        base = await call_ok(client, "wait_experiment")
        while base["status"] == "running":
            base = await call_ok(client, "wait_experiment")
        assert (await call_ok(client, "commit_or_reset", run_id=base["run_id"]))["decision"] == "keep"
        head = git(root, "rev-parse", "HEAD").strip()
        await call_ok(client, "apply_edit", content="X = 3\n\n\n\nY = 0\n" + SLOW)
        first = (await call_ok(client, "run_experiment", description="X to 3, slow"))["run_id"]
        await call_ok(client, "apply_edit", content="X = 0\n\n\n\nY = 5\n" + SLOW)
        second = (await call_ok(client, "run_experiment", description="Y to 5, slow"))["run_id"]

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_cancel_on_first_progress, client, first)
            tasks.start_soon(_cancel_on_first_progress, client, second)

        decisions: dict[str, Any] = {}

        async def decide(run_id: str) -> None:
            run = await call_ok(client, "wait_experiment", run_id=run_id)
            while run["status"] == "running":
                run = await call_ok(client, "wait_experiment", run_id=run_id)
            assert run["status"] == "cancelled", run
            decisions[run_id] = await client.call_tool("commit_or_reset", {"run_id": run_id})

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(decide, first)
            tasks.start_soon(decide, second)
        for run_id, result in decisions.items():
            assert not result.is_error, result.content[0].text
            assert result.structured_content["decision"] == "crash", run_id
        again = await call_ok(client, "commit_or_reset", run_id=first)  # a retried call: the same answer
        assert (again["decision"], again["reason"]) == ("crash", "already decided")
        assert git(root, "rev-parse", "HEAD").strip() == head
        assert (root / "params.py").read_text() == TARGET  # the best again, as after every slot start
        assert (root / "user_notes.txt").read_text() == "mine\n"
        await call_ok(client, "apply_edit", content=TARGET.replace("X = 0", "X = 2"))
        assert (await call_ok(client, "run_experiment", description="slots free"))["status"] == "running"
    rows = agree(root, "cc")
    assert {rows[first]["run_status"], rows[second]["run_status"]} == {"cancelled"}


async def test_max_experiments_reached_while_slots_run_counts_a_rebased_rerun_once(
    tmp_path: Path, agent_for: Any
) -> None:
    """max_experiments = 3 with the baseline and two slot runs in flight: a fourth start is refused and says it
    counted the runs in flight; the stale run, run again merged onto the new best, is still run and logged once;
    then the spent budget holds."""
    root = project(tmp_path)
    async with agent_for(root, settings(slots=3, slot_devices=["0", "1", "2"])) as agent:
        await agent.ok("start_session", tag="mx", max_experiments=3)
        await agent.ok("run_experiment", description="baseline")
        assert (await agent.ok("commit_or_reset", run_id=(await agent.until_done())["run_id"]))[
            "decision"
        ] == ("keep")
        await agent.edit("X = 0", "X = 3")
        first = (await agent.ok("run_experiment", description="X to 3"))["run_id"]
        await agent.edit("Y = 0", "Y = 5")
        second = (await agent.ok("run_experiment", description="Y to 5"))["run_id"]
        await agent.ok("apply_edit", content=TARGET.replace("Y = 0", "Y = 4"))
        refused = await agent.refused("run_experiment", description="fourth")
        assert "max_experiments" in refused and "in flight" in refused
        await agent.until_done(first)
        await agent.until_done(second)
        assert (await agent.ok("commit_or_reset", run_id=first))["decision"] == "keep"
        assert (await agent.ok("commit_or_reset", run_id=second))["decision"] == "rerun"
        await agent.until_done(second)
        decided = await agent.ok("commit_or_reset", run_id=second)
        assert decided["decision"] == "keep" and decided["value"] == 0.0
        refused = await agent.refused("run_experiment", description="fourth again")
        assert "max_experiments" in refused
        results = await agent.ok("query_results")
        assert results["total"] == 3 and results["best"]["value"] == 0.0
        # The unrun edit (Y = 4) conflicts with the new best (Y = 5): kept aside, and the answer says where.
        assert "kept in .autoresearch/edits/" in decided["next_step"] + json.dumps(decided)
        kept = [p.read_text() for p in (root / ".autoresearch" / "edits").iterdir()]
        assert TARGET.replace("X = 0", "X = 3").replace("Y = 0", "Y = 4") in kept
    rows = agree(root, "mx")
    assert rows[second]["rebases"]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
async def test_a_server_stopped_while_a_rebased_run_runs_again_restarts_consistent(
    tmp_path: Path, slots_home: Path, how: signal.Signals
) -> None:
    """The server is stopped (SIGTERM: its shutdown; SIGKILL) while a stale slot run runs again merged onto the
    new best: after a restart the run is logged once (interrupted), the best is a measured run, the user's
    files and unrun edit are kept, and git, the TSV and the JSONL agree."""
    root = make_repo(tmp_path / "proj", {"params.py": TARGET, "evaluate.py": EVALUATE})
    (root / "user_notes.txt").write_text("mine\n")
    (root / "autoresearch.toml").write_text(
        'target_file = "params.py"\nrun_command = "python3 evaluate.py"\nmetric_name = "score"\n'
        'readonly_files = ["evaluate.py"]\nkeep_rule = "greedy"\nslots = 2\ntime_budget = 60\n'
    )
    params = _stdio(root, slots_home)
    slow_once_merged = "X = 0\n\n\n\nY = 5\nimport time; time.sleep(float(X == 3) * 60)\n"
    unrun = "X = 1\n\n\n\nY = 0\n"

    async def done(client: Any, run_id: str) -> dict[str, Any]:
        run = await call_ok(client, "wait_experiment", run_id=run_id)
        while run["status"] == "running":
            run = await call_ok(client, "wait_experiment", run_id=run_id)
        return run

    with pytest.raises(BaseException):  # noqa: B017 - the stopped server surfaces as a broken connection
        async with Client(params) as client:
            await call_ok(client, "start_session", tag="st")
            await call_ok(client, "run_experiment", description="baseline")
            base = await call_ok(client, "wait_experiment")
            await call_ok(client, "commit_or_reset", run_id=base["run_id"])
            await call_ok(client, "apply_edit", content="X = 3\n\n\n\nY = 0\n")
            first = await call_ok(client, "run_experiment", description="X to 3")
            await call_ok(client, "apply_edit", content=slow_once_merged)
            second = await call_ok(client, "run_experiment", description="Y to 5, slow once merged")
            await done(client, first["run_id"])
            await done(client, second["run_id"])
            assert (await call_ok(client, "commit_or_reset", run_id=first["run_id"]))["decision"] == "keep"
            assert (await call_ok(client, "commit_or_reset", run_id=second["run_id"]))["decision"] == "rerun"
            await call_ok(client, "apply_edit", content=unrun)

            # The rerun is in flight (restarted by the decision itself).
            os.kill(stdio_server_pid(root), how)
            await call_ok(client, "query_results")
            await anyio.sleep_forever()

    async with served_here(root) as restarted:  # the next server: what it finds on disk is the subject
        client = restarted.client
        await call_ok(client, "start_session", tag="st")
        results = await call_ok(client, "query_results")
        assert results["total"] == 3 and results["best"]["value"] == 5.0
        again = await call_ok(client, "commit_or_reset", run_id=second["run_id"])
        assert (again["decision"], again["reason"]) == ("crash", "already decided")
    rows = agree(root, "st")
    assert rows[second["run_id"]]["run_status"] == "interrupted"
    assert git(root, "show", "HEAD:params.py") == "X = 3\n\n\n\nY = 0\n"
    assert (root / "params.py").read_text() == unrun  # the agent's unrun edit survives the stop
    assert (root / "user_notes.txt").read_text() == "mine\n"


async def _decided_with_a_conflicting_unrun_edit(
    agent: Any, tag: str, start: str, kept: str, unrun: str
) -> None:
    """A session whose one slot candidate (`kept`) is kept while the agent's unrun edit (`unrun`) conflicts."""
    await agent.ok("start_session", tag=tag)
    await agent.ok("run_experiment", description="baseline")
    assert (await agent.ok("commit_or_reset", run_id=(await agent.until_done())["run_id"]))[
        "decision"
    ] == "keep"
    await agent.edit(start, kept)
    run_id = (await agent.ok("run_experiment", description=kept))["run_id"]
    await agent.edit(start, unrun)
    await agent.until_done(run_id)
    decided = await agent.ok("commit_or_reset", run_id=run_id)
    assert decided["decision"] == "keep" and "conflicted" in json.dumps(decided)


async def test_an_unrun_edit_kept_aside_is_never_overwritten_by_a_later_session(
    tmp_path: Path, agent_for: Any
) -> None:
    """Two sessions each keep their run r2 while the agent's unrun edit conflicts: both edits stay kept aside (the
    file is named by the run id alone, which the second session reuses)."""
    root = project(tmp_path)
    async with agent_for(root, settings()) as agent:
        await _decided_with_a_conflicting_unrun_edit(agent, "one", "X = 0", "X = 3", "X = 1")
    async with agent_for(root, settings()) as agent:
        await _decided_with_a_conflicting_unrun_edit(agent, "two", "Y = 0", "Y = 5", "Y = 1")
    kept = sorted(p.read_text() for p in (root / ".autoresearch" / "edits").iterdir())
    assert TARGET.replace("X = 0", "X = 1") in kept  # the first session's edit
    assert TARGET.replace("X = 0", "X = 3").replace("Y = 0", "Y = 1") in kept  # the second's


async def _a_run_that_rewrites_notes(agent: Any, tag: str, text: str) -> dict[str, Any]:
    """A session whose second run (r2) rewrites the tracked notes.md as it runs (as the user's own edit during a
    long run would): the run is tampered, notes.md is restored, and a copy of what it held is kept."""
    await agent.ok("start_session", tag=tag)
    await agent.experiment("baseline")
    await agent.ok(
        "apply_edit", content=TARGET.replace("X = 0", "X = 2") + f"open('notes.md', 'w').write({text!r})\n"
    )
    run, _ = await agent.experiment("rewrites notes.md")
    assert run["run_id"] == "r2" and run["status"] == "tampered" and "notes.md" in run["error"], run
    return run


async def test_a_copy_kept_of_a_file_a_run_changed_is_never_overwritten_by_a_later_session(
    tmp_path: Path, agent_for: Any
) -> None:
    """Two sessions each have a run r2 that changes a tracked file: the server restores it after keeping a copy
    ("nothing of the user's is thrown away"); the second session's copy must not replace the first's."""
    root = make_repo(tmp_path / "proj", {"params.py": TARGET, "evaluate.py": EVALUATE, "notes.md": "mine\n"})
    overrides = {
        k: v for k, v in settings(isolation="off").items() if not k.startswith("slot")
    }  # the user's tree
    async with agent_for(root, overrides) as agent:
        await _a_run_that_rewrites_notes(agent, "one", "first session's text\n")
    async with agent_for(root, overrides) as agent:
        await _a_run_that_rewrites_notes(agent, "two", "second session's text\n")
    assert (root / "notes.md").read_text() == "mine\n"
    kept = sorted(
        p.read_text() for p in (root / ".autoresearch" / "tampered").rglob("*notes.md") if p.is_file()
    )
    assert kept == ["first session's text\n", "second session's text\n"]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
async def test_a_server_stopped_after_branch_from_with_a_branched_slot_run_in_flight_restarts_consistent(
    tmp_path: Path, slots_home: Path, how: signal.Signals
) -> None:
    """A slot run branched from r1 is in flight when the agent branches again (to r2) and edits; the server is
    then stopped. After a restart the run is logged once (interrupted, parent r1), the best is r2, the agent's
    unrun edit on r2 is still in the target, and git, the TSV and the JSONL agree."""
    root = make_repo(tmp_path / "proj", {"params.py": TARGET, "evaluate.py": EVALUATE})
    (root / "autoresearch.toml").write_text(
        'target_file = "params.py"\nrun_command = "python3 evaluate.py"\nmetric_name = "score"\n'
        'readonly_files = ["evaluate.py"]\nkeep_rule = "greedy"\nslots = 2\ntime_budget = 60\n'
    )
    params = _stdio(root, slots_home)
    r2_target = TARGET.replace("X = 0", "X = 3")
    unrun = r2_target.replace("Y = 0", "Y = 1")

    async def done(client: Any, run_id: str | None = None) -> dict[str, Any]:
        args = {"run_id": run_id} if run_id else {}
        run = await call_ok(client, "wait_experiment", **args)
        while run["status"] == "running":
            run = await call_ok(client, "wait_experiment", **args)
        return run

    with pytest.raises(BaseException):  # noqa: B017 - the stopped server surfaces as a broken connection
        async with Client(params) as client:
            await call_ok(client, "start_session", tag="bf")
            await call_ok(client, "run_experiment", description="baseline")
            await call_ok(client, "commit_or_reset", run_id=(await done(client))["run_id"])
            await call_ok(client, "apply_edit", content=r2_target)
            r2 = await call_ok(client, "run_experiment", description="X to 3")
            await done(client, r2["run_id"])
            assert (await call_ok(client, "commit_or_reset", run_id=r2["run_id"]))["best"] is True
            await call_ok(client, "branch_from", run_id="r1")
            await call_ok(client, "apply_edit", content=TARGET.replace("Y = 0", "Y = 5") + SLOW)
            r3 = await call_ok(client, "run_experiment", description="Y to 5 on r1, slow")
            assert r3["parent"] == "r1" and r3["status"] == "running"
            await call_ok(client, "branch_from", run_id="r2")
            await call_ok(client, "apply_edit", content=unrun)
            os.kill(stdio_server_pid(root), how)
            await call_ok(client, "query_results")
            await anyio.sleep_forever()

    async with served_here(root) as restarted:  # the next server: what it finds on disk is the subject
        client = restarted.client
        await call_ok(client, "start_session", tag="bf")
        results = await call_ok(client, "query_results")
        assert results["total"] == 3 and results["best"]["run_id"] == "r2"
        assert (root / "params.py").read_text() == unrun  # the agent's edit on r2, not yet run
        r4 = await call_ok(client, "run_experiment", description="Y to 1 on r2")
        assert r4["parent"] == "r2"  # the branch made before the stop still holds
        decided = await call_ok(
            client, "commit_or_reset", run_id=(await done(client, r4["run_id"]))["run_id"]
        )
        assert (decided["decision"], decided["best"]) == ("keep", True)  # 4 < 5, against r2
    rows = agree(root, "bf")
    assert (rows["r3"]["run_status"], rows["r3"]["parent"]) == ("interrupted", "r1")
    assert git(root, "show", "HEAD:params.py") == unrun


NOISY_EVALUATE = """\
f="$COUNTS/$(cksum < cand.txt | cut -d' ' -f1)"; i=$(( $(cat "$f" 2>/dev/null || echo 0) + 1 )); echo "$i" > "$f"
if [ -e "$COUNTS/block" ] && grep -q "VALUES 1.0 1.1 0.9" cand.txt; then echo "the best re-measured"; sleep 60; fi
awk -v i="$i" '$1 == "VALUES" { n = NF - 1; printf "score: %s\\n", $(2 + (i - 1) % n) }' cand.txt
"""


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
async def test_a_server_stopped_while_the_best_is_re_measured_in_the_users_tree_restarts_consistent(
    tmp_path: Path, how: signal.Signals
) -> None:
    """Under the sequential rule the best's content is put in the user's tree to be re-measured beside a
    candidate; the server is stopped right then. After a restart the candidate is logged once (interrupted),
    the target holds no third content (the candidate's, or the best's), the candidate's commit is still in git,
    and git, the TSV and the JSONL agree."""
    from .conftest import stdio_params

    counts = tmp_path / "counts"
    counts.mkdir()
    toml = (
        'target_file = "cand.txt"\nmetric_name = "score"\nreadonly_files = ["evaluate.sh"]\n'
        f'run_command = "COUNTS={counts} sh evaluate.sh"\nwritable = ["{counts}"]\ntime_budget = 120\n'
    )
    noisy = "VALUES 1.0 1.1 0.9\n"
    candidate = "VALUES 0.5 0.52 0.48\n"
    root = make_repo(
        tmp_path / "noisy", {"cand.txt": noisy, "evaluate.sh": NOISY_EVALUATE, "autoresearch.toml": toml}
    )
    params = stdio_params(root)

    with pytest.raises(BaseException):  # noqa: B017 - the stopped server surfaces as a broken connection
        async with Client(params) as client:
            await call_ok(client, "start_session", tag="rm")
            base = await call_ok(client, "run_experiment", description="baseline")
            while base["status"] == "running":
                base = await call_ok(client, "wait_experiment", run_id=base["run_id"])
            assert (await call_ok(client, "commit_or_reset", run_id=base["run_id"]))["decision"] == "keep"
            (counts / "block").write_text("")
            await call_ok(client, "apply_edit", content=candidate)
            started = await call_ok(client, "run_experiment", description="much better", wait_s=0)

            with anyio.CancelScope() as scope:  # until the best's re-measurement reports its first line

                async def progressed(_done: float, _total: float | None, message: str | None) -> None:
                    if message and "the best re-measured" in message:
                        scope.cancel()

                while True:
                    await client.call_tool(
                        "wait_experiment",
                        {"run_id": started["run_id"], "wait_s": 30},
                        progress_callback=progressed,
                    )
            assert (root / "cand.txt").read_text() == noisy  # the best's content is in place
            os.kill(stdio_server_pid(root), how)
            await call_ok(client, "query_results")
            await anyio.sleep_forever()

    (counts / "block").unlink()
    async with served_here(root) as restarted:  # the next server: what it finds on disk is the subject
        client = restarted.client
        await call_ok(client, "start_session", tag="rm")
        results = await call_ok(client, "query_results")
        assert results["total"] == 2 and results["best"]["run_id"] == "r1"
    rows = agree(root, "rm")
    assert rows["r2"]["run_status"] == "interrupted"
    assert (root / "cand.txt").read_text() in (noisy, candidate)
    assert git(root, "show", f"{rows['r2']['full_commit']}:cand.txt") == candidate  # the idea is kept in git
    assert git(root, "status", "--porcelain", "--untracked-files=no").split() in ([], ["M", "cand.txt"])


async def test_a_copy_kept_of_git_configuration_a_run_changed_is_never_overwritten_by_a_later_session(
    tmp_path: Path, agent_for: Any
) -> None:
    """The same across sessions for git's configuration: a run r2 that changes .git/config (as the user might
    during a long run) has it put back and a copy kept; a later session's r2 must not replace that copy."""
    root = make_repo(tmp_path / "proj", {"params.py": TARGET, "evaluate.py": EVALUATE})
    config = (root / ".git" / "config").read_text()
    overrides = {
        k: v for k, v in settings(isolation="off").items() if not k.startswith("slot")
    }  # the user's tree
    for tag, text in (("one", "# first session's line\n"), ("two", "# second session's line\n")):
        async with agent_for(root, overrides) as agent:
            await agent.ok("start_session", tag=tag)
            await agent.experiment("baseline")
            code = f"open('.git/config', 'a').write({text!r})\n"
            await agent.ok("apply_edit", content=TARGET.replace("X = 0", "X = 2") + code)
            run, _ = await agent.experiment("changes .git/config")
            assert run["run_id"] == "r2" and run["status"] == "tampered" and ".git/config" in run["error"], (
                run
            )
        assert (root / ".git" / "config").read_text() == config
    kept = [p.read_text() for p in (root / ".autoresearch" / "tampered").rglob("*") if p.is_file()]
    assert any("first session's line" in k for k in kept) and any("second session's line" in k for k in kept)
