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

from .helpers.session_attacks import HONEST, plant_for_the_next_run
from .helpers.spares import serves

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


async def test_a_fifo_at_the_next_runs_log_never_blocks_the_server(ml_project: Path, agent_for) -> None:
    """README ("its own files: never opened ... in a way that can block (a FIFO there is replaced)"). A run that is
    not confined plants a FIFO where the next run's log will be (`.autoresearch/runs/<tag>/r3.log`, the ids are
    sequential). The log made before the run's thread starts is opened with the session's lock held: opened for
    writing, the FIFO would hold it (and every call) until something read it. It is replaced instead."""
    async with agent_for(ml_project, {"isolation": "off"}) as agent:
        code = "import os\nos.mkfifo('.autoresearch/runs/evil/r3.log')"
        await plant_for_the_next_run(agent, code, "plants a FIFO at the next run's log")
        fifo = ml_project / ".autoresearch/runs/evil/r3.log"
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still there when the next run starts
        await agent.ok("apply_edit", content=f"{HONEST}\nprint(f'val_bpb: {{abs(LR - 0.1) + 1:.6f}}')\n")
        unblocker = _Unblocker(fifo, 15.0)
        try:
            run = await agent.ok("run_experiment", description="honest", wait_s=0)
        finally:
            unblocker.close()
        assert not unblocker.needed, "run_experiment waited on the FIFO until something read it"
        assert stat.S_ISREG(os.lstat(fifo).st_mode)  # replaced by the log itself
        assert run["status"] in ("running", "ok", "crash"), run
        await agent.until_done(run["run_id"])


async def test_a_fifo_at_the_runs_log_never_holds_the_run_past_its_timeout(
    ml_project: Path, agent_for
) -> None:
    """The run's own half of the same plant: opened as the run's log (O_RDWR never blocks), a FIFO took the
    run's output until its 64 KiB were full, then held the supervising thread in `RunLog.write`, past its
    deadline and any cancel (a 5 s timeout, a run that prints 300 KB: still "running" 30 s later). The run
    replaces it with a file of its own."""
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
            while run["status"] == "running" and time.monotonic() - begun < 120:  # the limit ends a hung test
                run = await agent.ok("wait_experiment", run_id=run["run_id"], wait_s=2)
            assert run["status"] != "running", (
                "the run outlived its 5 s timeout by minutes: the FIFO holds it"
            )
            assert stat.S_ISREG(os.lstat(fifo).st_mode) and b"y" * 100 in fifo.read_bytes()  # its own log
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


async def test_with_repeats_the_log_made_ahead_is_one_a_run_writes(ml_project: Path, agent_for) -> None:
    """`Experiment.run` names the first log `<run>.log` only when `repeats` is 1 (else `<run>-1.log`, ...): the
    log made ahead of the thread is the one the first run writes, never an empty `<run>.log` that a running
    reply given before the thread started (`wait_s=0`) would name for `tail -f`."""
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


def test_a_launcher_started_past_a_thousand_files_serves_its_runs(tmp_path: Path) -> None:
    """The launcher is handed its end of the socket pair under the server's number (`pass_fds` keeps it): past
    1023, out of range for `select`, which raised before the first request (every run then started a launcher
    that died, and its keeper directly). It serves a command through that socket, and stays."""
    fillers = _fill_descriptors(1100)
    launcher = None
    try:
        launcher = Launcher()
        serves(launcher, tmp_path)
        assert launcher.process.poll() is None and launcher.alive, "the launcher died"
    finally:
        if launcher is not None:
            launcher.sock.close()
            try:
                launcher.process.wait(15)
            except Exception:
                launcher.process.kill()
        for fd in fillers:
            os.close(fd)
