"""The spares' rehearsal of their request (`forkserver._rehearse`, `standby._rehearse`: the last request's spec
read, its paths resolved, while the spare waits) attacked with the specs a request may carry: it must never end a
spare, delay or change a run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mcp_autoresearch.sandbox.launcher import Launcher, LauncherError

from .helpers.needs import require
from .test_launcher import ISOLATION, VIEW, _prepared_like, _run_spec

require(
    ISOLATION.namespaces,
    "CI must run the private view",
    f"namespaces are unavailable here: {ISOLATION.reason}",
)


def test_a_spare_rehearsing_odd_paths_stays_and_serves_the_run(launcher: Launcher, tmp_path: Path) -> None:
    """The spares rehearse the last request's paths (`forkserver._rehearse`, `standby._rehearse`): a FIFO, a
    link out of the project, a loop of links, a missing path, a path of non-UTF-8 bytes and thousands of paths
    among them neither stop nor end a spare: the next run like it is served by one, as asked."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "out").symlink_to("/etc")
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    many = [str(tmp_path / f"missing-{i}" / "deeper") for i in range(1000)]
    odd = ["fifo", "out", "loop1", "missing", "bytes-\udcff"]
    spec = {**VIEW, "write": [str(tmp_path / "w")], "read": [*(str(tmp_path / p) for p in odd), *many]}
    spares = _prepared_like(launcher, tmp_path, spec)
    keeper, code, output = _run_spec(launcher, tmp_path, "test -p fifo && echo ran", spec)
    assert (keeper in spares, code, output) == (True, 0, "ran\n")


def _nested(depth: int) -> list[object]:
    found: list[object] = []
    for _ in range(depth):
        found = [found]
    return found


def test_a_request_nested_too_deep_never_reads_as_a_run_that_succeeded(
    launcher: Launcher, tmp_path: Path
) -> None:
    """A spec nested about as deep as the launcher's Python reads (its recursion limit): each run either runs
    its command or fails (a spare that failed to read its request, or its rehearsal, exited 0: the run read as
    one that succeeded without running), and the launcher keeps serving runs."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit * 4)  # this process encodes any of them: the launcher's limit is the default
    try:
        for depth in range(limit - 40, limit + 10, 2):
            spec = {**VIEW, "write": [str(tmp_path / "w")], "deep": _nested(depth)}
            try:
                _, code, output = _run_spec(launcher, tmp_path, "echo ran", spec)
            except LauncherError as exc:
                assert "bad request" in str(exc), (depth, exc)
                continue
            assert code != 0 or output == "ran\n", (depth, code, output)
    finally:
        sys.setrecursionlimit(limit)
    assert _run_spec(launcher, tmp_path, "echo ran", {**VIEW, "write": [str(tmp_path / "w")]})[1:] == (
        0,
        "ran\n",
    )
