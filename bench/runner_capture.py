"""Runner benchmarks (issue 3): log capture of ~1 GB vs the shell's own redirect (ours twice: the whole output
kept, and bounded by the default `log_limit_mb`), kill latency of a tree with a `setsid` grandchild that ignores
SIGTERM, and the overhead of one trivial run vs subprocess.run.

    python bench/runner_capture.py [--gigabytes 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psutil

from mcp_autoresearch.sandbox.process_run import ProcessRun
from mcp_autoresearch.sandbox.processes import marked_processes
from mcp_autoresearch.setup.config import Config


def capture(tmp: Path, size: int) -> None:
    command = f"head -c {size} /dev/zero | tr '\\0' 'x'"
    me = psutil.Process()
    peak = [me.memory_info().rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.05)

    ours, bounded, shell, growths = [], [], [], []
    limit = round(Config.model_fields["log_limit_mb"].default * 1e6)
    for index in range(6):
        # Alternate who goes first and flush dirty pages between runs: 1 GB of writeback from the previous run
        # otherwise dominates whichever run comes second.
        for who in ("shell", "ours", "bounded") if index % 2 == 0 else ("bounded", "ours", "shell"):
            subprocess.run(["sync"], check=True)
            if who == "shell":
                start = time.perf_counter()
                subprocess.run(["/bin/sh", "-c", f"{command} > {tmp / 'shell.log'} 2>&1"], check=True)
                shell.append(time.perf_counter() - start)
                (tmp / "shell.log").unlink()
                continue
            base = me.memory_info().rss
            peak[0] = base
            stop.clear()
            sampler = threading.Thread(target=sample)
            sampler.start()
            start = time.perf_counter()
            kept = limit if who == "bounded" else None
            result = ProcessRun(command, tmp, tmp / "ours.log", timeout_s=600, log_limit=kept).run()
            (bounded if kept else ours).append(time.perf_counter() - start)
            stop.set()
            sampler.join()
            growths.append((peak[0] - base) / 1e6)
            written = (tmp / "ours.log").stat().st_size
            assert result.status == "exited" and (written < limit if kept else written == size)
            (tmp / "ours.log").unlink()
    growth = max(growths)
    o, s, b = statistics.median(ours), statistics.median(shell), statistics.median(bounded)
    print(
        f"capture of {size / 1e9:.1f} GB into a log bounded at {limit / 1e6:g} MB: {size / b / 1e6:.0f} MB/s "
        f"(median {b:.2f} s, {min(bounded):.2f}-{max(bounded):.2f} s); time ratio bounded/shell {b / s:.3f} median"
    )
    print(
        f"capture of {size / 1e9:.1f} GB: ours {size / o / 1e6:.0f} MB/s (median {o:.2f} s), shell redirect "
        f"{size / s / 1e6:.0f} MB/s (median {s:.2f} s); time ratio ours/shell {o / s:.3f} median, "
        f"{min(ours) / min(shell):.3f} best "
        f"(ours {min(ours):.2f}-{max(ours):.2f} s, shell {min(shell):.2f}-{max(shell):.2f} s, 6 runs each); "
        f"server memory growth during the run, max {growth:.1f} MB"
    )


def whole_experiment(tmp: Path, size: int) -> None:
    """Capture plus the metric search when the metric is on the first line (the search reads the whole log)."""
    from mcp_autoresearch.lifecycle.experiment import Experiment
    from mcp_autoresearch.setup.config import build_config

    config = build_config(
        {
            "run_command": f"echo 'score: 7'; head -c {size} /dev/zero | tr '\\0' 'x'; echo",
            "metric_name": "score",
            "target_file": "x",
            "timeout": 600,
        }
    )
    me = psutil.Process()
    base = me.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    result = Experiment(config, tmp, "w1", tmp / "runs").run()
    elapsed = time.perf_counter() - start
    stop.set()
    sampler.join()
    assert result.status == "ok" and result.value == 7.0
    print(
        f"whole experiment, {size / 1e9:.1f} GB of output with the metric on its first line: {elapsed:.2f} s, "
        f"peak memory growth {(peak[0] - base) / 1e6:.1f} MB"
    )


def kill_latency(tmp: Path, runs: int = 5, grace: float = 3.0) -> None:
    command = (
        "setsid sh -c 'trap \"\" TERM; while true; do sleep 0.1; done' & "
        "trap '' TERM; while true; do sleep 0.1; done"
    )
    latencies, survivors = [], 0
    for i in range(runs):
        process = ProcessRun(
            command,
            tmp,
            tmp / "kill.log",
            timeout_s=1.0,
            grace_s=grace,
            run_marker=f"k{i}",
            project_marker=str(tmp),
        )
        start = time.perf_counter()
        process.run()
        end = time.perf_counter()
        left = marked_processes(str(tmp))
        survivors += len(left)
        latencies.append(end - start - 1.0)
    print(
        f"kill latency (deadline -> last process gone), grace {grace:g} s: median {statistics.median(latencies):.2f} s, "
        f"max {max(latencies):.2f} s over {runs} runs; survivors {survivors}"
    )


def trivial(tmp: Path, runs: int = 200) -> None:
    ours, plain = [], []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(["/bin/sh", "-c", "true"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        ProcessRun("true", tmp, tmp / "t.log", timeout_s=10, run_marker="t", project_marker=str(tmp)).run()
        ours.append(time.perf_counter() - start)
    o, p = statistics.median(ours) * 1000, statistics.median(plain) * 1000
    print(
        f"trivial run `true`: runner median {o:.2f} ms (p90 {statistics.quantiles(ours, n=10)[-1] * 1000:.2f}), "
        f"subprocess.run median {p:.2f} ms; overhead {o - p:.2f} ms over {runs} runs"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gigabytes", type=float, default=1.0)
    args = parser.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        trivial(Path(tmp))
        kill_latency(Path(tmp))
        capture(Path(tmp), int(args.gigabytes * 1e9))
        whole_experiment(Path(tmp), int(args.gigabytes * 1e9))


if __name__ == "__main__":
    main()
