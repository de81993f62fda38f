"""Loop overhead: the same N experiments through our server (stdio, scripted client) and through the shell loop
of karpathy/autoresearch's program.md (git commit, cmd > run.log 2>&1, grep, append results.tsv, git reset).

Per-experiment overhead = wall time of one experiment minus the command's own time (median of the raw command).
Also counts tool calls and bytes returned to the agent per experiment. Ours is measured twice, with runs confined
(the private view + Landlock, the default where the kernel allows both), with Landlock alone (the server started
under `tests/helpers/no_namespaces.py`, as where namespaces are refused) and with `isolation = "off"`, side by side.

    python bench/loop_overhead.py [--experiments 60] [--rounds 1] [--against REV]... [--discards-only | --keep-every N]
        [--under DIR]

Each experiment is three tool calls (apply_edit, run_experiment, commit_or_reset), as the loop prompt's steps
are, and in one loop a single call (`run_experiment(edits=..., decide=true)`, the same work in one round trip).

A kept candidate is run again by the server before the decision is final (the re-measurement after a keep, which
the shell loop does not have): half the experiments are keeps here, so the server runs the command 1.5 times per
experiment, and only one command's own time is subtracted. `--keep-every N` makes one experiment in N an improvement
(5: a fifth of the experiments kept, nearer a real session); `--discards-only` makes every experiment a regression,
to see the loop's overhead without that second run.

On a machine shared with other work, `--rounds N` runs every loop N times in turn (the experiments split between
the rounds), so a change of load hits each loop alike; `--against REV` (repeatable) adds the server as it was at
git revision REV (exported to a temporary directory), run in the same rounds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

COMMAND = '. ./params.sh; echo "score: $K"'
IDENTITY = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "b@b",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "b@b",
}


def make_repo(path: Path, isolation: str = "auto") -> Path:
    path.mkdir(parents=True)
    (path / "params.sh").write_text("K=1000\n")
    (path / "autoresearch.toml").write_text(
        f'target_file = "params.sh"\nrun_command = {json.dumps(COMMAND)}\nmetric_name = "score"\n'
        f'isolation = "{isolation}"\n'
    )
    env = {**os.environ, **IDENTITY}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "init"]):
        subprocess.run(["git", *args], cwd=path, check=True, env=env)
    return path


KEEP_EVERY = 2  # one experiment in KEEP_EVERY is an improvement (--keep-every; 0 with --discards-only)
FRESH = itertools.count()
BASELINED: set[Path] = set()  # the projects whose session ran its baseline (in an earlier round)


def next_value(i: int, best: int) -> int:
    """One improvement every `KEEP_EVERY` experiments, regressions between them, so both keep and discard paths
    are measured (with `--discards-only`, only regressions: no keep, so no re-measurement after one); every
    content is new (the server does not run the same content twice)."""
    if KEEP_EVERY and i % KEEP_EVERY == 0:
        return best - 1
    return 10_000_000 + next(FRESH)  # never a content measured before (the server would not run it again)


def command_time(cwd: Path, n: int = 50) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run(["/bin/sh", "-c", COMMAND], cwd=cwd, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


CONFINED = "mcp-autoresearch (stdio), runs confined"
ONE_CALL = "mcp-autoresearch (stdio), runs confined, one call per experiment"
OFF = 'mcp-autoresearch (stdio), isolation = "off"'
NO_NAMESPACES = str(Path(__file__).parent.parent / "tests" / "helpers" / "no_namespaces.py")


def serve_params(
    root: Path, env: dict[str, str] | None = None, wrap: list[str] | None = None
) -> StdioServerParameters:
    """The server of this checkout (or of `PYTHONPATH`'s package) over stdio on `root`, with the bench's git
    identity (`wrap`: a program the server is started under, such as `NO_NAMESPACES`)."""
    serve = ["-m", "mcp_autoresearch", "serve", "--project", str(root)]
    base = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH") if k in os.environ}
    return StdioServerParameters(
        command=sys.executable,
        args=[*wrap, sys.executable, *serve] if wrap else serve,
        env={**base, **IDENTITY, **(env or {})},
        # Not the checkout's directory: `python -m` puts its working directory first on sys.path, and from the
        # checkout it would import the package there instead of the one `--against` exported.
        cwd=str(root),
    )


def caller(client: Client, structured: bool = False) -> Callable[[str, dict], Awaitable[Any]]:
    """A tool call that raises on an error, answering the call's result (`structured`: its structured content)."""

    async def call(tool: str, args: dict) -> Any:
        result = await client.call_tool(tool, args)
        if result.is_error:
            raise RuntimeError(result.content[0].text)
        return result.structured_content if structured else result

    return call


async def ours(
    root: Path, n: int, source: Path | None = None, without_namespaces: bool = False, one_call: bool = False
) -> dict:
    """`n` experiments through the server (the installed one, or the package under `source`), on `root`;
    `without_namespaces`: as where namespaces are refused (Landlock alone); `one_call`: each experiment one
    `run_experiment(edits=..., decide=true)` instead of apply_edit, run_experiment and commit_or_reset."""
    params = serve_params(
        root,
        {"PYTHONPATH": str(source)} if source is not None else None,
        [NO_NAMESPACES] if without_namespaces else None,
    )
    per_experiment, calls, sizes, kinds = [], [], [], []
    async with Client(params) as client:
        call = caller(client)
        await call("start_session", {"tag": "bench"})
        if root not in BASELINED:  # a new session: its baseline first
            BASELINED.add(root)
            run = await call("run_experiment", {"description": "baseline"})
            await call("commit_or_reset", {"run_id": run.structured_content["run_id"]})
        best = current = int((root / "params.sh").read_text().strip().removeprefix("K="))
        for i in range(n):
            value = next_value(i, best)
            edit = [{"old_text": f"K={current}", "new_text": f"K={value}"}]
            start = time.perf_counter()
            if one_call:
                run = await call(
                    "run_experiment", {"description": f"K={value}", "edits": edit, "decide": True}
                )
                results, decided = [run], run.structured_content["decided"]
            else:
                results = [await call("apply_edit", {"edits": edit})]
                run = await call("run_experiment", {"description": f"K={value}"})
                results.append(run)
                results.append(await call("commit_or_reset", {"run_id": run.structured_content["run_id"]}))
                decided = results[-1].structured_content
            per_experiment.append(time.perf_counter() - start)
            calls.append(len(results))
            sizes.append(sum(len(c.text.encode()) for r in results for c in r.content))
            kinds.append(decided["decision"])
            if decided["decision"] == "keep":
                best = value
            elif decided["decision"] != "discard":
                raise RuntimeError(f"unexpected decision: {decided}")
            current = best
    return {"times": per_experiment, "calls": calls, "bytes": sizes, "kinds": kinds}


SHELL_LOOP = r"""
set -u
n=$1; cmd=$2; keep_every=$3; best=1000; out=timings.txt; : > $out; : > bytes.txt
printf 'commit\tscore\tstatus\tdescription\n' > results.tsv
say() { local text; text=$("$@" 2>&1); printf '%s' "$text" | wc -c >> bytes.txt; }
for ((i = 0; i < n; i++)); do
  if (( keep_every > 0 && i % keep_every == 0 )); then value=$((best - 1)); else value=$((best + 10000 + i)); fi
  start=$EPOCHREALTIME
  say git log --oneline -1
  say sed -i "s/^K=.*/K=$value/" params.sh
  say git commit -am "K=$value"
  sh -c "$cmd" > run.log 2>&1
  metric=$(grep "^score:" run.log | tail -1 | awk '{print $2}')
  printf '%s' "score: $metric" | wc -c >> bytes.txt
  if (( metric < best )); then status=keep; best=$metric; else status=discard; fi
  say sh -c "printf '%s\t%s\t%s\t%s\n' \"\$(git rev-parse --short HEAD)\" $metric $status K=$value >> results.tsv"
  if [[ $status == discard ]]; then say git reset --hard HEAD~1; fi
  end=$EPOCHREALTIME
  echo "$start $end $status" >> $out
done
"""


def shell(root: Path, n: int) -> dict:
    script = root / ".." / "loop.sh"
    script.write_text(SHELL_LOOP)
    (root / "params.sh").write_text("K=1000\n")  # each round starts from the same best
    subprocess.run(["git", "checkout", "-q", "--", "params.sh"], cwd=root, check=True)
    subprocess.run(
        ["bash", str(script), str(n), COMMAND, str(KEEP_EVERY)],
        cwd=root,
        check=True,
        env={**os.environ, **IDENTITY},
    )
    rows = [line.split() for line in (root / "timings.txt").read_text().splitlines()]
    times = [float(end) - float(start) for start, end, _ in rows]
    # program.md: look at the git state, edit, commit, run, grep, append to results.tsv (+ reset on discard)
    calls = [6 + (status == "discard") for *_, status in rows]
    sizes_raw = [int(x) for x in (root / "bytes.txt").read_text().split()]
    # bytes.txt holds one count per agent-visible command; regroup them per experiment.
    sizes, index = [], 0
    for c in calls:
        count = c - 1  # the run itself prints nothing to the agent (redirected)
        sizes.append(sum(sizes_raw[index : index + count]))
        index += count
    return {"times": times, "calls": calls, "bytes": sizes, "kinds": [status for *_, status in rows]}


def summary(data: dict, own: float) -> dict:
    overhead = [t - own for t in data["times"]]
    q = statistics.quantiles(overhead, n=10)
    by_kind = {
        kind: statistics.median([o for o, k in zip(overhead, data["kinds"], strict=True) if k == kind]) * 1000
        for kind in ("keep", "discard")
        if kind in data["kinds"]
    }
    return {
        "by_kind": by_kind,
        "median_ms": statistics.median(overhead) * 1000,
        "p10_ms": q[0] * 1000,
        "p90_ms": q[-1] * 1000,
        "calls": statistics.median(data["calls"]),
        "bytes": statistics.median(data["bytes"]),
    }


def export(rev: str, into: Path) -> Path:
    """The package as it was at git revision `rev`, exported under `into`."""
    top = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "archive", rev, "mcp_autoresearch"], cwd=top, check=True, capture_output=True
    )
    into.mkdir()
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def merged(parts: list[dict]) -> dict:
    return {key: [x for part in parts for x in part[key]] for key in ("times", "calls", "bytes", "kinds")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiments", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=1, help="run the loops in turn, this many times")
    parser.add_argument(
        "--against",
        metavar="REV",
        action="append",
        default=[],
        help="also run the server as it was at this git revision (repeatable)",
    )
    parser.add_argument(
        "--discards-only",
        action="store_true",
        help="every experiment a regression (no keep: the server's re-measurement after a keep is left out)",
    )
    parser.add_argument(
        "--keep-every",
        type=int,
        default=2,
        metavar="N",
        help="one experiment in N an improvement (default 2: keeps and discards alternate)",
    )
    parser.add_argument(
        "--under",
        metavar="DIR",
        default=None,
        help="make the projects in a new folder under DIR (default: the system's temporary folder, /tmp, which "
        "runs do not see: their view copies the project in and hides its server folders again on each run; "
        "a project in the user's home needs neither)",
    )
    args = parser.parse_args()
    global KEEP_EVERY
    KEEP_EVERY = 0 if args.discards_only else max(1, args.keep_every)
    base = Path(tempfile.mkdtemp(prefix="bench-loop-", dir=args.under))
    per_round = max(1, args.experiments // args.rounds)
    try:
        # name: (project, the package's source or None for this one, Landlock alone, one call per experiment)
        loops: dict[str, tuple[Path, Path | None, bool, bool]] = {
            ONE_CALL: (make_repo(base / "ours-one"), None, False, True),
            CONFINED: (make_repo(base / "ours"), None, False, False),
            "mcp-autoresearch (stdio), runs confined: Landlock alone": (
                make_repo(base / "ours-ll"),
                None,
                True,
                False,
            ),
            OFF: (make_repo(base / "ours-off", isolation="off"), None, False, False),
        }
        for number, rev in enumerate(args.against):
            loops[f"mcp-autoresearch at {rev} (stdio), runs confined"] = (
                make_repo(base / f"old-ours-{number}"),
                export(rev, base / f"old-{number}"),
                False,
                False,
            )
        shell_root = make_repo(base / "shell")
        own = command_time(shell_root)
        data: dict[str, list[dict]] = {name: [] for name in [*loops, "program.md shell loop"]}
        for _ in range(args.rounds):
            for name, (root, source, alone, one_call) in loops.items():
                data[name].append(anyio.run(ours, root, per_round, source, alone, one_call))
            data["program.md shell loop"].append(shell(shell_root, per_round))
        results = {name: summary(merged(parts), own) for name, parts in data.items()}
        from mcp_autoresearch.sandbox.policy import probe_isolation

        print(f"machine: {platform.platform()}, {os.cpu_count()} cores, python {platform.python_version()}")
        print(f"projects under: {base.parent}")
        print(
            f"experiments: {per_round * args.rounds} each "
            f"({f'one in {KEEP_EVERY} kept' if KEEP_EVERY else 'all discards'}), "
            f"in {args.rounds} round(s); command's own time "
            f"(median): {own * 1000:.2f} ms; load average at the end: {os.getloadavg()[0]:.1f}"
        )
        print(f"isolation here: {probe_isolation().describe()}")
        print(
            "| loop | overhead median (ms) | p10-p90 (ms) | keeps / discards median (ms) | tool calls | "
            "bytes to agent |"
        )
        print("|---|---|---|---|---|---|")
        for name, s in results.items():
            kinds = " / ".join(
                f"{s['by_kind'][k]:.1f}" if k in s["by_kind"] else "-" for k in ("keep", "discard")
            )
            print(
                f"| {name} | {s['median_ms']:.1f} | {s['p10_ms']:.1f}-{s['p90_ms']:.1f} | {kinds} | "
                f"{s['calls']:g} | {s['bytes']:.0f} |"
            )
        a, c, one = results[CONFINED], results[OFF], results[ONE_CALL]
        b = results["program.md shell loop"]
        print(f"ratio ours (confined)/shell (median overhead): {a['median_ms'] / b['median_ms']:.2f}")
        print(
            f"ratio ours (confined, one call)/shell (median overhead): {one['median_ms'] / b['median_ms']:.2f}"
        )
        d = results["mcp-autoresearch (stdio), runs confined: Landlock alone"]
        print(
            f"confinement costs {a['median_ms'] - c['median_ms']:.1f} ms per experiment (median), "
            f"of which the private view {a['median_ms'] - d['median_ms']:.1f} ms"
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
