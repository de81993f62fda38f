"""More attacks on slot decisions and the Ray backend: real repositories, real runs, the real MCP client (and a
real local Ray head where Ray is involved)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import make_repo
from .test_slots import EVALUATE, TARGET, _baseline, settings

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def slots_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "slots-home"
    monkeypatch.setenv("AUTORESEARCH_SLOTS_DIR", str(home))
    return home




def _done_rows(root: Path) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in (root / ".autoresearch/autoresearch.jsonl").read_text().splitlines()]
    return [e["details"] for e in events if e["action"] == "experiment_done"]


async def test_a_rebase_never_measures_again_content_already_measured(
    tmp_path: Path, agent_for: Any, slots_home: Path
) -> None:
    """X=3 and Y=5 run at once; X=3 is kept. The agent then runs X=3,Y=5 itself (r4), and discards it. Deciding
    the stale Y=5 must not merge it into that very content and run it again: `run_experiment` refuses content
    already measured (unless asked to re-run it), and a rebase is no back door to a second draw of the noise."""
    root = make_repo(tmp_path / "proj", {"params.py": TARGET, "evaluate.py": EVALUATE})
    async with agent_for(root, settings(slot_devices=[])) as agent:
        await agent.ok("start_session", tag="tw")
        await _baseline(agent)
        await agent.edit("X = 0", "X = 3")
        first = await agent.ok("run_experiment", description="X to 3")
        await agent.edit("Y = 0", "Y = 5")
        second = await agent.ok("run_experiment", description="Y to 5")
        await agent.until_done(first["run_id"])
        await agent.until_done(second["run_id"])
        assert (await agent.ok("commit_or_reset", run_id=first["run_id"]))["decision"] == "keep"
        await agent.ok("apply_edit", content="X = 3\n\n\n\nY = 5\n")  # what the merge of Y=5 would be
        both = await agent.ok("run_experiment", description="X and Y")
        assert (await agent.until_done(both["run_id"]))["value"] == 0.0
        decided = await agent.ok("commit_or_reset", run_id=both["run_id"], discard=True)
        assert decided["decision"] == "discard"
        again = await agent.ok("commit_or_reset", run_id=second["run_id"])
        assert again["decision"] == "discard", again
        assert both["run_id"] in again["reason"], again
    rows = _done_rows(root)
    assert len(rows) == 4 and [r["run_id"] for r in rows].count(second["run_id"]) == 1


async def test_a_rebase_never_runs_content_already_in_flight(
    tmp_path: Path, agent_for: Any, slots_home: Path
) -> None:
    """As above, with the agent's X=3,Y=5 still running when the stale Y=5 is decided: no twin in flight."""
    root = make_repo(tmp_path / "proj", {"params.py": TARGET, "evaluate.py": EVALUATE})
    async with agent_for(root, settings(slot_devices=[])) as agent:
        await agent.ok("start_session", tag="tf")
        await _baseline(agent)
        await agent.edit("X = 0", "X = 3")
        first = await agent.ok("run_experiment", description="X to 3")
        await agent.edit("Y = 0", "Y = 5")
        second = await agent.ok("run_experiment", description="Y to 5")
        await agent.until_done(first["run_id"])
        await agent.until_done(second["run_id"])
        assert (await agent.ok("commit_or_reset", run_id=first["run_id"]))["decision"] == "keep"
        await agent.ok("apply_edit", content="X = 3\n\n\n\nY = 5\n")  # what the merge of Y=5 would be
        both = await agent.ok("run_experiment", description="X and Y")
        again = await agent.ok("commit_or_reset", run_id=second["run_id"])  # `both` sleeps 0.3 s: in flight
        assert again["decision"] == "discard", again
        assert both["run_id"] in again["reason"], again
        assert (await agent.until_done(both["run_id"]))["value"] == 0.0


FLOOD_AT_THE_END = """\
import signal, sys, time
def flood(*_):
    sys.stdout.write("x" * 300000 + "\\n")
    sys.stdout.flush()
signal.signal(signal.SIGTERM, flood)
print("started", flush=True)
time.sleep(60)
"""


@pytest.mark.filterwarnings("ignore:ssl=None is deprecated:DeprecationWarning")
def test_output_after_the_deadline_cannot_wedge_the_wrapper_past_its_timeout(
    tmp_path: Path, ray_address: str
) -> None:
    """At its deadline the wrapper stops forwarding and ends the tree through the keeper; a run that fills the
    pipe as it is stopped must not leave the keeper blocked writing its note into a pipe nobody reads (and the
    wrapper waiting for the keeper): the job would outlive its limit until the server's overdue stop."""
    import time

    from .helpers.ray_head import _experiment, _project

    root = _project(tmp_path)
    (root / "flood.py").write_text(FLOOD_AT_THE_END)
    started = time.monotonic()
    result = _experiment(root, ray_address, "python3 flood.py; echo after", timeout=2).run()
    elapsed = time.monotonic() - started
    assert result.status == "timeout", result
    assert elapsed < 12, f"the job outlived its 2 s limit by {elapsed - 2:.0f} s"
    assert "x" * 1000 not in Path(result.log_path).read_text()


FORKER = """\
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("started", flush=True)
while True:
    if os.fork() == 0:
        time.sleep(120)
        os._exit(0)
    time.sleep(0.01)
"""


@pytest.mark.filterwarnings("ignore:ssl=None is deprecated:DeprecationWarning")
def test_a_cancelled_job_leaves_no_process_behind_on_the_worker(
    tmp_path: Path, ray_address: str
) -> None:
    """A run that ignores SIGTERM and keeps starting processes: Ray's stop_job SIGKILLs only the processes it saw
    when it was asked (3 s later); the keeper must have swept the whole tree before Ray kills the keeper, or
    every process born in between survives the cancel, orphaned, on the worker."""
    import threading
    import time

    import psutil

    from .helpers.ray_head import _experiment, _project

    root = _project(tmp_path)
    (root / "forker.py").write_text(FORKER)
    experiment = _experiment(root, ray_address, "trap '' TERM; python3 forker.py; echo after")
    log = tmp_path / "logs" / "r1.log"

    def cancel_when_started() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and b"started" not in (log.read_bytes() if log.exists() else b""):
            time.sleep(0.1)
        time.sleep(0.5)
        experiment.cancel("client cancelled")

    threading.Thread(target=cancel_when_started, daemon=True).start()
    result = experiment.run()
    time.sleep(1.5)
    survivors = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "forker.py" in " ".join(proc.info["cmdline"] or []):
                survivors.append(proc)
        except psutil.Error:
            pass
    for proc in survivors:  # ours: started by this test's job
        try:
            proc.kill()
        except psutil.Error:
            pass
    assert result.status == "cancelled", result
    assert not survivors, f"{len(survivors)} processes of the cancelled run are still running"
