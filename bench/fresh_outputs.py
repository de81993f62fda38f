"""Fresh outputs (issue 19.2): what the server adds to each run for an output directory of N files.

    python bench/fresh_outputs.py [--files 100 1000 10000] [--rounds 5]

For each N, a `dist/` of N files of 1 KiB in 10 subfolders (as a bundler writes), then, `--rounds` times:
1. `record`: the snapshot taken after a run (what the run left);
2. `make_fresh`: the snapshot compared, and the N files moved aside (renamed) into `.autoresearch/outputs/`;
3. `unsafe_output`: the check of the measured output after the next run.
The median of each, in milliseconds. The old moved-aside folders are pruned by `make_fresh` as in a session.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from mcp_autoresearch.lifecycle.fresh_outputs import make_fresh, record
from mcp_autoresearch.measure.output_checks import snapshot, unsafe_output


def build(dist: Path, files: int) -> None:
    for index in range(files):
        folder = dist / f"chunk{index % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{index}.js").write_bytes(b"x" * 1024)


def one(files: int, rounds: int) -> dict[str, float]:
    timings: dict[str, list[float]] = {"record": [], "make_fresh": [], "unsafe_output": []}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "dist").mkdir()
        for round_ in range(rounds):
            started = time.time()
            build(root / "dist", files)
            begin = time.perf_counter()
            problem = unsafe_output(root / "dist", started, snapshot(root / "nothing"))
            timings["unsafe_output"].append(time.perf_counter() - begin)
            assert problem is None, problem
            begin = time.perf_counter()
            record(root, ["dist"], f"r{round_}", "bench")
            timings["record"].append(time.perf_counter() - begin)
            begin = time.perf_counter()
            make_fresh(root, ["dist"], "bench", f"r{round_ + 1}")
            timings["make_fresh"].append(time.perf_counter() - begin)
            assert not any((root / "dist").iterdir())
    return {name: statistics.median(values) * 1000 for name, values in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print("| files in dist/ | record (ms) | make_fresh (ms) | unsafe_output (ms) | total per run (ms) |")
    print("|---|---|---|---|---|")
    for files in args.files:
        got = one(files, args.rounds)
        total = sum(got.values())
        print(
            f"| {files} | {got['record']:.1f} | {got['make_fresh']:.1f} | {got['unsafe_output']:.1f} | {total:.1f} |"
        )


if __name__ == "__main__":
    main()
