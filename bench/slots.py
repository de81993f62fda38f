"""Slots (issue 14): experiments per hour with 1 slot and with N slots, measured side by side in one run.

The same scripted agent drives the real server over stdio. It keeps every slot busy: while a slot is free it
edits the target and starts a candidate; else it waits for the first run to finish and decides it. The work is
an evaluator that either burns CPU for `--seconds` (cpu) or sleeps that long (sleep). Only the experiments after
the baseline count; the time runs from the baseline's decision to the last decision.

    python bench/slots.py                      # cpu: 1 vs 2 slots; sleep: 1 vs 4 slots
    python bench/slots.py --ray                # also: the Ray backend with 2 slots vs 1 local slot
    python bench/slots.py --ray-only --seconds 5

Needs: the package installed (`pip install -e .`), and for --ray the `ray` extra (a local head is started).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' private Ray head
from tests.helpers.ray_head import private_ray_head  # noqa: E402

IDENTITY = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "b@b",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "b@b",
}
EVALUATE = """\
import os, time
import params
seconds = float(os.environ.get("WORK_SECONDS", "1"))
if os.environ.get("WORK_KIND") == "sleep":
    time.sleep(seconds)
else:
    end = time.process_time() + seconds
    n = 0
    while time.process_time() < end:
        n += 1
print(f"score: {abs(params.X - 1000)}")
"""


@dataclass
class Measured:
    label: str
    slots: int
    experiments: int
    seconds: float
    reruns: int

    @property
    def per_hour(self) -> float:
        return self.experiments / self.seconds * 3600


def make_project(
    root: Path, kind: str, seconds: float, slots: int, backend: str, address: str | None
) -> None:
    root.mkdir(parents=True)
    (root / "params.py").write_text("X = 0\n")
    (root / "evaluate.py").write_text(EVALUATE)
    command = f"WORK_KIND={kind} WORK_SECONDS={seconds} python3 evaluate.py"
    config = (
        f'target_file = "params.py"\nrun_command = {json.dumps(command)}\nmetric_name = "score"\n'
        f'readonly_files = ["evaluate.py"]\nkeep_rule = "greedy"\nslots = {slots}\ntime_budget = {seconds * 4 + 30}\n'
        f'backend = "{backend}"\n'
    )
    if address:
        config += f'ray_address = "{address}"\nray_num_cpus = 1\n'
    (root / "autoresearch.toml").write_text(config)
    env = {**os.environ, **IDENTITY}
    for args in (["init", "-q"], ["add", "params.py", "evaluate.py"], ["commit", "-q", "-m", "init"]):
        subprocess.run(["git", *args], cwd=root, check=True, env=env)


async def drive(root: Path, experiments: int, seed: int, slots_home: Path) -> tuple[float, int, int]:
    """The scripted agent: returns (seconds, experiments decided, re-runs of stale candidates)."""
    rng = random.Random(seed)
    env = {**{k: os.environ[k] for k in ("PATH", "HOME", "RAY_ADDRESS") if k in os.environ}, **IDENTITY}
    env["AUTORESEARCH_SLOTS_DIR"] = str(slots_home)
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_autoresearch", "serve", "--project", str(root)], env=env
    )
    async with Client(params) as client:

        async def call(tool: str, **args: object) -> dict:
            result = await client.call_tool(tool, args)
            if result.is_error:
                raise RuntimeError(f"{tool}: {result.content[0].text}")
            return result.structured_content

        await call("start_session", tag="bench")
        run = await call("run_experiment", description="baseline")
        while run["status"] == "running":
            run = await call("wait_experiment", run_id=run["run_id"], wait_s=30)
        await call("commit_or_reset", run_id=run["run_id"])
        best = 0
        started = time.perf_counter()
        decided = reruns = in_flight = launched = 0
        while decided < experiments:
            if in_flight < slots_of(root) and launched < experiments:
                value = best + rng.choice([1, 2, 3, -1, -2, 50, 200])  # a new content every time
                await call("apply_edit", content=f"X = {value}\n# idea {launched}\n")
                run = await call("run_experiment", description=f"X = {value}", wait_s=0)
                in_flight += 1
                launched += 1
                continue
            run = await call("wait_experiment", wait_s=30)
            while run["status"] == "running":
                run = await call("wait_experiment", wait_s=30)
            decision = await call("commit_or_reset", run_id=run["run_id"])
            if decision["decision"] == "rerun":
                reruns += 1
                continue
            in_flight -= 1
            decided += 1
            if decision["decision"] == "keep":
                best = int((root / "params.py").read_text().split()[2])
        return time.perf_counter() - started, decided, reruns


def slots_of(root: Path) -> int:
    for line in (root / "autoresearch.toml").read_text().splitlines():
        if line.startswith("slots"):
            return int(line.split("=")[1])
    return 1


def measure(
    label: str,
    kind: str,
    seconds: float,
    slots: int,
    experiments: int,
    backend: str = "local",
    address: str | None = None,
) -> Measured:
    base = Path(tempfile.mkdtemp(prefix="bench-slots-"))
    try:
        root = base / "project"
        make_project(root, kind, seconds, slots, backend, address)
        took, decided, reruns = anyio.run(drive, root, experiments, 7, base / "slots")
        return Measured(label, slots, decided, took, reruns)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=1.0, help="work per run (s)")
    parser.add_argument("--experiments", type=int, default=12, help="experiments per slot")
    parser.add_argument("--ray", action="store_true", help="also measure the Ray backend (2 slots)")
    parser.add_argument("--ray-only", action="store_true")
    parser.add_argument("--ray-seconds", type=float, default=None, help="work per run for the Ray comparison")
    args = parser.parse_args()
    n = args.experiments
    rows: list[tuple[Measured, Measured]] = []
    if not args.ray_only:
        one = measure("cpu, 1 slot", "cpu", args.seconds, 1, n)
        two = measure("cpu, 2 slots", "cpu", args.seconds, 2, 2 * n)
        rows.append((one, two))
        one = measure("sleep, 1 slot", "sleep", args.seconds, 1, n)
        four = measure("sleep, 4 slots", "sleep", args.seconds, 4, 4 * n)
        rows.append((one, four))
    if args.ray or args.ray_only:
        seconds = args.ray_seconds or args.seconds
        with private_ray_head() as address:
            one = measure("cpu, 1 local slot", "cpu", seconds, 1, n)
            ray = measure("cpu, Ray, 2 slots", "cpu", seconds, 2, 2 * n, "ray", address)
            rows.append((one, ray))
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load {os.getloadavg()[0]:.2f}; work {args.seconds:g} s per run (Ray: {args.ray_seconds or args.seconds:g} s)"
    )
    print(f"{'setup':<22}{'experiments':>12}{'seconds':>10}{'per hour':>10}{'re-runs':>9}{'speed-up':>10}")
    for reference, other in rows:
        for m in (reference, other):
            speed = m.per_hour / reference.per_hour
            print(
                f"{m.label:<22}{m.experiments:>12}{m.seconds:>10.1f}{m.per_hour:>10.0f}{m.reruns:>9}{speed:>9.2f}x"
            )


if __name__ == "__main__":
    main()
