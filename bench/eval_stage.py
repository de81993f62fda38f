"""What the evaluation stage (issue 19, item 1) costs per experiment: one experiment (`Experiment.run`, the
measurement every session makes) of a trivial project, without and with `eval_command`, under this machine's
isolation and with `isolation = "off"`.

    python bench/eval_stage.py [--rounds 20]

The run writes one number to out/answer.txt; without the stage the run prints the score line itself, with it
a separate scorer (`echo "score: $(cat out/answer.txt)"`) reads the file. The commands are shell builtins and
`cat`, so the difference is the stage itself: one more keeper, private view, Landlock domain and log; a real
scorer adds its own start-up (a Python interpreter: about 20-40 ms). Without and with alternate, round by round.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mcp_autoresearch.lifecycle.experiment import Experiment
from mcp_autoresearch.sandbox.policy import probe_isolation
from mcp_autoresearch.setup.config import Config, build_config

RUN = "echo 5 > out/answer.txt; echo 'score: 5'"
RUN_EVAL = "echo 5 > out/answer.txt"
EVAL = 'echo "score: $(cat out/answer.txt)"'


def project(base: Path) -> Path:
    root = base / "proj"
    (root / "out").mkdir(parents=True)
    (root / "objective.py").write_text("X = 5\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root


def config(setting: str, with_eval: bool) -> Config:
    keys = {
        "target_file": "objective.py",
        "run_command": RUN_EVAL if with_eval else RUN,
        "metric_name": "score",
        "writable": ["out"],
        "isolation": setting,
        "timeout": 60,
    }
    if with_eval:
        keys["eval_command"] = EVAL
    return build_config(keys)


def timed(root: Path, setting: str, rounds: int) -> tuple[list[float], list[float]]:
    """Per-experiment seconds without and with the stage, alternating (the first of each is not counted: it
    starts the launcher)."""
    isolation = probe_isolation(setting)
    found: tuple[list[float], list[float]] = ([], [])
    for index in range(rounds + 1):
        for with_eval in (False, True):
            run_id = f"r{index}{'e' if with_eval else ''}"
            experiment = Experiment(
                config(setting, with_eval),
                root,
                run_id,
                root / ".logs",
                isolation=isolation,
                publish_run_log=False,
            )
            start = time.perf_counter()
            result = experiment.run()
            elapsed = time.perf_counter() - start
            assert result.status == "ok" and result.value == 5.0, result
            if index:
                found[with_eval].append(elapsed)
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    print(f"isolation here: {probe_isolation('auto').describe()}; python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as base:
        root = project(Path(base))
        for setting in ("auto", "off"):
            plain, staged = timed(root, setting, args.rounds)
            p, s = statistics.median(plain), statistics.median(staged)
            print(
                f"isolation={setting:4}  run only: median {p * 1000:6.1f} ms   run + eval: median {s * 1000:6.1f} ms"
                f"   stage costs {(s - p) * 1000:+6.1f} ms per experiment ({args.rounds} rounds each)"
            )


if __name__ == "__main__":
    main()
