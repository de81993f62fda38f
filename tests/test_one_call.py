"""One call per experiment (issue 21, item 7): run_experiment with `edits` (or `content`) makes the change, runs it
and, with `decide=true`, decides it as commit_or_reset does, through the real MCP client on real repositories."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import HANG_TIMEOUT_S, git
from .helpers.slots import private_slots_home  # noqa: F401 (the autouse fixture `slots_home`)
from .test_slots import project as slots_project
from .test_slots import settings as slots_settings

pytestmark = pytest.mark.anyio


def edits(old: str, new: str) -> list[dict[str, str]]:
    return [{"old_text": old, "new_text": new}]


async def test_one_call_keeps_discards_and_logs_like_three(ml_project: Path, agent_for: Any) -> None:
    root = ml_project
    async with agent_for(root, {"time_budget": 1, "timeout": HANG_TIMEOUT_S}) as agent:
        await agent.ok("start_session", tag="one")
        base = await agent.ok("run_experiment", description="baseline", decide=True)
        assert base["decided"]["decision"] == "keep" and base["decided"]["reason"] == "baseline"
        assert base.get("edit") is None and "log_result" in base["next_step"]

        kept = await agent.ok(
            "run_experiment", description="lower LR", edits=edits("LR = 0.5", "LR = 0.3"), decide=True
        )
        assert kept["value"] == 1.2 and kept["decided"]["decision"] == "keep"
        assert kept["edit"]["lines_added"] == 1 and "+LR = 0.3" in kept["edit"]["diff"]
        assert kept["next_step"] == kept["decided"]["next_step"]
        head = git(root, "rev-parse", "HEAD").strip()
        assert kept["decided"]["branch_head"] == head
        assert git(root, "log", "-1", "--format=%s").strip() == "experiment: lower LR"

        worse = await agent.ok(
            "run_experiment", description="higher LR", edits=edits("LR = 0.3", "LR = 0.9"), decide=True
        )
        assert worse["decided"]["decision"] == "discard" and worse["value"] == 1.8
        assert git(root, "rev-parse", "HEAD").strip() == head  # the branch did not move
        assert "LR = 0.3" in (root / "train.py").read_text()  # the target holds the best again

        crashed = await agent.ok(
            "run_experiment",
            description="crash",
            content=(root / "train.py").read_text() + "raise SystemExit('boom')\n",
            decide=True,
        )
        assert crashed["status"] == "crash" and crashed["decided"]["decision"] == "crash"
        assert "boom" not in (root / "train.py").read_text()

        # Decided already: commit_or_reset answers the same, nothing is decided twice.
        again = await agent.ok("commit_or_reset", run_id=worse["run_id"])
        assert again["reason"] == "already decided" and again["decision"] == "discard"
        results = await agent.ok("query_results")
        assert results["counts"] == {"keep": 2, "discard": 1, "crash": 1} and results["total"] == 4

    rows = (root / "results.tsv").read_text().splitlines()[1:]
    assert [row.split("\t")[3] for row in rows] == ["keep", "keep", "discard", "crash"]


async def test_start_session_teaches_the_one_call_step(ml_project: Path, agent_for: Any) -> None:
    """The next step start_session gives is the loop's step as the `loop` prompt teaches it: one call, decided."""
    async with agent_for(ml_project) as agent:
        fresh = await agent.ok("start_session", tag="one")
        assert "run_experiment(description='baseline', decide=true)" in fresh["next_step"], fresh["next_step"]
        await agent.ok("run_experiment", description="baseline", decide=True)
    async with agent_for(ml_project) as agent:
        resumed = await agent.ok("start_session", tag="one")
        assert "edits=[{old_text, new_text}], decide=true)" in resumed["next_step"], resumed["next_step"]


