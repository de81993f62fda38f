"""Issue 23, item 4: the web page draws the research tree (lineages, the best path highlighted, click a node for
its diff), in Debian's headless Chromium against a real `dashboard --web` process, as in test_web.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from mcp_autoresearch.readers.web.data import SessionView
from mcp_autoresearch.records.journal import Journal

from .conftest import Agent, make_repo, run_cli, stdio_params
from .helpers.ports import free_port
from .web_support import (
    ARTIFACTS,
    open_page,
    start_process,
    stop_process,
    synthetic_session,
    synthetic_tree,
)

pytestmark = pytest.mark.anyio
READY = "html[data-ready='1']"


async def test_a_tree_of_500_nodes_is_drawn_with_its_lineages_and_the_best_path(
    tmp_path: Path, browser: Any
) -> None:
    """Every node drawn once, on more than one lane (the branches), the best lineage highlighted node by node,
    the frontier ringed, each combine joined to the other run it merged, and the dots far enough apart to click
    one."""
    root = make_repo(tmp_path / "p", {"train.py": "LR = 1\n"})
    expected = synthetic_tree(root, 500)
    port = free_port()
    proc = start_process(["dashboard", "--web", "--project", str(root), "--port", str(port)], port)
    try:
        page, errors = await open_page(browser, f"http://127.0.0.1:{port}/")
        await page.wait_for_selector(READY)
        assert await page.get_attribute("#tree", "data-total") == "500"
        assert await page.locator("#tree circle.t-node").count() == 500
        lineage = expected["lineage"]
        assert isinstance(lineage, list) and len(lineage) > 3
        drawn_lineage = await page.eval_on_selector_all(
            "#tree circle.t-on-lineage", "dots => dots.map(d => d.dataset.runId)"
        )
        assert drawn_lineage == lineage  # in run order: the baseline to the best
        assert await page.locator("#tree path.t-lineage-step").count() == len(lineage) - 1
        best = page.locator("#tree circle.t-best")
        assert await best.count() == 1 and await best.get_attribute("data-run-id") == expected["best"]
        assert await page.locator("#tree circle.t-frontier").count() == expected["frontier"]
        merges = expected["merges"]
        assert isinstance(merges, int) and merges > 0
        assert await page.locator("#tree path.t-merge").count() == merges  # a combine: from the other run
        lanes = await page.eval_on_selector_all(
            "#tree circle.t-node", "dots => new Set(dots.map(d => d.getAttribute('cy'))).size"
        )
        assert lanes > 1  # the branches have lanes of their own
        gap = await page.eval_on_selector_all(
            "#tree circle.t-node",
            "dots => { const xs = [...new Set(dots.map(d => +d.getAttribute('cx')))].sort((a, b) => a - b);"
            " return Math.min(...xs.slice(1).map((x, i) => x - xs[i])); }",
        )
        assert gap >= 9  # readable: at 500 nodes, one dot per 9 pixels at least (the panel scrolls)
        note = await page.inner_text("#tree-note")
        assert "500 nodes" in note and f"frontier {expected['frontier']}" in note
        ARTIFACTS.mkdir(exist_ok=True)
        await page.locator("#tree-panel").screenshot(path=str(ARTIFACTS / "web-tree-500.png"))
        assert errors == []
    finally:
        stop_process(proc)


async def test_clicking_a_node_of_a_real_session_opens_its_diff(ml_project: Path, browser: Any) -> None:
    """A session run through the MCP client: the page's tree has its nodes, and a discarded node's diff opens."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_process(["dashboard", "--web", "--project", str(ml_project), "--port", str(port)], port)
    try:
        async with Client(stdio_params(ml_project)) as client:
            agent = Agent(client)
            await agent.ok("start_session", tag="tree")
            await agent.experiment("baseline")
            await agent.edit("LR = 0.5", "LR = 0.3")
            await agent.experiment("lower LR to 0.3")
            await agent.edit("LR = 0.3", "LR = 0.9")
            _, discarded = await agent.experiment("raise LR to 0.9")
            assert discarded["decision"] == "discard"
            await agent.ok("branch_from", run_id="r1")
            await agent.edit("LR = 0.5", "LR = 0.4")
            _, branched = await agent.experiment("LR 0.4 from the baseline")
            assert branched["decision"] == "keep"  # better than its parent r1, not than the best r2
        page, errors = await open_page(browser, base + "/")
        await page.wait_for_selector(READY)
        assert await page.locator("#tree circle.t-node").count() == 4
        lineage = await page.eval_on_selector_all(
            "#tree circle.t-on-lineage", "dots => dots.map(d => d.dataset.runId)"
        )
        assert lineage == ["r1", "r2"]
        lane = "circle[data-run-id='{}']"
        main_y = await page.get_attribute("#tree " + lane.format("r1"), "cy")
        assert await page.get_attribute("#tree " + lane.format("r3"), "cy") == main_y  # a try on the lane
        assert await page.get_attribute("#tree " + lane.format("r4"), "cy") != main_y  # a branch: its own
        assert await page.get_attribute("#tree " + lane.format("r4"), "class") == "t-node t-keep t-frontier"
        await page.click("#tree circle[data-run-id='r3']")
        await page.wait_for_selector("#diff-body[data-commit]")
        diff = await page.inner_text("#diff-body")
        assert "-LR = 0.3" in diff and "+LR = 0.9" in diff
        assert "r3" in await page.inner_text("#diff-title")
        assert await page.locator("#tree circle.selected[data-run-id='r3']").count() == 1
        await page.click(
            "#tree circle[data-run-id='r4']"
        )  # the branch's diff: against its parent, the baseline
        await page.wait_for_selector("#diff-title:has-text('r4')")
        await page.wait_for_selector("#diff-body:has-text('+LR = 0.4')")
        assert "-LR = 0.5" in await page.inner_text("#diff-body")
        await page.screenshot(path=str(ARTIFACTS / "web-tree-branch.png"), full_page=True)
        assert errors == []
    finally:
        stop_process(proc)


