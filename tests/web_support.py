"""What the web dashboard's tests (and bench/web_render.py) share: finding Debian's Chromium, starting a real
server process, and writing a large synthetic session straight into the files the page reads."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest

from mcp_autoresearch.records.state import SessionState, save_state, set_current_tag

# Chromium as this machine runs it: headless, as root (no sandbox), and without the background connections
# that a closed network refuses (they would slow every start).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
ARTIFACTS = Path(__file__).parent / "artifacts"


def chromium_executable() -> str:
    """Debian's chromium (never a downloaded browser). Missing in CI is a failure, elsewhere a skip."""
    found = os.environ.get("AUTORESEARCH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    problem = None
    if not Path(found).is_file():
        problem = "Chromium is not installed (apt-get install -y chromium)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        problem = "Playwright is not installed (pip install '.[web-test]')"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"{problem}: the browser tests must run in CI")
        pytest.skip(problem)
    return found


def start_process(args: list[str], port: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`python -m mcp_autoresearch ARGS`, returned once it answers HTTP on `port`."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcp_autoresearch", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # A bound only for a server that never answers (it starts in about 1.5 s; a loaded machine may take far longer).
    deadline = time.monotonic() + 120
    # One client for the polls: each new one loads the CA certificates (about 60 ms of CPU, even for http).
    with httpx2.Client(timeout=1) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            try:
                http.get(f"http://127.0.0.1:{port}/")
                return proc
            except httpx2.HTTPError:
                time.sleep(0.1)
    stop_process(proc)
    raise AssertionError("server did not answer within 120 s")


def stop_process(proc: subprocess.Popen[bytes]) -> str:
    """Stop it (SIGTERM, as Ctrl-C would) and return what it printed on stderr."""
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    return proc.stderr.read().decode() if proc.stderr else ""


def synthetic_session(
    root: Path, experiments: int, seed: int = 7, tag: str = "big", rules: dict[str, object] | None = None
) -> dict[str, float | int]:
    """A session of `experiments` decided experiments, written as the server writes them (state + JSONL),
    with keeps, discards, crashes, notes and the noise gate's `values`/`spread` on some rows. Returns the
    figures the page must show."""
    rng = random.Random(seed)
    jsonl = root / ".autoresearch" / "autoresearch.jsonl"
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    lines = [_event("session_start", {"branch": f"autoresearch/{tag}", "tag": tag}, start)]
    best: float | None = None
    counts = {"keep": 0, "discard": 0, "crash": 0}
    best_run = ""
    baseline: float | None = None
    for i in range(1, experiments + 1):
        when = start + timedelta(minutes=5 * i)
        run_id = f"r{i}"
        commit = hashlib.sha1(run_id.encode()).hexdigest()
        crashed = i > 1 and rng.random() < 0.05
        # Ideas improve on the best less and less often as it nears a floor of 0.9; a few are way off.
        level = 0.9 + max((best or 1.0) - 0.9, 0.0) * (1 + rng.gauss(0.08, 0.1)) + rng.gauss(0, 0.003)
        value = None if crashed else round(level * (1.4 if rng.random() < 0.01 else 1.0), 9)
        if crashed:
            status = "crash"
        elif best is None or value < best:  # type: ignore[operator]
            status = "keep"
        else:
            status = "discard"
        counts[status] += 1
        values = (
            [round(value + d, 9) for d in (-0.001, 0.0, 0.0012)] if value is not None and i % 3 == 0 else None
        )
        details = {
            "run_id": run_id,
            "status": status,
            "run_status": "crash" if crashed else "ok",
            "metric": "loss",
            "value": value,
            "prev": best,
            "delta": None if value is None or best is None else round(value - best, 12),
            "commit": commit[:7],
            "full_commit": commit,
            "description": f"experiment {i}: scale a constant",
            "memory_gb": round(1 + rng.random(), 3),
            "duration_s": 300.0,
            "error": "crash" if crashed else None,
            "error_detail": "exit code 1" if crashed else None,
            "tag": tag,
        }
        if values:
            details["values"], details["spread"] = values, round(max(values) - min(values), 9)
        lines.append(_event("experiment_done", details, when))
        if i % 10 == 0:
            lines.append(_event("experiment_notes", {"run_id": run_id, "notes": "note", "tag": tag}, when))
        if status == "keep":
            best, best_run = value, run_id
            baseline = value if baseline is None else baseline
    jsonl.write_text("".join(lines))
    base = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True
    ).stdout.strip()
    assert best is not None
    set_current_tag(root, tag)  # as the server does when it opens a session
    save_state(
        root,
        SessionState.model_validate(
            {
                "tag": tag,
                "branch": f"autoresearch/{tag}",
                "base_commit": base,
                "created_at": start.isoformat(),
                "target_file": "train.py",
                "metric_name": "loss",
                "metric_direction": "lower_is_better",
                "readonly_hashes": {},
                "run_counter": experiments,
                "best": {
                    "value": best,
                    "commit": hashlib.sha1(best_run.encode()).hexdigest(),
                    "run_id": best_run,
                    "description": "best",
                    "nonblank_lines": 3,
                },
                "baseline_value": baseline,
                "rules": rules or {},
            }
        ),
    )
    return {"total": experiments, **counts, "best": best, "baseline": baseline}


def _event(action: str, details: dict[str, object], when: datetime) -> str:
    stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    event = {"tool": "autoresearch", "action": action, "status": "success", "details": details}
    return json.dumps({**event, "local_time": stamp, "timestamp": stamp}) + "\n"


def append_experiment(root: Path, n: int, value: float, tag: str = "big") -> None:
    """One more decided experiment at the end of the JSONL, appended as the server appends it."""
    run_id = f"r{n}"
    details = {
        "run_id": run_id,
        "status": "discard",
        "run_status": "ok",
        "metric": "loss",
        "value": value,
        "commit": hashlib.sha1(run_id.encode()).hexdigest()[:7],
        "full_commit": hashlib.sha1(run_id.encode()).hexdigest(),
        "description": f"experiment {n}: appended",
        "tag": tag,
    }
    with (root / ".autoresearch" / "autoresearch.jsonl").open("a") as handle:
        handle.write(_event("experiment_done", details, datetime.now(UTC)))


def synthetic_tree(root: Path, experiments: int, seed: int = 11, tag: str = "tree") -> dict[str, object]:
    """A session whose runs name their parent, as a tree policy makes them: mostly built on the best, every
    fifth from another kept node (a branch), each kept when better than its own parent. Written as the server
    writes it (state + JSONL). Returns what the page must draw: the best, its lineage, the frontier's size."""
    rng = random.Random(seed)
    jsonl = root / ".autoresearch" / "autoresearch.jsonl"
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    lines = [_event("session_start", {"branch": f"autoresearch/{tag}", "tag": tag}, start)]
    values: dict[str, float] = {}
    parents: dict[str, str | None] = {}
    kept: list[str] = []
    children: dict[str, int] = {}
    best = ""
    merges = 0
    for i in range(1, experiments + 1):
        run_id = f"r{i}"
        parent = None if not kept else (rng.choice(kept) if i % 5 == 0 else best)
        # every 50th run (from the 25th) combines the best with another kept node
        other = rng.choice(kept) if kept and i % 50 == 25 else None
        combined = [best, other] if other is not None and other != best else None
        merges += combined is not None
        parent = best if combined else parent  # a combine run's parent: the better of the two
        base = 1.0 if parent is None else values[parent]
        value = round(base + rng.gauss(0.004, 0.01), 9)
        status = "keep" if parent is None or value < base else "discard"
        values[run_id], parents[run_id] = value, parent
        if parent is not None:
            children[parent] = children.get(parent, 0) + 1
        if status == "keep":
            kept.append(run_id)
            if not best or value < values[best]:
                best = run_id
        commit = hashlib.sha1(run_id.encode()).hexdigest()
        details = {
            "run_id": run_id,
            "parent": parent,
            "best": run_id == best,
            "status": status,
            "run_status": "ok",
            "metric": "loss",
            "value": value,
            "commit": commit[:7],
            "full_commit": commit,
            "description": f"experiment {i} from {parent or 'nothing'}",
            "tag": tag,
            **({"combined": combined} if combined else {}),
        }
        lines.append(_event("experiment_done", details, start + timedelta(minutes=5 * i)))
    jsonl.write_text("".join(lines))
    lineage = [best]
    while parents[lineage[-1]] is not None:
        lineage.append(parents[lineage[-1]])  # type: ignore[arg-type]
    base_commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True
    ).stdout.strip()
    set_current_tag(root, tag)
    save_state(
        root,
        SessionState.model_validate(
            {
                "tag": tag,
                "branch": f"autoresearch/{tag}",
                "base_commit": base_commit,
                "created_at": start.isoformat(),
                "target_file": "train.py",
                "metric_name": "loss",
                "metric_direction": "lower_is_better",
                "readonly_hashes": {},
                "run_counter": experiments,
                "best": {
                    "value": values[best],
                    "commit": hashlib.sha1(best.encode()).hexdigest(),
                    "run_id": best,
                    "description": "best",
                    "nonblank_lines": 3,
                },
                "baseline_value": values["r1"],
                "rules": {},
            }
        ),
    )
    frontier = [k for k in kept if children.get(k, 0) == 0]
    return {
        "best": best,
        "lineage": lineage[::-1],
        "frontier": len(frontier),
        "kept": len(kept),
        "merges": merges,
    }


async def open_page(browser: Any, url: str) -> tuple[Any, list[str]]:
    """A fresh tab (its own sessionStorage) on `url`, collecting the page's script errors."""
    context = await browser.new_context(viewport={"width": 1360, "height": 1000})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(url)
    return page, errors


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Debian's Chromium, headless, for one test (the browser tests of the dashboard)."""
    executable = chromium_executable()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()
