"""The standby command process of a spare made for the private view (`sandbox/standby.py`): forked ahead with
the view made, it runs the next command of the kind; it is never handed a command once something touched it, it
follows the request's own hidden paths, and it holds no copy of a mount table that changed."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from mcp_autoresearch.sandbox import namespaces, view
from mcp_autoresearch.sandbox.launcher import Launched, Launcher

from .helpers.needs import require
from .helpers.spares import standing_by
from .test_launcher import ISOLATION, VIEW, _prepared_like, _run_spec, _until

require(
    ISOLATION.namespaces,
    "CI must run the private view",
    f"namespaces are unavailable here: {ISOLATION.reason}",
)


def _standbys(launcher: Launcher, spares: set[int]) -> dict[int, int]:
    """spare pid -> the pid of its standby command process."""
    found: dict[int, int] = {}
    for pid in spares:
        children = psutil.Process(pid).children()
        assert len(children) == 1, children
        found[pid] = children[0].pid
    return found


def test_a_spare_runs_its_command_in_the_standby_process(launcher: Launcher, tmp_path: Path) -> None:
    """The command is the process forked ahead (PID 1 of its namespaces), in the view: it writes only where the
    request allows, does not see the user's files in /tmp, and a folder of the request given through a link is
    writable through the link."""
    (tmp_path / "link").symlink_to(tmp_path / "w")
    spec = {**VIEW, "write": [str(tmp_path / "link")]}
    spares = _prepared_like(launcher, tmp_path, spec)
    standbys = _standbys(launcher, spares)
    marker = Path(f"/tmp/autoresearch-test-marker-{os.getpid()}")
    marker.write_text("the user's")
    try:
        keeper, code, output = _run_spec(
            launcher,
            tmp_path,
            f"echo pid $$; test -e {marker} && echo seen || echo hidden; echo a > link/a; echo b > b",
            spec,
        )
    finally:
        marker.unlink()
    assert keeper in spares, (keeper, spares)
    lines = output.splitlines()
    assert lines[:2] == ["pid 1", "hidden"], output
    assert (tmp_path / "w" / "a").read_text() == "a\n" and not (tmp_path / "b").exists(), output
    assert not psutil.pid_exists(standbys[keeper]) or psutil.Process(standbys[keeper]).status() == "zombie"


def test_a_standby_process_stopped_or_killed_is_never_handed_a_command(
    launcher: Launcher, tmp_path: Path
) -> None:
    """A standby process is PID 1 of its spare's namespaces: killed, no command can start there any more;
    stopped, its command would never start (an honest run measured as a timeout). The launcher sees either before
    the hand-over and forks a keeper instead."""
    spec = {**VIEW, "write": [str(tmp_path / "w")]}
    for touch in (signal.SIGSTOP, signal.SIGKILL):
        spares = _prepared_like(launcher, tmp_path, spec)
        standbys = list(_standbys(launcher, spares).values())
        for standby in standbys:
            os.kill(standby, touch)
        _until(
            lambda standbys=standbys: all(
                psutil.Process(s).status() in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE) for s in standbys
            ),
            "the standby processes to be stopped or dead",
        )
        for _ in range(2):
            keeper, code, output = _run_spec(launcher, tmp_path, "echo started $$", spec)
            assert keeper not in spares, touch
            assert (code, output) == (0, "started 1\n"), (touch, code, output)


def test_the_hidden_folders_follow_the_request(launcher: Launcher, tmp_path: Path) -> None:
    """A spare made for a request hiding one folder serves one hiding another: the first is shown again, the
    second is hidden (the evaluation stage hides what a run's stage shows)."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "secret").write_text(name)
    spec = {**VIEW, "write": [str(tmp_path / "w")]}
    spares = _prepared_like(launcher, tmp_path, {**spec, "hide": [str(tmp_path / "a")]})
    keeper, code, output = _run_spec(
        launcher, tmp_path, "cat a/secret; echo; ls -A b | wc -l", {**spec, "hide": [str(tmp_path / "b")]}
    )
    assert keeper in spares and code == 0
    assert output.splitlines() == ["a", "0"], output
    spares = _prepared_like(launcher, tmp_path, {**spec, "hide": [str(tmp_path / "b")]})
    keeper, code, output = _run_spec(launcher, tmp_path, "ls -A a | wc -l; cat b/secret", spec)
    assert keeper in spares and code == 0
    assert output.splitlines() == ["1", "b"], output  # hidden for the spare only: shown again


def test_a_project_under_a_hidden_folder_keeps_the_view_made_ahead(
    launcher: Launcher, tmp_path: Path
) -> None:
    """A project under /tmp (hidden as a whole) whose request hides its own folders: the standby process serves
    it with the view it made ahead. The request's hidden folders are judged outside the view, as when the view
    was made: inside, /tmp's cover hid them, the request seemed to hide nothing, and every run took the view's
    covers away and made them anew on its own start (half a millisecond a run, bench/loop_overhead.py)."""
    for name in ("runs", "sessions"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "secret").write_text(name)
    hide = [str(tmp_path / "runs"), str(tmp_path / "sessions")]
    spec = {**VIEW, "write": [str(tmp_path / "w")], "hide": hide}
    spares = _prepared_like(launcher, tmp_path, spec)
    covers = {
        spare: os.stat(f"/proc/{standby}/root/tmp").st_dev
        for spare, standby in _standbys(launcher, spares).items()
    }
    keeper, code, output = _run_spec(
        launcher,
        tmp_path,
        "stat -c %d /tmp; { test -e runs/secret || test -e sessions/secret; } && echo seen || echo hidden",
        spec,
    )
    assert keeper in spares and code == 0, output
    assert output.splitlines() == [str(covers[keeper]), "hidden"], (
        covers,
        output,
    )  # the same cover; still hidden


def _covers(spare: int, folder: Path) -> bool:
    """The spare's standby process has made its view, `folder` covered there (a spare announces itself as soon
    as it forked its standby process, whose view comes after)."""
    try:
        standby = psutil.Process(spare).children()
        mounts = Path(f"/proc/{standby[0].pid}/mountinfo").read_text() if len(standby) == 1 else ""
    except (OSError, psutil.Error):
        return False
    return any(line.split()[4] == str(folder) for line in mounts.splitlines())


def test_a_hidden_folder_deleted_since_the_spare_was_made_does_not_fail_the_next_run(
    launcher: Launcher, tmp_path: Path
) -> None:
    """A spare made for a request hiding a folder that is deleted before the next request (an earlier
    evaluation's folder): the kernel took its tmpfs away in the standby's view already; the next run starts."""
    # Outside /tmp (hidden as a whole already, which would cover them): the user's home.
    home = Path.home() / f".autoresearch-test-hide-{os.getpid()}"
    gone, other = home / "gone", home / "other"
    gone.mkdir(parents=True)
    other.mkdir()
    try:
        spec = {**VIEW, "write": [str(tmp_path / "w")]}
        spares = _prepared_like(launcher, tmp_path, {**spec, "hide": [str(gone)]})
        _until(lambda: all(_covers(spare, gone) for spare in spares), "the standbys' views made")
        gone.rmdir()
        keeper, code, output = _run_spec(launcher, tmp_path, "echo started", {**spec, "hide": [str(other)]})
        assert keeper in spares and (code, output) == (0, "started\n"), output
    finally:
        other.rmdir()
        home.rmdir()


def test_a_hidden_folder_removed_while_the_view_is_made_is_left_uncovered() -> None:
    """A folder to hide, removed between the view's listing of it and its cover (a spare's view made while the
    session before removed its TMPDIR): nothing is left to hide there, and the view is made. It once failed
    the spare, and the next run with it: "could not be confined (namespaces: tmpfs on ...: No such file or
    directory)"."""
    gone = Path.home() / f".autoresearch-test-removed-{os.getpid()}"  # outside /tmp, hidden as a whole
    gone.mkdir()
    listed = view._hidden_dirs

    def made_while_removed() -> bytes:
        def removed_once_listed(extra: list[str]) -> list[str]:
            found = listed(extra)
            gone.rmdir()
            return found

        view._hidden_dirs = removed_once_listed
        try:
            made = view.View([str(gone)], True)
        except namespaces.ViewError as exc:
            return str(exc).encode()
        return b"made" + (b", covered" if str(gone) in made.covers else b"")

    try:
        assert _in_namespaces(made_while_removed) == b"made"
    finally:
        shutil.rmtree(gone, ignore_errors=True)


def test_a_changed_mount_table_makes_the_spares_again(launcher: Launcher, tmp_path: Path) -> None:
    """A standby process holds a copy of every mount as it was: a disk taken away since would stay busy in it,
    one mounted since would be missing from the view. The launcher watches its mount table and makes its spares
    again when it changes."""
    require(os.geteuid() == 0, "CI runs as root", "mounting a file system here needs root")
    spec = {**VIEW, "write": [str(tmp_path / "w")]}
    spares = _prepared_like(launcher, tmp_path, spec)
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(disk)], check=True)
    try:
        (disk / "new").write_text("on the new disk")

        def remade() -> set[int] | None:
            now = {c.pid for c in psutil.Process(launcher.process.pid).children() if standing_by(c)}
            return now if len(now) == 2 and not now & spares else None

        spares = _until(remade, "spares made on the new mount table")
        keeper, code, output = _run_spec(launcher, tmp_path, "cat disk/new", spec)
        assert keeper in spares and (code, output) == (0, "on the new disk"), output
        spares = _prepared_like(launcher, tmp_path, spec)
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    _until(remade, "spares made once the disk was taken away")
    # This launcher's processes (another test's launcher, in another worker, remakes its own spares in its time).
    ours = [child.pid for child in psutil.Process(launcher.process.pid).children(recursive=True)]
    holders = [pid for pid in ours if str(disk) in (_mounts_of(pid) or "")]
    assert ours and holders == [], f"processes still holding the taken-away disk: {holders}"


