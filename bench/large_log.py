"""Large logs (issue 5): a session with 100,000 logged experiments. Measures query_results over stdio, the
briefing resource, the server's memory (RSS), and the CLI views (results table, dashboard print).

    python bench/large_log.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import psutil
from mcp import Client, StdioServerParameters

from mcp_autoresearch.records.state import Best, load_state, save_state
from mcp_autoresearch.session.workspace import Workspace

IDENTITY = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "b@b",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "b@b",
}


def build(root: Path, rows: int) -> None:
    root.mkdir()
    (root / "train.py").write_text("print('val_bpb: 1.0')\n")
    (root / "prepare.py").write_text("")
    env = {**os.environ, **IDENTITY}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "init"]):
        subprocess.run(["git", *args], cwd=root, check=True, env=env)
    os.environ.update(IDENTITY)
    workspace = Workspace(root)
    workspace.start_session("big")
    workspace.shutdown()
    rng = random.Random(0)
    best, lines = 1.0, []
    for i in range(rows):
        value = round(best + rng.gauss(0.002, 0.01), 6)
        status = "crash" if i % 17 == 0 else ("keep" if value < best else "discard")
        if status == "keep":
            best = value
        details = {
            "run_id": f"r{i + 1}",
            "status": status,
            "run_status": "ok" if status != "crash" else "timeout",
            "metric": "val_bpb",
            "value": None if status == "crash" else value,
            "prev": best,
            "delta": None,
            "commit": f"{i:07x}",
            "full_commit": f"{i:040x}",
            "description": f"experiment {i}: change something about the optimizer schedule",
            "memory_gb": 44.0,
            "duration_s": 300.1,
            "error": None,
            "tag": "big",
        }
        lines.append(
            json.dumps(
                {
                    "tool": "autoresearch",
                    "action": "experiment_done",
                    "status": "success",
                    "details": details,
                    "local_time": "2026-11-26T00:00:00+00:00",
                    "timestamp": "2026-11-26T00:00:00.000Z",
                }
            )
        )
        if i % 10 == 0:
            lines.append(
                json.dumps(
                    {
                        "tool": "autoresearch",
                        "action": "experiment_notes",
                        "status": "success",
                        "details": {"run_id": f"r{i + 1}", "notes": "a note " * 10, "tag": "big"},
                    }
                )
            )
    with open(root / ".autoresearch" / "autoresearch.jsonl", "a") as handle:
        handle.write("\n".join(lines) + "\n")
    state = load_state(root, "big")
    state.best = Best(
        value=best, commit=state.base_commit, run_id=f"r{rows}", description="best", nonblank_lines=1
    )
    state.baseline_value = 1.0
    state.baseline_commit = state.base_commit
    state.run_counter = rows
    save_state(root, state)


async def measure(root: Path) -> dict:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_autoresearch", "serve", "--project", str(root)],
        env={**{k: os.environ[k] for k in ("PATH", "HOME")}, **IDENTITY},
    )
    out: dict = {}
    async with Client(params) as client:
        start = time.perf_counter()
        started = await client.call_tool("start_session", {})
        out["resume_s"] = time.perf_counter() - start
        assert not started.is_error, started.content[0].text
        for name, args in (
            ("recent", {"limit": 20}),
            ("best", {"limit": 20, "order": "best"}),
            ("keep only", {"status": "keep", "limit": 50}),
        ):
            times = []
            for _ in range(30):
                start = time.perf_counter()
                result = await client.call_tool("query_results", args)
                times.append(time.perf_counter() - start)
            assert result.structured_content["total"] > 0
            out[f"query_{name}_ms"] = (statistics.median(times) * 1000, max(times) * 1000)
        times = []
        for _ in range(10):
            start = time.perf_counter()
            briefing = await client.read_resource("autoresearch://briefing")
            times.append(time.perf_counter() - start)
        out["briefing_ms"] = statistics.median(times) * 1000
        out["briefing_chars"] = len(briefing.contents[0].text)
        server = next(
            p for p in psutil.Process().children(recursive=True) if "serve" in " ".join(p.cmdline())
        )
        out["server_rss_mb"] = server.memory_info().rss / 1e6
    return out


def timed_cli(*args: str) -> float:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "mcp_autoresearch", *args], check=True, stdout=subprocess.DEVNULL
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "big"
        build(root, args.rows)
        size = (root / ".autoresearch" / "autoresearch.jsonl").stat().st_size
        result = anyio.run(measure, root)
        print(f"machine: {platform.platform()}, {os.cpu_count()} cores, python {platform.python_version()}")
        print(f"{args.rows} experiments, JSONL {size / 1e6:.1f} MB")
        print(f"start_session (resume, loads the log): {result['resume_s']:.2f} s")
        for key in ("recent", "best", "keep only"):
            median, worst = result[f"query_{key}_ms"]
            print(
                f"query_results ({key}): median {median:.1f} ms, max {worst:.1f} ms (30 calls, stdio round trip)"
            )
        print(
            f"briefing resource: median {result['briefing_ms']:.1f} ms, {result['briefing_chars']} characters"
        )
        print(f"server RSS after loading: {result['server_rss_mb']:.0f} MB")
        print(
            f"CLI `dashboard --once`: {timed_cli('dashboard', '--project', str(root), '--once'):.2f} s; "
            f"`status`: {timed_cli('status', '--project', str(root)):.2f} s (whole process, median of 3)"
        )


if __name__ == "__main__":
    main()
