"""Bounds on what an agent can make the server do: notes per experiment, the size of every answer, and the diff
of an edit, which is bounded in size and work and never holds the session while it is computed."""

from __future__ import annotations

import difflib
import random
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from mcp_autoresearch.adapters.server import create_server
from mcp_autoresearch.session import editing
from mcp_autoresearch.session.diffs import MAX_DIFF_LINES, bounded_diff
from mcp_autoresearch.session.editing import MAX_EDIT_BYTES
from mcp_autoresearch.session.queries import MAX_NOTES, MAX_RUN_NOTES, MAX_RUN_NOTES_CHARS, ROW_NOTES_CHARS
from mcp_autoresearch.session.workspace import Workspace

from .conftest import Agent, stdio_params

pytestmark = pytest.mark.anyio


def shuffled_lines(size: int, seed: int = 1) -> str:
    """Unique lines in a random order, just under `size` bytes: the worst case for difflib."""
    lines = [f"x{i:07d} = {i}\n" for i in range(size // 20)]
    random.Random(seed).shuffle(lines)
    text = "".join(lines)
    while len(text.encode()) > size:
        text = text[: text.rindex("\n", 0, len(text) - 1) + 1]
    return text


def answer_chars(result: Any) -> int:
    assert not result.is_error, result.content[0].text
    return sum(len(part.text) for part in result.content)


async def test_the_largest_accepted_inputs_keep_answers_small_while_other_calls_are_answered(
    ml_project: Path,
) -> None:
    """Over stdio, as users run it: notes at their bounds, the largest description, the largest content (4 MiB
    of shuffled lines) and 200 edits. The notes over a bound are refused naming the limits, every answer stays
    small, the diff is a summary, and calls sent meanwhile are all answered (their latency is printed)."""
    async with Client(stdio_params(ml_project)) as client:
        agent = Agent(client)
        await agent.ok("start_session", tag="bounds")
        await agent.experiment("d" * 2000)  # the largest description accepted; stored cut short
        for _ in range(MAX_RUN_NOTES_CHARS // MAX_NOTES):
            noted = await agent.ok("log_result", run_id="r1", notes="n" * MAX_NOTES)
            assert noted["added"] == "n" * MAX_NOTES  # only what is new comes back
        refused = await agent.refused("log_result", run_id="r1", notes="one more")
        assert "room for 0 more" in refused and f"{MAX_RUN_NOTES_CHARS} characters per experiment" in refused
        await agent.edit("LR = 0.5", "LR = 0.3")
        await agent.experiment("lower LR")
        for number in range(MAX_RUN_NOTES):
            noted = await agent.ok("log_result", run_id="r2", notes=f"note {number}")
        assert noted["notes_count"] == MAX_RUN_NOTES and noted["notes_left"] == 0
        refused = await agent.refused("log_result", run_id="r2", notes="one more")
        assert f"already holds {MAX_RUN_NOTES} notes" in refused and f"{MAX_RUN_NOTES} notes" in refused
        # an argument the server would echo is refused short, never repeated back whole
        huge = "x" * 1_000_000
        for tool, args in (
            ("wait_experiment", {"run_id": huge}),
            ("commit_or_reset", {"run_id": huge}),
            ("log_result", {"run_id": huge, "notes": "n"}),
            ("start_session", {"tag": huge}),
            ("apply_edit", {"content": "x", "expected_sha256": huge}),
        ):
            refused = await agent.refused(tool, **args)
            assert "at most" in refused and len(refused) < 1000, (tool, refused[:300])
        # every answer about those runs is bounded, whatever their notes hold
        query = await client.call_tool("query_results", {"limit": 2})
        assert answer_chars(query) < 2 * (500 + ROW_NOTES_CHARS + 1000)
        assert query.structured_content["rows"][1]["notes_cut"] is True

        latencies: list[float] = []
        big_done = anyio.Event()

        async def other_calls() -> None:
            while not big_done.is_set():
                for tool, args in (("query_results", {"limit": 1}), ("read_target", {"end_line": 2})):
                    start = time.perf_counter()
                    assert answer_chars(await client.call_tool(tool, args)) < 5000
                    latencies.append(time.perf_counter() - start)

        big = shuffled_lines(MAX_EDIT_BYTES)
        async with anyio.create_task_group() as group:
            group.start_soon(other_calls)
            edited = await client.call_tool("apply_edit", {"content": big})
            lines = big.splitlines(keepends=True)
            edits = [{"old_text": line, "new_text": line.replace("=", "==")} for line in lines[::500][:200]]
            edited_200 = await client.call_tool("apply_edit", {"edits": edits})
            too_large = await agent.refused("apply_edit", edits=[{"old_text": lines[1], "new_text": big}])
            big_done.set()
        for result in (edited, edited_200):
            assert answer_chars(result) < 1500
            assert result.structured_content["diff_summarized"] is True
        assert edited.structured_content["lines_added"] > MAX_DIFF_LINES
        assert "after edit 1" in too_large and f"the limit is {MAX_EDIT_BYTES} bytes" in too_large
        assert latencies  # every call sent while the big ones were in flight was answered
        print(
            f"\nother calls during the largest inputs: {len(latencies)} calls, median "
            f"{statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
        )


async def test_a_call_sent_while_a_diff_is_computed_is_answered_before_the_edit(
    ml_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The diff is computed outside the session's lock and off the event loop: while it is held in progress
    (the real diff, entered and then paused on an event), other calls, including those that take the session's
    lock, are answered; the edit answers only after them."""
    workspace = Workspace(ml_project)
    entered, release = threading.Event(), threading.Event()
    lock_free: list[bool] = []
    real_diff = editing.bounded_diff

    def paused_diff(before: str, after: str, path: str) -> Any:
        try:
            lock_free.append(free_in_another_thread(workspace.session.lock))
        finally:
            entered.set()  # the test goes on whatever happened here
        if lock_free[0]:  # with the lock held, no other call could answer: never wait for one
            release.wait()
        return real_diff(before, after, path)

    monkeypatch.setattr(editing, "bounded_diff", paused_diff)
    order: list[str] = []
    async with Client(create_server(workspace)) as client:
        agent = Agent(client)
        await agent.ok("start_session", tag="paused")
        await agent.experiment("baseline")

        async def edit() -> None:
            await agent.edit("LR = 0.5", "LR = 0.3")
            order.append("apply_edit")

        async with anyio.create_task_group() as group:
            group.start_soon(edit)
            await anyio.to_thread.run_sync(
                entered.wait, abandon_on_cancel=True
            )  # an edit refused early fails here
            for tool in ("query_results", "read_target", "detect_project"):
                await agent.ok(tool)
                order.append(tool)
            release.set()
    assert lock_free == [True], "the diff was computed while the session's lock was held"
    assert order == ["query_results", "read_target", "detect_project", "apply_edit"]


def free_in_another_thread(lock: Any) -> bool:
    """Whether another thread could take `lock` now (an RLock is always free to the thread holding it)."""
    free: list[bool] = []

    def probe() -> None:
        free.append(lock.acquire(blocking=False))
        if free[0]:
            lock.release()

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return free[0]


def test_a_small_change_in_a_large_file_gets_the_exact_diff_with_its_line_numbers() -> None:
    before = "".join(f"line {i}\n" for i in range(1, 20_001))
    after = before.replace("line 15000\n", "changed\n").replace("line 15002\n", "")
    diff = bounded_diff(before, after, "t.py")
    whole = difflib.unified_diff(before.splitlines(), after.splitlines(), "a/t.py", "b/t.py", lineterm="")
    assert diff.text == "\n".join(whole)
    assert "@@ -14997,9 +14997,8 @@" in diff.text
    assert (diff.added, diff.removed, diff.summarized) == (1, 2, False)


def test_a_change_larger_than_the_bound_is_summarized_with_its_lines() -> None:
    before = "head\n" + "".join(f"{i}\n" for i in range(5000)) + "tail\n"
    after = "head\n" + "".join(f"{i}\n" for i in reversed(range(5000))) + "tail\n"
    diff = bounded_diff(before, after, "t.py")
    assert diff.summarized and (diff.added, diff.removed) == (5000, 5000)
    assert "lines 2-5001 of t.py (5000 lines) became lines 2-5001 (5000 lines)" in diff.text
    assert f"at most {MAX_DIFF_LINES} lines" in diff.text
