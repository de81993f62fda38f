"""Crash soak (issue 7): a loop of experiments in which the server is killed with SIGKILL at random moments
(mid-run, mid-decision, mid-write) and restarted. After every restart and at the end it checks that:

- the JSONL parses, line by line;
- results.tsv and the JSONL's experiment_done rows agree row for row; no run is logged twice, and every run
  that started is logged exactly once;
- the branch head is the best kept commit, and the tracked files equal it;
- no process of any run is left behind.

    python bench/crash_soak.py [--experiments 200] [--kills 50] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import psutil
from mcp import Client, StdioServerParameters

from mcp_autoresearch.sandbox.processes import marked_processes

IDENTITY = {
    "GIT_AUTHOR_NAME": "soak",
    "GIT_AUTHOR_EMAIL": "s@s",
    "GIT_COMMITTER_NAME": "soak",
    "GIT_COMMITTER_EMAIL": "s@s",
}
COMMAND = '. ./params.sh; sleep 0.05; echo "score: $K"'


class Violation(AssertionError):
    pass


@dataclass
class Stats:
    logged: int = 0
    kills: int = 0
    lives: int = 0
    checks: int = 0
    kill_phases: dict[str, int] = field(default_factory=dict)


def make_project(root: Path) -> None:
    root.mkdir(parents=True)
    (root / "params.sh").write_text("K=1000\n")
    (root / "autoresearch.toml").write_text(
        f'target_file = "params.sh"\nrun_command = {json.dumps(COMMAND)}\nmetric_name = "score"\ntime_budget = 5\n'
    )
    env = {**os.environ, **IDENTITY}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "init"]):
        subprocess.run(["git", *args], cwd=root, check=True, env=env)


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def check_invariants(root: Path, tag: str, recovered: bool = True) -> int:
    """Everything that must hold on disk; returns the number of logged experiments."""
    jsonl = root / ".autoresearch" / "autoresearch.jsonl"
    events = []
    for number, line in enumerate(jsonl.read_text().splitlines(), start=1):
        try:
            events.append(json.loads(line))
        except ValueError as exc:
            raise Violation(f"JSONL line {number} does not parse: {exc}") from None
    done = [e["details"] for e in events if e["action"] == "experiment_done" and e["details"]["tag"] == tag]
    started = {e["details"]["run_id"] for e in events if e["action"] == "experiment_start"}
    ids = [d["run_id"] for d in done]
    if len(ids) != len(set(ids)):
        raise Violation(f"a run is logged twice: {sorted(i for i in ids if ids.count(i) > 1)}")
    rows = (root / "results.tsv").read_text().splitlines()
    if rows[0] != "commit\tmetric\tvalue\tstatus\tdescription" or len(rows) - 1 != len(done):
        raise Violation(f"results.tsv has {len(rows) - 1} rows, the JSONL {len(done)}")
    for row, details in zip(rows[1:], done, strict=True):
        commit, _metric, value, status, _description = row.split("\t")
        if commit != details["commit"] or status != details["status"]:
            raise Violation(f"results.tsv row {row!r} disagrees with the JSONL {details}")
        if status != "crash" and abs(float(value) - details["value"]) > 1e-6:
            raise Violation(f"value differs: {row!r} vs {details['value']}")
    state = json.loads((root / ".autoresearch" / "sessions" / f"{tag}.json").read_text())
    if recovered:
        missing = started - set(ids) - {run["run_id"] for run in state.get("inflight", [])}
        if missing:
            raise Violation(f"runs started but never logged: {sorted(missing)}")
        head = git(root, "rev-parse", "HEAD").strip()
        pending = next(iter(state.get("inflight", [])), None)
        if pending is None and state.get("best") and head != state["best"]["commit"]:
            raise Violation(
                f"branch head {head[:7]} is not the best kept commit {state['best']['commit'][:7]}"
            )
        dirty = [
            line
            for line in git(root, "status", "--porcelain", "--untracked-files=no").splitlines()
            if not line.endswith("params.sh")
        ]
        if dirty:
            raise Violation(f"tracked files differ from the head: {dirty}")
    # The target itself may hold an edit that landed before a kill and never ran: that is the agent's pending
    # edit, which the next run commits or the next edit replaces.
    return len(done)


def orphans(root: Path) -> list[int]:
    return [proc.pid for proc in marked_processes(str(root))]


def server_pid(root: Path) -> int | None:
    for proc in psutil.Process().children(recursive=True):
        try:
            if "serve" in proc.cmdline() and str(root) in proc.cmdline():
                return proc.pid
        except psutil.Error:
            pass
    return None


async def life(root: Path, rng: random.Random, stats: Stats, target: int, kill_after: float | None) -> None:
    """One server lifetime: resume, decide anything pending, run experiments until killed (after `kill_after`
    seconds; None: until `target` experiments are logged)."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_autoresearch", "serve", "--project", str(root)],
        env={**{k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}, **IDENTITY},
        cwd=str(root),
    )
    killer: threading.Timer | None = None
    phase = {"now": "starting"}

    def kill() -> None:
        pid = server_pid(root)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            stats.kills += 1
            stats.kill_phases[phase["now"]] = stats.kill_phases.get(phase["now"], 0) + 1

    async with Client(params) as client:

        async def call(tool: str, **args: object) -> dict:
            result = await client.call_tool(tool, args)
            if result.is_error:
                raise Violation(f"{tool} refused: {result.content[0].text}")
            return result.structured_content

        started = await call("start_session", tag="soak")
        if started.get("pending_run"):
            run = await call("wait_experiment", run_id=started["pending_run"], wait_s=10)
            if run["status"] != "running":
                await call("commit_or_reset", run_id=run["run_id"])
        # After the restart's recovery (and with no run in flight), everything must hold.
        stats.logged = check_invariants(root, "soak", recovered=True)
        stats.checks += 1
        if orphans(root):
            raise Violation(f"orphan processes after a restart: {orphans(root)}")
        stats.lives += 1
        if kill_after is not None:
            killer = threading.Timer(kill_after, kill)
            killer.start()
        try:
            while stats.logged < target:
                phase["now"] = "edit"
                view = await call("read_target")
                best = (await call("query_results", limit=1))["best"]
                if best is None:  # the baseline runs the unmodified target
                    content, description = "K=1000\n", "baseline"
                else:
                    value = (
                        int(best["value"]) - 1
                        if rng.random() < 0.4
                        else int(best["value"]) + rng.randint(1, 9)
                    )
                    # A new idea each time: content measured before is not run again (it returns the old run).
                    content, description = f"K={value}\n# idea {rng.random():.9f}\n", f"K={value}"
                if view["content"] != content:
                    await call("apply_edit", content=content, expected_sha256=view["sha256"])
                phase["now"] = "run"
                run = await call("run_experiment", description=description, wait_s=10)
                phase["now"] = "decide"
                await call("commit_or_reset", run_id=run["run_id"])
                stats.logged += 1
        finally:
            if killer is not None:
                killer.cancel()


