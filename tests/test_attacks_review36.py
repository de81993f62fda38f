"""Review 36: a run's logs opened through `records.atomic.open_own` (a link, a FIFO, a folder at the log's name),
the live log made ahead (`Experiment.next_log`), and the launcher's `poll` (the mount table watched). Real
servers, real clients, real runs, real processes, real files."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from mcp_autoresearch.records.atomic import cut_torn_line, open_own, write_at
from mcp_autoresearch.sandbox.launcher import Launcher

from .conftest import make_repo
from .helpers.session_attacks import HONEST, plant_for_the_next_run
from .helpers.spares import processes_with, serves

pytestmark = pytest.mark.anyio

HONEST_RUN = f"{HONEST}\nprint(f'val_bpb: {{abs(LR - 0.1) + 1:.6f}}')\n"


# --- 1. A hard link at the next run's log: O_TRUNC through it --------------------------------------------------


async def test_a_hard_link_at_the_next_runs_log_never_carries_the_servers_write_into_a_users_file(
    ml_project: Path, agent_for
) -> None:
    """An unconfined run links the user's untracked `my_notes.txt` at the next run's log name (ids are
    sequential). Its own checks find nothing changed (the notes are as they were), it is kept. Opened with
    O_TRUNC, the next, honest run's log emptied the user's notes and took that run's output. A log is a file
    with one name: a symlink, a FIFO, a socket or a file with another name there is replaced."""
    notes = ml_project / "my_notes.txt"
    kept = notes.read_bytes()
    async with agent_for(ml_project, {"isolation": "off"}) as agent:
        code = (
            "import os\ntry:\n    os.link('my_notes.txt', '.autoresearch/runs/evil/r3.log')\n"
            "except FileExistsError:\n    pass"
        )
        planted = await plant_for_the_next_run(agent, code, "plants a hard link at the next run's log")
        assert planted["status"] == "ok", planted  # nothing of the user's changed yet: nothing to see
        await agent.ok("apply_edit", content=HONEST_RUN)
        honest, _ = await agent.experiment("honest")
        assert honest["run_id"] == "r3"
        assert notes.read_bytes() == kept, f"the user's notes now hold {notes.read_bytes()[:80]!r}"


async def test_a_hard_link_to_the_evaluator_at_the_next_log_never_makes_an_honest_run_tampered(
    ml_project: Path, agent_for
) -> None:
    """The same plant aimed at a tracked, read-only file (`prepare.py`, the evaluation): the planting run
    changes no byte of it and is kept; the next run, honest, had its log (the evaluator's inode) truncated and
    written by the server, so its after-run check found `prepare.py` changed and discarded it as `tampered`:
    the blame on the wrong run. The link is replaced; the honest run is measured."""
    async with agent_for(ml_project, {"isolation": "off"}) as agent:
        code = (
            "import os\ntry:\n    os.link('prepare.py', '.autoresearch/runs/evil/r3.log')\n"
            "except FileExistsError:\n    pass"
        )
        planted = await plant_for_the_next_run(agent, code, "plants a hard link to the evaluator")
        assert planted["status"] == "ok", planted
        await agent.ok("apply_edit", content=HONEST_RUN)
        honest, _ = await agent.experiment("honest")
        assert honest["status"] == "ok", f"the honest run was judged {honest['status']}: {honest['error']}"


# --- 2. A log opened after its process started ---------------------------------------------------------------

SLOW_SCORER = """\
import os, sys, time
if os.path.exists("slow"):
    time.sleep(25)
print(f"score: {float(open(sys.argv[1]).read().split()[0]):.6f}")
"""
EVAL_CONFIG = """\
target_file = "objective.py"
run_command = "python3 objective.py > out/answer.txt"
metric_name = "score"
metric_direction = "lower"
readonly_files = ["scorer.py"]
writable = ["out"]
keep_rule = "greedy"
timeout = 60
eval_timeout = 60
"""


@pytest.mark.parametrize("isolation", ["off", "auto"])
async def test_an_evaluation_whose_stderr_log_cannot_be_made_is_not_left_running(
    tmp_path: Path, agent_for, isolation: str
) -> None:
    """`open_own` refuses a folder at a log's name (and gives up after 3 replacements, or on a full disk). The
    evaluation stage's and metric_parse's `.stderr.log` was opened after the command started: failing, it left
    `run()` with the evaluation still going (no timeout, no kill, no keeper watching it) beside the next runs.
    Both logs are made before anything starts: the run fails to start, naming the log, and nothing is left."""
    token = uuid.uuid4().hex
    root = make_repo(
        tmp_path / "proj",
        {
            "objective.py": "X = 5\nprint(X)\n",
            "scorer.py": SLOW_SCORER,
            "autoresearch.toml": EVAL_CONFIG
            + f'eval_command = "python3 scorer.py out/answer.txt {token}"\nisolation = "{isolation}"\n',
            ".gitignore": "out/\nslow\n.autoresearch/\nrun.log\nresults.tsv\n",
        },
    )
    (root / "out").mkdir()
    left: list[psutil.Process] = []
    try:
        async with agent_for(root) as agent:
            await agent.ok("start_session", tag="t")
            _, base = await agent.experiment("baseline")
            assert base["decision"] == "keep", base
            (root / "slow").write_text("")
            (root / ".autoresearch/runs/t/r2-eval.stderr.log").mkdir()
            await agent.edit("X = 5\n", "X = 4\n")
            run, _ = await agent.experiment("scored while its stderr log is a folder")
            assert run["status"] != "running"
            assert "r2-eval.stderr.log" in (run.get("error") or ""), run
            time.sleep(1.0)
            left = processes_with(token)
            assert not left, (
                f"the run ended {run['status']} ({run['error']}) with its evaluation still running: "
                f"{[proc.pid for proc in left]}"
            )
    finally:
        for proc in left or processes_with(token):
            try:
                proc.kill()
            except psutil.Error:
                pass


# --- 3. open_own, what held -----------------------------------------------------------------------------------


def test_open_own_replaces_a_fifo_held_open_by_a_reader_without_blocking(tmp_path: Path) -> None:
    """A FIFO at the log's name with a reader holding it (so O_WRONLY|O_NONBLOCK opens it, no ENXIO): the fstat
    sees it, the name is removed on the next try, and the log is a regular file of its own; the reader gets
    nothing."""
    log = tmp_path / "r1.log"
    os.mkfifo(log)
    reader = os.open(log, os.O_RDONLY | os.O_NONBLOCK)
    try:
        done: list[int] = []
        thread = threading.Thread(target=lambda: done.append(open_own(log, os.O_WRONLY)), daemon=True)
        thread.start()
        thread.join(5)
        assert done, "open_own blocked on a FIFO with a reader"
        os.write(done[0], b"out\n")
        os.close(done[0])
        assert stat.S_ISREG(os.lstat(log).st_mode) and log.read_bytes() == b"out\n"
        assert os.read(reader, 10) == b""  # no writer left, nothing written: the FIFO got none of the log
    finally:
        os.close(reader)


def test_open_own_replaces_a_symlink_and_a_socket_never_writing_through(tmp_path: Path) -> None:
    """A symlink to a file of the user's, and a listening unix socket, at a log's name: each name is replaced by
    a file of the server's; the user's file keeps its bytes, the socket's listener gets no connection."""
    users = tmp_path / "users.txt"
    users.write_bytes(b"precious\n")
    link = tmp_path / "r1.log"
    link.symlink_to(users)
    fd = open_own(link, os.O_RDWR | os.O_TRUNC)
    os.write(fd, b"log\n")
    os.close(fd)
    assert users.read_bytes() == b"precious\n" and not link.is_symlink() and link.read_bytes() == b"log\n"

    where = tmp_path / "r2.log"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(where))
    listener.listen(1)
    listener.setblocking(False)
    try:
        fd = open_own(where, os.O_RDWR | os.O_TRUNC)
        os.close(fd)
        assert stat.S_ISREG(os.lstat(where).st_mode)
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


