"""Review 25: the target's code and a sloppy agent against review 22-24's changes (the keyring filter, the output
directory's marks, the checks after every run, the hidden logs, the metric with a comma, the hand edit kept
aside). Real runs under the real keeper. Each test here failed before its fix (or is a strict xfail naming the
fix)."""

from __future__ import annotations

from pathlib import Path

from .conftest import make_repo
from .test_attacks_review22 import _experiment

# Creates entries enough to grow its output directory past one block, and prints the size it found first.
GROWS_ITS_OUTPUT_DIRECTORY = """
import os
print("SEEN", os.stat("out").st_size)
for i in range(400):
    open(f"out/a-long-name-that-fills-the-directory-blocks-{i:05d}", "w").close()
print("score: 1")
"""


def test_the_size_one_run_grows_its_output_directory_to_does_not_reach_the_next(tmp_path: Path) -> None:
    """ext4 never shrinks a directory: a run that created many entries in `out/` left it 36864 bytes long once
    they were moved aside, and the next run read that size (a count of runs, grown a block per run; the
    re-measurement after a keep told from the judged run). A grown directory is replaced by a fresh one."""
    root = make_repo(tmp_path / "p", {"t.py": GROWS_ITS_OUTPUT_DIRECTORY})
    (root / "out").mkdir()
    (root / "out").chmod(0o750)
    first = _experiment(root, "r1", writable=["out"]).run()
    second = _experiment(root, "r2", writable=["out"]).run()
    assert first.status == second.status == "ok", (first, second)
    seen = [Path(r.log_path).read_text().split("SEEN ", 1)[1].split()[0] for r in (first, second)]
    assert seen[0] == seen[1], seen
    assert (root / "out").stat().st_mode & 0o777 == 0o750
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == [".autoresearch", ".git"]
