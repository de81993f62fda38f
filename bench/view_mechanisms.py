"""Why the private view is built by the keeper itself rather than by bubblewrap: what each way of starting one
command costs, from Python (subprocess.run, as root), interleaved so machine load hits them alike.

- fork+exec of `true` (the floor);
- bubblewrap with the view's options (read-only /, fresh /tmp /dev/shm /run, own /proc, PID and IPC namespaces,
  no capabilities), running `true`: what bwrap itself costs;
- the same with a Python stub inside (Landlock must be applied inside the view, after its mounts, and needs a
  program there to do it: an interpreter start per command);
- the same with --unshare-net.
The keeper's own namespace code is measured by `bench/confinement_cost.py` (view + Landlock against Landlock
alone, through the launcher).

    python bench/view_mechanisms.py [--rounds 50]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        sys.exit("bwrap is not installed (apt-get install bubblewrap)")
    scratch = tempfile.mkdtemp(prefix="bench-view-")
    view = [
        bwrap,
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
        "--tmpfs",
        "/dev/shm",
        "--tmpfs",
        "/run",
        "--unshare-pid",
        "--unshare-ipc",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--bind",
        scratch,
        scratch,
    ]
    stub = [sys.executable, "-I", "-S", "-c", "pass"]
    ways = {
        "fork+exec true": ["true"],
        "bwrap, true": [*view, "true"],
        "bwrap + python stub": [*view, *stub],
        "bwrap --unshare-net + python stub": [*view, "--unshare-net", *stub],
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, argv in ways.items():
            start = time.perf_counter()
            subprocess.run(argv, check=True)
            times[name].append(time.perf_counter() - start)
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores; rounds: {args.rounds}; "
        f"load: {os.getloadavg()[0]:.2f}"
    )
    print("| how one command starts | median (ms) |")
    print("|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values) * 1000:.2f} |")
    os.rmdir(scratch)


if __name__ == "__main__":
    main()
