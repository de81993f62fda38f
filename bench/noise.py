"""Decisions under noise (issue 13): the `sequential` and `greedy` keep rules side by side, through the real
server and the real MCP client (in memory), on a simulated evaluator with seeded Gaussian noise.

The evaluator (`evaluate.sh`, read-only in the project) prints `score: QUALITY + N(0, 1)`, where QUALITY is a
line of the target (`score.txt`, lower is better) and the noise is seeded by the target's content, the bench's
seed and how many times that content ran before (the server passes no run index: AUTORESEARCH_SEED is random).
Every evaluation appends a line (its content's checksum) to a counter file, so the runs counted are the
processes that really ran (the best's re-measurements and the re-measurements after a keep included).

Two scenarios, each a number of sessions of `--experiments` candidates after the baseline:
- null: every candidate is exactly as good as the current best (its true QUALITY equals the best's);
- mixed: each candidate is `--effect` sigmas better than the current best with probability `--p-better`,
  else exactly as good.
Figures: false keeps per 100 candidates that are no better; the fraction of better candidates kept; mean runs
per candidate; and how far the best's logged value is from its true value at the end (the winner's curse).

    python bench/noise.py [--sessions 20] [--experiments 100] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from mcp import Client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_autoresearch.adapters.server import create_server  # noqa: E402
from mcp_autoresearch.session.workspace import Workspace  # noqa: E402

IDENTITY = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "b@b",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "b@b",
}
SIGMA = 1.0
# The simulated evaluator: QUALITY from the target, plus Gaussian noise (Box-Muller) seeded by a checksum of the
# target's content, the session's seed and the number of earlier runs of that content (kept in the counter file).
EVALUATE_SH = r"""#!/bin/sh
# usage: sh evaluate.sh SEED COUNTER_FILE
key=$(cksum < score.txt | cut -d' ' -f1)
n=$(grep -c "^$key\$" "$2" 2>/dev/null)
echo "$key" >> "$2"
seed=$( { cat score.txt; echo "$1 $((n + 1))"; } | cksum | cut -d' ' -f1)
awk -v seed="$seed" -v sigma="__SIGMA__" '
/^QUALITY/ { q = $3 }
END {
  srand(seed % 2147483647); u1 = rand(); u2 = rand(); u1 = rand(); u2 = rand()
  if (u1 < 1e-12) u1 = 1e-12
  printf "score: %.6f\n", q + sigma * sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2)
}' score.txt
"""


@dataclass
class Tally:
    null: int = 0  # candidates no better than the best
    false_keeps: int = 0
    better: int = 0  # candidates truly better
    true_keeps: int = 0
    runs: int = 0  # evaluator runs after the baseline
    candidates: int = 0
    curse: list[float] = field(default_factory=list)  # true - logged value of the final best, in sigmas
    seconds: float = 0.0

    def add(self, other: Tally) -> None:
        for name in ("null", "false_keeps", "better", "true_keeps", "runs", "candidates", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.curse += other.curse


def make_project(root: Path, seed: int, counter: Path, rule: str) -> None:
    root.mkdir(parents=True)
    (root / "evaluate.sh").write_text(EVALUATE_SH.replace("__SIGMA__", f"{SIGMA:g}"))
    (root / "score.txt").write_text("QUALITY = 10.000000\nIDEA = 0\n")
    settings = {
        "target_file": "score.txt",
        "run_command": f"sh evaluate.sh {seed} {counter}",
        "metric_name": "score",
        "metric_direction": "lower_is_better",
        "readonly_files": ["evaluate.sh"],
        "time_budget": 30,
        "keep_rule": rule,
        "writable": [str(counter.parent)],  # the evaluator counts its runs there (runs are confined)
    }
    (root / "autoresearch.toml").write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
    env = {**os.environ, **IDENTITY}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "init"]):
        subprocess.run(["git", *args], cwd=root, check=True, env=env)


def count(counter: Path) -> int:
    try:
        return len(counter.read_text().splitlines())
    except OSError:
        return 0


async def one_session(
    workdir: Path, rule: str, seed: int, experiments: int, p_better: float, effect: float
) -> Tally:
    root, counter = workdir / f"{rule}-{seed}", workdir / "counters" / f"{rule}-{seed}.count"
    counter.parent.mkdir(exist_ok=True)
    make_project(root, seed, counter, rule)
    rng = random.Random(seed)
    tally = Tally()
    started = time.perf_counter()
    async with Client(create_server(Workspace(root))) as client:

        async def call(tool: str, **args: object) -> dict:
            result = await client.call_tool(tool, args)
            if result.is_error:
                raise RuntimeError(f"{tool}: {result.content[0].text}")
            return result.structured_content

        async def experiment(description: str) -> str:
            run = await call("run_experiment", description=description, wait_s=45)
            while run["status"] == "running":
                run = await call("wait_experiment", run_id=run["run_id"], wait_s=45)
            decision = (await call("commit_or_reset", run_id=run["run_id"]))["decision"]
            if decision == "crash":  # the evaluator never fails: a crash is the bench's own problem
                raise RuntimeError(f"{description}: {run.get('error')}")
            return decision

        await call("start_session", tag="bench")
        await experiment("baseline")
        best_true = 10.0
        before = count(counter)
        for idea in range(1, experiments + 1):
            better = rng.random() < p_better
            quality = best_true - effect * SIGMA if better else best_true
            await call("apply_edit", content=f"QUALITY = {quality:.6f}\nIDEA = {idea}\n")
            decision = await experiment(f"idea {idea}")
            tally.candidates += 1
            if better:
                tally.better += 1
                tally.true_keeps += decision == "keep"
            else:
                tally.null += 1
                tally.false_keeps += decision == "keep"
            if decision == "keep":
                best_true = quality
        tally.runs = count(counter) - before
        best = (await call("query_results", limit=1))["best"]
        tally.curse.append((best_true - best["value"]) / SIGMA)
    tally.seconds = time.perf_counter() - started
    shutil.rmtree(root, ignore_errors=True)
    return tally


async def scenario(args: argparse.Namespace, rule: str, p_better: float, workdir: Path) -> Tally:
    """`--sessions` sessions, `--jobs` at a time (each its own server and project). The seeds depend only on
    the session's index and the scenario, so both rules see the same evaluator noise."""
    total = Tally()
    limiter = anyio.CapacityLimiter(args.jobs)

    async def one(index: int) -> None:
        seed = args.seed * 100_000 + index + (50_000 if p_better else 0)
        async with limiter:
            total.add(await one_session(workdir, rule, seed, args.experiments, p_better, args.effect))

    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for index in range(args.sessions):
            group.start_soon(one, index)
    total.seconds = time.perf_counter() - started
    return total


