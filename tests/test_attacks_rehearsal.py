"""The spares' rehearsal of their request (`forkserver._rehearse`, `standby._rehearse`: the last request's spec
read, its paths resolved, while the spare waits) attacked with the specs a request may carry: it must never end a
spare, delay or change a run."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from mcp_autoresearch.sandbox.launcher import Launcher, LauncherError

from .helpers.needs import require
from .helpers.spares import is_spare
from .test_launcher import ISOLATION, VIEW, _prepared_like, _run_spec, _until

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


@contextmanager
def _unanswered_mount(folder: Path) -> Iterator[None]:
    """A FUSE file system on `folder` whose server never answers (a network mount whose server is gone): a
    process that looks up a path beneath it waits until the mount is given up (its device closed, at the end)."""
    require(os.geteuid() == 0, "CI runs as root", "mounting needs root")
    require(os.path.exists("/dev/fuse"), "CI has FUSE", "no /dev/fuse here")
    device = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    options = f"fd={device},rootmode=40000,user_id=0,group_id=0".encode()
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        assert libc.mount(b"unanswered", str(folder).encode(), b"fuse", 0x6, options) == 0, os.strerror(
            ctypes.get_errno()
        )  # MS_NOSUID | MS_NODEV
        yield
    finally:
        os.close(device)  # every lookup waiting on it ends (ENOTCONN)
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_spare_rehearsing_a_path_on_a_mount_that_never_answers_does_not_hold_up_another_run(
    launcher: Launcher, tmp_path: Path
) -> None:
    """The last request read a path on a mount that no longer answers (a network file system whose server went
    away): the spares made like it must not wait on it (they rehearse the request), or the next run, which reads
    nothing there, is handed to a spare that never takes it."""
    slow = tmp_path / "slow"
    slow.mkdir()
    write = [str(tmp_path / "w")]
    old = _prepared_like(launcher, tmp_path, {**VIEW, "write": write, "read": [str(slow / "data")]})
    with _unanswered_mount(slow):

        def remade() -> (
            bool
        ):  # the launcher made its spares again after the mount (it watches the mount table)
            children = psutil.Process(launcher.process.pid).children()
            return len([c for c in children if is_spare(c) and c.pid not in old]) == 2

        _until(remade, "spares made after the mount")
        read_fd, write_fd = os.pipe()
        launched = launcher.spawn(
            ["/bin/sh", "-c", "echo ran"], tmp_path, dict(os.environ), write_fd, {**VIEW, "write": write}
        )  # type: ignore[arg-type]
        os.close(write_fd)
        try:
            code = launched.wait(30)  # the limit only ends a run that would never start
        finally:
            with os.fdopen(read_fd, "rb") as pipe:
                output = pipe.read() if launched.returncode is not None else b""
            launched.close()
    assert (code, output) == (0, b"ran\n")