def test_open_own_refuses_a_folder_and_leaves_what_it_holds(tmp_path: Path) -> None:
    folder = tmp_path / "r1.log"
    folder.mkdir()
    (folder / "kept").write_text("x")
    with pytest.raises(IsADirectoryError):
        open_own(folder, os.O_RDWR | os.O_TRUNC)
    assert (folder / "kept").read_text() == "x"


async def test_with_repeats_and_a_keep_every_log_is_written_and_the_live_log_is_the_newest(
    ml_project: Path, agent_for
) -> None:
    """`next_log` across calls of `run`: the second run's logs follow the first's (`r2-1`, `r2-2`), the
    re-measurements after the keep take later indexes (`r2-best-*`), and no log made ahead stays empty."""
    async with agent_for(ml_project, {"repeats": 2, "keep_rule": "greedy"}) as agent:
        await agent.ok("start_session", tag="rep")
        await agent.experiment("baseline")
        await agent.ok("apply_edit", content=HONEST_RUN)
        run = await agent.ok("run_experiment", description="honest", wait_s=0)
        done = await agent.until_done(run["run_id"])
        assert done["status"] == "ok", done
        logs = ml_project / ".autoresearch/runs/rep"
        written = {path.name: path.stat().st_size for path in logs.glob("r2*.log")}
        assert {"r2-1.log", "r2-2.log"} <= set(written), written
        assert "r2.log" not in written, written
        assert all(size > 0 for size in written.values()), f"a log no run wrote: {written}"