async def test_a_failed_edit_runs_nothing(ml_project: Path, agent_for: Any) -> None:
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session", tag="one")
        await agent.ok("run_experiment", description="baseline", decide=True)
        before = (ml_project / "train.py").read_text()
        refused = await agent.refused(
            "run_experiment", description="typo", edits=edits("LR = 0.7", "LR = 0.3"), decide=True
        )
        assert "old_text does not occur" in refused
        both = await agent.refused(
            "run_experiment", description="both", edits=edits("LR = 0.5", "LR = 0.3"), content="LR = 1\n"
        )
        assert "exactly one of edits" in both
        assert (ml_project / "train.py").read_text() == before
        assert (await agent.ok("query_results"))["total"] == 1  # the baseline only: nothing else ran


async def test_expected_sha256_refuses_an_edit_of_a_target_that_changed(
    ml_project: Path, agent_for: Any
) -> None:
    """As apply_edit: the sha256 read_target gave refuses the edit (nothing runs) once the target changed (here:
    a kept edit since); the current one lets it run. Without an edit it is refused as meaningless."""
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session", tag="one")
        await agent.ok("run_experiment", description="baseline", decide=True)
        seen = (await agent.ok("read_target"))["sha256"]
        await agent.ok(
            "run_experiment", description="lower", edits=edits("LR = 0.5", "LR = 0.3"), decide=True
        )
        stale = await agent.refused(
            "run_experiment",
            description="stale",
            edits=edits("LR = 0.3", "LR = 0.2"),
            expected_sha256=seen,
            decide=True,
        )
        assert "changed" in stale and "read_target" in stale
        assert "LR = 0.3" in (ml_project / "train.py").read_text()
        assert (await agent.ok("query_results"))["total"] == 2  # nothing ran
        current = (await agent.ok("read_target"))["sha256"]
        fresh = await agent.ok(
            "run_experiment",
            description="fresh",
            edits=edits("LR = 0.3", "LR = 0.2"),
            expected_sha256=current,
            decide=True,
        )
        assert fresh["decided"]["decision"] in ("keep", "discard")
        alone = await agent.refused("run_experiment", description="no edit", expected_sha256=current)
        assert "give edits or content" in alone


async def test_an_expected_sha256_that_is_no_sha256_is_named_so_and_nothing_runs(
    ml_project: Path, agent_for: Any
) -> None:
    """An expected_sha256 that cannot be a sha256 (empty, 63 digits, full-width digits, other text): refused as
    such, with what to pass, by apply_edit and by run_experiment (with an edit or without: an empty one with no
    edit ran the target before); nothing is written and nothing runs. One read_target gave, in capitals or with
    spaces around, is the same hash. Failed before: each was answered "the target changed since you read it"
    (it had not), and an empty one without an edit ran the target."""
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session", tag="one")
        await agent.ok("run_experiment", description="baseline", decide=True)
        current = (await agent.ok("read_target"))["sha256"]
        wide = current.translate({ord(c): ord(c) + 0xFEE0 for c in "0123456789"})  # full-width digits
        for wrong in ("", current[:63], wide, "sha256:" + current[:57]):
            for tool, args in (
                ("apply_edit", {}),
                ("run_experiment", {"description": "odd hash"}),
            ):
                text = await agent.refused(
                    tool, **args, edits=edits("LR = 0.5", "LR = 0.3"), expected_sha256=wrong
                )
                assert "not a sha256" in text and "read_target" in text and "changed" not in text, text
            alone = await agent.refused("run_experiment", description="no edit", expected_sha256=wrong)
            assert "give edits or content" in alone, alone
        assert "LR = 0.5" in (ml_project / "train.py").read_text()
        assert (await agent.ok("query_results"))["total"] == 1  # nothing ran
        done = await agent.ok(
            "run_experiment",
            description="same hash",
            edits=edits("LR = 0.5", "LR = 0.3"),
            expected_sha256=f"  {current.upper()}\n",
            decide=True,
        )
        assert done["decided"]["decision"] in ("keep", "discard")


async def test_a_stale_expected_sha256_is_quoted_as_a_sha256_without_the_whitespace_around_it(
    ml_project: Path, agent_for: Any
) -> None:
    """A stale hash with whitespace around it (Unicode's too: a line separator, the file separator control
    character, which strip() takes away) is refused as stale, and the answer quotes the hash as read, not the
    characters around it. Failed before: they were echoed raw into the message."""
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session", tag="one")
        stale = "\u2028\x1c\x1f" + "0" * 64
        text = await agent.refused("apply_edit", edits=edits("LR = 0.5", "LR = 0.3"), expected_sha256=stale)
        assert "changed since you read it" in text and "you expected 000000000000…" in text, text
        assert not {"\u2028", "\x1c", "\x1f"} & set(text), repr(text)