def soak(experiments: int, kills: int, seed: int, root: Path | None = None) -> Stats:
    rng = random.Random(seed)
    base = Path(tempfile.mkdtemp(prefix="soak-")) if root is None else root
    project = base / "project"
    make_project(project)
    stats = Stats()
    while stats.logged < experiments or stats.kills < kills:
        target = max(experiments, stats.logged + 1)
        # Every life is killed until the kills asked for are done (each a server start); the rest runs in one.
        kill_after = rng.uniform(0.05, 0.6) if stats.kills < kills else None
        try:
            anyio.run(life, project, rng, stats, target, kill_after)
        except BaseException as exc:  # noqa: BLE001 - a killed server surfaces as a broken connection
            if isinstance(exc, KeyboardInterrupt | Violation):
                raise
            flat = exc
            while isinstance(flat, BaseExceptionGroup):
                flat = flat.exceptions[0]
            if isinstance(flat, Violation):
                raise flat from None
        time.sleep(0.05)
        if stats.logged >= experiments and stats.kills >= kills:
            break
    # A last clean life: the restart recovers whatever the final kill left, then everything must hold.
    anyio.run(_final_check, project)
    stats.logged = check_invariants(project, "soak", recovered=True)
    left = orphans(project)
    if left:
        raise Violation(f"orphan processes: {left}")
    return stats


async def _final_check(root: Path) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_autoresearch", "serve", "--project", str(root)],
        env={**{k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}, **IDENTITY},
        cwd=str(root),
    )
    async with Client(params) as client:
        started = (await client.call_tool("start_session", {"tag": "soak"})).structured_content
        if started.get("pending_run"):
            run = await client.call_tool("wait_experiment", {"run_id": started["pending_run"], "wait_s": 10})
            await client.call_tool("commit_or_reset", {"run_id": run.structured_content["run_id"]})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiments", type=int, default=200)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    started = time.monotonic()
    stats = soak(args.experiments, args.kills, args.seed)
    print(
        f"{stats.logged} experiments logged, {stats.kills} SIGKILLs ({stats.kill_phases}), {stats.lives} server "
        f"lives, {stats.checks} invariant checks, 0 violations, 0 orphans, {time.monotonic() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
