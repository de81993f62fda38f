"""The private view itself (see `namespaces.py` for what it is and the namespaces around it), in two steps:
made before the request is known (`View`, in a standby command process, `standby.py`, or in a command forked
for its request), finished with the request's paths (`View.finish`). Standard library only, like `confine.py`,
which imports it by path.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import stat
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING or __package__:
    from . import namespaces
else:  # run as a script's sibling: imported by path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import namespaces

    del sys.path[0]


class _DetachedTreeRefused(namespaces.ViewError):
    """The kernel copies nothing from a detached tree (before Linux 6.15)."""


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _hidden_dirs(extra: list[str]) -> list[str]:
    """The directories to hide that exist as real directories (a link such as /var/run -> /run is covered
    through its target), $XDG_RUNTIME_DIR when it lies elsewhere, the caller's `extra` ones, outermost first
    (one beneath another is hidden with it)."""
    found: list[str] = []
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    candidates = {
        os.path.realpath(path)
        for path in (*namespaces.HIDDEN, *([runtime] if runtime.startswith("/") else []), *extra)
    }
    for real in sorted(candidates, key=len):
        if real != "/" and os.path.isdir(real) and not any(_under(real, done) for done in found):
            found.append(real)
    return found


def _empty_file(directory: str) -> str | None:
    """An empty file made in a hidden `directory`'s tmpfs (before it is made read-only), to cover the records;
    None where it cannot be made."""
    path = os.path.join(directory, ".autoresearch-empty")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        return path if stat.S_ISREG(info.st_mode) and info.st_size == 0 else None
    finally:
        os.close(fd)


def _clone(
    libc: ctypes.CDLL, path: str, read_only: bool, within: int = namespaces.AT_FDCWD, devices: bool = False
) -> int:
    """A detached copy of the mounts at `path` (relative to the tree `within`, when given), read-only if
    asked, without devices unless asked (a copy shown to a run is never under /dev: `_copies`)."""
    fd = namespaces._check(
        libc.syscall(
            namespaces._numbers()[3],
            within,
            os.fsencode(path),
            ctypes.c_uint(namespaces.OPEN_TREE_CLONE | namespaces.AT_RECURSIVE | os.O_CLOEXEC),
        ),
        f"open_tree({path})",
    )
    attr = (0 if devices else namespaces.MOUNT_ATTR_NODEV) | (
        namespaces.MOUNT_ATTR_RDONLY if read_only else 0
    )
    if attr:
        namespaces._check(
            _setattr(libc, fd, b"", attr, 0, namespaces.AT_EMPTY_PATH), f"mount_setattr({path})"
        )
    return fd


def _setattr(
    libc: ctypes.CDLL, fd: int, path: bytes, add: int, clear: int, flags: int = 0, recursive: bool = True
) -> int:
    """mount_setattr on the mount at `path` (relative to `fd`), and every mount beneath it when `recursive`."""
    attr = _MountAttr(add, clear, 0, 0)
    return int(
        libc.syscall(
            namespaces._numbers()[5],
            fd,
            path,
            ctypes.c_uint(flags | (namespaces.AT_RECURSIVE if recursive else 0)),
            ctypes.byref(attr),
            ctypes.c_size_t(32),
        )
    )


def _attach(libc: ctypes.CDLL, fd: int, path: str, is_dir: bool) -> None:
    """Mount the detached copy `fd` at `path`, making the mount point first when a tmpfs hid it."""
    if is_dir:
        os.makedirs(path, exist_ok=True)
    elif not os.path.lexists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    namespaces._check(
        libc.syscall(
            namespaces._numbers()[4],
            fd,
            b"",
            namespaces.AT_FDCWD,
            os.fsencode(path),
            ctypes.c_uint(namespaces.MOVE_MOUNT_F_EMPTY_PATH),
        ),
        f"move_mount({path})",
    )
    os.close(fd)


def build_view(
    writable: list[str],
    cwd: str,
    network: bool,
    extra_read: list[str] | None = None,
    hide: list[str] | None = None,
    records: list[str] | None = None,
) -> list[str]:
    """In the command's process, a PID 1 of the keeper's namespaces, before Landlock and `exec`: the view
    described in the module docstring (`View`, made and finished at once). Returns the fresh scratch
    directories (Landlock must allow writes there too). Raises namespaces.ViewError."""
    real = resolved([*writable, cwd, *(extra_read or [])])
    hide_dirs = directories(hide or [])
    made = View(hide or [], network)
    scratch = made.finish(writable, cwd, extra_read or [], hide or [], real, records or [], hide_dirs)
    made.let_go(None)
    return scratch


class View:
    """The view in two steps. Made (`__init__`) before the request is known, in a standby command process
    (`standby.py`): its own mount namespace, every mount read-only, the hidden directories under empty tmpfs,
    the block devices and the user's terminals hidden, /proc of its PID namespace, `lo`; and a detached copy of
    every mount as it was before (`self.root`), from which the request's paths are shown again. Finished
    (`finish`) with the request: its writable paths read-write and its working directory read-only where a
    hidden directory covers them, what it hides besides (the hidden set follows the request's own list)."""

    def __init__(self, hide: list[str], network: bool) -> None:
        libc = self.libc = namespaces._libc()
        namespaces._check(
            libc.syscall(namespaces._numbers()[0], ctypes.c_ulong(namespaces.CLONE_NEWNS)), "unshare(mount)"
        )
        namespaces._check(
            libc.mount(None, b"/", None, ctypes.c_ulong(namespaces.MS_REC | namespaces.MS_PRIVATE), None),
            "make / private",
        )
        self.root = _clone(libc, "/", False, devices=True)  # taken before anything is hidden or read-only
        self.spent: list[int] = []  # `root` once the request's paths were copied from it (see `let_go`)
        self.covers: dict[str, tuple[int, int]] = {}  # hidden directory -> its tmpfs (device, inode)
        self.hide = directories(hide)
        self.hidden = _hidden_dirs(self.hide)
        namespaces._check(
            _setattr(
                libc, namespaces.AT_FDCWD, b"/", namespaces.MOUNT_ATTR_RDONLY | namespaces.MOUNT_ATTR_NODEV, 0
            ),
            "make every mount read-only, without devices",
        )
        self._devices_in_dev()
        self.scratch = [directory for directory in self.hidden if self._cover(directory)]
        self.devices: list[str] | None = None  # the list of block devices last hidden
        self._hide_devices()
        self.terminals = namespaces._private_terminals(libc)
        # Read-only, as Landlock keeps it: a run's process may lower its own OOM score (command.py) without
        # privilege, and without Landlock a writable /proc let it (the server the OOM killer's choice again).
        proc_flags = namespaces.MS_RDONLY | namespaces.MS_NOSUID | namespaces.MS_NODEV | namespaces.MS_NOEXEC
        namespaces._check(
            libc.mount(b"proc", b"/proc", b"proc", ctypes.c_ulong(proc_flags), None), "mount /proc"
        )
        if not network:
            namespaces.loopback_up()

    def _devices_in_dev(self) -> None:
        """Device nodes open only in /dev: every mount was made without devices, /dev and the mounts under it
        (a container's devices are often bind mounts there) get them back. A node anywhere else, a disk's in a
        chroot's or an image's folder, opens nothing (a root run could read around every mount through it).
        /dev is made a mount of its own first when it is a folder of /'s. Where a user namespace may not give
        devices back to a mount in /dev (the host made it without: a sandbox's /dev tmpfs, /dev/shm), /dev and
        each mount under it get them one by one, those refused staying as the host has them (a device
        bind-mounted there, a GPU's in a container or one of a sandbox's /dev, still opens)."""
        libc = self.libc
        if not os.path.ismount("/dev"):
            namespaces._check(
                libc.mount(
                    b"/dev", b"/dev", None, ctypes.c_ulong(namespaces.MS_BIND | namespaces.MS_REC), None
                ),
                "make /dev a mount",
            )
        if _setattr(libc, namespaces.AT_FDCWD, b"/dev", 0, namespaces.MOUNT_ATTR_NODEV) == 0:
            return
        for point in [
            "/dev",
            *(namespaces.mounts_under("/dev") or []),
        ]:  # one by one: one refused was without devices on the host
            _setattr(
                libc, namespaces.AT_FDCWD, os.fsencode(point), 0, namespaces.MOUNT_ATTR_NODEV, recursive=False
            )

    def _hide_devices(self) -> None:
        """The null device over each block device the view shows (a root run owns root's disks: reading one
        reads around every mount): when the view is made, and again with the request when /dev changed since (a
        disk plugged in, a loop device set up, one made anew at a hidden one's name: its cover went with the
        old node). The list of /dev read again here holds only the nodes not hidden yet (a hidden one is the
        null device, not a block device)."""
        found = namespaces._block_devices()
        if found is self.devices:
            return  # /dev unchanged since the list was read: all of them are hidden
        for device in found:
            bound = self.libc.mount(
                b"/dev/null", os.fsencode(device), None, ctypes.c_ulong(namespaces.MS_BIND), None
            )
            if (
                bound != 0 and ctypes.get_errno() != errno.ENOENT
            ):  # one removed since /dev was read: nothing to hide
                raise namespaces.ViewError(f"hide {device}: {os.strerror(ctypes.get_errno())}")
        self.devices = found

    def _cover(self, directory: str) -> bool:
        """An empty tmpfs over `directory`; True for a scratch directory (anyone's, 1777, of a bounded size).
        A directory removed since it was listed has nothing to hide: it is left uncovered (`_covered` says so,
        and a request finds one made anew at its name, `_rehide`)."""
        size = next(
            (
                namespaces.SCRATCH_SIZES[s]
                for s in namespaces.SCRATCH
                if _under(directory, os.path.realpath(s))
            ),
            None,
        )
        mounted = self.libc.mount(
            b"tmpfs",
            os.fsencode(directory),
            b"tmpfs",
            ctypes.c_ulong(namespaces.MS_NOSUID | namespaces.MS_NODEV),
            f"mode=1777,size={size}".encode() if size else b"mode=755",
        )
        if mounted != 0 and ctypes.get_errno() == errno.ENOENT and not os.path.lexists(directory):
            return False
        namespaces._check(mounted, f"tmpfs on {directory}")
        self.covers[directory] = _identity(directory)
        return size is not None

    def _covered(self, directory: str) -> bool:
        """Whether the tmpfs this view put on `directory` still covers it (a folder removed since, or moved
        away, took its cover with it: the one at that name now is another, not hidden)."""
        try:
            return _identity(directory) == self.covers.get(directory)
        except OSError:
            return False

    def _rehide(self, wanted: list[str]) -> None:
        """The hidden directories of a request whose own list (`wanted`: its directories, `directories`)
        differs from the one the view was made for, or when one of them is no longer the folder that was hidden
        (deleted, or moved away and made anew since: its tmpfs went with it): the tmpfs still over each is taken
        away (innermost first), the request's are mounted."""
        hidden = _hidden_dirs(wanted)
        if wanted == self.hide and hidden == self.hidden and all(map(self._covered, hidden)):
            return
        for directory in sorted(self.hidden, key=len, reverse=True):
            if (
                self._covered(directory)
                and self.libc.umount2(os.fsencode(directory), 2) != 0  # MNT_DETACH
                and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT)  # gone meanwhile
            ):
                raise namespaces.ViewError(f"unhide {directory}: {os.strerror(ctypes.get_errno())}")
        self.hide, self.hidden, self.covers = wanted, hidden, {}
        self.scratch = [directory for directory in self.hidden if self._cover(directory)]

    def finish(
        self,
        writable: list[str],
        cwd: str,
        extra_read: list[str],
        hide: list[str],
        real: dict[str, str],
        records: list[str] | None = None,
        hide_dirs: list[str] | None = None,
    ) -> list[str]:
        """Show the request's paths again (see the class) and move to `cwd`; before Landlock and `exec`. `real`:
        those paths resolved outside the view (`resolved`); `hide_dirs`: the directories among `hide`, as seen
        outside the view too (`directories`: inside, one under a hidden directory is not there, and the view
        would be hidden anew for each run of a project under /tmp). Returns the fresh scratch directories
        (Landlock must allow writes there too)."""
        libc = self.libc
        self._rehide(directories(hide) if hide_dirs is None else hide_dirs)
        self._hide_devices()
        copies = self._copies(writable, [cwd, *extra_read], real)
        if (
            self.root >= 0
        ):  # nothing was copied from it: a writable copy of every mount must not reach the run
            self.spent.append(self.root)
            self.root = -1
        for path, is_dir, fd in copies:
            _attach(libc, fd, path, is_dir)
        attached = [path for path, _, _ in copies]
        again: list[str] = []
        for directory in sorted({os.path.realpath(path) for path in hide if os.path.isdir(path)}, key=len):
            # A copy taken before the directory was hidden shows it again: hidden once more, on the copy.
            if any(_under(directory, path) for path in attached) and not any(
                _under(directory, d) for d in again
            ):
                again.append(directory)
                namespaces._check(
                    libc.mount(
                        b"tmpfs",
                        os.fsencode(directory),
                        b"tmpfs",
                        ctypes.c_ulong(namespaces.MS_NOSUID | namespaces.MS_NODEV),
                        b"mode=755",
                    ),
                    f"tmpfs on {directory}",
                )
                self._read_only(directory)
        files = [path for path in (records or []) if os.path.isfile(path) and not os.path.islink(path)]
        empty: str | None = None
        for directory in self.hidden:
            if directory not in self.scratch and self._covered(directory):
                if files and empty is None:
                    empty = _empty_file(directory)
                self._read_only(directory)  # its mount points are made: nothing of a run's is written there
        for (
            path
        ) in hide:  # files still visible (a token, the target from the evaluation): no file there at all
            if os.path.isfile(path) and not os.path.islink(path):
                self._cover_file("/dev/null", path, read_only=False)
        for (
            path
        ) in files:  # the server's records: read empty, a write refused (to /dev/null it would succeed)
            self._cover_file(empty or "/dev/null", path, read_only=empty is not None)
        os.chdir(cwd)  # the working directory as the view shows it (not the hidden mount beneath)
        namespaces._reopen_standard_files()
        return [*self.scratch, *self.terminals]

    def _cover_file(self, source: str, path: str, read_only: bool) -> None:
        """`source` bound over the file at `path`, that mount read-only when asked."""
        namespaces._check(
            self.libc.mount(
                os.fsencode(source), os.fsencode(path), None, ctypes.c_ulong(namespaces.MS_BIND), None
            ),
            f"hide {path}",
        )
        if read_only:
            self._read_only(path)

    def _read_only(self, directory: str) -> None:
        """The tmpfs over a hidden `directory` (or a file's cover) read-only (that mount alone: a writable path
        shown again beneath it stays writable). Without Landlock the view alone holds a run: such a tmpfs was writable, up to half
        the machine's memory each, past the scratch folders' bounds."""
        namespaces._check(
            _setattr(
                self.libc,
                namespaces.AT_FDCWD,
                os.fsencode(directory),
                namespaces.MOUNT_ATTR_RDONLY,
                0,
                recursive=False,
            ),
            f"make the mount on {directory} read-only",
        )

    def let_go(self, keeper: socket.socket | None) -> None:
        """Close the copy of every mount as it was, once `finish` is done with it (before Landlock and `exec`:
        a writable copy of every mount must not reach the run). Its last close unmounts the whole copy and
        waits for an RCU grace period: tens of microseconds on a quiet machine, milliseconds on a busy one (a
        reader preempted holds it up), on the run's start. Sent first into the channel to the `keeper` (a standby
        process's), which never reads it there, the copy's last reference is the message's: let go when the
        keeper ends, after the run. The run never holds it: its end of the channel closes at `exec`."""
        for fd in self.spent:
            if keeper is not None:
                try:
                    socket.send_fds(keeper, [b"mounts"], [fd])
                except OSError:
                    pass  # the keeper closed its end: the wait is the run's, as without a keeper
            os.close(fd)
        self.spent = []

    def _copies(
        self, writable: list[str], readable: list[str], real: dict[str, str]
    ) -> list[tuple[str, bool, int]]:
        """Detached copies of the writable paths (read-write) and of the readable ones a hidden directory covers
        (read-only), outermost first, taken from the copy of every mount made before the view, each with where
        it goes: the path resolved (a link to a writable folder stays a link, to the copy of its target)."""
        wanted: list[tuple[str, bool]] = [
            (path, False) for path in writable if not _under(path, "/dev") and not _under(path, "/proc")
        ]
        wanted += [(path, True) for path in readable if any(_under(path, d) for d in self.hidden)]
        if self.root < 0 or not wanted:
            return []
        wanted.sort(key=lambda item: len(item[0]))
        try:
            return self._copies_within(wanted, real)
        except _DetachedTreeRefused:
            return self._copies_attached(wanted, real)

    def _copies_attached(
        self, wanted: list[tuple[str, bool]], real: dict[str, str]
    ) -> list[tuple[str, bool, int]]:
        """`_copies` before Linux 6.15, where a detached tree cannot be copied from: it is attached, for the time
        of the copies, in a tmpfs of the view's own."""
        libc = self.libc
        place = next(iter(self.scratch or self.hidden), None)
        if place is None:
            raise namespaces.ViewError("no hidden directory to work in")
        before = os.path.join(place, f".autoresearch-before-{os.getpid()}")
        os.mkdir(before, 0o700)
        namespaces._check(
            libc.syscall(
                namespaces._numbers()[4],
                self.root,
                b"",
                namespaces.AT_FDCWD,
                os.fsencode(before),
                ctypes.c_uint(namespaces.MOVE_MOUNT_F_EMPTY_PATH),
            ),
            "attach the mounts as they were",
        )
        os.close(self.root)
        self.root = -1
        try:
            found = []
            for path, read_only in wanted:
                was = before + real.get(path, path)
                if os.path.exists(was):  # as it was: a hidden directory may cover it now
                    found.append((real.get(path, path), os.path.isdir(was), _clone(libc, was, read_only)))
            return found
        finally:
            namespaces._check(
                libc.umount2(os.fsencode(before), 2), "detach the mounts as they were"
            )  # MNT_DETACH
            os.rmdir(before)

    def _copies_within(
        self, wanted: list[tuple[str, bool]], real: dict[str, str]
    ) -> list[tuple[str, bool, int]]:
        """`_copies`, each copy taken straight from the detached tree (Linux 6.15 and later: before, the kernel
        refuses, `_DetachedTreeRefused`, and nothing is kept)."""
        found: list[tuple[str, bool, int]] = []
        try:
            for path, read_only in wanted:
                relative = real.get(path, path).lstrip("/") or "."
                try:  # as it was: a hidden directory may cover it now
                    is_dir = stat.S_ISDIR(os.stat(relative, dir_fd=self.root).st_mode)
                except OSError:
                    continue
                try:
                    copy = _clone(self.libc, relative, read_only, self.root)
                except namespaces.ViewError:
                    if ctypes.get_errno() == errno.EINVAL and not found:
                        raise _DetachedTreeRefused from None
                    raise
                found.append((real.get(path, path), is_dir, copy))
        except namespaces.ViewError:
            for _, _, fd in found:
                os.close(fd)
            raise
        self.spent.append(self.root)
        self.root = -1
        return found


def _identity(path: str) -> tuple[int, int]:
    found = os.stat(path)
    return found.st_dev, found.st_ino


def directories(hide: list[str]) -> list[str]:
    """The directories among the paths to hide (the others are files, covered one by one)."""
    return [path for path in hide if os.path.isdir(path)]


def resolved(paths: list[str]) -> dict[str, str]:
    """Each path with its symlinks resolved, as the mounts outside the view show it: where the view copies it
    from (in its copy of the mounts as they were, a link's absolute target would lead into the view instead)."""
    return {path: os.path.realpath(path) for path in paths}
