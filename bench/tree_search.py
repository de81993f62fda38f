"""The research tree (issue 23): the scripted agent's tree policy against its greedy loop, on a synthetic
landscape with local optima and real noise, through the real server and the real MCP client (in memory).

The target `params.py` holds three constants X, Y, Z; the evaluator (read-only) prints
`loss: rastrigin(X, Y, Z) + N(0, noise)`, the Rastrigin function (10 per dimension + x^2 - 10 cos(2 pi x):
a local minimum near every integer point, the one global minimum 0 at the origin), with fresh randomness on every
run (`random.SystemRandom`). Every session starts at X, Y, Z = 2.6, -3.3, 1.7 (true value 64.8; the nearest local
minimum, near 3, -3, 2, is about 22).

Both policies are `mcp_autoresearch.adapters.scripted_agent.ScriptedAgent`, with one proposal: add N(0, step)
to one constant chosen at random.
- greedy: every candidate starts from the best (today's loop);
- tree (`adapters/tree_policy.py`): go deeper on a keep; after `--stall-after` experiments without a keep,
  `branch_from` a near-miss, an earlier node of the best lineage or a frontier node (in turn); every third time,
  `combine` the best with the best node of another lineage instead.
Each session gets `--experiments` candidates after the baseline; a seed fixes the agent's proposals (both policies
draw the same ones until the tree first branches), never the noise. The keep rule is the server's choice for a
noisy metric (sequential) unless `--keep-rule` says otherwise.

Figures, from the session's records (the JSONL's rows and the commits they name), per policy over the seeds:
- the true (noise-free) value of the session's best at the end (the commit `autoresearch/<tag>` points at), and
  the best true value among all kept nodes;
- false keeps: kept, but its true value is not better than its parent's true value (the parent: the row's
  `parent`; rows without one, as the server reads them, the previous kept row).

    python bench/tree_search.py [--seeds 20] [--experiments 60] [--noise 1.0] [--step 0.3] [--stall-after 8]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_autoresearch.adapters.scripted_agent import CONSTANT, Proposal, ScriptedAgent  # noqa: E402
from mcp_autoresearch.adapters.server import create_server  # noqa: E402
from mcp_autoresearch.adapters.tree_policy import TreePolicy  # noqa: E402
from mcp_autoresearch.session.workspace import Workspace  # noqa: E402

IDENTITY = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "b@b",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "b@b",
}
START = {"X": 2.6, "Y": -3.3, "Z": 1.7}
# One source for the landscape: the evaluator runs it, the bench evaluates it without noise.
LANDSCAPE = """\
import math


def landscape(values):
    return sum(10 + x * x - 10 * math.cos(2 * math.pi * x) for x in values)


def constants(text):
    found = {}
    exec(text, found)
    return [found[name] for name in ("X", "Y", "Z")]
"""
EVALUATE = (
    LANDSCAPE
    + """
import random

noise = random.SystemRandom().gauss(0, __NOISE__)  # fresh randomness on every run
with open("params.py") as handle:
    print(f"loss: {landscape(constants(handle.read())) + noise:.6f}")
"""
)
# The local minimum nearest the start (near 3, -3, 2) is 21.9: a true value below it was reached past that local
# optimum, in another basin.
FIRST_OPTIMUM = 21.9


def true_value(params_text: str) -> float:
    space: dict[str, Any] = {}
    exec(LANDSCAPE, space)
    return float(space["landscape"](space["constants"](params_text)))


def additive(step: float) -> Callable[[str, random.Random], Proposal | None]:
    """The bench's proposal: add N(0, step) to one constant (the landscape is not scale-free, so no scaling)."""

    def propose(content: str, rng: random.Random) -> Proposal | None:
        match = rng.choice(list(CONSTANT.finditer(content)))
        new = f"{float(match.group('value')) + rng.gauss(0, step):.4f}"
        old_line = match.group(0)
        return Proposal(
            old_line,
            f"{match.group('name')}{match.group('eq')}{new}",
            f"{match.group('name')} {match.group('value')} -> {new}",
        )

    return propose


