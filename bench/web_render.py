"""How long the web dashboard takes to render a large session in headless Chromium, and how much it transfers.

A synthetic session of N experiments is written into a fresh git repository, `mcp-autoresearch dashboard --web`
serves it, and Debian's Chromium (driven by Playwright) opens the page R times in fresh tabs. The time is from
navigation start to the page's own "ready" mark (summary, chart and first table page drawn); the bytes are
every response body of one load (the page, its assets, the JSON). Then, with the page open, one experiment is
appended to the JSONL at a time, as the server appends it, and the time until the page shows the new count is
the live-update latency (the server looks at the files every 0.25 s).

    python bench/web_render.py [--experiments 10000] [--repeats 7] [--screenshot out.png]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.conftest import make_repo  # noqa: E402
from tests.web_support import (  # noqa: E402
    CHROMIUM_ARGS,
    append_experiment,
    chromium_executable,
    free_port,
    start_process,
    stop_process,
    synthetic_session,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--screenshot", help="save a screenshot of the last load here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_repo(Path(tmp) / "big", {"train.py": "LR = 1\n"})
        synthetic_session(root, args.experiments)
        port = free_port()
        proc = start_process(["dashboard", "--web", "--project", str(root), "--port", str(port)], port)
        try:
            times, sizes = measure(f"http://127.0.0.1:{port}/", args.repeats, args.screenshot)
            latencies = live_latency(f"http://127.0.0.1:{port}/", root, args.experiments, args.repeats)
        finally:
            stop_process(proc)
    print(f"{platform.system()} {platform.machine()}, Python {platform.python_version()}")
    print(f"experiments: {args.experiments}, loads: {len(times)} (the first one, cold, is not counted)")
    print(
        f"render: median {statistics.median(times):.0f} ms, min {min(times):.0f} ms, max {max(times):.0f} ms"
    )
    for name, size in sorted(sizes.items(), key=lambda item: -item[1]):
        print(f"  {name:<28} {size / 1024:7.1f} KB")
    print(f"transferred in one load: {sum(sizes.values()) / 1024:.1f} KB")
    print(
        f"live update (append to the JSONL -> shown): median {statistics.median(latencies):.0f} ms, "
        f"max {max(latencies):.0f} ms over {len(latencies)} appends"
    )
    return 0


def measure(url: str, repeats: int, screenshot: str | None) -> tuple[list[float], dict[str, int]]:
    times: list[float] = []
    sizes: dict[str, int] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_executable(), headless=True, args=CHROMIUM_ARGS)
        for attempt in range(repeats + 1):
            context = browser.new_context(viewport={"width": 1360, "height": 1000})
            page = context.new_page()
            loaded: dict[str, int] = {}

            def record(response, loaded=loaded) -> None:  # noqa: ANN001
                if "/api/events" not in response.url:  # the live stream stays open: not part of a load
                    loaded[response.url.split("/", 3)[-1] or "index.html"] = len(response.body())

            page.on("response", record)
            page.goto(url)
            page.wait_for_selector("html[data-ready='1']", timeout=60_000)
            if attempt:  # the first load warms the server's index and the browser: not counted
                times.append(page.evaluate("window.__renderMs"))
            sizes = loaded
            if screenshot and attempt == repeats:
                page.screenshot(path=screenshot, full_page=True)
            context.close()
        browser.close()
    return times, sizes


def live_latency(url: str, root: Path, total: int, count: int) -> list[float]:
    latencies: list[float] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_executable(), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#conn[data-state='live']", timeout=60_000)
        for n in range(total + 1, total + count + 1):
            began = time.perf_counter()
            append_experiment(root, n, 0.95)
            page.wait_for_selector(f"#total[data-value='{n}']", timeout=10_000)
            latencies.append((time.perf_counter() - began) * 1000)
            time.sleep(0.3)
        browser.close()
    return latencies


if __name__ == "__main__":
    raise SystemExit(main())
