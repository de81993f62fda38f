"""The launcher's two shortcuts on a run's path. The spare keeper: a keeper forked ahead of time, waiting for the
next command, so the fork is off the run's path; it must start the command exactly as a freshly forked keeper
would, be replaced when it is used or killed, hold nothing of the launcher's, and leave with the launcher. The
keeper's report: the exit code, written once the whole run has ended and before the keeper's own (slower) exit;
a keeper that ends without one is still reported by the launcher. Also the view's list of block devices, kept
while /dev is unchanged (the spare scans it before its request)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from mcp_autoresearch.sandbox import namespaces
from mcp_autoresearch.sandbox.forkserver import SPARES
from mcp_autoresearch.sandbox.launcher import Launched, Launcher, LauncherError
from mcp_autoresearch.sandbox.policy import probe_isolation

from .helpers.needs import require
from .helpers.spares import is_spare, standing_by

ISOLATION = probe_isolation("auto")
require(ISOLATION.confined, "CI must confine runs", f"Landlock is unavailable here: {ISOLATION.reason}")


def _until(condition, what: str, limit_s: float = 30.0):
    """Wait for `condition()` to hold (the limit only ends a test that would otherwise hang)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def _spares(launcher: Launcher, used: tuple[int, ...] = ()) -> set[int]:
    """The launcher's spares: its children that have not started a command (`is_spare`), once there are
    `SPARES` of them, `used` keepers aside (one that reported its run's end may still be ending)."""

    def find() -> set[int] | None:
        try:
            children = psutil.Process(launcher.process.pid).children()
        except psutil.Error:
            return None
        idle = {c.pid for c in children if c.pid not in used and is_spare(c)}
        return idle if len(idle) == SPARES else None

    return _until(find, "the launcher's spare keepers")


def _start(launcher: Launcher, tmp_path: Path, script: str) -> tuple[Launched, int]:
    """Start `script` through the launcher (confined, its output on a pipe as a run's is); returns it and the
    pipe's reading end."""
    read_fd, write_fd = os.pipe()
    try:
        spec = {"landlock": True, "view": ISOLATION.namespaces, "write": [str(tmp_path / "w")]}
        launched = launcher.spawn(["/bin/sh", "-c", script], tmp_path, dict(os.environ), write_fd, spec)  # type: ignore[arg-type]
    finally:
        os.close(write_fd)
    return launched, read_fd


def _run(launcher: Launcher, tmp_path: Path, script: str) -> tuple[int, int, str]:
    """Run `script` to its end through the launcher; returns (keeper pid, exit code, output)."""
    launched, read_fd = _start(launcher, tmp_path, script)
    with os.fdopen(read_fd, "rb") as pipe:
        output = pipe.read().decode()
    code = launched.wait(60)
    assert code is not None
    launched.close()
    return launched.pid, code, output


def test_a_spare_starts_the_next_command_and_a_new_spare_follows(launcher: Launcher, tmp_path: Path) -> None:
    spares = _spares(launcher)
    keeper, code, output = _run(launcher, tmp_path, "echo hello > w/a.txt; echo x > denied.txt; exit 3")
    assert keeper in spares  # no fork on the way: a spare took the request
    assert code == 3
    assert (tmp_path / "w" / "a.txt").read_text() == "hello\n"
    assert not (tmp_path / "denied.txt").exists() and "denied.txt" in output  # confined as any keeper
    following = _spares(launcher, used=(keeper,))
    assert following > spares - {keeper}  # the other one waits still, and one more was forked
    keeper, code, _ = _run(launcher, tmp_path, "exit 7")
    assert keeper in following and code == 7


def test_spares_follow_while_commands_that_never_end_hold_them(launcher: Launcher, tmp_path: Path) -> None:
    """While a command runs, a spare is forked only after a quiet while, one at a time, even with none ready:
    commands that wait (here, each on a FIFO of its own) hold both spares; the requests that come meanwhile start
    and end at once (a keeper forked for each, or a new spare), new spares follow, and the waiting ones still end."""
    spares = _spares(launcher)
    fifos = [tmp_path / f"fifo{n}" for n in range(SPARES)]
    held = []
    for fifo in fifos:
        os.mkfifo(fifo)
        held.append(_start(launcher, tmp_path, f"exec cat {fifo.name}"))
    assert {launched.pid for launched, _ in held} == spares
    keepers = []
    for _ in range(SPARES + 1):
        keeper, code, output = _run(launcher, tmp_path, "echo started")
        assert (code, output) == (0, "started\n")
        keepers.append(keeper)
    assert not _spares(launcher, used=tuple(keepers)) & spares
    for fifo in fifos:
        with open(fifo, "w") as writer:  # opened once its command reads it: closed, the command ends
            writer.write("done\n")
    for launched, read_fd in held:
        with os.fdopen(read_fd, "rb") as pipe:
            assert pipe.read() == b"done\n"
        assert launched.wait(60) == 0
        launched.close()


