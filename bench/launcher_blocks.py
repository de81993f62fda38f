"""One confined command through the launcher, as a session starts them: the same kind of command each time, with a
fresh private TMPDIR per command and a pause between commands (the engine's own work between runs), in blocks of
each kind. Median ms from the request to the exit code known.

    python bench/launcher_blocks.py [--commands 60] [--blocks 3] [--pause-ms 8]
    PYTHONPATH=/tmp/old python bench/launcher_blocks.py   # another version of the package, exported with git archive

`bench/confinement_cost.py` alternates four kinds of command with no pause (to share the machine's load between
them); there the launcher's spare keepers, made like the last command, never fit the next one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from mcp_autoresearch.sandbox.launcher import launcher

KINDS = {
    "view + Landlock": {"landlock": True, "view": True, "network": True},
    "Landlock alone": {"landlock": True},
}


def one(root: Path, spec: dict[str, object]) -> float:
    scratch = tempfile.mkdtemp(dir=root)
    read_fd, write_fd = os.pipe()
    started = time.perf_counter()
    launched = launcher().spawn(
        ["/bin/sh", "-c", "echo score: 1"],
        root,
        dict(os.environ),
        write_fd,
        {**spec, "write": [str(root / "out"), scratch]},  # type: ignore[typeddict-item]
    )
    os.close(write_fd)
    launched.wait(60)
    took = time.perf_counter() - started
    os.read(read_fd, 1 << 16)
    os.close(read_fd)
    getattr(launched, "close", lambda: None)()  # older versions hold no report pipe
    os.rmdir(scratch)
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--commands", type=int, default=60)
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--pause-ms", type=float, default=8.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-blocks-"))
    (root / "out").mkdir()
    found: dict[str, list[float]] = {name: [] for name in KINDS}
    for _ in range(args.blocks):
        for name, spec in KINDS.items():
            times = []
            for _ in range(args.commands):
                times.append(one(root, spec))
                time.sleep(args.pause_ms / 1000)
            found[name].append(statistics.median(times[5:]) * 1000)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    for name, medians in found.items():
        print(f"{name}: median ms per block {', '.join(f'{m:.2f}' for m in medians)}")


if __name__ == "__main__":
    main()
