"""The Ray backend's cost per job: wall time of one `true` command as a Ray job (submit, upload, start, the
wrapper, the log to its end, Ray's final status), against a local head of our own.

    python bench/ray_job_latency.py --jobs 8

Prints the median and the spread of the wall time per job, and the command's own time as the wrapper measured
it. Needs the `ray` extra; namespaces allowed on this machine (the worker) for the private view.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' private Ray head
from mcp_autoresearch.backends.ray_backend import RayBackend  # noqa: E402
from mcp_autoresearch.lifecycle.experiment import Experiment  # noqa: E402
from mcp_autoresearch.sandbox.policy import probe_isolation  # noqa: E402
from mcp_autoresearch.setup.config import build_config  # noqa: E402
from tests.helpers.ray_head import private_ray_head  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=8)
    args = parser.parse_args()
    with private_ray_head() as address, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "project"
        root.mkdir()
        (root / "train.py").write_text("print('score: 1')\n")
        config = build_config(
            {
                "run_command": "true; echo 'score: 1'",
                "metric_name": "score",
                "target_file": "train.py",
                "backend": "ray",
                "ray_address": address,
            }
        )
        walls, commands = [], []
        for index in range(args.jobs + 1):
            experiment = Experiment(
                config,
                root,
                f"r{index}",
                Path(tmp) / "logs",
                isolation=probe_isolation("auto"),
                backend=RayBackend.from_config(config),
            )
            started = time.monotonic()
            result = experiment.run()
            assert result.status == "ok", result.error
            if index:  # the first job warms the cluster up
                walls.append(time.monotonic() - started)
                commands.append(result.duration_s)
    print(
        f"{args.jobs} jobs of `true`: wall per job median {statistics.median(walls):.2f} s "
        f"(min {min(walls):.2f}, max {max(walls):.2f}); the command as measured on the worker: median "
        f"{statistics.median(commands) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