def test_a_stopped_launcher_leaves_with_its_server(tmp_path: Path) -> None:
    """A run that is not confined (`isolation = "off"`) can stop the server's launcher (same user). Stopped, it
    would never read the end of its socket when the server leaves, and stay for good, with its spares: the
    server wakes it as it leaves."""
    script = textwrap.dedent(
        """
        import os, signal
        from mcp_autoresearch.sandbox.launcher import launcher
        pid = launcher().process.pid
        os.kill(pid, signal.SIGSTOP)
        print(pid, flush=True)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout)

    def gone() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    _until(gone, "the stopped launcher to leave")


def test_the_command_of_a_spare_is_scheduled_as_any_process(launcher: Launcher, tmp_path: Path) -> None:
    """A spare waits as a batch process (so that its wake-up does not delay the launcher's answer); its keeper
    and command are ordinary processes again."""
    spares = _spares(launcher)
    batch = {os.SCHED_BATCH}  # once prepared (a spare just forked makes its head start first)
    _until(
        lambda: {os.sched_getscheduler(pid) for pid in spares} == batch,
        "the spares to wait as batch processes",
    )
    # field 41 of /proc/<pid>/stat: the scheduling policy (of `cut`, a child of the command)
    keeper, code, output = _run(launcher, tmp_path, "cut -d' ' -f41 /proc/self/stat")
    assert keeper in spares and code == 0 and output == f"{os.SCHED_OTHER}\n", output


def test_killed_spares_are_replaced_and_the_command_still_starts(launcher: Launcher, tmp_path: Path) -> None:
    spares = _spares(launcher)
    for pid in spares:
        os.kill(pid, signal.SIGKILL)
    _until(lambda: not any(psutil.pid_exists(pid) for pid in spares), "the spares to be reaped")
    keeper, code, output = _run(launcher, tmp_path, "echo started")
    assert keeper not in spares and code == 0 and output == "started\n"
    assert not _spares(launcher, used=(keeper,)) & (spares | {keeper})


def _run_spec(
    launcher: Launcher, tmp_path: Path, script: str, spec: dict, env: dict[str, str] | None = None
) -> tuple[int, int, str]:
    """Run `script` with `spec` to its end (in `env`, by default this process's environment): (keeper pid, exit
    code, output)."""
    read_fd, write_fd = os.pipe()
    try:
        launched = launcher.spawn(
            ["/bin/sh", "-c", script],
            tmp_path,
            dict(os.environ) if env is None else env,
            write_fd,
            spec,  # type: ignore[arg-type]
        )
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        output = pipe.read().decode()
    code = launched.wait(60)
    launched.close()
    assert code is not None
    return launched.pid, code, output


def _prepared_like(launcher: Launcher, tmp_path: Path, spec: dict) -> set[int]:
    """Run two commands with `spec` (the spares forked at the start know no request), then wait for spares made
    like it (in an IPC namespace of their own already: `prepared.py`). Returns their pids."""
    for _ in range(SPARES):
        assert _run_spec(launcher, tmp_path, "true", spec)[1] == 0
    own = os.readlink(f"/proc/{launcher.process.pid}/ns/ipc")

    def prepared() -> set[int] | None:
        found = set()
        for child in psutil.Process(launcher.process.pid).children():
            try:
                ready = standing_by(child) if spec.get("view") else is_spare(child)
                if ready and os.readlink(f"/proc/{child.pid}/ns/ipc") != own:
                    found.add(child.pid)
            except (OSError, psutil.Error):
                continue
        return found if len(found) == SPARES else None

    return _until(prepared, "spares made like the last request")


VIEW = {"landlock": True, "view": True, "network": True}


@pytest.mark.skipif(not ISOLATION.namespaces, reason="the spares' namespaces need the private view")
def test_a_spare_made_for_the_view_never_runs_a_command_without_it(
    launcher: Launcher, tmp_path: Path
) -> None:
    spares = _prepared_like(launcher, tmp_path, {**VIEW, "write": [str(tmp_path / "w")]})
    keeper, code, output = _run_spec(
        launcher, tmp_path, "echo pid $$", {"landlock": True, "write": [str(tmp_path / "w")]}
    )
    assert code == 0 and keeper not in spares and output != "pid 1\n", output  # the host's PID namespace
    keeper, code, output = _run_spec(
        launcher, tmp_path, "echo pid $$", {**VIEW, "write": [str(tmp_path / "w")]}
    )
    assert output == "pid 1\n"


@pytest.mark.skipif(not ISOLATION.namespaces, reason="the spares' namespaces need the private view")
def test_a_spares_ruleset_allows_only_what_the_request_asks_for(launcher: Launcher, tmp_path: Path) -> None:
    """Made with two writable folders, a spare serving a request for one does not let the command write in the
    other; a folder replaced since the spare was made is the new one that is writable, not the old."""
    (tmp_path / "x").mkdir()
    write = [str(tmp_path / "w"), str(tmp_path / "x")]
    spares = _prepared_like(launcher, tmp_path, {**VIEW, "write": write})
    keeper, code, output = _run_spec(
        launcher, tmp_path, "echo a > w/a; echo b > x/b", {**VIEW, "write": [str(tmp_path / "w")]}
    )
    assert keeper in spares
    assert (tmp_path / "w" / "a").exists() and not (tmp_path / "x" / "b").exists(), output
    spares = _prepared_like(launcher, tmp_path, {**VIEW, "write": write})
    (tmp_path / "x").rename(tmp_path / "x-old")
    (tmp_path / "x").mkdir()
    keeper, code, output = _run_spec(
        launcher, tmp_path, "echo c > x/c; echo d > x-old/d", {**VIEW, "write": write}
    )
    assert keeper in spares
    assert (tmp_path / "x" / "c").exists() and not (tmp_path / "x-old" / "d").exists(), output


@pytest.mark.skipif(not ISOLATION.namespaces, reason="the spares' namespaces need the private view")
def test_an_earlier_runs_deleted_scratch_folder_grants_nothing(launcher: Launcher, tmp_path: Path) -> None:
    """A spare made while the run before held its scratch folder keeps its ruleset once that folder is deleted
    (each run has a fresh one); a folder made again at the same path is not writable for a run that does not ask
    for it, and the run's own scratch folder is."""
    earlier, now = tmp_path / "scratch-1", tmp_path / "scratch-2"
    earlier.mkdir()
    spares = _prepared_like(launcher, tmp_path, {**VIEW, "write": [str(tmp_path / "w"), str(earlier)]})
    earlier.rmdir()
    earlier.mkdir()  # the same path, another folder
    now.mkdir()
    keeper, code, output = _run_spec(
        launcher,
        tmp_path,
        "echo a > scratch-2/a; echo b > scratch-1/b; echo c > w/c",
        {**VIEW, "write": [str(tmp_path / "w"), str(now)]},
    )
    assert keeper in spares
    assert (now / "a").exists() and (tmp_path / "w" / "c").exists(), output
    assert not (earlier / "b").exists(), output


def test_the_keeper_reports_the_end_and_the_launchers_later_report_is_dropped(
    launcher: Launcher, tmp_path: Path
) -> None:
    seconds = f"{1000 + time.monotonic_ns() % 100_000}"  # this test's own daemon
    launched, read_fd = _start(launcher, tmp_path, f"(sleep {seconds} &); exit 4")  # the keeper must end it
    with os.fdopen(read_fd, "rb") as pipe:
        pipe.read()
    assert launched.wait(60) == 4 and launched.reported
    _until(lambda: launched.pid not in launcher._forgotten, "the launcher's report of the keeper's exit")
    assert launcher._exits == {}  # dropped: the code was known already
    assert not [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", seconds]]


def test_a_keeper_killed_before_its_report_is_reported_by_the_launcher(
    launcher: Launcher, tmp_path: Path
) -> None:
    launched, read_fd = _start(launcher, tmp_path, "sleep 1000")
    os.close(read_fd)
    _until(lambda: psutil.Process(launched.pid).children(), "the command to start")
    os.kill(launched.pid, signal.SIGKILL)
    assert launched.wait(60) == -signal.SIGKILL and not launched.reported


def test_the_spare_holds_nothing_of_the_launchers_and_leaves_with_it(tmp_path: Path) -> None:
    """Its descriptors: stdin, the launcher's stdout and stderr, and its request channel (never the socket
    through which the launcher is asked to start commands). A SIGKILLed server takes it along."""
    script = textwrap.dedent(
        """
        import sys, time
        from mcp_autoresearch.sandbox.launcher import launcher
        print(launcher().process.pid, flush=True)
        time.sleep(120)
        """
    )
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        launcher_pid = int(server.stdout.readline())
        launcher_fds = set(os.listdir(f"/proc/{launcher_pid}/fd"))

        def spare() -> int | None:
            children = psutil.Process(launcher_pid).children()
            return children[0].pid if children else None

        pid = _until(spare, "a spare keeper")

        def closed_the_rest() -> list[int] | None:  # what it inherited is closed once it waits
            fds = sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))
            return fds if len(fds) == 4 else None

        fds = _until(closed_the_rest, "the spare to close what it inherited")
        assert fds[:3] == [0, 1, 2], fds
        channel = os.readlink(f"/proc/{pid}/fd/{fds[3]}")
        assert channel.startswith("socket:")
        launcher_sockets = {os.readlink(f"/proc/{launcher_pid}/fd/{fd}") for fd in launcher_fds}
        assert channel not in launcher_sockets  # its own channel, not the launcher's request socket
    finally:
        server.kill()
        server.wait()
    _until(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", "the spare to leave"
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="making device nodes needs root")
def test_the_block_device_list_follows_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept while the folder is unchanged, scanned again once a node is added (the folder's times move), and
    never kept for a folder changed in the last second (its times may not move again within a clock tick)."""
    folder = tmp_path / "dev"
    folder.mkdir()
    os.mknod(folder / "disk0", 0o600 | stat.S_IFBLK, os.makedev(7, 200))
    os.mknod(folder / "tty0", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    monkeypatch.setattr(namespaces, "BLOCK_FOLDERS", (str(folder),))
    monkeypatch.setattr(namespaces, "_devices_seen", None)
    assert namespaces._block_devices() == [str(folder / "disk0")]
    assert namespaces._devices_seen is None  # changed just now: not kept
    old = time.time() - 3600
    os.utime(folder, (old, old))  # a modification time put back: its change time says it changed just now
    assert namespaces._block_devices() == [str(folder / "disk0")]
    assert namespaces._devices_seen is None
    monkeypatch.setattr(namespaces, "SETTLED_NS", 0)  # as if a second had passed
    assert namespaces._block_devices() == [str(folder / "disk0")]
    assert namespaces._devices_seen is not None  # settled: kept
    os.mknod(folder / "disk1", 0o600 | stat.S_IFBLK, os.makedev(7, 201))
    assert sorted(namespaces._block_devices()) == [str(folder / "disk0"), str(folder / "disk1")]


def test_own_children_are_all_found_while_threads_come_and_go() -> None:
    """A server's threads start and end with its runs: a thread that ends between the listing of the threads and
    the reading of its children file hands its children to another thread. `own_children` reads them all again
    and still finds every child, those of threads ending meanwhile too."""
    import threading

    from mcp_autoresearch.sandbox.processes import own_children

    def start_then_end(
        children: list[subprocess.Popen[bytes]], started: threading.Barrier, stay_s: float
    ) -> None:
        children.append(subprocess.Popen(["sleep", "300"]))
        started.wait()
        time.sleep(stay_s)  # ends around the reading below

    for _ in range(60):
        children: list[subprocess.Popen[bytes]] = []
        started = threading.Barrier(5)
        threads = [
            threading.Thread(target=start_then_end, args=(children, started, 0.0001 * k)) for k in range(4)
        ]
        try:
            for thread in threads:
                thread.start()
            started.wait()
            found = {proc.pid for proc in own_children()}
            assert {child.pid for child in children} <= found
        finally:
            for thread in threads:
                thread.join()
            for child in children:
                child.kill()
                child.wait()


def test_a_runs_orphans_are_found_among_own_children_while_threads_come_and_go() -> None:
    """A run's process whose parent ended is re-parented to the server (a subreaper), while the server's threads
    start and end with other runs: the kernel gives it to the server's first living thread (its main one, which
    never ends), so `own_children` finds it whichever thread started the run and however the others churn."""
    import threading

    from mcp_autoresearch.sandbox.processes import become_subreaper, own_children

    become_subreaper()
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            spawned = [threading.Thread(target=lambda: None) for _ in range(8)]
            for thread in spawned:
                thread.start()
            for thread in spawned:
                thread.join()

    def orphan(found: list[int]) -> None:
        shell = subprocess.run(
            ["/bin/sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"], capture_output=True, check=True
        )
        found.append(int(shell.stdout))  # its parent is gone: it is ours now

    churners = [threading.Thread(target=churn) for _ in range(2)]
    for thread in churners:
        thread.start()
    try:
        for _ in range(30):
            found: list[int] = []
            starter = threading.Thread(target=orphan, args=(found,))
            starter.start()
            starter.join()
            try:
                assert psutil.Process(found[0]).ppid() == os.getpid()
                assert found[0] in {proc.pid for proc in own_children()}
            finally:
                os.kill(found[0], signal.SIGKILL)
                os.waitpid(found[0], 0)
    finally:
        stop.set()
        for thread in churners:
            thread.join()


def test_descendants_are_found_without_reading_every_process(tmp_path: Path) -> None:
    """`descendants` (the run's tree, read from each process's children files) finds what psutil's scan of every
    process finds: children, grandchildren, and a double fork's orphan re-parented to the subreaper."""
    from mcp_autoresearch.sandbox.processes import descendants

    ready = tmp_path / "ready"
    script = (
        "import os, subprocess, sys, time\n"
        "import ctypes; ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)\n"  # a subreaper, as the keeper is
        "subprocess.Popen(['sh', '-c', 'sleep 300 & sleep 300 & wait'])\n"
        "subprocess.Popen(['sh', '-c', '(sleep 300 &) ; exit 0']).wait()\n"  # its sleep is re-parented here
        f"open({str(ready)!r}, 'w').close()\n"
        "time.sleep(300)\n"
    )
    root = subprocess.Popen([sys.executable, "-c", script])
    try:
        _until(ready.exists, "the tree")
        proc = psutil.Process(root.pid)
        _until(lambda: len(proc.children(recursive=True)) == 4, "the tree's four processes")
        assert {p.pid for p in descendants(proc)} == {p.pid for p in proc.children(recursive=True)}
        assert len(descendants(proc)) == 4  # sh and its two sleeps, and the orphaned sleep
    finally:
        for child in psutil.Process(root.pid).children(recursive=True):
            child.kill()
        root.kill()
        root.wait()


def _pids_controller() -> Path | None:
    """Where a pids cgroup of this test's own can be made: the v1 hierarchy's root, or the v2 root when it hands
    the pids controller down; None when neither is here or writable."""
    for root, needed in (
        (Path("/sys/fs/cgroup/pids"), None),
        (Path("/sys/fs/cgroup"), "cgroup.subtree_control"),
    ):
        procs = root / "cgroup.procs"
        if not procs.exists() or not os.access(root, os.W_OK):
            continue
        if needed is not None and "pids" not in (root / needed).read_text().split():
            continue
        return root
    return None


def test_a_refused_fork_fails_that_request_and_the_runs_started_go_on(
    launcher: Launcher, tmp_path: Path
) -> None:
    """A launcher that cannot fork (no process left in its cgroup, which a run of the same cgroup can use up)
    answers that request with an error, for the server to start that keeper itself; it stays, and so does every
    run it started: their keepers leave with it."""
    controller = _pids_controller()
    require(controller, "CI must have a writable pids cgroup", "no writable pids cgroup here")
    assert controller is not None
    _spares(launcher)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    held, held_fd = _start(launcher, tmp_path, f"exec cat {fifo.name}")
    group = controller / f"autoresearch-test-{os.getpid()}-{launcher.process.pid}"
    group.mkdir()
    try:
        (group / "pids.max").write_text("1")  # the launcher alone: it can fork nothing
        (group / "cgroup.procs").write_text(str(launcher.process.pid))
        refused = None
        for _ in range(SPARES + 1):  # the spares left serve their requests; then one needs a fork
            try:
                _run(launcher, tmp_path, "exit 0")
            except LauncherError as exc:
                refused = str(exc)
                break
        assert refused is not None and "could not fork a keeper" in refused, refused
        assert launcher.process.poll() is None and launcher.alive  # the launcher stays
    finally:
        (controller / "cgroup.procs").write_text(str(launcher.process.pid))
        group.rmdir()
    keeper, code, output = _run(launcher, tmp_path, "echo again")  # and serves the next request
    assert (code, output) == (0, "again\n")
    with open(fifo, "w") as writer:  # the run started before is still there and ends as it should
        writer.write("done\n")
    with os.fdopen(held_fd, "rb") as pipe:
        assert pipe.read() == b"done\n"
    assert held.wait(60) == 0
    held.close()
