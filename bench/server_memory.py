"""The server's memory over a long session: the one-call loop of `loop_overhead.py` over stdio, the server's
resident memory (and the launcher's, its descriptors and threads) sampled every `--every` experiments, and the
growth per experiment after the first samples (what the imports and the first runs settle).

    python bench/server_memory.py [--experiments 1200] [--every 200]
    PYTHONPATH=/tmp/old python bench/server_memory.py   # another version of the package, exported with git archive
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import anyio
import psutil
from mcp import Client

sys.path.insert(0, str(Path(__file__).parent))
from loop_overhead import caller, make_repo, next_value, serve_params  # noqa: E402


def _sample(server: psutil.Process) -> tuple[float, float, int, int]:
    """(server RSS MB, launcher RSS MB, server descriptors, server threads)."""
    launchers = [p for p in server.children() if "forkserver" in " ".join(p.cmdline())]
    launcher = launchers[0].memory_info().rss / 2**20 if launchers else 0.0
    return server.memory_info().rss / 2**20, launcher, server.num_fds(), server.num_threads()


async def main(experiments: int, every: int) -> None:
    root = make_repo(Path(tempfile.mkdtemp(prefix="bench-memory-")) / "p")
    async with Client(serve_params(root)) as client:
        call = caller(client, structured=True)
        await call("start_session", {"tag": "memory"})
        await call("run_experiment", {"description": "baseline", "decide": True})
        server = next(p for p in psutil.Process().children() if "serve" in " ".join(p.cmdline()))
        samples = []
        best = current = 1000
        for i in range(experiments + 1):
            if i % every == 0:
                samples.append((i, *_sample(server)))
            if i == experiments:
                break
            value = next_value(i, best)
            edit = [{"old_text": f"K={current}", "new_text": f"K={value}"}]
            run = await call("run_experiment", {"description": f"K={value}", "edits": edit, "decide": True})
            best = value if run["decided"]["decision"] == "keep" else best
            current = best
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print("| experiments | server RSS (MB) | launcher RSS (MB) | server fds | server threads |")
    print("|---|---|---|---|---|")
    for i, rss, launcher, fds, threads in samples:
        print(f"| {i} | {rss:.1f} | {launcher:.1f} | {fds} | {threads} |")
    (first, rss0, *_), (last, rss1, *_) = samples[1], samples[-1]
    print(
        f"growth from {first} to {last} experiments: {(rss1 - rss0) * 1024 / (last - first):.2f} KB per experiment"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiments", type=int, default=1200)
    parser.add_argument("--every", type=int, default=200)
    args = parser.parse_args()
    anyio.run(main, args.experiments, args.every)
