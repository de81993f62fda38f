"""A build may remove and recreate its output directories (`rimraf dist`, `rm -rf dist && mkdir dist`), and
nothing else of the project: the keeper answers those two calls for exactly those directories.

Standard library only, imported by `confine.py` by path. Why not let the run really remove `dist`: a writable
output directory is a mount point in the view (so `rmdir` answers EBUSY), Landlock's rule for it is tied to its
inode (a new `dist` would be writable only through a rule on the project itself, which would open every new
name at its top level), and removing an entry needs the project directory writable (its mode and owner then
too). So the directory stays, with its mount and its rule, and only the last step is answered:
- `rmdir` (and `unlinkat(AT_REMOVEDIR)`) of an output directory that the run has emptied answers success and
  leaves it in place, empty;
- `mkdir` (`mkdirat`) of an output directory that is there and empty answers success;
- while it is not empty, they answer ENOTEMPTY and EEXIST, as for any directory (a mount point in a read-only
  parent would answer EROFS, which tools such as Node's `rmSync` do not expect before emptying it).
Every other `rmdir` and `mkdir` goes on unchanged (the kernel decides, with the run's own rights): the keeper
never acts for the run, it only answers "done" where the result is already what was asked, so a run cannot
use it to remove, rename or create anything. The answers come from a seccomp filter's user notifications
(SECCOMP_RET_USER_NOTIF): the command installs the filter before Landlock and hands the listening descriptor
to its keeper, and keeps no copy of it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import select
import signal
import socket
import struct
import time

# (rmdir, mkdir, mkdirat, unlinkat, seccomp, arch token); -1: no such call on that architecture
_SYS = {
    "x86_64": (84, 83, 258, 263, 317, 0xC000003E),
    "aarch64": (0xFFFFFFFF, 0xFFFFFFFF, 34, 35, 277, 0xC00000B7),
}
AT_FDCWD, AT_REMOVEDIR = -100, 0x200
SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER = 1, 1 << 3
NOTIF_RECV, NOTIF_SEND, FLAG_CONTINUE = 0xC0502100, 0xC0182101, 1
_NOTIF = struct.Struct("=QIIiIQ6Q")  # struct seccomp_notif: id, pid, flags, then seccomp_data
_RESPONSE = struct.Struct("=QqiI")  # struct seccomp_notif_resp: id, val, error, flags


class _Filter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Filter))]


def install_listener(libc: ctypes.CDLL) -> int:
    """In the command, with no_new_privs set: the filter that sends rmdir/mkdir to a listener; returns the
    listening descriptor (to be sent to the keeper and closed)."""
    rmdir, mkdir, mkdirat, unlinkat, seccomp, arch = _SYS[os.uname().machine]
    ld, jeq, jset, ret = 0x20, 0x15, 0x45, 0x06
    notify, allow = 0x7FC00000, 0x7FFF0000
    program = [
        _Filter(ld, 0, 0, 4),  # 0: arch
        _Filter(jeq, 1, 0, arch),  # 1: ours -> 3
        _Filter(ret, 0, 0, allow),  # 2: (another filter refuses foreign calls)
        _Filter(ld, 0, 0, 0),  # 3: the call
        _Filter(jeq, 5, 0, rmdir),  # 4: -> 10
        _Filter(jeq, 4, 0, mkdir),  # 5: -> 10
        _Filter(jeq, 3, 0, mkdirat),  # 6: -> 10
        _Filter(jeq, 0, 3, unlinkat),  # 7: -> 8, else -> 11
        _Filter(ld, 0, 0, 32),  # 8: args[2], unlinkat's flags
        _Filter(jset, 0, 1, AT_REMOVEDIR),  # 9: -> 10, else -> 11
        _Filter(ret, 0, 0, notify),  # 10
        _Filter(ret, 0, 0, allow),  # 11
    ]
    array = (_Filter * len(program))(*program)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(
        seccomp,
        SECCOMP_SET_MODE_FILTER,
        SECCOMP_FILTER_FLAG_NEW_LISTENER,
        ctypes.byref(_Program(len(program), array)),
    )
    if fd < 0:
        raise OSError(ctypes.get_errno(), f"seccomp listener: {os.strerror(ctypes.get_errno())}")
    return int(fd)


def _read_path(pid: int, address: int) -> str | None:
    """The NUL-terminated path at `address` in the memory of `pid` (the keeper may read it: it is an ancestor of
    the run, outside its Landlock domain). None when it cannot be read."""
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    data = b""
    try:
        while len(data) < 4096:
            want = 4096 - (address + len(data)) % 4096  # to the end of the page: the next may be unmapped
            chunk = os.pread(fd, want, address + len(data))
            if not chunk:
                return None
            data += chunk
            if b"\0" in chunk:
                return os.fsdecode(data.split(b"\0", 1)[0])
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


def _signed(value: int) -> int:
    value &= 0xFFFFFFFF  # dirfd is an int: the low half of the register
    return value - (1 << 32) if value >= 1 << 31 else value


class Answerer:
    """The keeper's side: receives the listener from the command, then answers its notifications while it
    waits for signals (a replacement for `sigtimedwait` in the keeper's loop)."""

    def __init__(self, channel: socket.socket, outputs: list[str], wake: set[signal.Signals]) -> None:
        self.channel: socket.socket | None = channel
        self.spent: socket.socket | None = None
        self.listener: int | None = None
        self.outputs = {os.path.realpath(path) for path in outputs}
        mask = (ctypes.c_uint64 * 16)()
        for sig in wake:
            mask[0] |= 1 << (sig - 1)
        libc = ctypes.CDLL(None, use_errno=True)
        self.signals = libc.signalfd(-1, ctypes.byref(mask), os.O_NONBLOCK | os.O_CLOEXEC)
        if self.signals < 0:
            raise OSError(ctypes.get_errno(), "signalfd")

    def next_signal(self, timeout: float) -> int | None:
        """Wait up to `timeout` s for one of the keeper's signals (blocked, read from a signalfd), answering
        notifications meanwhile. Returns the signal, or None after the timeout."""
        end = time.monotonic() + timeout
        while True:
            sig = self._pending_signal()
            if sig is not None:
                return sig
            remaining = end - time.monotonic()
            if remaining <= 0:
                return None
            watched = [self.signals] + [fd for fd in (self._channel_fd(), self.listener) if fd is not None]
            try:
                ready, _, _ = select.select(watched, [], [], remaining)
            except InterruptedError:
                continue
            if self.channel is not None and self.channel.fileno() in ready:
                self._receive_listener()
            if self.listener is not None and self.listener in ready:
                self._answer()

    def _channel_fd(self) -> int | None:
        return self.channel.fileno() if self.channel is not None else None

    def _pending_signal(self) -> int | None:
        try:
            record = os.read(self.signals, 128)
        except BlockingIOError:
            return None
        return struct.unpack_from("=I", record)[0] if record else None

    def _receive_listener(self) -> None:
        assert self.channel is not None
        try:
            _, fds, _, _ = socket.recv_fds(self.channel, 16, 1)
        except OSError:
            fds = []
        # One message, or the end (the command started without one): the channel is no longer watched. It stays
        # open, with what the command sent after the listener (its view's spent copy of the mounts, let go when
        # the keeper ends: `View.let_go`).
        self.spent, self.channel = self.channel, None
        if fds:
            self.listener = fds[0]

    def _answer(self) -> None:
        assert self.listener is not None
        buffer = bytearray(_NOTIF.size)
        try:
            fcntl.ioctl(self.listener, NOTIF_RECV, buffer, True)
        except OSError:
            return  # the caller is gone (or, at the end, no listener is left)
        ident, pid, _flags, nr, _arch, _ip, *args = _NOTIF.unpack(buffer)
        answer = self._answer_for(pid, nr, args)
        response = (
            _RESPONSE.pack(ident, 0, -answer, 0)
            if answer is not None
            else _RESPONSE.pack(ident, 0, 0, FLAG_CONTINUE)
        )
        try:
            fcntl.ioctl(self.listener, NOTIF_SEND, bytearray(response), True)
        except OSError:
            pass  # the caller died meanwhile

    def _answer_for(self, pid: int, nr: int, args: list[int]) -> int | None:
        """For a call on an output directory, the answer (0: done; else an errno): removing it once the run
        emptied it, or making it where it stands empty, is done; while it holds files, ENOTEMPTY or EEXIST.
        None for any other call: the kernel decides."""
        _rmdir, _mkdir, mkdirat, unlinkat = _SYS[os.uname().machine][:4]
        at = nr in (mkdirat, unlinkat)
        path = _read_path(pid, args[1] if at else args[0])
        if not path:
            return None
        dirfd = _signed(args[0]) if at else AT_FDCWD
        try:
            base = os.readlink(f"/proc/{pid}/cwd" if dirfd == AT_FDCWD else f"/proc/{pid}/fd/{dirfd}")
        except OSError:
            return None
        full = os.path.normpath(os.path.join(base, path))
        if full not in self.outputs:
            return None
        try:
            if not os.path.isdir(full) or os.path.islink(full):
                return None
            empty = not os.listdir(full)
        except OSError:
            return None
        removing = nr in (unlinkat, _rmdir)
        return 0 if empty else (errno.ENOTEMPTY if removing else errno.EEXIST)