@dataclass
class Outcome:
    seed: int = 0
    final_true: float = math.nan  # the session's best at the end
    best_kept_true: float = math.nan  # the best of every kept node
    experiments: int = 0
    keeps: int = 0
    false_keeps: int = 0
    branches: int = 0
    combines: int = 0
    combines_refused: int = 0  # a conflict, or nothing to combine: the agent branched instead
    seconds: float = 0.0


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)


def make_project(root: Path, noise: float, keep_rule: str | None) -> None:
    root.mkdir(parents=True)
    # A comment between the constants, as in a real configuration: git merges changes of lines apart (combine),
    # while changes of adjacent lines conflict.
    (root / "params.py").write_text(
        "".join(
            f"# {name}: one constant of the landscape\n{name} = {value}\n\n" for name, value in START.items()
        )
    )
    (root / "evaluate.py").write_text(EVALUATE.replace("__NOISE__", repr(noise)))
    settings: dict[str, Any] = {
        "target_file": "params.py",
        "run_command": f"{sys.executable} -S evaluate.py",
        "metric_name": "loss",
        "metric_direction": "lower_is_better",
        "readonly_files": ["evaluate.py"],
        "time_budget": 30,
    }
    if keep_rule:
        settings["keep_rule"] = keep_rule
    (root / "autoresearch.toml").write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
    env = {**os.environ, **IDENTITY}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "init"]):
        subprocess.run(["git", *args], cwd=root, check=True, env=env)


def git_show(root: Path, spec: str) -> str:
    return subprocess.run(["git", "show", spec], cwd=root, check=True, capture_output=True, text=True).stdout


def measure(root: Path, tag: str) -> Outcome:
    """The figures of one session, from its JSONL rows and the commits they name."""
    rows = [
        json.loads(line)["details"]
        for line in (root / ".autoresearch" / "autoresearch.jsonl").read_text().splitlines()
        if '"experiment_done"' in line
    ]
    true = {row["run_id"]: true_value(git_show(root, f"{row['full_commit']}:params.py")) for row in rows}
    outcome = Outcome(experiments=len(rows) - 1)
    last_kept: str | None = None
    for row in rows:
        parent = row.get("parent", last_kept)
        if row["status"] == "keep":
            if parent is not None:
                outcome.keeps += 1
                outcome.false_keeps += true[row["run_id"]] >= true[parent]
            last_kept = row["run_id"]
        outcome.combines += bool(row.get("combined"))
    kept = [true[row["run_id"]] for row in rows if row["status"] == "keep"]
    outcome.best_kept_true = min(kept)
    outcome.final_true = true_value(git_show(root, f"autoresearch/{tag}:params.py"))
    return outcome


async def one_session(workdir: Path, policy: str, seed: int, args: argparse.Namespace) -> Outcome:
    root = workdir / f"{policy}-{seed}"
    make_project(root, args.noise, args.keep_rule)
    tree = TreePolicy(stall_after=args.stall_after) if policy == "tree" else None
    said: list[str] = []

    started = time.perf_counter()
    async with Client(create_server(Workspace(root))) as client:
        agent = ScriptedAgent(client, log=said.append, policy=tree, proposer=additive(args.step))
        await agent.loop(args.experiments, seed, "bench")
    outcome = measure(root, "bench")
    outcome.seed = seed
    outcome.branches = sum(line.lstrip().startswith("branch:") for line in said)
    outcome.combines_refused = sum(line.lstrip().startswith("could not combine") for line in said)
    outcome.seconds = time.perf_counter() - started
    shutil.rmtree(root, ignore_errors=True)
    return outcome


async def run_policy(policy: str, args: argparse.Namespace, workdir: Path) -> Tally:
    """`--seeds` sessions, `--jobs` at a time (each its own server and project)."""
    tally = Tally()
    limiter = anyio.CapacityLimiter(args.jobs)

    async def one(index: int) -> None:
        async with limiter:
            tally.outcomes.append(await one_session(workdir, policy, args.seed * 1000 + index, args))

    async with anyio.create_task_group() as group:
        for index in range(args.seeds):
            group.start_soon(one, index)
    return tally


