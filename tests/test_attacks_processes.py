"""Attacks on the processes of a run: daemons left behind, runs that stop themselves or hang, fork storms,
leftovers in TMPDIR. At the end of a run (or its timeout) nothing of it is left running or on disk, and
nothing can touch the next run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from .conftest import HANG_TIMEOUT_S, git
from .helpers.attacks import BOTH, NEEDS_LANDLOCK, _log_text, attack

pytestmark = pytest.mark.anyio


def _descendants_running(word: str) -> list[psutil.Process]:
    """Live (not zombie) descendants of this process whose command line contains `word`."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and word in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@NEEDS_LANDLOCK
async def test_links_planted_in_tmpdir_and_a_deep_tree_are_removed_safely(
    ml_project: Path, agent_for, tmp_path
):
    """The server removes the run's TMPDIR: links to the project and to a file outside must be unlinked, not
    followed; a very deep tree must not make the server fail or leave the directory behind."""
    root = ml_project
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("the user's file\n")
    code = f"""
    import os
    tmp = os.environ['TMPDIR']
    print('TMP', tmp)
    os.symlink({str(root)!r}, os.path.join(tmp, 'project'))
    os.symlink({str(outside)!r}, os.path.join(tmp, 'outside'))
    os.symlink({str(outside / "keep.txt")!r}, os.path.join(tmp, 'keep.txt'))
    os.chdir(tmp)
    for _ in range(3000):
        os.mkdir('d'); os.chdir('d')
    """
    async with agent_for(root) as agent:
        run, decision = await attack(agent, code)
    assert run["status"] == "ok" and decision["decision"] == "keep", (run, decision)
    tmp = _log_text(run).split("TMP ")[1].split()[0]
    assert not os.path.lexists(tmp)
    assert (outside / "keep.txt").read_text() == "the user's file\n"
    assert (root / "prepare.py").exists() and (root / "my_notes.txt").exists()


# (c) liveness: stopping itself, a fork storm, a flood of output
@NEEDS_LANDLOCK
async def test_a_run_that_stops_itself_times_out_and_leaves_nothing(ml_project: Path, agent_for):
    code = """
    import os, signal, subprocess
    subprocess.Popen(['sh', '-c', 'kill -STOP $$; sleep 1000'], start_new_session=True)
    os.kill(os.getppid(), signal.SIGSTOP)  # the shell that runs the command
    os.kill(os.getpid(), signal.SIGSTOP)
    """
    began = time.monotonic()
    async with agent_for(ml_project, {"timeout": HANG_TIMEOUT_S}) as agent:
        run, decision = await attack(agent, code)
    assert run["status"] == "timeout" and decision["decision"] == "crash", run
    assert time.monotonic() - began < 500  # ended at its timeout, not by its own end (sleep 1000)
    assert _descendants_running("sleep 1000") == []


@NEEDS_LANDLOCK
async def test_a_fork_storm_is_ended_at_the_timeout(ml_project: Path, agent_for):
    """A bounded fork storm (every process re-forks when a child dies, each in a new session) is ended at the
    timeout; the server answers and nothing is left."""
    code = """
    import os, time
    tag = 'review-storm'
    def worker(depth):
        kids = 0
        while True:
            try:
                if kids < 3 and depth < 5 and os.fork() == 0:
                    os.setsid()
                    depth += 1; kids = 0
                    continue
                kids += 1
            except OSError:
                pass
            try:
                os.waitpid(-1, os.WNOHANG) and None
            except ChildProcessError:
                pass
            time.sleep(0.01)
    worker(0)
    """
    async with agent_for(ml_project, {"timeout": HANG_TIMEOUT_S}) as agent:
        run, decision = await attack(agent, code)
    assert run["status"] == "timeout", run
    time.sleep(0.5)
    assert _descendants_running("train.py") == []


def _sleepers(seconds: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["cmdline"] == ["sleep", seconds] and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def _unique_seconds() -> str:
    return str(20_000 + (os.getpid() * 13 + int(time.monotonic() * 1000)) % 70_000)


@BOTH
async def test_a_daemon_left_by_one_run_cannot_touch_the_next(
    ml_project: Path, agent_for, isolation: str
) -> None:
    """Run 2 leaves a daemon (new session, empty environment) that would rewrite the evaluator a moment later,
    while run 3 runs: it is killed when run 2's command ends."""
    root = ml_project
    evaluator = (root / "prepare.py").read_bytes()
    async with agent_for(root, {"isolation": isolation}) as agent:
        await agent.ok("start_session")
        await agent.experiment("baseline")
        daemon = (
            "import subprocess\n"
            "subprocess.Popen(['setsid', 'sh', '-c', 'exec env -i sh -c \"sleep 1; echo cheat > prepare.py\"'],"
            " start_new_session=True)\n"
        )
        await agent.edit("LR = 0.5", "LR = 0.4\n" + daemon)
        run, decision = await agent.experiment("leaves a daemon")
        assert run["status"] == "ok" and decision["decision"] == "keep", (run, decision)
        honest = (root / "train.py").read_text().replace(daemon, "import time; time.sleep(2)\n")
        await agent.ok("apply_edit", content=honest.replace("LR = 0.4", "LR = 0.3"))
        run, decision = await agent.experiment("an honest, slower run")
        assert run["status"] == "ok", run
    time.sleep(1.2)
    assert (root / "prepare.py").read_bytes() == evaluator


@BOTH
async def test_a_timed_out_run_and_its_hidden_daemon_leave_nothing(
    ml_project: Path, agent_for, isolation: str
) -> None:
    seconds = _unique_seconds()
    async with agent_for(root := ml_project, {"isolation": isolation, "timeout": HANG_TIMEOUT_S}) as agent:
        await agent.ok("start_session")
        await agent.experiment("baseline")
        hang = (
            "import subprocess, time\n"
            f"subprocess.Popen(['setsid', 'sh', '-c', 'exec env -i sleep {seconds}'], start_new_session=True)\n"
            "time.sleep(600)\n"
        )
        await agent.edit("LR = 0.5", "LR = 0.4\n" + hang)
        run, decision = await agent.experiment("hangs")
        assert run["status"] == "timeout" and decision["decision"] == "crash"
    assert _sleepers(seconds) == []
    assert git(root, "status", "--porcelain", "--untracked-files=no") == ""
