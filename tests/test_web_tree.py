"""Issue 23, item 4: the web page draws the research tree (lineages, the best path highlighted, click a node for
its diff), in Debian's headless Chromium against a real `dashboard --web` process, as in test_web.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from .conftest import Agent, make_repo, stdio_params
from .helpers.ports import free_port
from .web_support import (
    ARTIFACTS,
    CHROMIUM_ARGS,
    chromium_executable,
    start_process,
    stop_process,
    synthetic_tree,
)

pytestmark = pytest.mark.anyio
READY = "html[data-ready='1']"


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    executable = chromium_executable()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def open_page(browser: Any, url: str) -> tuple[Any, list[str]]:
    context = await browser.new_context(viewport={"width": 1360, "height": 1000})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(url)
    return page, errors


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
        page, errors = await open_page(browser, base + "/")
        await page.wait_for_selector(READY)
        assert await page.locator("#tree circle.t-node").count() == 3
        lineage = await page.eval_on_selector_all(
            "#tree circle.t-on-lineage", "dots => dots.map(d => d.dataset.runId)"
        )
        assert lineage == ["r1", "r2"]
        await page.click("#tree circle[data-run-id='r3']")
        await page.wait_for_selector("#diff-body[data-commit]")
        diff = await page.inner_text("#diff-body")
        assert "-LR = 0.3" in diff and "+LR = 0.9" in diff
        assert "r3" in await page.inner_text("#diff-title")
        assert await page.locator("#tree circle.selected[data-run-id='r3']").count() == 1
        assert errors == []
    finally:
        stop_process(proc)
