"""The engine's own time per step of an experiment, in-process (no MCP transport, no client): `apply_edit`,
`start_run`, waiting for the run (its process, the checks after it and its record), `view` and
`commit_or_reset`, on the same tiny project as `loop_overhead.py`: the mean and median wall time of each, and the
main thread's CPU time in each (steadier than wall time on a loaded machine; the run's own thread is not in it).
Also counts the git processes per experiment.

    python bench/engine_steps.py [--experiments 30]
    PYTHONPATH=/tmp/old python bench/engine_steps.py   # another version of the package, exported with git archive

Under `strace -f -c -e trace=fsync,rename` it counts the server's synced writes and renames per experiment (run it
with two numbers of experiments and take the difference, so the session's start drops out).
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from loop_overhead import IDENTITY, make_repo, next_value  # noqa: E402

from mcp_autoresearch.session.workspace import Workspace  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiments", type=int, default=30)
    args = parser.parse_args()
    os.environ.update(IDENTITY)
    tmp = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    root = make_repo(tmp / "p")
    workspace = Workspace(root)
    workspace.start_session("bench")
    session = workspace.session
    baseline = session.start_run("baseline")
    assert isinstance(baseline, str)
    handle = session.run_handle(baseline)
    assert handle is not None and handle.wait(60)
    session.commit_or_reset(baseline)
    trace = tmp / "git-trace"
    os.environ["GIT_TRACE"] = str(trace)
    walls: dict[str, list[float]] = collections.defaultdict(list)
    cpu: dict[str, float] = collections.defaultdict(float)  # the main thread's CPU time (steadier under load)
    best = current = 1000
    kinds: list[str] = []
    for i in range(args.experiments):
        value = next_value(i, best)
        marks = [(time.perf_counter(), time.thread_time())]
        session.apply_edit([{"old_text": f"K={current}", "new_text": f"K={value}"}], None, None, None)
        marks.append((time.perf_counter(), time.thread_time()))
        run_id = session.start_run(f"K={value}")
        assert isinstance(run_id, str)
        marks.append((time.perf_counter(), time.thread_time()))
        handle = session.run_handle(run_id)
        assert handle is not None and handle.wait(60)
        marks.append((time.perf_counter(), time.thread_time()))
        session.view(run_id)
        marks.append((time.perf_counter(), time.thread_time()))
        decision = session.commit_or_reset(run_id)
        marks.append((time.perf_counter(), time.thread_time()))
        for name, start, end in zip(
            ("apply_edit", "start_run", "wait", "view", "decide"), marks[:-1], marks[1:], strict=True
        ):
            walls[name].append(end[0] - start[0])
            cpu[name] += end[1] - start[1]
        kinds.append(decision.decision)
        best = value if decision.decision == "keep" else best
        current = best
    workspace.shutdown()
    commands: collections.Counter[str] = collections.Counter()
    for line in trace.read_text().splitlines() if trace.exists() else []:
        if "trace: built-in: git" in line or "trace: exec: git" in line:
            words = line.split("git ", 1)[1].split()
            commands[next((w for w in words if not w.startswith("-") and "=" not in w), "?")] += 1
    n = args.experiments
    print("ms per experiment:", {name: round(sum(times) / n * 1000, 2) for name, times in walls.items()})
    print("median ms:", {name: round(statistics.median(times) * 1000, 2) for name, times in walls.items()})
    for kind in ("keep", "discard"):
        print(
            f"median ms, {kind}s:",
            {
                name: round(
                    statistics.median(t for t, k in zip(times, kinds, strict=True) if k == kind) * 1000, 2
                )
                for name, times in walls.items()
            },
        )
    engine = sum(cpu[name] for name in ("apply_edit", "start_run", "decide"))
    print(
        "main thread's CPU ms per experiment:",
        {name: round(total / n * 1000, 2) for name, total in cpu.items()},
        f"(apply_edit + start_run + decide: {engine / n * 1000:.2f})",
    )
    print(
        "git processes per experiment:", {name: round(count / n, 1) for name, count in commands.most_common()}
    )


if __name__ == "__main__":
    main()
