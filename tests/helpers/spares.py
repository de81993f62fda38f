"""Telling a launcher's spare keepers from the keepers of running commands, as the tests look at them."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from mcp_autoresearch.sandbox.launcher import Launcher


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    """A launcher of the test's own (with `tmp_path/w` made, the folder its commands may write)."""
    (tmp_path / "w").mkdir()
    started = Launcher()
    yield started
    started.sock.shutdown(socket.SHUT_RDWR)  # end of file for the launcher: it stops its keepers and leaves
    started.process.wait(30)
    started.sock.close()


def is_spare(child: psutil.Process) -> bool:
    """A child of the launcher that waits for a request: a batch process (a spare is one until its request; a
    keeper and its command are ordinary ones), not a zombie. A spare made for the view has a child of its own:
    its standby command process (`standby.py`)."""
    try:
        return child.status() != psutil.STATUS_ZOMBIE and os.sched_getscheduler(child.pid) == os.SCHED_BATCH
    except (OSError, psutil.Error):
        return False


def standing_by(child: psutil.Process) -> bool:
    """A spare whose standby command process is made (a spare made for the view has one once prepared)."""
    try:
        return is_spare(child) and len(child.children()) == 1
    except psutil.Error:
        return False


def serves(started: Launcher, cwd: Path) -> None:
    """`started` runs a command through its socket (unconfined: the spec is empty) and reports its end."""
    read_fd, write_fd = os.pipe()
    try:
        launched = started.spawn(["/bin/sh", "-c", "echo served"], cwd, dict(os.environ), write_fd, {})  # type: ignore[arg-type]
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        assert pipe.read() == b"served\n"
    assert launched.wait(60) == 0
    launched.close()


def processes_with(token: str) -> list[psutil.Process]:
    """The live processes whose command line holds `token` (a test's own marker)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if any(token in part for part in proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found
