"""Git's loose ref files written without a git process, as git writes them: a ref through its lock file renamed
over it, a line appended to a reflog, and the lock files a killed predecessor left behind. Never through a
symlink: every directory on the way is made a real one, and a ref that is a symlink or a symbolic ref is named,
never written through."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from ..errors import SessionError
from ..records.atomic import open_regular, own_dir, read_regular

LOCK_WAIT_S = 3.0
STALE_AFTER_S = 0.3
# When this server began (its module import: after its process started, so after any predecessor died).
# Not psutil's create_time: that is counted from the boot time in whole seconds, up to 1 s early, and a lock
# left by a predecessor killed just before the restart would look newer than this process.
_PROCESS_START = time.time()


def write_ref(git_dir: Path, ref: Path, commit: str) -> None:
    """Write a loose ref through `<ref>.lock`, renamed over it (atomic), honouring git's locking. Every
    directory on the way is a real one: a symlinked `refs/...` must not carry the write elsewhere."""
    own_dir(git_dir, ref.parent.relative_to(git_dir).as_posix())
    lock = ref.with_name(ref.name + ".lock")
    fd = None
    began = time.monotonic()
    while fd is None:
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            if stale(lock, time.monotonic() - began):
                remove_lock(lock)
            elif time.monotonic() - began > LOCK_WAIT_S:
                raise SessionError(
                    f"{lock} exists: another git command is updating this ref; retry"
                ) from None
            else:
                time.sleep(0.02)
    try:
        os.write(fd, f"{commit}\n".encode())
    finally:
        os.close(fd)
    os.replace(lock, ref)


def append_reflogs(git_dir: Path, logs: list[Path], line: bytes) -> None:
    """Append `line` to each reflog (a reflog entry is a convenience: never worth writing through a planted
    symlink, so a log that cannot be opened safely is skipped)."""
    for log in logs:
        try:
            own_dir(git_dir, log.parent.relative_to(git_dir).as_posix())
            fd = open_regular(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        except (OSError, SessionError):
            continue
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def own_ref_problem(git_dir: Path, branch: str) -> str | None:
    """Why `branch`'s loose ref is not a plain ref the server may write, or None. A symbolic ref (or a symlink)
    there would make git's own updates, and HEAD, land on another branch."""
    ref = git_dir / "refs" / "heads" / branch
    try:
        st = os.lstat(ref)
    except FileNotFoundError:
        return None  # packed, or absent: packed refs are never symbolic
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return f"a symlink to {os.readlink(ref)}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    try:
        content = read_regular(ref)
    except OSError as exc:
        return f"unreadable ({exc})"
    if content.startswith(b"ref:"):
        return f"a symbolic ref to {content[4:].decode('utf-8', 'replace').strip()}"
    return None


def stale(lock: Path, waited_s: float) -> bool:
    """A git lock file that predates this server process and outlives a short wait (git's own commands hold
    them for milliseconds) was left by a process that died: the previous server, killed mid-write."""
    try:
        return waited_s >= STALE_AFTER_S and lock.stat().st_mtime < _PROCESS_START
    except OSError:
        return False


def remove_lock(lock: Path) -> None:
    try:
        lock.unlink()
    except OSError:
        pass
