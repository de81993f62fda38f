"""Review 25: the target's code and a sloppy agent against review 22-24's changes (the keyring filter, the output
directory's marks, the checks after every run, the hidden logs, the metric with a comma, the hand edit kept
aside). Real runs under the real keeper. Each test here failed before its fix (or is a strict xfail naming the
fix)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    # A server killed between making the fresh folder and putting it in place left it beside `out/`: the next
    # run's preparation removes it (empty only: a folder of that name holding anything stays).
    (root / ".out.fresh-left").mkdir()
    (root / ".out.fresh-holds").mkdir()
    (root / ".out.fresh-holds" / "a").write_text("kept\n")
    assert _experiment(root, "r3", writable=["out"]).run().status == "ok"
    assert not (root / ".out.fresh-left").exists() and (root / ".out.fresh-holds" / "a").exists()


@pytest.mark.parametrize(
    "line",
    [
        "score: 1\u202f250",
        "score: 1\u00a0250",
        "score: 1'250",
        "score: 1\u2019250",
        "METRIC score=2\u202f500",
    ],
)
def test_a_number_with_a_locales_thousands_space_or_apostrophe_is_never_read_as_its_first_group(
    tmp_path: Path, line: str
) -> None:
    """Review 23 refused `1,250`; `locale.format_string("%d", 1250, grouping=True)` under fr_FR or ru_RU prints
    `1\u202f250` (a narrow no-break space; older glibc a no-break space), de_CH `1'250`: each was read as `1`, the
    same silent wrong number. Now `metric_error`, saying to print the number with no separator."""
    root = make_repo(tmp_path / "p", {"t.py": f"print({line!r})\n"})
    result = _experiment(root, "r1").run()
    assert result.status == "metric_error" and "separator" in (result.error or ""), result


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("score: 0.5,", 0.5),
        ("score: 0.5, loss: 2", 0.5),
        ("METRIC score=1,b=2", 1.0),
        ("score: 0.5 1250", 0.5),
    ],
)
def test_honest_lines_with_a_comma_after_the_metric_are_still_read(
    tmp_path: Path, line: str, value: float
) -> None:
    root = make_repo(tmp_path / "p", {"t.py": f"print({line!r})\n"})
    result = _experiment(root, "r1").run()
    assert result.status == "ok" and result.value == value, result