def row(policy: str, tally: Tally) -> str:
    final = [o.final_true for o in tally.outcomes]
    best_kept = [o.best_kept_true for o in tally.outcomes]
    keeps = sum(o.keeps for o in tally.outcomes)
    false_keeps = sum(o.false_keeps for o in tally.outcomes)
    spread = statistics.stdev(final) if len(final) > 1 else 0.0
    return (
        f"| {policy} | {len(final)} | {statistics.mean(final):.2f} +- {spread:.2f} | "
        f"{statistics.median(final):.2f} ({min(final):.2f}-{max(final):.2f}) | "
        f"{statistics.mean(best_kept):.2f} | {sum(v < FIRST_OPTIMUM for v in final)} | "
        f"{false_keeps}/{keeps} ({100 * false_keeps / keeps if keeps else 0:.1f}%) | "
        f"{sum(o.branches for o in tally.outcomes)} / {sum(o.combines for o in tally.outcomes)} "
        f"({sum(o.combines_refused for o in tally.outcomes)} refused) | "
        f"{sum(o.seconds for o in tally.outcomes) / len(final):.0f} s |"
    )


def paired(greedy: Tally, tree: Tally) -> str:
    """Seed by seed (both policies draw the same proposals until the tree first branches): tree - greedy."""
    by_seed = {o.seed: o.final_true for o in greedy.outcomes}
    diffs = [o.final_true - by_seed[o.seed] for o in tree.outcomes if o.seed in by_seed]
    if len(diffs) < 2:
        return "paired: too few seeds"
    half = 1.96 * statistics.stdev(diffs) / math.sqrt(len(diffs))
    mean = statistics.mean(diffs)
    wins = sum(d < 0 for d in diffs)
    return (
        f"paired by seed, tree - greedy (final best, true value; negative: the tree is better): "
        f"{mean:+.2f} (95% interval {mean - half:+.2f} to {mean + half:+.2f}); the tree better on {wins} of "
        f"{len(diffs)} seeds"
    )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=20, help="sessions per policy")
    parser.add_argument(
        "--experiments", type=int, default=60, help="candidates per session after the baseline"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--noise", type=float, default=1.0, help="standard deviation of the evaluator's noise"
    )
    parser.add_argument("--step", type=float, default=0.3, help="standard deviation of a proposal's step")
    parser.add_argument(
        "--stall-after", type=int, default=8, help="tree: experiments without a keep, then branch"
    )
    parser.add_argument(
        "--keep-rule", default=None, help="greedy or sequential (default: the server's choice)"
    )
    parser.add_argument("--policies", default="greedy,tree")
    parser.add_argument("--jobs", type=int, default=2, help="sessions run at the same time")
    parser.add_argument("--json", default=None, help="also write every session's figures to this file")
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> dict[str, Tally]:
    args = parse(argv)
    print(
        f"# {platform.system()} {platform.release()} {platform.machine()} ({cpu_model()}), {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; {args.seeds} seeds x {args.experiments} experiments per policy, "
        f"noise {args.noise:g}, step {args.step:g}, stall_after {args.stall_after}, keep rule "
        f"{args.keep_rule or 'the server s choice'}, seed {args.seed}",
        flush=True,
    )
    print(
        "| policy | sessions | final best, true value: mean +- sd | median (min-max) | best kept node, mean "
        f"| sessions past the first local optimum (< {FIRST_OPTIMUM:g}) | false keeps / keeps | branches / combines (refused) "
        "| time per session |\n|---|---|---|---|---|---|---|---|---|",
        flush=True,
    )
    tallies: dict[str, Tally] = {}
    with tempfile.TemporaryDirectory(prefix="bench-tree-") as tmp:
        for policy in args.policies.split(","):
            tallies[policy] = await run_policy(policy, args, Path(tmp))
            print(row(policy, tallies[policy]), flush=True)
    if args.json:
        every = {policy: [vars(o) for o in tally.outcomes] for policy, tally in tallies.items()}
        Path(args.json).write_text(json.dumps(every, indent=1))
    if "greedy" in tallies and "tree" in tallies:
        print("\n" + paired(tallies["greedy"], tallies["tree"]), flush=True)
    return tallies


if __name__ == "__main__":
    anyio.run(main)