def test_a_stopped_spare_let_go_does_not_stay(launcher: Launcher, tmp_path: Path) -> None:
    """A run stops a spare (it could: same user), then the launcher lets its spares go (here: the mount table
    changed). Left only at the end of its channel, a stopped spare never read that end: it stayed, stopped, with
    its standby process and its copy of every mount, for the launcher's whole life. It is killed."""
    require(os.geteuid() == 0, "CI runs as root", "mounting a file system here needs root")
    spec = {**VIEW, "write": [str(tmp_path / "w")]}

    def stop_a_spare() -> tuple[int, int] | None:
        # A mount made anywhere on the machine meanwhile lets the spares go: a spare gone before it was stopped is
        # looked for again among the spares made after it.
        for spare in _prepared_like(launcher, tmp_path, spec):
            try:
                standby = psutil.Process(spare).children()[0].pid
                os.kill(spare, signal.SIGSTOP)
                if psutil.Process(spare).status() != psutil.STATUS_ZOMBIE and psutil.pid_exists(standby):
                    return spare, standby
            except (psutil.Error, IndexError, ProcessLookupError):
                continue
        return None

    stopped, standby = _until(stop_a_spare, "a spare with its standby process, stopped")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(disk)], check=True)
    subprocess.run(["umount", str(disk)], check=True)

    def gone(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    _until(lambda: gone(stopped) and gone(standby), "the stopped spare and its standby process to be gone")


def _mounts_of(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/mountinfo").read_text()
    except OSError:
        return None


def test_before_linux_6_15_the_copies_are_made_through_the_attached_tree(tmp_path: Path) -> None:
    """Where the kernel copies nothing from a detached tree, the view attaches its copy of the mounts for the
    time of the copies: the writable path is as writable, and nothing of that copy stays in the view."""
    (tmp_path / "w").mkdir()

    def copied_through_the_attached_tree() -> bytes:
        made = view.View([], True)
        writable = str(tmp_path / "w")
        copies = made._copies_attached([(writable, False)], view.resolved([writable]))
        for path, is_dir, fd in copies:
            view._attach(namespaces._libc(), fd, path, is_dir)
        (tmp_path / "w" / "x").write_text("written")
        mounts = Path("/proc/self/mountinfo").read_text()
        return b"ok" if ".autoresearch-before" not in mounts else b"left"

    assert _in_namespaces(copied_through_the_attached_tree) == b"ok"
    assert (tmp_path / "w" / "x").read_text() == "written"


def _in_namespaces(work: Callable[[], bytes]) -> bytes:
    """What `work` returns, run in a command process of a keeper's namespaces (PID, IPC, network), where a view
    is made: a child of a child of this process, as the launcher's keeper and command are."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            namespaces.enter_keeper(True)
            command = os.fork()
            if command == 0:
                os.write(write_fd, work())
                os._exit(0)
            os._exit(os.waitstatus_to_exitcode(os.waitpid(command, 0)[1]))
        finally:
            os._exit(1)
    os.close(write_fd)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    with os.fdopen(read_fd, "rb") as pipe:
        return pipe.read()


def test_commands_started_together_each_get_their_own_output(launcher: Launcher, tmp_path: Path) -> None:
    """Requests that come at once (slots) find a spare still making its standby process: handed its request
    then, it still runs it. It once left with its request unread when its word to the launcher found the
    launcher's end closed, and again when the launcher closed its end before reading that word (the kernel
    reports a reset first): the command printed nowhere and the run was measured as exit 0 with no output."""
    failures = []

    def one(slot: int, round_: int) -> None:
        folder = tmp_path / f"s{slot}"
        folder.mkdir(exist_ok=True)
        spec = {**VIEW, "write": [str(folder)]}
        keeper, code, output = _run_spec(launcher, folder, f"echo line-{slot}-{round_}", spec)
        if (code, output) != (0, f"line-{slot}-{round_}\n"):
            failures.append((slot, round_, code, output))

    for round_ in range(100):
        threads = [threading.Thread(target=one, args=(slot, round_)) for slot in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []


@contextmanager
def _gated_run(
    launcher: Launcher, tmp_path: Path, spec: dict[str, object], gate: Path, before: str = ""
) -> Iterator[Launched]:
    """A command with `spec` that runs `before`, says it is ready and waits for `gate` to exist: yields it once
    ready; then makes the gate and waits for its end (exit code 0)."""
    read_fd, write_fd = os.pipe()
    try:
        launched = launcher.spawn(
            ["/bin/sh", "-c", f"{before}echo ready; while [ ! -e {gate} ]; do sleep 0.01; done"],
            tmp_path,
            dict(os.environ),
            write_fd,
            spec,  # type: ignore[arg-type]
        )
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        try:
            assert pipe.readline() == b"ready\n"
            yield launched
        finally:
            gate.touch()
            assert launched.wait(60) == 0
            launched.close()


def test_the_keeper_lets_the_view_go_after_the_command(launcher: Launcher, tmp_path: Path) -> None:
    """Unmounting a view (its mount namespace, and the copy of every mount the request's paths were copied from)
    waits for an RCU grace period, milliseconds on a busy machine: the keeper holds both for the run, and lets
    them go after its report, so neither the command's start nor its end waits for it. The run holds neither:
    the command's descriptors are its standard files."""
    spec = {**VIEW, "write": [str(tmp_path / "w")]}
    spares = _prepared_like(launcher, tmp_path, spec)
    standbys = _standbys(launcher, spares)
    with _gated_run(launcher, tmp_path, spec, tmp_path / "w" / "go") as launched:
        keeper, command = launched.pid, standbys[launched.pid]
        view = os.readlink(f"/proc/{command}/ns/mnt")
        assert view != os.readlink("/proc/self/ns/mnt")
        held = {os.readlink(f"/proc/{keeper}/fd/{fd}") for fd in os.listdir(f"/proc/{keeper}/fd")}
        assert view in held, held
        assert sorted(os.listdir(f"/proc/{command}/fd")) == ["0", "1", "2"]
    _until(
        lambda: not psutil.pid_exists(keeper) or psutil.Process(keeper).status() == "zombie",
        "the keeper's end",
    )


def _first_messages_queued(pid: int) -> list[tuple[bytes, int]]:
    """The first message waiting on each of `pid`'s sockets (peeked, not taken): (its data, how many descriptors
    it carries). The descriptors peeked are closed here at once."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    found = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    continue
            except OSError:
                continue
            copy = libc.syscall(438, pidfd, int(fd), 0)  # pidfd_getfd
            assert copy >= 0, os.strerror(ctypes.get_errno())
            sock = socket.socket(fileno=copy)
            try:
                data, fds, _, _ = socket.recv_fds(sock, 64, 4, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            finally:
                sock.close()
            for peeked in fds:
                os.close(peeked)
            found.append((data, len(fds)))
    finally:
        os.close(pidfd)
    return found


def _holds(pid: int, link: str) -> bool:
    """Whether one of `pid`'s descriptors is `link`."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return link in found


@pytest.mark.parametrize("outputs", [True, False], ids=["with-output-dirs", "without"])
def test_the_keeper_holds_the_spent_copy_of_the_mounts_with_or_without_output_dirs(
    launcher: Launcher, tmp_path: Path, outputs: bool
) -> None:
    """The view's spent copy of every mount goes to the keeper (`View.let_go`), after the output directories'
    listener when the run has output directories: a message the keeper never reads, waiting on its channel until
    it ends (its unmounting is not on the run's start). The command's end of the channel stays open after the
    listener was sent, for the copy."""
    (tmp_path / "w").mkdir(exist_ok=True)
    spec = {**VIEW, "write": [str(tmp_path / "w") if outputs else str(tmp_path)]}
    spares = _prepared_like(launcher, tmp_path, spec)
    _standbys(launcher, spares)
    with _gated_run(launcher, tmp_path, spec, tmp_path / "w" / "go") as launched:
        assert launched.pid in spares
        if outputs:  # the listener, sent first, taken by the keeper (the copy is what waits then)
            _until(lambda: _holds(launched.pid, "anon_inode:seccomp notify"), "the keeper's listener")
        assert (b"mounts", 1) in _first_messages_queued(launched.pid)


def test_a_runs_folders_are_removed_while_its_view_is_still_held(launcher: Launcher, tmp_path: Path) -> None:
    """The keeper holds the view (its mount namespace, the spent copy of every mount) until its own end, after
    its report: the server may remove the run's TMPDIR, or move its outputs aside, meanwhile, each a mount in
    that namespace. Held here for as long as the test runs, they are moved and removed all the same (no EBUSY,
    nothing left)."""
    from mcp_autoresearch.sandbox.run_tmpdirs import remove

    temp, out = tmp_path / "t", tmp_path / "w"
    temp.mkdir()
    spec = {**VIEW, "write": [str(temp), str(out)]}
    spares = _prepared_like(launcher, tmp_path, spec)
    standbys = _standbys(launcher, spares)
    script = f"mkdir -p {temp}/a/b {out}/c; echo x > {temp}/a/b/f; echo y > {out}/c/f; "
    with _gated_run(launcher, tmp_path, spec, out / "go", script) as launched:
        held = os.open(f"/proc/{standbys[launched.pid]}/ns/mnt", os.O_RDONLY)
    try:
        remove(str(temp))
        os.rename(out, tmp_path / "aside")  # fresh outputs: the last run's moved aside
        shutil.rmtree(tmp_path / "aside")
        assert not temp.exists() and not out.exists() and not (tmp_path / "aside").exists()
    finally:
        os.close(held)
