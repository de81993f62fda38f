"""Loop overhead: the same N experiments through our server (stdio, scripted client) and through the shell loop
of karpathy/autoresearch's program.md (git commit, cmd > run.log 2>&1, grep, append results.tsv, git reset).

Per-experiment overhead = wall time of one experiment minus the command's own time (median of the raw command).
Also counts tool calls and bytes returned to the agent per experiment. Ours is measured twice, with runs confined
(the private view + Landlock, the default where the kernel allows both), with Landlock alone (the server started
under `tests/helpers/no_namespaces.py`, as where namespaces are refused) and with `isolation = "off"`, side by side.

    python bench/loop_overhead.py [--experiments 60]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def next_value(i: int, best: int) -> int:
    """Alternate improvements and regressions so both keep and discard paths are measured; every content is
    new (the server does not run the same content twice)."""
    return best - 1 if i % 2 == 0 else best + 10_000 + i


def command_time(cwd: Path, n: int = 50) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run(["/bin/sh", "-c", COMMAND], cwd=cwd, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


NO_NAMESPACES = str(Path(__file__).parent.parent / "tests" / "helpers" / "no_namespaces.py")


async def ours(root: Path, n: int, without_namespaces: bool = False) -> dict:
    serve = ["-m", "mcp_autoresearch", "serve", "--project", str(root)]
    params = StdioServerParameters(
        command=sys.executable,
        args=[NO_NAMESPACES, sys.executable, *serve] if without_namespaces else serve,
        env={**{k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}, **IDENTITY},
    )
    per_experiment, calls, sizes = [], [], []
    async with Client(params) as client:

        async def call(tool: str, args: dict) -> dict:
            result = await client.call_tool(tool, args)
            if result.is_error:
                raise RuntimeError(result.content[0].text)
            return result

        await call("start_session", {"tag": "bench"})
        run = await call("run_experiment", {"description": "baseline"})
        await call("commit_or_reset", {"run_id": run.structured_content["run_id"]})
        best, current = 1000, 1000
        for i in range(n):
            value = next_value(i, best)
            start = time.perf_counter()
            results = [
                await call("apply_edit", {"edits": [{"old_text": f"K={current}", "new_text": f"K={value}"}]})
            ]
            run = await call("run_experiment", {"description": f"K={value}"})
            results.append(run)
            decision = await call("commit_or_reset", {"run_id": run.structured_content["run_id"]})
            results.append(decision)
            per_experiment.append(time.perf_counter() - start)
            calls.append(len(results))
            sizes.append(sum(len(c.text.encode()) for r in results for c in r.content))
            if decision.structured_content["decision"] == "keep":
                best = value
            elif decision.structured_content["decision"] != "discard":
                raise RuntimeError(f"unexpected decision: {decision.structured_content}")
            current = best
    return {"times": per_experiment, "calls": calls, "bytes": sizes}


SHELL_LOOP = r"""
set -u
n=$1; cmd=$2; best=1000; out=timings.txt; : > $out; : > bytes.txt
printf 'commit\tscore\tstatus\tdescription\n' > results.tsv
say() { local text; text=$("$@" 2>&1); printf '%s' "$text" | wc -c >> bytes.txt; }
for ((i = 0; i < n; i++)); do
  if (( i % 2 == 0 )); then value=$((best - 1)); else value=$((best + 10000 + i)); fi
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
    subprocess.run(
        ["bash", str(script), str(n), COMMAND], cwd=root, check=True, env={**os.environ, **IDENTITY}
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
    return {"times": times, "calls": calls, "bytes": sizes}


def summary(data: dict, own: float) -> dict:
    overhead = [t - own for t in data["times"]]
    q = statistics.quantiles(overhead, n=10)
    return {
        "median_ms": statistics.median(overhead) * 1000,
        "p10_ms": q[0] * 1000,
        "p90_ms": q[-1] * 1000,
        "calls": statistics.median(data["calls"]),
        "bytes": statistics.median(data["bytes"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiments", type=int, default=60)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    try:
        ours_root, shell_root = make_repo(base / "ours"), make_repo(base / "shell")
        off_root = make_repo(base / "ours-off", isolation="off")
        landlock_root = make_repo(base / "ours-landlock")
        own = command_time(ours_root)
        a = summary(anyio.run(ours, ours_root, args.experiments), own)
        d = summary(anyio.run(ours, landlock_root, args.experiments, True), own)
        c = summary(anyio.run(ours, off_root, args.experiments), own)
        b = summary(shell(shell_root, args.experiments), own)
        ratio = a["median_ms"] / b["median_ms"]
        from mcp_autoresearch.isolation import probe_isolation

        print(f"machine: {platform.platform()}, {os.cpu_count()} cores, python {platform.python_version()}")
        print(f"experiments: {args.experiments} each; command's own time (median): {own * 1000:.2f} ms")
        print(f"isolation here: {probe_isolation().describe()}")
        print("| loop | overhead median (ms) | p10-p90 (ms) | tool calls | bytes to agent |")
        print("|---|---|---|---|---|")
        rows = (
            ("mcp-autoresearch (stdio), runs confined: private view + Landlock", a),
            ("mcp-autoresearch (stdio), runs confined: Landlock alone", d),
            ('mcp-autoresearch (stdio), isolation = "off"', c),
            ("program.md shell loop", b),
        )
        for name, s in rows:
            print(
                f"| {name} | {s['median_ms']:.1f} | {s['p10_ms']:.1f}-{s['p90_ms']:.1f} | {s['calls']:g} | "
                f"{s['bytes']:.0f} |"
            )
        print(f"ratio ours (confined)/shell (median overhead): {ratio:.2f}")
        print(f"confinement costs {a['median_ms'] - c['median_ms']:.1f} ms per experiment (median), "
              f"of which the private view {a['median_ms'] - d['median_ms']:.1f} ms")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
