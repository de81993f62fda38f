"""`records.atomic.swap_write`: a file replaced by exchanging it with a spare kept beside it, with no new file
made each time, and never written through anything but the server's own spare."""

from __future__ import annotations

import fcntl
import os
import stat
import threading
from pathlib import Path

import pytest

from mcp_autoresearch.records.atomic import swap_write


def test_each_write_leaves_the_new_content_and_two_files_take_turns(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    inodes = []
    for n in range(6):
        data = f'{{"n": {n}, "pad": "{"x" * (100 - 10 * n)}"}}'.encode()
        assert swap_write(path, data, 0o640, sync=n % 2 == 0) == len(data)
        assert path.read_bytes() == data  # shorter than the one before: nothing of it is left
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        inodes.append(path.stat().st_ino)
    assert len(set(inodes)) == 2, inodes  # no file made after the second write
    spare = tmp_path / ".state.json.spare"
    assert spare.exists() and spare.stat().st_ino in inodes


def test_a_reader_of_the_old_file_reads_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    swap_write(path, b"old content", 0o644, False)
    swap_write(path, b"older", 0o644, False)  # so that a spare exists
    swap_write(path, b"old content", 0o644, False)
    with open(path, "rb") as reader:
        swap_write(path, b"new", 0o644, False)
        assert reader.read() == b"old content"
    assert path.read_bytes() == b"new"


def test_a_hard_link_to_the_spare_is_never_written_through(tmp_path: Path) -> None:
    """The spare holds the file replaced last: a second name for it (a hard link made to the spare, or to the
    file before it became the spare) must not receive the next write."""
    path = tmp_path / "state.json"
    swap_write(path, b"one", 0o644, False)
    swap_write(path, b"two", 0o644, False)
    other = tmp_path / "other"
    os.link(tmp_path / ".state.json.spare", other)  # the spare holds "one"
    swap_write(path, b"three", 0o644, False)
    assert other.read_bytes() == b"one"
    assert path.read_bytes() == b"three"


def test_a_symlink_at_the_spare_is_replaced_never_followed(tmp_path: Path) -> None:
    path, outside = tmp_path / "state.json", tmp_path / "outside"
    outside.write_bytes(b"keep me")
    (tmp_path / ".state.json.spare").symlink_to(outside)
    swap_write(path, b"one", 0o644, False)
    swap_write(path, b"two", 0o644, False)
    assert outside.read_bytes() == b"keep me"
    assert path.read_bytes() == b"two"


def test_a_symlink_at_the_path_is_replaced_never_followed(tmp_path: Path) -> None:
    path, outside = tmp_path / "state.json", tmp_path / "outside"
    outside.write_bytes(b"keep me")
    path.symlink_to(outside)
    swap_write(path, b"mine", 0o644, False)
    assert not path.is_symlink() and path.read_bytes() == b"mine"
    assert outside.read_bytes() == b"keep me"


def test_a_folder_at_the_path_is_refused_as_by_a_rename(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.mkdir()
    with pytest.raises(OSError):
        swap_write(path, b"data", 0o644, False)
    assert path.is_dir() and not any(path.iterdir())


def test_a_spare_in_another_file_system_falls_back_to_a_rename(tmp_path: Path) -> None:
    """No exchange across file systems (/dev/shm is a tmpfs): the write is made as `atomic_write` makes it."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.fail("/dev/shm is missing")
    spare = shm / f"autoresearch-test-spare-{os.getpid()}"
    try:
        path = tmp_path / "state.json"
        swap_write(path, b"one", 0o644, False, spare)
        swap_write(path, b"two", 0o644, False, spare)
        assert path.read_bytes() == b"two"
    finally:
        spare.unlink(missing_ok=True)


def test_a_reader_still_reading_after_two_writes_reads_one_content(tmp_path: Path) -> None:
    """The spare holds the file replaced last: a reader that opened it while it was the public copy and still
    reads it when the next write comes must not see that write land in it (half the old content, half the new:
    a torn state for a dashboard or a status command that reads in pieces)."""
    path = tmp_path / "state.json"
    for data in (b"Z" * 100, b"A" * 100):
        swap_write(path, data, 0o644, False)  # the second one leaves a spare
    with open(path, "rb", buffering=0) as reader:
        first = reader.read(50)
        swap_write(path, b"B" * 100, 0o644, False)
        swap_write(path, b"C" * 100, 0o644, False)  # into the spare: the file the reader holds
        rest = reader.read()
    assert first + rest == b"A" * 100
    assert path.read_bytes() == b"C" * 100


def test_a_reader_holding_a_lock_on_the_copy_never_holds_the_writer_up(tmp_path: Path) -> None:
    """A reader may lock the public copy while it reads (`flock -s`, a tool's own habit): once that file is the
    spare, the next write must not wait for the reader's lock (the server would wait as long as the reader
    wishes); it writes a new file instead."""
    path = tmp_path / "state.json"
    for data in (b"one", b"two"):
        swap_write(path, data, 0o644, False)
    with open(path, "rb") as reader:
        fcntl.flock(reader, fcntl.LOCK_SH)
        writer = threading.Thread(
            target=lambda: [swap_write(path, data, 0o644, False) for data in (b"three", b"four")], daemon=True
        )
        writer.start()
        writer.join(60)  # the limit only ends a test that would otherwise hang
        assert not writer.is_alive(), "the write waits for the reader's lock"
        assert reader.read() == b"two"
    assert path.read_bytes() == b"four"
