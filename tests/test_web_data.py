"""The web dashboard's read-only view of a session (`web/data.py`) and its diffs (`web/gitdiff.py`), on real
git repositories and files written as the server writes them; no browser."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mcp_autoresearch.readers.web.data import MAX_POINTS, SessionView
from mcp_autoresearch.readers.web.gitdiff import commit_diff
from mcp_autoresearch.records.state import Pending, load_state, save_state

from .conftest import git, make_repo
from .web_support import append_experiment, synthetic_session


@pytest.fixture
def big(tmp_path: Path) -> tuple[Path, dict[str, float | int]]:
    root = make_repo(tmp_path / "big", {"train.py": "LR = 1\n"})
    return root, synthetic_session(root, 10_000)


def test_counts_best_and_pages_of_a_large_session(big: tuple[Path, dict[str, float | int]]) -> None:
    root, expected = big
    view = SessionView(root)
    assert view.refresh() is True
    summary = view.summary()
    assert summary["total"] == 10_000
    assert summary["counts"] == {s: expected[s] for s in ("keep", "discard", "crash")}
    assert summary["best"]["value"] == expected["best"] and summary["baseline"] == expected["baseline"]
    assert summary["notes"] == 1000 and summary["run_counts"] == {"crash": expected["crash"]}
    assert summary["per_hour"] == pytest.approx(12, rel=0.01)  # one every 5 minutes
    page = view.experiments(None, 0, 50)
    assert page["total"] == 10_000 and [r["n"] for r in page["rows"][:2]] == [10_000, 9_999]
    last = view.experiments(None, 9_990, 50)
    assert [r["n"] for r in last["rows"]] == list(range(10, 0, -1))
    crashes = view.experiments("crash", 0, 10_000)
    assert crashes["total"] == expected["crash"] and len(crashes["rows"]) == 200  # one request, one page
    assert {r["status"] for r in crashes["rows"]} == {"crash"}
    assert view.refresh() is False  # nothing changed: nothing read


def test_decimated_points_keep_the_envelope_in_order(big: tuple[Path, dict[str, float | int]]) -> None:
    root, _ = big
    view = SessionView(root)
    view.refresh()
    points = view.points()
    assert points["decimated"] and len(points["x"]) <= MAX_POINTS
    assert points["x"] == sorted(points["x"])  # the page finds the point under the pointer by bisection
    values = [r.value for r in view.rows if r.value is not None and r.status == "discard"]
    drawn = [y for y, k in zip(points["y"], points["k"], strict=True) if k == 1]
    assert min(drawn) == min(values) and max(drawn) == max(values)
    assert 2 in points["k"]  # crashes are marked
    best = points["best"]
    assert [s["v"] for s in best] == sorted((s["v"] for s in best), reverse=True)  # lower is better
    assert best[-1]["v"] == view.summary()["best"]["value"]
    spread = [s for s in best if "lo" in s]
    assert spread and all(s["lo"] <= s["v"] <= s["hi"] for s in spread)
    small = SessionView(root)
    small.refresh()
    assert len(small.points(max_points=10_000)["x"]) == 10_000  # not decimated when there is room


def test_reads_only_new_complete_lines_and_rereads_a_replaced_log(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "proj", {"train.py": "LR = 1\n"})
    synthetic_session(root, 5)
    log = root / ".autoresearch" / "autoresearch.jsonl"
    with log.open("a") as handle:  # another session's line is not ours
        handle.write(
            json.dumps({"action": "experiment_done", "details": {"run_id": "r6", "tag": "other"}}) + "\n"
        )
    view = SessionView(root)
    view.refresh()
    assert len(view.rows) == 5
    append_experiment(root, 6, 0.95)
    with log.open("a") as handle:
        handle.write('{"action": "experiment_done", "details": {"run_id": "r7", "tag": "big"')  # half written
    assert view.refresh() is True and len(view.rows) == 6
    synthetic_session(root, 3)  # the log replaced by a shorter one (a server restoring it): read again
    assert view.refresh() is True and [r.run_id for r in view.rows] == ["r1", "r2", "r3"]


def test_the_current_run_and_its_newest_log(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "proj", {"train.py": "LR = 1\n"})
    synthetic_session(root, 3)
    state = load_state(root, "big")
    assert state is not None
    state.rules = {"repeats": 3}
    state.inflight.append(
        Pending(
            run_id="r4", description="try", parent="abc", phase="running", started_at="2026-11-26T10:00:00"
        )
    )
    save_state(root, state)
    runs = root / ".autoresearch" / "runs" / "big"
    runs.mkdir(parents=True)
    (runs / "r4-1.log").write_text("first repeat\n")
    (runs / "r4-2.log").write_text("second repeat: step 7\n")
    os.utime(runs / "r4-1.log", (1, 1))
    (runs / "r40.log").write_text("another run\n")
    view = SessionView(root, timeout_s=60)
    view.refresh()
    [run] = view.runs()
    assert run["run_id"] == "r4" and run["phase"] == "running" and run["timeout_s"] == 60
    assert run["log_name"] == "r4-2.log" and run["log_tail"] == "second repeat: step 7"
    assert run["elapsed_s"] > 0
    before = view.signature()
    with (runs / "r4-2.log").open("a") as handle:
        handle.write("step 8\n")
    assert view.signature() != before  # a growing live log is a change the page is told about


def test_diff_of_a_commit_against_its_parent(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "proj", {"train.py": "LR = 1\n"})
    (root / "train.py").write_text("LR = 2\n")
    git(root, "commit", "-qam", "experiment: LR 2")
    commit = git(root, "rev-parse", "HEAD").strip()
    git(root, "config", "diff.external", "touch PWNED")  # a repository setting that would run a program
    shown = commit_diff(root, commit)
    assert shown.error is None and not shown.truncated
    assert "experiment: LR 2" in shown.text and "-LR = 1\n+LR = 2" in shown.text
    assert not (root / "PWNED").exists()
    missing = commit_diff(root, "0" * 40)
    assert missing.error is not None and missing.text == ""


def test_every_slot_in_use_is_shown(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "proj", {"train.py": "LR = 1\n"})
    synthetic_session(root, 3)
    state = load_state(root, "big")
    assert state is not None
    state.rules = {"slots": 2}
    state.inflight = [
        Pending(
            run_id="r4",
            description="a",
            parent="abc",
            phase="running",
            slot=0,
            started_at="2026-11-26T10:00:00",
        ),
        Pending(
            run_id="r5",
            description="b",
            parent="abc",
            phase="finished",
            slot=1,
            started_at="2026-11-26T10:00:01",
        ),
    ]
    save_state(root, state)
    runs = root / ".autoresearch" / "runs" / "big"
    runs.mkdir(parents=True)
    (runs / "r4.log").write_text("slot zero\n")
    (runs / "r5.log").write_text("slot one\n")
    view = SessionView(root, timeout_s=60)
    view.refresh()
    shown = {run["run_id"]: run for run in view.runs()}
    assert shown["r4"]["slot"] == 0 and shown["r4"]["log_tail"] == "slot zero"
    assert shown["r5"]["slot"] == 1 and shown["r5"]["phase"] == "finished"
