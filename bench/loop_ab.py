"""The one-call loop of `loop_overhead.py` (stdio, runs confined) for several copies of the server side by side,
to compare one change at a time: each copy is a git revision (exported) or a folder holding a `mcp_autoresearch`
package (a working copy with one constant changed, say). The copies run in alternating rounds, so a change of
the machine's pace hits each alike.

    python bench/loop_ab.py REV_OR_DIR REV_OR_DIR... [--rounds 8] [--experiments 40]

`--experiments` is per copy and round; one in two experiments is kept, as in `loop_overhead.py`. Prints each
copy's median overhead per experiment (the command's own time taken off), with keeps and discards apart.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import anyio
import loop_overhead as lo


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("copies", nargs="+", metavar="REV_OR_DIR")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--experiments", type=int, default=40, help="per copy and round")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    try:
        sources = []
        for number, copy in enumerate(args.copies):
            folder = Path(copy)
            sources.append(folder.resolve() if folder.is_dir() else lo.export(copy, base / f"rev-{number}"))
        roots = [lo.make_repo(base / f"project-{number}") for number in range(len(sources))]
        data: list[list[dict]] = [[] for _ in sources]
        for round_number in range(args.rounds):
            order = list(range(len(sources)))
            for index in order if round_number % 2 == 0 else reversed(order):
                data[index].append(
                    anyio.run(lo.ours, roots[index], args.experiments, sources[index], False, True)
                )
        own = lo.command_time(roots[0])
        print(f"command's own time (median): {own * 1000:.2f} ms; {args.rounds} rounds of {args.experiments}")
        for copy, parts in zip(args.copies, data, strict=True):
            found = lo.summary(lo.merged(parts), own)
            kinds = " / ".join(
                f"{found['by_kind'].get(kind, float('nan')):.1f}" for kind in ("keep", "discard")
            )
            print(f"| {copy} | {found['median_ms']:.1f} ({kinds}) |")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
