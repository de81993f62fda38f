"""Review 35: the live log made before the run's thread starts, `poll` instead of `select` for a run's pipes and
process handles, and the launcher's answer to a fork it cannot make. Real servers, real clients, real runs, real
subprocesses."""

from __future__ import annotations

import os
import resource
import stat
import threading
import time
from pathlib import Path

import pytest

from mcp_autoresearch.sandbox.launcher import Launcher

from .helpers.session_attacks import HONEST, attack

pytestmark = pytest.mark.anyio


class _Unblocker:
    """After `after_s`, opens `fifo` for reading (and closes it): a writer blocked opening it goes on. Whether it
    had to (a writer was waiting) is `needed`."""

    def __init__(self, fifo: Path, after_s: float) -> None:
        self.fifo, self.after_s = fifo, after_s
        self.needed = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        if self.stop.wait(self.after_s):
            return
        try:
            if stat.S_ISFIFO(os.lstat(self.fifo).st_mode):
                self.needed = True
                fd = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)
                time.sleep(0.5)
                os.close(fd)
        except OSError:
            pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


# --- 1. The live log made before the run's thread starts (ActiveRun.create_live_log) ---------------------------


@pytest.mark.xfail(
    strict=True,
    reason="create_live_log opens the log O_WRONLY without O_NONBLOCK under the session's lock: a FIFO planted "
    "at the next run's log path blocks run_experiment, and the whole session, until something reads it",
)
async def test_a_fifo_at_the_next_runs_log_never_blocks_the_server(ml_project: Path, agent_for) -> None:
    """README ("its own files: never opened ... in a way that can block (a FIFO there is replaced)"). A run that is
    not confined plants a FIFO where the next run's log will be (`.autoresearch/runs/<tag>/r3.log`, the ids are
    sequential). Before this change the run opened its log O_RDWR (which never blocks on a FIFO); the live log is
    now opened O_WRONLY first, with the session's lock held: the next run_experiment never answers."""
    async with agent_for(ml_project, {"isolation": "off"}) as agent:
        await agent.ok("start_session", tag="evil")
        _, base = await agent.experiment("baseline")
        assert base["decision"] == "keep"
        code = "import os\nos.mkfifo('.autoresearch/runs/evil/r3.log')"
        await agent.edit("LR = 0.5", attack(code))
        await agent.experiment("plants a FIFO at the next run's log")
        fifo = ml_project / ".autoresearch/runs/evil/r3.log"
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still there when the next run starts
        await agent.ok("apply_edit", content=f"{HONEST}\nprint(f'val_bpb: {{abs(LR - 0.1) + 1:.6f}}')\n")
        unblocker = _Unblocker(fifo, 15.0)
        try:
            begun = time.monotonic()
            run = await agent.ok("run_experiment", description="honest", wait_s=0)
            took = time.monotonic() - begun
        finally:
            unblocker.close()
        assert not unblocker.needed and took < 10, f"run_experiment blocked {took:.1f} s on the FIFO"
        assert run["status"] in ("running", "ok", "crash"), run
        await agent.until_done(run["run_id"])


@pytest.mark.xfail(
    strict=True,
    reason="a FIFO at a run's log path is opened O_RDWR by ProcessRun.run (not replaced): the log's writes block "
    "once 64 KiB are in it, in the thread that enforces the timeout, so the run outlives its timeout (and any "
    "cancel) until something reads the FIFO (before this session's change too)",
)
async def test_a_fifo_at_the_runs_log_never_holds_the_run_past_its_timeout(ml_project: Path, agent_for) -> None:
    """The run's own half of the same plant: whatever the live log's creation does, the run then opens the FIFO as
    its log (O_RDWR never blocks) and the capture writes the run's output into it: past the FIFO's 64 KiB, the
    supervising thread blocks in `RunLog.write` and never reaches its deadline. A 5 s timeout, a run that prints
    300 KB: it is still "running" 30 s later."""
    async with agent_for(ml_project, {"isolation": "off", "timeout": 5}) as agent:
        await agent.ok("start_session", tag="evil")
        _, base = await agent.experiment("baseline")
        assert base["decision"] == "keep"
        fifo = ml_project / ".autoresearch/runs/evil/r2.log"
        os.mkfifo(fifo)  # what an unconfined run does (the test above): planted for the next run
        loud = "for _ in range(3000): print('y' * 100)\nprint(f'val_bpb: {abs(LR - 0.1) + 1:.6f}')\n"
        await agent.ok("apply_edit", content=f"{HONEST}\n{loud}")
        unblocker = _Unblocker(fifo, 1.0)  # lets the live log's open (finding above) through, reads nothing
        drained = threading.Event()
        try:
            run = await agent.ok("run_experiment", description="loud", wait_s=0)
            unblocker.close()
            begun = time.monotonic()
            while run["status"] == "running" and time.monotonic() - begun < 30:
                run = await agent.ok("wait_experiment", run_id=run["run_id"], wait_s=2)
            assert run["status"] != "running", "the run is still running 30 s into its 5 s timeout"
        finally:
            unblocker.close()
            threading.Thread(target=_drain, args=(fifo, drained), daemon=True).start()
            drained.wait(20)
            await agent.until_done(run["run_id"])