# --- 4. The launcher's poll: the mount table ----------------------------------------------------------------


def test_a_mount_change_remakes_the_spares_once_and_the_launcher_stays_idle_and_serving(
    tmp_path: Path,
) -> None:
    """POLLPRI on /proc/self/mountinfo is reported once per change (the kernel marks it seen at the poll): a
    mount and an unmount each replace the spares, the launcher does not spin on the event, and it still serves
    a command and leaves at the end of its socket."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    launcher = Launcher()
    proc = psutil.Process(launcher.process.pid)
    try:
        time.sleep(2.0)  # the spares are made
        before = {child.pid for child in proc.children()}
        cpu = sum(proc.cpu_times()[:2])
        point = tmp_path / "m"
        point.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(point)], capture_output=True).returncode:
            pytest.skip("mount -t tmpfs failed")
        try:
            time.sleep(2.0)
            mounted = {child.pid for child in proc.children()}
        finally:
            subprocess.run(["umount", "-l", str(point)], capture_output=True)
        time.sleep(3.0)
        after = {child.pid for child in proc.children()}
        spent = sum(proc.cpu_times()[:2]) - cpu
        assert spent < 1.0, f"the launcher spent {spent:.2f} s of CPU in 5 s after a mount change"
        assert before and mounted and after and not (before & mounted) and not (mounted & after), (
            before,
            mounted,
            after,
        )
        serves(launcher, tmp_path)
    finally:
        launcher.sock.shutdown(socket.SHUT_RDWR)  # a close would wait on the reader thread's recv
        try:
            launcher.process.wait(15)
        except subprocess.TimeoutExpired:
            launcher.process.kill()
            raise


def test_an_append_to_a_record_never_cuts_a_file_linked_at_its_name(tmp_path: Path) -> None:
    """The JSONL, its copy and results.tsv are appended in place (`write_at`, which cuts what follows its line):
    a hard link to a file of the user's standing at a record's name would have had that file cut and written.
    The name is first made a copy of its own; the user's file is left as it was."""
    users = tmp_path / "notes.txt"
    users.write_bytes(b"the user's notes, longer than the record's first line\n")
    record = tmp_path / "autoresearch.jsonl"
    os.link(users, record)
    write_at(record, 0, b'{"line": 1}\n', sync=False)
    assert users.read_bytes() == b"the user's notes, longer than the record's first line\n"
    assert record.read_bytes() == b'{"line": 1}\n' and os.stat(record).st_nlink == 1
    write_at(record, 12, b'{"torn', sync=False)  # a server killed mid-append
    os.link(record, tmp_path / "another-name")
    cut_torn_line(record)  # a load's repair of a torn line: through a link, never
    assert record.read_bytes() == b'{"line": 1}\n'
    assert (tmp_path / "another-name").read_bytes() == b'{"line": 1}\n{"torn'
