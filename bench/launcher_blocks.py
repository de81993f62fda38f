"""One confined command through the launcher, as a session starts them: the same kind of command each time, with a
fresh private TMPDIR per command and a pause between commands (the engine's own work between runs), in blocks of
each kind. Median ms from the request to the exit code known, and the CPU the launcher and the processes it forked
(spares, keepers, standby processes, the command) spent per command, with their page faults.

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
    spent: dict[str, list[tuple[float, float, int]]] = {name: [] for name in KINDS}
    for _ in range(args.blocks):
        for name, spec in KINDS.items():
            times = []
            for _ in range(5):  # the spares made like this kind first
                one(root, spec)
            before = _launcher_cpu()
            for _ in range(args.commands):
                times.append(one(root, spec))
                time.sleep(args.pause_ms / 1000)
            after = _launcher_cpu()
            spent[name].append(tuple((b - a) / args.commands for a, b in zip(before, after, strict=True)))  # type: ignore[arg-type]
            found[name].append(statistics.median(times) * 1000)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    for name, medians in found.items():
        print(f"{name}: median ms per block {', '.join(f'{m:.2f}' for m in medians)}")
        cpu = "; ".join(f"{own:.2f} + {kids:.2f} ({faults:.0f} faults)" for own, kids, faults in spent[name])
        print(f"  CPU ms per command, the launcher + the processes it forked (their page faults): {cpu}")


def _launcher_cpu() -> tuple[float, float, int]:
    """(the launcher's own CPU ms, that of the processes it forked and reaped, their minor page faults)."""
    fields = Path(f"/proc/{launcher().process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = 1000 / os.sysconf("SC_CLK_TCK")
    return (
        (int(fields[11]) + int(fields[12])) * tick,
        (int(fields[13]) + int(fields[14])) * tick,
        int(fields[8]),
    )


if __name__ == "__main__":
    main()
