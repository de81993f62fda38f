"""A run that fills the disk (issue 20): the server's own records are still written, the run is logged as
`disk_full` with the path that grew, and the session goes on once space is back.

The project lives on a small tmpfs of its own, which needs root (CI runs as root; anywhere else the test says
why it cannot run).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mcp_autoresearch.records.atomic import append_synced
from mcp_autoresearch.records.diskspace import no_room

from .conftest import TRAIN_PY, make_repo

pytestmark = pytest.mark.anyio

DISK_MB = 48

# Fills the disk through the writable output `out/` until the file system refuses, then reports a value.
FILLER = """
import os
os.makedirs('out', exist_ok=True)
chunk = b'x' * (1 << 20)
with open('out/fill.bin', 'wb') as handle:
    try:
        while True:
            handle.write(chunk)
            handle.flush()
    except OSError as exc:
        print('the disk is full:', exc.strerror)
"""


def _cannot_mount(why: str) -> None:
    if os.environ.get("CI"):
        raise RuntimeError(f"CI runs as root and must mount a small tmpfs for this test, but {why}")
    pytest.skip(f"needs a small file system of its own (a tmpfs mount, as root): {why}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A `DISK_MB` tmpfs mounted on a folder of tmp_path, unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        _cannot_mount(f"this process is not root (uid {os.geteuid()})")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        _cannot_mount(f"mount -t tmpfs failed: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.fixture
def full_project(small_disk: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AUTORESEARCH_SLOTS_DIR", str(small_disk / "slots"))  # slot checkouts on the same disk
    return make_repo(small_disk / "proj", {"train.py": TRAIN_PY, "prepare.py": "SEED = 1\n"})


def _fill(path: Path) -> None:
    """Append to `path` until the file system refuses."""
    with path.open("ab", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"z" * (1 << 16))


def _logged(root: Path) -> list[str]:
    """The decisions column of results.tsv."""
    return [line.split("\t")[3] for line in (root / "results.tsv").read_text().splitlines()[1:]]


async def _fill_then_recover(agent: Any, root: Path, outputs: Path) -> None:
    """Baseline; a run that fills the disk (below `outputs`); the refusal while full; a run once space is back."""
    started = await agent.ok("start_session", tag="full")
    await agent.ok("run_experiment", description="baseline")
    base = await agent.until_done()
    assert (await agent.ok("commit_or_reset", run_id=base["run_id"]))["decision"] == "keep"
    await agent.edit("LR = 0.5", "LR = 0.4\n" + textwrap.dedent(FILLER))
    run = await agent.ok("run_experiment", description="fill the disk")
    run = await agent.until_done(run["run_id"])
    assert run["status"] == "disk_full", (run["error"], run)
    assert "out/fill.bin" in run["error"] and "free" in run["error"], run["error"]  # the path that grew
    assert "free space" in run["next_step"] and "commit_or_reset" in run["next_step"], run["next_step"]
    decided = await agent.ok("commit_or_reset", run_id=run["run_id"])
    assert decided["decision"] == "crash" and "disk_full" in decided["reason"], decided
    assert "free space" in decided["next_step"], decided
    assert _logged(root) == ["keep", "crash"]
    rows = (root / ".autoresearch" / "autoresearch.jsonl").read_text()
    assert '"run_status": "disk_full"' in rows or '"run_status":"disk_full"' in rows

    # While the disk is still full, nothing starts (a clear refusal, not a wedge); once space is back, it runs.
    await agent.edit("LR = 0.5", "LR = 0.3")
    refused = await agent.refused("run_experiment", description="too early")
    assert "disk" in refused and "out/fill.bin" in refused, refused
    [filler] = outputs.rglob("fill.bin")
    filler.unlink()
    run = await agent.ok("run_experiment", description="after freeing space")
    run = await agent.until_done(run["run_id"])
    assert run["status"] == "ok", run
    assert (await agent.ok("commit_or_reset", run_id=run["run_id"]))["decision"] == "keep"
    assert _logged(root) == ["keep", "crash", "keep"]
    assert started["tag"] == "full"


async def test_a_run_that_fills_the_disk_is_logged_as_disk_full(full_project: Path, agent_for: Any) -> None:
    root = full_project
    async with agent_for(root, {"writable": ["out"], "keep_rule": "greedy"}) as agent:
        await _fill_then_recover(agent, root, root / "out")


async def test_a_slot_run_that_fills_the_disk_is_logged_as_disk_full(
    full_project: Path, small_disk: Path, agent_for: Any
) -> None:
    root = full_project
    async with agent_for(root, {"writable": ["out"], "keep_rule": "greedy", "slots": 2}) as agent:
        await _fill_then_recover(agent, root, small_disk / "slots")


async def test_runs_in_flight_when_the_disk_fills_are_stopped(full_project: Path, agent_for: Any) -> None:
    """With slots, the other runs write on the same full disk: they are stopped before the reserve is freed, so
    their writes cannot take the space the server's records need."""
    root = full_project
    settings = {"writable": ["out"], "keep_rule": "greedy", "slots": 2, "timeout": 120}
    async with agent_for(root, settings) as agent:
        await agent.ok("start_session", tag="full")
        await agent.ok("run_experiment", description="baseline")
        base = await agent.until_done()
        assert (await agent.ok("commit_or_reset", run_id=base["run_id"]))["decision"] == "keep"
        await agent.edit("LR = 0.5", "LR = 0.45\nimport time\ntime.sleep(120)")
        waiting = await agent.ok("run_experiment", description="waits")
        await agent.edit("LR = 0.5", "LR = 0.4\n" + textwrap.dedent(FILLER))
        filling = await agent.ok("run_experiment", description="fills the disk")
        assert (await agent.until_done(filling["run_id"]))["status"] == "disk_full"
        stopped = await agent.until_done(waiting["run_id"])
        assert stopped["status"] == "cancelled" and "the disk filled up" in stopped["error"], stopped
        for run_id in (filling["run_id"], waiting["run_id"]):
            assert (await agent.ok("commit_or_reset", run_id=run_id))["decision"] == "crash"
    assert _logged(root) == ["keep", "crash", "crash"]


