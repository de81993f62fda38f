"""The removal of a run's private TMPDIR (`run_tmpdirs.remove`, on the run's path) when the server does it
right after the keeper's report, while the keeper (ending itself) still holds the run's view, against after the
keeper's exit. In the view the TMPDIR is a mount: removed while the view is held, the kernel detaches that mount
too (an RCU grace period). Commands through the launcher's spares made for the view (standby processes).

    python bench/tmpdir_after_report.py [--commands 30] [--blocks 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from mcp_autoresearch.sandbox.launcher import launcher
from mcp_autoresearch.sandbox.run_tmpdirs import remove

SPEC = {"landlock": True, "view": True, "network": True}


def one(root: Path, after_exit: bool) -> tuple[float, bool, float]:
    """(µs to remove the TMPDIR, whether the keeper still held the view then, µs from the request to the removal
    done)."""
    temp = root / "t"
    temp.mkdir()
    read_fd, write_fd = os.pipe()
    requested = time.perf_counter()
    launched = launcher().spawn(
        ["/bin/true"],
        root,
        dict(os.environ),
        write_fd,
        {**SPEC, "write": [str(temp)]},  # type: ignore[typeddict-item]
    )
    os.close(write_fd)
    launched.wait(60)
    if after_exit:
        os.read(read_fd, 1 << 16)  # end of file: the keeper (its stdout is the run's) has exited
    held = os.path.exists(f"/proc/{launched.pid}/ns/mnt")
    started = time.perf_counter()
    remove(str(temp))
    done = time.perf_counter()
    launched.close()
    os.close(read_fd)
    return (done - started) * 1e6, held, (done - requested) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--commands", type=int, default=30)
    parser.add_argument("--blocks", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-tmpdir-"))
    for _ in range(5):  # the spares made for this kind first
        one(root, True)
    for _ in range(args.blocks):
        for after_exit in (False, True):
            found = [one(root, after_exit) for _ in range(args.commands)]
            times = sorted(took for took, _, _ in found)
            whole = statistics.median(total for _, _, total in found)
            print(
                f"{'after the keeper exit' if after_exit else 'right after the report'}: removal µs median"
                f" {statistics.median(times):.0f}, p90 {times[int(len(times) * 0.9)]:.0f};"
                f" the view still held {sum(held for _, held, _ in found)}/{len(found)};"
                f" request to removal done µs median {whole:.0f}"
            )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    os.rmdir(root)


if __name__ == "__main__":
    main()
