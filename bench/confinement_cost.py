"""What confinement costs one command of a run: the same trivial experiment (`echo score: 1`) measured by the
server's own Experiment, started four ways, interleaved so machine load hits them alike:

- plain: `/bin/sh -c` started directly (what a run was before confinement; no keeper, no Landlock);
- keeper, exec: the keeper started as its own interpreter (the fallback when the launcher is unavailable);
- keeper via the launcher, unconfined (`isolation = "off"`);
- keeper via the launcher, Landlock alone (where namespaces are unavailable);
- keeper via the launcher, the private view + Landlock, network on (the default where namespaces work);
- the same, network off (a network namespace of its own as well).

    python bench/confinement_cost.py [--rounds 100]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from mcp_autoresearch.lifecycle.experiment import Experiment
from mcp_autoresearch.sandbox.policy import Isolation, probe_isolation
from mcp_autoresearch.setup.config import Config


class ExecKeeper(Experiment):
    """The keeper started by exec, as when the launcher cannot be used."""

    def _process(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        process = super()._process(*args, **kwargs)
        process.launch = None
        return process


def one(root: Path, kind: type[Experiment], isolation: Isolation | None, index: int) -> float:
    config = Config.model_validate(
        {"target_file": "t.py", "run_command": "echo score: 1", "metric_name": "score"}
    )
    experiment = kind(config, root, f"r{index}", root / ".autoresearch" / "runs", "bench", None, isolation)
    start = time.perf_counter()
    result = experiment.run()
    elapsed = time.perf_counter() - start
    assert result.status == "ok", result
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-confine-"))
    (root / "t.py").write_text("x = 1\n")
    confined, off = probe_isolation("auto"), probe_isolation("off")
    landlock_only = replace(confined, view_reason="left out for the comparison")
    ways = {
        "plain /bin/sh (no keeper)": (Experiment, None),
        "keeper, exec'd interpreter, Landlock": (ExecKeeper, landlock_only),
        "keeper via launcher, unconfined": (Experiment, off),
        "keeper via launcher, Landlock": (Experiment, landlock_only),
        "keeper via launcher, view + Landlock, network on": (Experiment, confined),
        "keeper via launcher, view + Landlock, network off": (Experiment, replace(confined, network="off")),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for kind, isolation in ways.values():  # warm-up (starts the launcher)
        one(root, kind, isolation, 0)
    for index in range(args.rounds):
        for name, (kind, isolation) in ways.items():
            times[name].append(one(root, kind, isolation, index + 1))
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(
        f"isolation: {confined.describe()}; rounds: {args.rounds}, interleaved; load: {os.getloadavg()[0]:.2f}"
    )
    base = statistics.median(times["plain /bin/sh (no keeper)"])
    print("| how the command starts | median (ms) | p10-p90 (ms) | over plain (ms) |")
    print("|---|---|---|---|")
    for name, values in times.items():
        q = statistics.quantiles(values, n=10)
        median = statistics.median(values)
        print(
            f"| {name} | {median * 1000:.2f} | {q[0] * 1000:.2f}-{q[-1] * 1000:.2f} | {(median - base) * 1000:+.2f} |"
        )


if __name__ == "__main__":
    main()
