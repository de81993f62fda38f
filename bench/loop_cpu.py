"""CPU per experiment, by process: the same loops as `loop_overhead.py` (one call per experiment, three calls,
the program.md shell loop), each measured by what its processes spent: the bench's own client, the server, and
the launcher with every process it forked (keepers, standby processes, the commands); for the shell loop, bash
and its children. On a machine with more cores than the loop keeps busy, wall time hides what CPU a loop needs;
when the machine is short of CPU, that is what the loop's time becomes.

    python bench/loop_cpu.py [--experiments 150] [--rounds 3]

CPU time on this kind of VM moves with the machine's phase as wall time does: compare loops within one run.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
import psutil
from mcp import Client

sys.path.insert(0, str(Path(__file__).parent))
from loop_overhead import caller, make_repo, next_value, serve_params, shell  # noqa: E402


def _spent(process: psutil.Process) -> float:
    """ms of CPU a process spent, with its children it waited for."""
    times = process.cpu_times()
    return (times.user + times.system + times.children_user + times.children_system) * 1000


async def ours(root: Path, n: int, one_call: bool) -> dict[str, float]:
    async with Client(serve_params(root)) as client:
        call = caller(client, structured=True)
        await call("start_session", {"tag": "bench"})
        await call("run_experiment", {"description": "baseline", "decide": True})
        me = psutil.Process()
        server = next(p for p in me.children() if "serve" in " ".join(p.cmdline()))

        def snapshot() -> tuple[float, float, float]:
            launchers = [p for p in server.children() if "forkserver" in " ".join(p.cmdline())]
            own = resource.getrusage(resource.RUSAGE_SELF)
            return (
                (own.ru_utime + own.ru_stime) * 1000,
                sum(server.cpu_times()[:2]) * 1000,
                sum(_spent(p) for p in launchers),
            )

        best = current = 1000
        before, started = snapshot(), time.perf_counter()
        for i in range(n):
            value = next_value(i, best)
            edit = [{"old_text": f"K={current}", "new_text": f"K={value}"}]
            if one_call:
                run = await call(
                    "run_experiment", {"description": f"K={value}", "edits": edit, "decide": True}
                )
                decided = run["decided"]
            else:
                await call("apply_edit", {"edits": edit})
                run = await call("run_experiment", {"description": f"K={value}"})
                decided = await call("commit_or_reset", {"run_id": run["run_id"]})
            best = value if decided["decision"] == "keep" else best
            current = best
        wall = (time.perf_counter() - started) * 1000 / n
        client, served, launched = ((b - a) / n for a, b in zip(before, snapshot(), strict=True))
    return {"wall": wall, "client": client, "server": served, "launcher": launched}


def shell_cpu(root: Path, n: int) -> dict[str, float]:
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    shell(root, n)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000 / n
    return {"wall": (time.perf_counter() - started) * 1000 / n, "bash and its children": spent}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiments", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-cpu-"))
    found: dict[str, list[dict[str, float]]] = {
        "one call": [],
        "three calls": [],
        "program.md shell loop": [],
    }
    for number in range(args.rounds):
        found["one call"].append(anyio.run(ours, make_repo(base / f"one-{number}"), args.experiments, True))
        found["three calls"].append(
            anyio.run(ours, make_repo(base / f"three-{number}"), args.experiments, False)
        )
        found["program.md shell loop"].append(
            shell_cpu(make_repo(base / f"shell-{number}"), args.experiments)
        )
    print(
        f"{args.experiments} experiments per loop and round (half kept), {args.rounds} rounds, {os.cpu_count()} cores"
    )
    print("| loop | wall ms per experiment | CPU ms per experiment (median of the rounds) |")
    print("|---|---|---|")
    for name, rounds in found.items():
        parts = {key: statistics.median(r[key] for r in rounds) for key in rounds[0] if key != "wall"}
        cpu = ", ".join(f"{key} {value:.1f}" for key, value in parts.items())
        total = sum(parts.values())
        print(f"| {name} | {statistics.median(r['wall'] for r in rounds):.1f} | {total:.1f} ({cpu}) |")


if __name__ == "__main__":
    main()
