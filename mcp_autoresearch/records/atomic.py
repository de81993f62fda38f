"""Writing files so that a crash at any moment leaves the old content or the new one, never half of one."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import signal
import stat
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from ..errors import SessionError


def atomic_write(
    path: Path, data: bytes | Iterable[bytes], mode: int | None = None, sync: bool = True
) -> int:
    """Write to a temporary file beside `path`, fsync it (unless `sync` is False: a copy that may be lost), and
    rename it over `path`. A symlink standing at `path` is replaced, never followed. `mode` defaults to the
    existing file's permissions. Returns the size."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    if mode is None:
        try:
            mode = path.lstat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    fd = _create_copy(tmp, flags, mode)
    size = 0
    try:
        for chunk in (data,) if isinstance(data, bytes) else data:
            view = memoryview(chunk)
            size += len(view)
            while view:
                view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:  # refused (an immutable file, a read-only folder): no copy is left beside it
        tmp.unlink(missing_ok=True)
        raise
    return size


RENAME_EXCHANGE = 2  # renameat2(2): both names swapped in one step
F_SETLEASE, F_SETSIG = 1024, 10  # fcntl(2), Linux
_swap_locks: dict[str, threading.Lock] = {}
_swap_locks_guard = threading.Lock()


# The errors of a write the file system refuses (permissions, an immutable file or folder, a read-only mount):
# not the server's bug, and a person can undo them.
REFUSED_ERRNOS = (errno.EPERM, errno.EACCES, errno.EROFS)


def _create_copy(tmp: Path, flags: int, mode: int) -> int:
    """The descriptor of a new copy `tmp`. One left by a write this thread's namesake never finished (a kill) is
    removed, never followed. A folder that refuses the copy (`REFUSED_ERRNOS`) is named in the error, not the
    copy, which was never made."""
    try:
        try:
            return os.open(tmp, flags, mode)
        except FileExistsError:
            tmp.unlink()
            return os.open(tmp, flags, mode)
    except OSError as exc:
        if exc.errno not in REFUSED_ERRNOS:
            raise
        raise OSError(exc.errno, exc.strerror, str(tmp.parent)) from exc


def swap_write(
    path: Path, data: bytes, mode: int | None = None, sync: bool = True, spare: Path | None = None
) -> int:
    """`atomic_write` without a new file each time, for a copy that may be lost (creating a file is the dearest
    step of a write on many file systems: after deletions, on this project's machines, ten times the rest). The
    data goes into a spare file kept for `path` (`spare`, by default `.<name>.spare` beside it), which is then
    exchanged with `path` in one step (`renameat2`): a reader, or the server after a kill -9, sees the old
    content or the new one, never half of one, and the spare holds the old one, overwritten in place next time.
    After an OS crash, though, the name may lead to a spare half overwritten (an exchange not yet on disk, its
    old file rewritten since): only for a file the server rebuilds (the public copy of the state), never for a
    record it trusts or the user's files. The written file gets exactly `mode` (default: the permissions `path`
    has, or 0o644 less the umask). A spare that is anything but this process's own regular file with one link (a
    hard link would carry the next write elsewhere) is replaced, never written through, and a spare still open
    elsewhere (a reader of the copy it was) is left alone: that write goes to a new file; a symlink or a folder at
    `path`, and a file system without the exchange, take `atomic_write`'s way. Returns the size."""
    spare = spare or path.with_name(f".{path.name}.spare")
    with _swap_locks_guard:
        lock = _swap_locks.setdefault(os.fspath(spare), threading.Lock())
    with lock:
        try:
            current = path.lstat()
        except FileNotFoundError:
            current = None
        if current is not None and not stat.S_ISREG(current.st_mode):
            return atomic_write(path, data, mode, sync)
        if mode is None:
            mode = current.st_mode & 0o7777 if current is not None else 0o644 & ~_umask()
        if _swap(path, spare, data, mode, sync):
            return len(data)
        return atomic_write(path, data, mode, sync)


