"""Review 40: a run's first command started ahead (`Experiment.start_ahead`), held before its exec while the server
records the run, attacked from the agent's and the measurement's side through the real MCP client: what the
candidate's judged run and its re-measurement after a keep can tell apart, a waiter during a start that fails,
the server killed right after the start ahead or with the run recorded and still held, and what many runs in a
row (refused starts among them) leave in the server. Real git repositories, real servers, real keepers."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import threading
from pathlib import Path

import anyio
import psutil
import pytest
from mcp import Client, StdioServerParameters

from mcp_autoresearch.adapters.server import create_server
from mcp_autoresearch.records.state import load_state
from mcp_autoresearch.sandbox import launcher
from mcp_autoresearch.sandbox.policy import probe_isolation
from mcp_autoresearch.session.workspace import Workspace
from mcp_autoresearch.vcs import ref_files

from .conftest import Agent, error_text, git, make_repo, served_here, stdio_params, structured
from .helpers.needs import require
from .helpers.spares import is_spare

pytestmark = pytest.mark.anyio

ISOLATION = probe_isolation("auto")
require(ISOLATION.confined, "CI must confine runs", f"Landlock is unavailable here: {ISOLATION.reason}")

KILL_HELPER = Path(__file__).parent / "helpers" / "kill_at"
RUN = 'run_command = \'. ./params.sh; echo "score: $K"; echo "ran-$K"\'\nmetric_name = "score"\n'


def _project(tmp_path: Path, extra: str = "", files: dict[str, str] | None = None) -> Path:
    return make_repo(
        tmp_path / "proj",
        {
            "params.sh": "K=1000\n",
            "autoresearch.toml": 'target_file = "params.sh"\nmetric_direction = "lower_is_better"\n'
            + RUN
            + extra,
            **(files or {}),
        },
    )


def _logs_showing(root: Path, text: str) -> list[str]:
    logs = root / ".autoresearch" / "runs"
    return [
        str(log) for log in logs.rglob("*.log") if log.is_file() and text in log.read_text(errors="replace")
    ]


# --- 1. A waiter while a start fails --------------------------------------------------------------------------


async def test_a_wait_during_a_start_that_fails_is_not_left_on_a_run_that_never_existed(
    tmp_path: Path,
) -> None:
    """The agent starts a run and, from a second call, waits for "the run in flight". The candidate's commit
    waits on a ref lock another git command holds (the server waits up to LOCK_WAIT_S, then refuses): the
    start fails. The waiter must be told the truth (nothing is in flight, or the start failed), never an error
    about run r2, an id that no run got (the next run is r3)."""
    root = _project(tmp_path)
    workspace = Workspace(root, None)
    async with Client(create_server(workspace)) as client:
        agent = Agent(client)
        await agent.ok("start_session", tag="w")
        await agent.experiment("baseline")
        await agent.edit("K=1000", "K=999")
        lock = root / ".git" / "refs" / "heads" / "autoresearch" / "w.lock"
        lock.write_text("")  # newer than the server: another git command's, waited for, then refused
        answers: dict[str, object] = {}

        async def start() -> None:
            answers["start"] = await client.call_tool("run_experiment", {"description": "K=999"})

        with anyio.fail_after(120):  # a guard against a hang only
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(start)
                started_log = root / ".autoresearch" / "runs" / "w" / "r2.log"
                while not started_log.exists():  # the start is under way: its command started ahead
                    await anyio.sleep(0.005)
                waited = await client.call_tool("wait_experiment", {"wait_s": 10})
        started = answers["start"]
        assert started.is_error and "w.lock" in started.content[0].text  # type: ignore[attr-defined]
        lock.unlink()
        text = error_text(waited) if waited.is_error else json.dumps(structured(waited))
        assert "no run with id" not in text, text
        run, decision = await agent.experiment("K=999")
        assert run["status"] == "ok" and run["value"] == 999.0 and decision["decision"] == "keep", run


# --- 2. The judged run, started ahead, and its re-measurement: the same view ------------------------------------

PROBE = """\
import json, os
mounts = sorted(line.split()[4] for line in open("/proc/self/mountinfo"))
fds = sorted(os.listdir("/proc/self/fd"))
env = sorted(k for k in os.environ if k != "AUTORESEARCH_SEED")
print("PROBE " + json.dumps({"mounts": mounts, "fds": fds, "env": env, "ls": sorted(os.listdir("."))}))
"""


async def test_a_judged_run_started_ahead_sees_what_its_remeasurement_sees(tmp_path: Path, agent_for) -> None:
    """The judged run's view, keeper and Landlock are made before its commit and records; its re-measurement
    after the keep is started as every other run is. What the candidate can look at (its mounts, its open
    files, its environment's names, the project's listing) is the same in both: nothing tells it which run is
    the re-measurement."""
    root = _project(tmp_path, files={"probe.py": PROBE})
    toml = root / "autoresearch.toml"
    toml.write_text(toml.read_text().replace("'. ./params.sh;", "'. ./params.sh; python3 probe.py;"))
    git(root, "commit", "-qam", "probe")
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="v")
        await agent.experiment("baseline")
        await agent.edit("K=1000", "K=900")
        run, decision = await agent.experiment("K=900")
        assert decision["decision"] == "keep" and decision["remeasured"] == [900.0], decision
    seen = {}
    for name in (f"{run['run_id']}.log", f"{run['run_id']}-2.log"):
        log = root / ".autoresearch" / "runs" / "v" / name
        line = next(x for x in log.read_text().splitlines() if x.startswith("PROBE "))
        probe = json.loads(line.removeprefix("PROBE "))
        probe["mounts"] = [m for m in probe["mounts"] if "autoresearch-run-" not in m]  # its own TMPDIR
        seen[name] = probe
    judged, remeasured = seen.values()
    assert judged == remeasured


# --- 3. The server killed right after the start ahead, or with the run recorded and still held --------------


def _killing(root: Path, armed: Path, at: str) -> StdioServerParameters:
    params = stdio_params(root)
    assert params.env is not None
    params.env.update(PYTHONPATH=str(KILL_HELPER), AR_KILL_AT=at, AR_KILL_ARMED=str(armed), AR_KILL_MATCH="")
    return params


KILLS = [
    pytest.param(
        "mcp_autoresearch.lifecycle.experiment:Experiment.start_ahead:after", [], id="started-ahead"
    ),
    pytest.param(
        "mcp_autoresearch.lifecycle.running:Runs._start_thread:before", ["crash"], id="recorded-held"
    ),
]


@pytest.mark.parametrize(("at", "logged"), KILLS)
async def test_a_server_killed_during_a_held_start_runs_nothing_and_resumes_true(
    tmp_path: Path, at: str, logged: list[str]
) -> None:
    """SIGKILL of the real server right after the run's command was started ahead (nothing recorded yet), or
    once the record says "running" with the command still held at its gate. The held command never runs; a new
    server resumes: the run undone (its edit kept, the branch on the best) or logged as interrupted, every run
    logged once, and the next run measures the edit."""
    root, armed = _project(tmp_path), tmp_path / "armed"
    baseline = ""
    with anyio.fail_after(600):  # a guard against a hang only
        with contextlib.suppress(BaseException):  # the server dies under the call
            async with Client(_killing(root, armed, at)) as client:
                agent = Agent(client)
                await agent.ok("start_session", tag="k")
                await agent.experiment("baseline")
                baseline = git(root, "rev-parse", "autoresearch/k").strip()
                await agent.edit("K=1000", "K=999")
                armed.touch()
                await agent.ok("run_experiment", description="K=999")
        assert baseline and not armed.exists(), f"the server never reached {at}"
        async with served_here(root) as agent:  # the next server: what it finds on disk is the subject
            resumed = await agent.ok("start_session", tag="k")
            assert resumed["resumed"] is True, resumed
            state = load_state(root, "k")
            assert state is not None
            assert not [p for p in state.inflight if p.phase != "finished"], state.inflight
            assert _logs_showing(root, "ran-999") == [], "the command held at its gate ran"
            rows = [line.split("\t")[3] for line in (root / "results.tsv").read_text().splitlines()[1:]]
            assert rows == ["keep", *logged], rows
            assert git(root, "rev-parse", "autoresearch/k").strip() == baseline
            if not logged:  # undone: the edit is still the agent's, uncommitted
                assert (root / "params.sh").read_text() == "K=999\n"
            else:
                await agent.edit("K=1000", "K=999")
            run, decision = await agent.experiment("K=999 again")
            assert run["value"] == 999.0 and decision["decision"] == "keep", (run, decision)
        ran = [Path(log).name for log in _logs_showing(root, "ran-999")]
        assert ran and all(name.split(".")[0].split("-")[0] == run["run_id"] for name in ran), ran


# --- 4. Many runs in a row, refused starts among them: nothing left behind --------------------------------------


def _held_by_server(others: set[int]) -> tuple[int, list[str], list[str]]:
    """What this process holds for the server: its descriptors, its processes, its run TMPDIRs. Not counted: the
    trees of `others`, the children this process had before the session that are not the server's (an earlier
    test's Chromium, whose processes come and go), and the launcher's spare keepers with their standby processes
    (made again when the launcher is idle, so as many or fewer at any moment)."""
    kids = []
    for child in psutil.Process().children():
        if child.pid in others:
            continue
        with contextlib.suppress(psutil.Error):
            for proc in [child, *child.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    if not is_spare(proc) and not is_spare(psutil.Process(proc.ppid())):
                        kids.append(f"{proc.pid}:{proc.name()}")
    # The run TMPDIRs this process's server made (each is named for the process: other test workers make theirs)
    own = sorted(path for path in glob.glob("/tmp/autoresearch-run-*") if f"-{os.getpid()}-" in path)
    return len(os.listdir("/proc/self/fd")), kids, own


async def test_many_runs_and_refused_starts_leave_no_fd_process_or_tmpdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs in a row (a keep with its re-measurement, a discard, a start refused after its command was started
    ahead, content measured before): once the loop is warm, the server holds no more descriptors, processes
    (the launcher and its spare keepers excepted: as many as before) or run TMPDIRs after each round than after
    the first."""
    monkeypatch.setattr(ref_files, "LOCK_WAIT_S", 0.3)  # the lock is refused sooner: it stays meanwhile
    root = _project(tmp_path)
    workspace = Workspace(root, None)
    ours = launcher.running_pid()  # the server's launcher, where an earlier test started it
    others = {child.pid for child in psutil.Process().children() if child.pid != ours}
    async with Client(create_server(workspace)) as client:
        agent = Agent(client)
        await agent.ok("start_session", tag="m")
        await agent.experiment("baseline")
        lock = root / ".git" / "refs" / "heads" / "autoresearch" / "m.lock"
        rounds = []
        best = 1000
        for _ in range(3):
            await agent.edit(f"K={best}", f"K={best + 7}")
            _run, decision = await agent.experiment("worse")
            assert decision["decision"] == "discard", decision
            await agent.edit(f"K={best}", f"K={best - 1}")
            lock.write_text("")
            assert "m.lock" in await agent.refused("run_experiment", description="locked")
            lock.unlink()
            _run, decision = await agent.experiment("better")
            assert decision["decision"] == "keep", decision
            best -= 1
            await agent.edit(f"K={best}", f"K={best + 8}")  # this round's discarded content, measured before
            again = await agent.ok("run_experiment", description="the same")  # nothing runs
            assert again.get("already_measured") is True, again
            await agent.edit(f"K={best + 8}", f"K={best}")
            fds, kids, tmpdirs = _held_by_server(others)
            rounds.append((fds, kids, tmpdirs, threading.active_count()))
        assert rounds[-1][0] <= rounds[0][0], rounds
        assert len(rounds[-1][1]) <= len(rounds[0][1]), rounds
        assert rounds[-1][2] == [] and rounds[-1][3] <= rounds[0][3], rounds