def row(rule: str, name: str, t: Tally) -> str:
    false_rate = 100 * t.false_keeps / t.null if t.null else float("nan")
    kept = f"{t.true_keeps / t.better:.1%} ({t.true_keeps}/{t.better})" if t.better else "-"
    curse = f"{statistics.mean(t.curse):+.2f}" if t.curse else "-"
    return (
        f"| {rule} | {name} | {t.candidates} | {false_rate:.2f} ({t.false_keeps}/{t.null}) | {kept} | "
        f"{t.runs / t.candidates:.2f} | {curse} | {t.seconds:.0f} s |"
    )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=20, help="sessions per rule and scenario")
    parser.add_argument("--experiments", type=int, default=100, help="candidates per session")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--p-better", type=float, default=0.1, help="mixed: share of better candidates")
    parser.add_argument("--effect", type=float, default=2.0, help="mixed: how much better, in sigmas")
    parser.add_argument("--rules", default="sequential,greedy")
    parser.add_argument("--jobs", type=int, default=2, help="sessions run at the same time")
    args = parser.parse_args()
    print(
        f"# {platform.system()} {platform.release()} {platform.machine()} ({cpu_model()}), {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; {args.sessions} sessions x {args.experiments} candidates "
        f"per rule and scenario, seed {args.seed}, mixed: {args.p_better:.0%} of candidates "
        f"{args.effect:g} sigma better",
        flush=True,
    )
    print(
        "| rule | scenario | candidates | false keeps per 100 no-better | better ones kept | runs per candidate "
        "| best's true - logged value (sigma) | time |\n|---|---|---|---|---|---|---|---|",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-noise-") as tmp:
        for rule in args.rules.split(","):
            for name, p_better in (("null", 0.0), ("mixed", args.p_better)):
                print(row(rule, name, await scenario(args, rule, p_better, Path(tmp))), flush=True)


if __name__ == "__main__":
    anyio.run(main)