def _swap(path: Path, spare: Path, data: bytes, mode: int, sync: bool) -> bool:
    """`swap_write`'s steps; False (nothing changed at `path`) where the exchange cannot be made."""
    fd = _spare_fd(spare, mode)
    if fd < 0:
        return False
    try:
        try:  # another server process writing it now, or a reader's lock on the copy it was: a new file
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (waiting, the server would wait on the reader)
        except BlockingIOError:
            return False
        held = os.fstat(fd)
        try:
            still = os.lstat(spare)
        except FileNotFoundError:
            return False
        if (held.st_dev, held.st_ino) != (still.st_dev, still.st_ino) or held.st_nlink != 1:
            return False  # exchanged or linked meanwhile: not ours to write any more
        if not _alone(fd):
            return False  # a reader of the file it was still reads it: a new file for this write
        written = 0
        while written < len(data):
            written += os.pwrite(fd, data[written:], written)
        os.ftruncate(fd, len(data))
        if held.st_mode & 0o7777 != mode:
            os.fchmod(fd, mode)
        if sync:
            os.fsync(fd)
        libc = _libc()
        if libc.renameat2(AT_FDCWD, os.fsencode(spare), AT_FDCWD, os.fsencode(path), RENAME_EXCHANGE) == 0:
            return True
        if ctypes.get_errno() == errno.ENOENT and not os.path.lexists(path):
            try:
                os.rename(spare, path)  # the first write: nothing to exchange with
                return True
            except OSError:
                return False
        return False  # no exchange here (another file system, an old kernel): the spare is kept as it is
    finally:
        os.close(fd)


def _alone(fd: int) -> bool:
    """Whether nothing but `fd` has the file open (a reader that opened it while it was the public copy would
    see the write land in what it reads): a write lease is granted only then. It is let go at once: from now on
    the file is reachable only through the spare's name, which no reader opens."""
    try:
        # Another process opening the spare meanwhile breaks the lease: its holder is told by a signal, SIGURG
        # (ignored) rather than SIGIO (which would end the server).
        fcntl.fcntl(fd, F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, F_SETLEASE, fcntl.F_WRLCK)
    except OSError:
        return False  # someone has it open, or no leases here: the caller writes a new file
    fcntl.fcntl(fd, F_SETLEASE, fcntl.F_UNLCK)
    return True


def _spare_fd(spare: Path, mode: int) -> int:
    """The spare, opened for writing: this process's own regular file with one link, made anew when what stands
    there is anything else (only that name is removed, never followed); -1 when it cannot be had."""
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    for _attempt in range(3):
        try:
            fd = os.open(spare, flags)
        except FileNotFoundError:
            try:
                return os.open(spare, flags | os.O_CREAT | os.O_EXCL, mode)
            except FileExistsError:
                continue
            except OSError:
                return -1
        except OSError:  # a symlink (ELOOP), a folder: not a spare
            fd = -1
        if fd >= 0:
            found = os.fstat(fd)
            if stat.S_ISREG(found.st_mode) and found.st_nlink == 1 and found.st_uid == os.geteuid():
                return fd
            os.close(fd)
        try:
            if os.path.isdir(spare) and not os.path.islink(spare):
                return -1
            os.unlink(spare)
        except OSError:
            return -1
    return -1


AT_FDCWD = -100
_libc_handle: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    global _libc_handle
    if _libc_handle is None:
        _libc_handle = ctypes.CDLL(None, use_errno=True)
    return _libc_handle


_umask_value: int | None = None


def _umask() -> int:
    """This process's umask (read once: the server never changes it)."""
    global _umask_value
    if _umask_value is None:
        try:
            with open("/proc/self/status", "rb") as handle:
                found = [line for line in handle if line.startswith(b"Umask:")]
            _umask_value = int(found[0].split()[1], 8)
        except (OSError, IndexError, ValueError):
            _umask_value = 0o022
    return _umask_value