async def test_a_run_that_cannot_start_after_its_edit_says_the_edit_stays(
    ml_project: Path, agent_for: Any
) -> None:
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session", tag="one")
        # The first run must be the unmodified baseline: refused before the edit, nothing written.
        refused = await agent.refused(
            "run_experiment", description="first", edits=edits("LR = 0.5", "LR = 0.3"), decide=True
        )
        assert "the first run of a session is the unmodified baseline" in refused, refused
        assert "nothing was written" in refused and "LR = 0.5" in (ml_project / "train.py").read_text()
        await agent.ok("run_experiment", description="baseline")  # finished, not decided yet
        refused = await agent.refused(
            "run_experiment", description="next", edits=edits("LR = 0.5", "LR = 0.3"), decide=True
        )
        # A run waits for its decision: refused before the edit, nothing was written.
        assert "commit_or_reset" in refused and "LR = 0.5" in (ml_project / "train.py").read_text()
        await agent.ok("commit_or_reset")
        await agent.ok("start_session", tag="one", max_experiments=1)  # the baseline used the budget
        refused = await agent.refused(
            "run_experiment", description="over budget", edits=edits("LR = 0.5", "LR = 0.3"), decide=True
        )
        # No edit could let it run: refused before the edit.
        assert "budget is spent" in refused and "the edit was made" not in refused
        assert "LR = 0.5" in (ml_project / "train.py").read_text()


async def test_an_edit_made_before_a_refused_start_stays_and_the_refusal_says_so(
    ml_project: Path, agent_for: Any
) -> None:
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session", tag="one")
        await agent.ok("run_experiment", description="baseline", decide=True)
        (ml_project / "prepare.py").write_text("# changed by hand\n")  # a tracked file only a person changes
        refused = await agent.refused(
            "run_experiment", description="next", edits=edits("LR = 0.5", "LR = 0.3"), decide=True
        )
        assert "prepare.py" in refused and "the edit was made before: the target holds it" in refused, refused
        assert "LR = 0.3" in (ml_project / "train.py").read_text()


async def test_still_running_is_decided_by_the_wait_that_sees_it_finish(
    ml_project: Path, agent_for: Any
) -> None:
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session", tag="one")
        await agent.ok("run_experiment", description="baseline", decide=True)
        started = await agent.ok(
            "run_experiment",
            description="lower LR",
            edits=edits("LR = 0.5", "LR = 0.3"),
            decide=True,
            wait_s=0,
        )
        assert started["status"] == "running" and started.get("decided") is None
        assert f"wait_experiment(run_id='{started['run_id']}', decide=true)" in started["next_step"]
        assert started["edit"]["sha256_after"]
        run = started
        while run["status"] == "running":
            run = await agent.ok("wait_experiment", run_id=started["run_id"], decide=True)
        assert run["decided"]["decision"] == "keep" and run["decided"]["run_id"] == started["run_id"]
        # Without decide, a wait answers the same view and decides nothing.
        later = await agent.ok("wait_experiment", run_id=started["run_id"])
        assert later.get("decided") is None and later["status"] == "ok"


async def test_content_measured_before_runs_and_decides_nothing(ml_project: Path, agent_for: Any) -> None:
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session", tag="one")
        await agent.ok("run_experiment", description="baseline", decide=True)
        worse = await agent.ok(
            "run_experiment", description="higher LR", edits=edits("LR = 0.5", "LR = 0.9"), decide=True
        )
        assert worse["decided"]["decision"] == "discard"
        same = await agent.ok(
            "run_experiment", description="higher LR again", edits=edits("LR = 0.5", "LR = 0.9"), decide=True
        )
        assert same["already_measured"] is True and same["run_id"] == worse["run_id"]
        assert same.get("decided") is None and "nothing ran" in same["next_step"]
        assert (await agent.ok("query_results"))["total"] == 2


