"""Review 28: the newest change (hidden logs and states, the metric read as a terminal shows it, fresh output
directories, the HTTP transport's user checks, hand edits kept once, finish's discarded nodes) against the target's
code and a hostile agent. Real runs under the real keeper. Each test here failed before its fix (or is a strict
xfail naming the fix)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_autoresearch.measure.metrics import MetricError, read_metric_from_log

from .conftest import make_repo
from .test_attacks_review22 import _experiment, what_the_candidates_runs_saw

pytestmark = pytest.mark.anyio

# The JSONL (`.autoresearch/autoresearch.jsonl` by default) holds every row's runs and the best's: what the state
# in `.autoresearch/sessions/` held, hidden from the runs since review 22 for that reason; results.tsv their values.
READS_THE_JOURNAL = """\
if grep -qs '"values"' .autoresearch/autoresearch.jsonl; then echo SAW-JOURNAL; fi
if [ -s results.tsv ]; then echo SAW-RESULTS; fi
"""


async def test_a_run_cannot_read_the_journal_that_holds_the_best_runs(tmp_path: Path, agent_for) -> None:
    logs, seen = await what_the_candidates_runs_saw(tmp_path, agent_for, READS_THE_JOURNAL)
    assert logs and seen == [], seen


# A thousands separator between two coloured numbers, as rich's highlighter prints `f"{n:,}"` (each group coloured
# on its own): a terminal shows `score: 1,250`.
COLOURED_GROUPS = {
    "rich's highlighted groups": "print('score: \\x1b[1;36m1\\x1b[0m,\\x1b[1;36m250\\x1b[0m')\n",
    "a reset before the comma": "print('METRIC score=1\\x1b[0m,250')\n",
}


@pytest.mark.parametrize("case", sorted(COLOURED_GROUPS))
def test_a_coloured_number_with_a_separator_is_refused_not_read_as_its_first_group(
    tmp_path: Path, case: str
) -> None:
    root = make_repo(tmp_path / "p", {"t.py": COLOURED_GROUPS[case]})
    result = _experiment(root, "r1").run()
    assert result.status == "metric_error" and "comma" in (result.error or ""), result


# The run's command runs the candidate, then the project's scorer, into one log: a candidate that ends its output
# without a newline glues the scorer's line to its own, and the scorer's value no longer starts a line.
GLUED = {
    "t.py": "import sys\nsys.stdout.write('score: 0.0001 ')\n",
    "score.py": "print('score: 0.9')\n",
}


def test_a_candidate_cannot_glue_the_scorers_line_to_its_own(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "p", GLUED)
    result = _experiment(root, "r1", "python3 t.py; python3 score.py").run()
    assert result.status == "metric_error" and "glued" in (result.error or "") and result.value is None, (
        result
    )


LINES_THAT_STAY_READ = {
    "a progress bar named as the metric, after a carriage return": ("score: 0.4\rscore: 100%|##| 2/2\n", 0.4),
    "a later value of another unit": ("score: 0.5 (best score_ever 0.4)\n", 0.5),
}


@pytest.mark.parametrize("case", sorted(LINES_THAT_STAY_READ))
def test_a_line_naming_the_metric_once_is_still_read(tmp_path: Path, case: str) -> None:
    line, value = LINES_THAT_STAY_READ[case]
    name = "score"  # (`loss: 2.1 | val_loss: 2.3` is refused since review 30: test_attacks_review30.py)
    log = tmp_path / "run.log"
    log.write_text("warm-up\n" + line)
    assert read_metric_from_log(log, name, None) == value


def test_the_metric_glued_after_a_later_value_is_refused_naming_the_line(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_bytes(b"METRIC score=0.0001 METRIC score=0.9\n")
    with pytest.raises(MetricError, match="METRIC score=0.9"):
        read_metric_from_log(log, "score", None)


# tqdm names its bar by its `desc` and a colon: a bar named as the metric, drawn after the metric's line (a last
# pass over the data), starts after a carriage return as a built-in form does since review 27.
BAR_NAMED_AS_THE_METRIC = (
    "import sys\nprint('score: 0.4', flush=True)\n"
    "sys.stderr.write('\\rscore:   0%|          | 0/10\\rscore: 100%|##########| 10/10\\n')\n"
)


def test_a_progress_bar_named_as_the_metric_is_not_read_as_its_percentage(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "p", {"t.py": BAR_NAMED_AS_THE_METRIC})
    result = _experiment(root, "r1").run()
    assert result.status == "ok" and result.value == 0.4, result