def own_dir(root: Path, *parts: str, replace_links: bool = False) -> Path:
    """`root/parts...`, created as needed, where every component is a real directory: a symlink planted in the
    server's own folders would make it write outside the project. With `replace_links` (folders that only the
    server owns) such a symlink is removed (the link only, never what it points to) and a real directory made;
    otherwise, and for a file standing there, it is refused."""
    path = os.fspath(root)  # a plain string until the end: this runs several times per save
    for name in (piece for part in parts for piece in part.split("/") if piece):
        path = os.path.join(path, "__up__" if name == ".." else name)
        for _attempt in range(3):
            mode = _mode(path)  # one system call for the folder that exists, as it does but the first time
            if mode is None:
                try:
                    os.mkdir(path, 0o755)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise SessionError(f"cannot create {path}: {exc.strerror}") from None
                mode = os.lstat(path).st_mode
            if stat.S_ISDIR(mode):
                break
            if not (replace_links and stat.S_ISLNK(mode)):
                raise SessionError(
                    f"{path} is not a real directory (a symlink or a file stands there); the server keeps its "
                    "files only in real directories of its own: move it aside"
                )
            os.unlink(path)
        else:
            raise SessionError(f"{path} keeps being replaced by a symlink; stop what does it")
    return Path(path)


def _mode(path: str) -> int | None:
    """What stands at `path` (None: nothing, or it cannot be read: the mkdir then says why)."""
    try:
        return os.lstat(path).st_mode
    except OSError:
        return None


def open_regular(path: Path, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """Open a regular file without following a symlink and without ever blocking (a FIFO or a device standing
    at `path` would hang a plain open or read). Raises OSError for anything but a regular file."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_own(path: Path, flags: int, mode: int = 0o644) -> int:
    """One of the server's own files (a run's log) opened for writing, created when missing: never through a
    symlink, never in a way that can block (a FIFO would hold the open, or the first write past its pipe's size,
    for good: the run's deadline and a cancel with it), and never a file that is also another name's (a hard
    link to a file of the user's would have it truncated). Anything but a regular file with one link standing at
    `path` is removed, the name only, and a new file made; a folder is refused. `O_TRUNC` in `flags` empties the
    file once it is known to be such a file."""
    truncate = bool(flags & os.O_TRUNC)
    flags &= ~os.O_TRUNC
    for _attempt in range(3):
        try:
            found = os.lstat(path)
        except FileNotFoundError:
            found = None
        if found is not None and not _own_file(found):
            if stat.S_ISDIR(found.st_mode):
                raise IsADirectoryError(errno.EISDIR, f"{path} is a folder, where the server keeps a file")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        try:  # O_NONBLOCK: what stands there may have changed since the look above
            fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO):  # a link or a FIFO, put there meanwhile
                continue
            raise
        if _own_file(os.fstat(fd)):
            os.set_blocking(fd, True)
            if truncate:
                os.ftruncate(fd, 0)
            return fd
        os.close(fd)
    raise OSError(
        errno.EAGAIN, f"{path} keeps being replaced by something other than a file; stop what does it"
    )


def _own_file(found: os.stat_result) -> bool:
    return stat.S_ISREG(found.st_mode) and found.st_nlink == 1


def read_regular(path: Path) -> bytes:
    """The content of a regular file (see `open_regular`)."""
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def copy_regular(source: Path, dest: Path) -> None:
    """Copy a regular file's bytes to `dest` (atomically, never through a symlink at either end)."""
    fd = open_regular(source)
    with os.fdopen(fd, "rb") as handle:
        atomic_write(dest, iter(lambda: handle.read(1 << 20), b""), 0o644)


def unused_path(folder: Path, name: str) -> Path:
    """`folder/name`, or `folder/<n>-name` when that is taken: a copy kept for the user never replaces an earlier
    one (run ids start again at r1 in every session)."""
    where, number = folder / name, 1
    while os.path.lexists(where):
        number += 1
        where = folder / f"{number}-{name}"
    return where


Fingerprint = tuple[int, int, int, int, int]


def fingerprint(path: Path) -> Fingerprint | None:
    """Size, times and inode: any write changes the ctime, which `os.utime` cannot put back."""
    try:
        return _print(os.lstat(path))
    except OSError:
        return None


def _print(st: os.stat_result) -> Fingerprint:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode)


def append_synced(path: Path, data: bytes, sync: bool = True) -> tuple[int, Fingerprint]:
    """Append, flush and fsync (unless `sync` is False); a failed append is undone. Returns the offset the data
    starts at, and the file's fingerprint as this write left it, taken from the descriptor written through (never
    a later swap's)."""
    fd = open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)  # never a symlink, FIFO or device
    try:
        start = os.fstat(fd).st_size
        written = 0
        try:
            while written < len(data):
                written += os.write(fd, data[written:])
            if sync:
                os.fsync(fd)
        except OSError:
            if (
                written
            ):  # a full disk: the file is left as it was, never with half a line a retry would follow
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
            raise
        return start, _print(os.fstat(fd))
    finally:
        os.close(fd)