async def test_with_slots_the_wait_decides_the_first_to_finish(
    tmp_path: Path, agent_for: Any, slots_home: Path
) -> None:
    root = slots_project(tmp_path)
    async with agent_for(root, slots_settings()) as agent:
        await agent.ok("start_session", tag="s1")
        base = await agent.ok("run_experiment", description="baseline", decide=True)
        assert base["status"] == "running" and "decide=true" in base["next_step"]
        done = base
        while done["status"] == "running":
            done = await agent.ok("wait_experiment", decide=True)
        assert done["decided"]["decision"] == "keep" and done["value"] == 8.0
        first = await agent.ok("run_experiment", description="X", edits=edits("X = 0", "X = 3"), decide=True)
        assert first["status"] == "running" and first["slot"] is not None
        assert (root / "params.py").read_text().startswith("X = 0")  # the target holds the best again
        done = first
        while done["status"] == "running":
            done = await agent.ok("wait_experiment", decide=True)
        assert done["run_id"] == first["run_id"] and done["decided"]["decision"] == "keep"
        assert (root / "params.py").read_text().startswith("X = 3")


async def test_the_text_says_the_decision_once(ml_project: Path, agent_for: Any) -> None:
    """The agent reads the text: the decision's fields that repeat the run's are left out of it (the structured
    content keeps the whole decision)."""
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session", tag="one")
        await agent.ok("run_experiment", description="baseline", decide=True)
        result = await agent.client.call_tool(
            "run_experiment",
            {"description": "lower LR", "edits": edits("LR = 0.5", "LR = 0.3"), "decide": True},
        )
        text = json.loads(result.content[0].text)
        whole = result.structured_content["decided"]
        assert whole["run_id"] == text["run_id"] and whole["value"] == text["value"] == 1.2
        assert whole["prev"] == text["best_value"] and whole["next_step"] == text["next_step"]
        assert (
            text["decided"]["decision"] == "keep" and text["decided"]["branch_head"] == whole["branch_head"]
        )
        for repeated in ("run_id", "value", "prev", "delta", "next_step", "reason", "commit", "parent"):
            assert repeated not in text["decided"], repeated
        assert "null" not in result.content[0].text


async def test_with_slots_the_hash_of_the_best_holds_while_candidates_run_and_goes_stale_once_one_is_kept(
    tmp_path: Path, agent_for: Any, slots_home: Path
) -> None:
    """With slots the target holds the best again once a candidate starts: the sha256 read before it still lets
    the next idea start (the file is the same), and refuses an edit once a kept candidate changed the best."""
    root = slots_project(tmp_path)
    async with agent_for(root, slots_settings()) as agent:
        await agent.ok("start_session", tag="s1")
        done = await agent.ok("run_experiment", description="baseline", decide=True)
        while done["status"] == "running":
            done = await agent.ok("wait_experiment", decide=True)
        seen = (await agent.ok("read_target"))["sha256"]
        first = await agent.ok(
            "run_experiment",
            description="X",
            edits=edits("X = 0", "X = 3"),
            expected_sha256=seen,
            decide=True,
        )
        assert first["status"] == "running" and (await agent.ok("read_target"))["sha256"] == seen
        second = await agent.ok(
            "run_experiment", description="Y", edits=edits("Y = 0", "Y = 9"), expected_sha256=seen
        )
        assert second["status"] == "running" and second["slot"] != first["slot"]
        done = first
        while done["status"] == "running" or done["run_id"] != first["run_id"]:
            done = await agent.ok("wait_experiment", run_id=first["run_id"], decide=True)
        assert done["decided"]["decision"] == "keep"
        done = second
        while done["status"] == "running" or "decided" not in done:
            done = await agent.ok("wait_experiment", run_id=second["run_id"], decide=True)
        stale = await agent.refused(
            "run_experiment", description="Y5", edits=edits("Y = 0", "Y = 5"), expected_sha256=seen
        )
        assert "changed since you read it" in stale, stale
