"""Review 30: the newest change (a built-in metric line that holds the metric again is refused, the JSONL and
results.tsv hidden from runs, neither shipped to Ray workers) against the target's code and a hostile agent. Real
runs under the real keeper. Each test here failed before its fix (or is a strict xfail naming the fix)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_autoresearch.measure.metrics import MetricError, read_metric_from_log

from .conftest import make_repo
from .helpers.ray_head import _experiment as _ray_experiment
from .helpers.ray_head import _project
from .test_attacks_review22 import _experiment

# The run's command runs the candidate, then the project's scorer, into one log. The candidate cannot write after
# the scorer's line, but it writes the bytes before it: a fragment without its newline keeps the scorer's line from
# starting a line, where a built-in form is read, and the candidate's own value (on the fragment's line, or on a
# line before it) was the last one read. Review 28 refused the scorer's form only at a word's start, on the same
# line, in the 4 MiB after the value.
SCORER = {"score: 0.9": "print('score: 0.9')\n", "METRIC score=0.9": "print('METRIC score=0.9')\n"}
HIDES_THE_SCORERS_LINE = {
    "a word character glued before it": ("sys.stdout.write('score: 0.0001 _')", "score: 0.9"),
    "a dot glued before it": ("sys.stdout.write('score: 0.0001 1.')", "score: 0.9"),
    "a METRIC line glued after a word character": (
        "sys.stdout.write('METRIC score=0.0001 x')",
        "METRIC score=0.9",
    ),
    "the candidate's value on a line of its own, then a fragment": (
        "print('score: 0.0001'); sys.stdout.write('x')",
        "score: 0.9",
    ),
    "the candidate's value more than 4 MiB before it": (
        "sys.stdout.write('score: 0.0001 ' + 'x' * (5 << 20) + ' ')",
        "score: 0.9",
    ),
}


@pytest.mark.parametrize("case", sorted(HIDES_THE_SCORERS_LINE))
def test_a_candidate_cannot_keep_the_scorers_line_from_being_read(tmp_path: Path, case: str) -> None:
    candidate, scorer = HIDES_THE_SCORERS_LINE[case]
    root = make_repo(tmp_path / "p", {"t.py": f"import sys\n{candidate}\n", "score.py": SCORER[scorer]})
    result = _experiment(root, "r1", "python3 t.py; python3 score.py").run()
    assert result.status == "metric_error" and result.value is None, result
    assert "glued" in (result.error or "") and scorer in (result.error or ""), result


# The honest line the scorer's glued line cannot be told from: `loss: 2.1 | val_` is a candidate's fragment, and the
# scorer's `loss: 2.3` after it. Refused (it was read as 2.1), with a way out.
def test_a_later_name_ending_in_the_metrics_is_refused_with_a_way_out(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text("warm-up\nloss: 2.1 | val_loss: 2.3\n")
    with pytest.raises(MetricError, match="loss: 2.3.*metric_regex"):
        read_metric_from_log(log, "loss", None)


LINES_THAT_STAY_READ = {
    "a progress bar named as the metric, after a carriage return": ("score: 0.4\rscore: 100%|##| 2/2\n", 0.4),
    "a later value of another unit": ("score: 0.5 (best score_ever 0.4)\n", 0.5),
    "karpathy's summary": (
        "step 00953 | loss: 3.1\n---\nval_bpb:          0.997900\ntraining_seconds: 300.1\n",
        0.9979,
    ),
    "a tqdm bar with the metric as its postfix, after it": (
        "score: 0.5\n100%|##| 2/2 [00:01, score=0.5]\n",
        0.5,
    ),
}


@pytest.mark.parametrize("case", sorted(LINES_THAT_STAY_READ))
def test_lines_naming_the_metric_once_are_still_read(tmp_path: Path, case: str) -> None:
    text, value = LINES_THAT_STAY_READ[case]
    log = tmp_path / "run.log"
    log.write_text(text)
    name = "val_bpb" if "val_bpb" in text else "score"
    assert read_metric_from_log(log, name, None) == value


# `jsonl_path` is taken as given (relative to the project, or absolute): an absolute path inside the project was
# never the relative path the Ray package leaves out, and the JSONL (every run's values) was shipped to the worker,
# where the local view hides it.
def test_an_absolute_jsonl_path_is_not_shipped_to_a_ray_worker(tmp_path: Path, ray_address: str) -> None:
    root = _project(tmp_path)
    (root / "logs").mkdir()
    (root / "logs" / "ar.jsonl").write_text('{"values": [1.0]}\n')
    command = "test -e logs/ar.jsonl && echo 'JOURNAL UPLOADED'; echo 'score: 1'"
    result = _ray_experiment(root, ray_address, command, jsonl_path=str(root / "logs" / "ar.jsonl")).run()
    assert result.status == "ok" and result.value == 1.0, result.error
    assert b"JOURNAL UPLOADED" not in Path(result.log_path).read_bytes()
