"""Where one confined run's launch spends its time, hand-off by hand-off: the server's own Experiment (the
private view + Landlock, through the launcher) run under `strace -f -ttt --seccomp-bpf`, with a few syscalls
traced as landmarks (the request sent, the keeper forked and running, the namespaces, the command forked, the
keeper waiting, the command past its gate (its read of the gate's byte), exec, exit, and the status back in the server).

    python bench/launch_profile.py [--runs 25] [--git]

Under strace the times are inflated (roughly 1.5-2x) and the keeper's PTRACE_SEIZE is refused (the command is
already traced by strace), so the hold at exit is not in the profile; the shares, not the sums, are the point.
`bench/confinement_cost.py` gives the untraced totals.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from confinement_cost import one  # noqa: E402

from mcp_autoresearch.lifecycle.experiment import Experiment  # noqa: E402
from mcp_autoresearch.sandbox.policy import probe_isolation  # noqa: E402

MARK = b"=====launch-profile=====\n"
SYSCALLS = "clone,execve,exit_group,sendmsg,recvfrom,pidfd_open,rt_sigtimedwait,unshare,setsid,read,write"
ORDER = [
    "request sent",
    "keeper forked",
    "keeper running",
    "keeper unshared",
    "command forked",
    "keeper waiting",
    "command past its gate",
    "exec",
    "command's exit",
    "command gone",
    "keeper woken",
    "keeper's exit",
    "status in the server",
]


def runs_here(count: int, git: bool) -> None:
    """The traced part: warm the launcher up, then `count` runs, each after a mark on stderr."""
    root = Path(tempfile.mkdtemp(prefix="bench-launch-"))
    (root / "t.py").write_text("x = 1\n")
    if git:  # a project in a git repository, as every session's is (the view then also covers .git)
        subprocess.run(["git", "init", "-q", str(root)], check=True)
    isolation = probe_isolation("auto")
    for index in range(3):
        one(root, Experiment, isolation, index)
    for index in range(count):
        os.write(2, MARK)
        one(root, Experiment, isolation, 10 + index)
    os.write(2, MARK)
    shutil.rmtree(root, ignore_errors=True)


def landmark(rest: str, pid: int, ids: dict[str, int]) -> str | None:
    """The landmark a traced line marks, if any (`ids` learns the keeper's and the command's pids)."""
    keeper, command = ids.get("keeper"), ids.get("command")
    if rest.startswith("sendmsg("):
        return "request sent"
    if rest.startswith("clone(") and keeper is None and "unfinished" not in rest and "= " in rest:
        ids["keeper"] = int(rest.rsplit("= ", 1)[1])
        return "keeper forked"
    checks = [
        (pid == keeper and rest.startswith("setsid"), "keeper running"),
        (pid == keeper and rest.startswith("unshare(CLONE_NEWIPC"), "keeper unshared"),
        (pid == keeper and rest.startswith("clone("), "command forked"),
        (pid == keeper and rest.startswith("rt_sigtimedwait"), "keeper waiting"),
        (pid == command and rest.startswith("execve("), "exec"),
        (pid == command and rest.startswith("exit_group"), "command's exit"),
        (pid == command and "exited with" in rest, "command gone"),
        (pid == keeper and rest.startswith("<... rt_sigtimedwait resumed"), "keeper woken"),
        (pid == keeper and rest.startswith("exit_group"), "keeper's exit"),
        ("recvfrom resumed" in rest and "exit" in rest, "status in the server"),
    ]
    if (
        keeper
        and pid != keeper
        and rest.startswith(("read(", "<... read resumed>"))
        and rest.endswith('"x", 1) = 1')
    ):
        ids["command"] = pid
        return "command past its gate"
    return next((name for hit, name in checks if hit), None)


def profile(trace: str) -> dict[str, list[float]]:
    segments: dict[str, list[float]] = {}
    for run in trace.split("=====launch-profile=====")[1:-1]:
        seen: dict[str, float] = {}
        ids: dict[str, int] = {}
        for line in run.splitlines():
            match = re.match(r"(\d+)\s+([\d.]+) (.*)", line)
            if match and (name := landmark(match[3], int(match[1]), ids)):
                seen.setdefault(name, float(match[2]))
        steps = [name for name in ORDER if name in seen]
        for start, end in zip(steps, steps[1:], strict=False):
            segments.setdefault(f"{start} -> {end}", []).append((seen[end] - seen[start]) * 1000)
        if "status in the server" in seen:
            segments.setdefault("total", []).append(
                (seen["status in the server"] - seen["request sent"]) * 1000
            )
    return segments


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=25)
    parser.add_argument("--git", action="store_true", help="the project is a git repository")
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.traced:
        runs_here(args.runs, args.git)
        return
    with tempfile.NamedTemporaryFile(prefix="launch-strace-", suffix=".txt") as out:
        command = [
            sys.executable,
            __file__,
            "--traced",
            "--runs",
            str(args.runs),
            *(["--git"] if args.git else []),
        ]
        strace = ["strace", "--seccomp-bpf", "-f", "-ttt", "-e", f"trace={SYSCALLS}", "-o", out.name]
        subprocess.run([*strace, *command], check=True, stderr=subprocess.DEVNULL)
        segments = profile(Path(out.name).read_text(errors="replace"))
    print(f"runs: {args.runs}; load average: {os.getloadavg()[0]:.2f}")
    print("| hand-off | median (ms) | p10-p90 (ms) |\n|---|---|---|")
    for name, values in segments.items():
        deciles = statistics.quantiles(values, n=10) if len(values) > 2 else [min(values), max(values)]
        print(f"| {name} | {statistics.median(values):.2f} | {deciles[0]:.2f}-{deciles[-1]:.2f} |")


if __name__ == "__main__":
    main()