NO_FILE: Fingerprint = (-1, -1, -1, -1, -1)  # matches no file: the next comparison finds it changed


def write_at(path: Path, offset: int, data: bytes, sync: bool = True) -> Fingerprint:
    """Write `data` at `offset` and end the file there (an append to a file this process alone writes); a
    failed write is undone. Whatever another process appended is cut, and its bytes never sit under ours.
    Returns the file's fingerprint as this write left it, or `NO_FILE` when it was shorter than `offset` (cut
    by another process: the caller's next comparison then restores it)."""
    fd = _open_alone(path)
    try:
        cut = os.fstat(fd).st_size < offset
        written = 0
        try:
            while written < len(data):
                written += os.pwrite(fd, data[written:], offset + written)
            os.ftruncate(fd, offset + len(data))
            if sync:
                os.fsync(fd)
        except OSError:
            if (
                written
            ):  # a full disk: the file is left as it was, never with half a line a retry would follow
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, offset)
            raise
        return NO_FILE if cut else _print(os.fstat(fd))
    finally:
        os.close(fd)


def _open_alone(path: Path, create: bool = True) -> int:
    """A record of the server's opened for writing in place (`write_at` cuts what follows its write): never a
    symlink, FIFO or device, and never a file that is also another name's (a hard link to a file of the user's
    would have it cut): such a name is first made a copy of its own, the other name's file left as it was."""
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    fd = open_regular(path, flags)  # never a symlink, FIFO or device
    if os.fstat(fd).st_nlink == 1:
        return fd
    with os.fdopen(fd, "rb") as handle:
        atomic_write(path, iter(lambda: handle.read(1 << 20), b""), 0o644, sync=False)
    fd = open_regular(path, flags)
    if os.fstat(fd).st_nlink != 1:
        os.close(fd)
        raise OSError(errno.EAGAIN, f"{path} keeps being linked to another file; stop what does it")
    return fd


def open_read(path: Path) -> BinaryIO:
    """Open one of the server's files for reading: never through a symlink, never blocking on a FIFO."""
    return os.fdopen(open_regular(path), "rb")


def cut_torn_line(path: Path) -> None:
    """A server killed mid-append leaves a line without its newline: cut it off."""
    with os.fdopen(_open_alone(path, create=False), "rb+") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        back = min(size, 1 << 20)
        handle.seek(size - back)
        chunk = handle.read(back)
        cut = chunk.rfind(b"\n")
        handle.truncate(size - back + cut + 1 if cut >= 0 else 0)
        handle.flush()
        os.fsync(handle.fileno())
