"""Bounds on agent input (issue 24.4): the cost of the largest accepted edit, and the latency of other calls sent
while it is in flight, over stdio.

    python bench/bounds.py [--rounds 5]

1. `bounded_diff` alone on the worst inputs it accepts: 4 MiB of shuffled lines (summarized) and a changed
   region just under the diff bound, made of few distinct lines (difflib's slowest case).
2. A real server over stdio: `apply_edit` with 4 MiB of shuffled lines, repeated `--rounds` times, while a second
   task sends `query_results` and `read_target` calls back to back; the latency of each of those.
"""

from __future__ import annotations

import argparse
import difflib
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loop_overhead import IDENTITY, make_repo  # noqa: E402

from mcp_autoresearch.session.diffs import MAX_DIFF_LINES, bounded_diff  # noqa: E402
from mcp_autoresearch.session.editing import MAX_EDIT_BYTES  # noqa: E402


def shuffled(size: int, seed: int) -> str:
    lines = [f"x{i:07d} = {i}\n" for i in range(size // 20)]
    random.Random(seed).shuffle(lines)
    return "".join(lines)[: size - 16].rsplit("\n", 1)[0] + "\n"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def diff_costs() -> None:
    big_a, big_b = shuffled(MAX_EDIT_BYTES, 1), shuffled(MAX_EDIT_BYTES, 2)
    rng = random.Random(3)
    few = [f"v{rng.randrange(MAX_DIFF_LINES // 20)}\n" for _ in range(MAX_DIFF_LINES)]
    other = few[:]
    rng.shuffle(other)
    region_a, region_b = "head\n" + "".join(few) + "tail\n", "head\n" + "".join(other) + "tail\n"
    for name, a, b in (
        (f"4 MiB of shuffled lines ({big_a.count(chr(10))} lines), summarized", big_a, big_b),
        (
            f"{MAX_DIFF_LINES} changed lines of {MAX_DIFF_LINES // 20} distinct values, diffed",
            region_a,
            region_b,
        ),
    ):
        times = [timed(lambda a=a, b=b: bounded_diff(a, b, "t.py")) for _ in range(5)]
        print(
            f"bounded_diff, {name}: median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms"
        )
    whole = timed(lambda: list(difflib.unified_diff(big_a.splitlines(), big_b.splitlines(), lineterm="")))
    print(f"difflib on the whole 4 MiB (as apply_edit did before, holding the session's lock): {whole:.1f} s")


async def latency_during_big_edits(rounds: int) -> None:
    root = make_repo(Path(tempfile.mkdtemp(prefix="bench-bounds-")) / "p")
    env = {**{k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}, **IDENTITY}
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_autoresearch", "serve", "--project", str(root)], env=env
    )
    async with Client(params) as client:
        await client.call_tool("start_session", {"tag": "bounds"})
        run = await client.call_tool("run_experiment", {"description": "baseline"})
        await client.call_tool("commit_or_reset", {"run_id": run.structured_content["run_id"]})
        quiet: list[float] = []
        for _ in range(50):
            start = time.perf_counter()
            await client.call_tool("query_results", {"limit": 1})
            quiet.append(time.perf_counter() - start)
        others: list[float] = []
        edits: list[float] = []
        for seed in range(rounds):
            content = shuffled(MAX_EDIT_BYTES, seed + 10)
            done = anyio.Event()

            async def other_calls(done: anyio.Event = done) -> None:
                while not done.is_set():
                    for tool, args in (("query_results", {"limit": 1}), ("read_target", {"end_line": 2})):
                        start = time.perf_counter()
                        await client.call_tool(tool, args)
                        others.append(time.perf_counter() - start)

            async with anyio.create_task_group() as group:
                group.start_soon(other_calls)
                start = time.perf_counter()
                result = await client.call_tool("apply_edit", {"content": content})
                edits.append(time.perf_counter() - start)
                done.set()
            assert result.structured_content["diff_summarized"], result.content[0].text[:300]
        print(
            f"apply_edit of 4 MiB shuffled lines over stdio: median {statistics.median(edits) * 1000:.0f} ms"
        )
        print(
            f"other calls meanwhile: {len(others)}, median {statistics.median(others) * 1000:.1f} ms, max "
            f"{max(others) * 1000:.1f} ms (the same call with nothing else in flight: median "
            f"{statistics.median(quiet) * 1000:.1f} ms)"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()[0]:.1f}")
    diff_costs()
    anyio.run(latency_during_big_edits, args.rounds)


if __name__ == "__main__":
    main()