def _drain(fifo: Path, done: threading.Event) -> None:
    """Read whatever a FIFO holds for a few seconds (a run blocked writing it goes on)."""
    try:
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        done.set()
        return
    try:
        for _ in range(50):
            try:
                os.read(fd, 1 << 20)
            except BlockingIOError:
                pass
            time.sleep(0.1)
    finally:
        os.close(fd)
        done.set()


@pytest.mark.xfail(
    strict=True,
    reason="create_live_log makes <run>.log, but with repeats the runs write <run>-1.log, <run>-2.log: an empty "
    "<run>.log that no run writes is left for every experiment, and a running reply may name it",
)
async def test_with_repeats_the_log_made_ahead_is_one_a_run_writes(ml_project: Path, agent_for) -> None:
    """`Experiment.run` names the first log `<run>.log` only when `repeats` is 1. The log made ahead of the
    thread is always `<run>.log`: with repeats it stays empty for good, and a running reply given before the
    thread opened `<run>-1.log` (`wait_s=0`; one in five here) names that empty file for `tail -f`."""
    async with agent_for(ml_project, {"repeats": 2}) as agent:
        await agent.ok("start_session", tag="rep")
        run = await agent.ok("run_experiment", description="baseline", wait_s=0)
        await agent.until_done(run["run_id"])
        logs = ml_project / ".autoresearch/runs/rep"
        written = {path.name: path.stat().st_size for path in logs.glob("r1*.log")}
        assert {"r1-1.log", "r1-2.log"} <= set(written), written
        assert all(size > 0 for size in written.values()), f"a log no run wrote: {written}"


# --- 2. poll, not select (sandbox/readiness.py) ----------------------------------------------------------------


def _fill_descriptors(upto: int) -> list[int]:
    """Every descriptor number below `upto` taken (what is opened next gets a number past it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < upto + 200:
        pytest.skip("this machine allows too few open files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, upto + 200), hard))
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    fillers = [null]
    while fillers[-1] < upto:
        fillers.append(os.dup(null))
    return fillers


@pytest.mark.xfail(
    strict=True,
    reason="forkserver.serve still select()s on the socket it inherits with the server's number for it: a "
    "launcher started by a server holding over 1023 files dies at once (ValueError), and every run then starts a "
    "new launcher that dies and falls back to starting its keeper directly",
)
def test_a_launcher_started_past_a_thousand_files_serves_its_runs(tmp_path: Path) -> None:
    """The change made the server's own waits work for any descriptor number, but the launcher is handed its end
    of the socket pair under the server's number (`pass_fds` keeps it): past 1023 it is out of range for the
    launcher's `select`, which raises before the first request."""
    fillers = _fill_descriptors(1100)
    launcher = None
    try:
        launcher = Launcher()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and launcher.process.poll() is None:
            time.sleep(0.1)  # a launcher that works stays; the broken one is gone within a second
        assert launcher.process.poll() is None and launcher.alive, "the launcher died at its start"
    finally:
        if launcher is not None:
            launcher.sock.close()
            try:
                launcher.process.wait(15)
            except Exception:
                launcher.process.kill()
        for fd in fillers:
            os.close(fd)