def test_the_page_reads_each_rows_parent_as_the_journal_does(tmp_path: Path) -> None:
    """Rows without a parent (logged before runs named theirs), with one, and with junk in its place: the page
    and the tools (the journal's index) agree on every parent."""
    root = make_repo(tmp_path / "p", {"train.py": "LR = 1\n"})
    synthetic_session(root, 30)  # rows as logged before the research tree: no "parent"
    jsonl = root / ".autoresearch" / "autoresearch.jsonl"
    with jsonl.open("a") as handle:
        for n, parent in ((31, "r2"), (32, 7), (33, None)):
            details = {"run_id": f"r{n}", "status": "discard", "run_status": "ok", "value": 2.0, "tag": "big"}
            handle.write(json.dumps({"action": "experiment_done", "details": {**details, "parent": parent}}))
            handle.write("\n")
    view = SessionView(root)
    view.refresh()
    journal = Journal(root / "results.tsv", jsonl, "big")
    journal.load_readonly()
    assert len(view.rows) == len(journal) == 33
    assert [r.parent for r in view.rows] == [journal.parent_at(i) for i in range(33)]
    assert [r.parent for r in view.rows][-3:-1] == ["r2", view.rows[31].parent]
    assert view.rows[32].parent is None and view.rows[1].parent == "r1"


def test_the_page_and_the_status_judge_near_misses_with_the_sessions_noise(tmp_path: Path) -> None:
    """A near-miss is a discard within the metric's noise of its parent, for the server and every reader: the page
    and the briefing (so `status`) read the noise from the session's state, not 0."""
    root = make_repo(tmp_path / "p", {"train.py": "LR = 1\n"})
    synthetic_tree(root, 200)
    view = SessionView(root)
    view.refresh()
    quiet = view.tree()["near_misses"]["total"]
    state_file = root / ".autoresearch" / "sessions" / "tree.own.json"
    record = json.loads(state_file.read_text())
    record["state"]["noise_ss"], record["state"]["noise_df"] = 0.04 * 50, 50  # sd 0.2: every discard is near
    state_file.write_text(json.dumps(record))
    noisy = SessionView(root)
    noisy.refresh()
    assert noisy.tree()["near_misses"]["total"] > quiet, (quiet, noisy.tree()["near_misses"])
    shown = run_cli("status", "--project", str(root))
    assert shown.returncode == 0 and "near-miss" in shown.stdout.lower(), shown.stdout