async def test_a_run_whose_log_cannot_be_written_is_not_blocked(full_project: Path, agent_for: Any) -> None:
    """Output the server cannot write to the log (the disk is full) is read and dropped: the run goes on (here it
    frees the disk and ends) instead of blocking on a full pipe until its timeout."""
    root = full_project
    code = (
        FILLER
        + "import sys\nsys.stdout.write('y' * (8 << 20))\nsys.stdout.flush()\nos.remove('out/fill.bin')\n"
    )
    async with agent_for(root, {"writable": ["out"], "keep_rule": "greedy", "timeout": 120}) as agent:
        await agent.ok("start_session", tag="full")
        await agent.experiment("baseline")
        await agent.edit("LR = 0.5", "LR = 0.4\n" + textwrap.dedent(code))
        run, _ = await agent.experiment("prints on a full disk")
    assert run["status"] == "metric_error", run  # its metric line came after the log was cut; not a timeout


async def test_a_decision_is_logged_when_the_disk_filled_after_the_run(
    full_project: Path, small_disk: Path, agent_for: Any
) -> None:
    """Another program fills the disk between a run and its decision: the decision is written into the server's
    reserve, the JSONL stays whole, and the next run waits for space, saying the runs did not fill it."""
    root = full_project
    async with agent_for(root, {"writable": ["out"], "keep_rule": "greedy"}) as agent:
        await agent.ok("start_session", tag="full")
        await agent.experiment("baseline")
        await agent.edit("LR = 0.5", "LR = 0.4")
        run = await agent.until_done((await agent.ok("run_experiment", description="LR 0.4"))["run_id"])
        assert run["status"] == "ok", run
        other = small_disk / "another-program.bin"
        _fill(other)
        decided = await agent.ok("commit_or_reset", run_id=run["run_id"])
        assert decided["decision"] == "keep", decided
        assert _logged(root) == ["keep", "keep"]
        for line in (root / ".autoresearch" / "autoresearch.jsonl").read_text().splitlines():
            json.loads(line)  # every line whole
        refused = await agent.refused("run_experiment", description="too early")
        assert "something else filled the disk" in refused, refused
        _fill(other)  # it goes on: what the decision left is taken too
        refused = await agent.refused("apply_edit", content=TRAIN_PY.replace("LR = 0.5", "LR = 0.3"))
        assert "the disk holding the project is full" in refused and "internal error" not in refused, refused
        other.unlink()
        await agent.edit("LR = 0.4", "LR = 0.3")
        again, _ = await agent.experiment("LR 0.3")
        assert again["status"] == "ok", again
    assert _logged(root) == ["keep", "keep", "keep"]


def test_an_append_that_meets_a_full_disk_leaves_the_file_as_it_was(small_disk: Path) -> None:
    """The JSONL and results.tsv are appended to: an append cut short by a full disk is undone, so a retry (the
    decision written into the reserve) never follows half a line."""
    log = small_disk / "log.jsonl"
    log.write_bytes(b'{"a": 1}\n')  # its page has room left: the next append is written in part, then refused
    with (small_disk / "filler.bin").open("wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"z" * 4096)
            handle.flush()
    with pytest.raises(OSError) as refused:
        append_synced(log, b'{"b": "' + b"x" * 20_000 + b'"}\n')
    assert no_room(refused.value)
    assert log.read_bytes() == b'{"a": 1}\n'
