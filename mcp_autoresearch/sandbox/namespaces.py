"""The private view of the system a confined run sees: Linux namespaces built by the keeper, before Landlock.

Standard library only, like `confine.py`, which imports it by path (the keeper and the launcher start with
`python -I -S`). Landlock refuses mount(2) to a restricted process, so the view is built first, in the
command's own freshly forked process, and Landlock is applied after it (no extra program is started: see the
measurements in BENCHMARKS.md, where bubblewrap plus an interpreter inside it cost about 9 ms a command).

The keeper (`enter_keeper`) moves itself into new PID and IPC namespaces (and a new network namespace when the
network is off; a new user namespace when it is not root), so the command it forks is PID 1 of a PID namespace:
the run sees no other process in its `/proc`, and when the command ends the kernel ends every process of the run.
The command (`build_view`), before `exec`:
1. gets its own mount namespace, every mount private, and every mount read-only: `chmod`, `chown`, `utime` of
   any file outside the writable paths fail with EROFS, whatever Landlock does not mediate (the standard
   descriptors opened outside, such as stdin's /dev/null, are opened again through the view);
2. gets fresh, empty tmpfs over `/tmp`, `/var/tmp`, `/dev/shm`, `/run` (`/var/run`) and `$XDG_RUNTIME_DIR`: the
   user's named unix sockets there (tmux, ssh-agent, docker.sock, the session bus) are not reachable, and
   nothing is shared through them with the user's programs or other runs; the caller may hide more (the Ray
   wrapper: Ray's temp dir and ~/.ray get an empty tmpfs, its token file /dev/null);
3. sees the writable paths (the run's private TMPDIR among them) read-write and its working directory
   read-only again, even where they lie beneath a hidden directory; `/proc` of its own PID namespace; `lo` of
   its own network namespace when the network is off; pseudo-terminals of its own (not the user's terminals);
4. drops every capability (root included: nothing can be remounted) and may not create user namespaces (a
   seccomp filter), so the view cannot be undone from inside.
Nothing here is a policy: the server decides the paths (`isolation.py`).
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING or __package__:
    from .landlock import CAP_VERSION_3, CapData, CapHeader, libc_handle
else:  # run as a script's sibling: imported by path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from landlock import CAP_VERSION_3, CapData, CapHeader, libc_handle

    del sys.path[0]

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 1 << 12, 1 << 14, 1 << 18
AT_FDCWD, AT_EMPTY_PATH, AT_RECURSIVE = -100, 0x1000, 0x8000
OPEN_TREE_CLONE, MOVE_MOUNT_F_EMPTY_PATH, MOUNT_ATTR_RDONLY, MOUNT_ATTR_NODEV = 1, 0x4, 1, 0x4
# Syscall numbers: (unshare, clone, clone3, open_tree, move_mount, mount_setattr), and seccomp's arch token.
_SYS = {
    "x86_64": (272, 56, 435, 428, 429, 442, 0xC000003E),
    "aarch64": (97, 220, 435, 428, 429, 442, 0xC00000B7),
}
# Directories hidden by an empty tmpfs: where named sockets and shared scratch files of other programs live.
HIDDEN = ("/tmp", "/var/tmp", "/dev/shm", "/run", "/var/run")
# Of those, the ones a run may write (each run its own, fresh and empty).
SCRATCH = ("/tmp", "/var/tmp", "/dev/shm")
# The part of the machine's memory each fresh scratch file system of a run may hold (tmpfs's default is half for
# each: together a run could pin 150% of the memory in files no process's memory counts, and the OOM killer then
# ends other programs). /dev/shm stays large: PyTorch's DataLoader passes its batches through it.
SCRATCH_SIZES = {"/tmp": "25%", "/var/tmp": "10%", "/dev/shm": "25%"}


class ViewError(Exception):
    """The view could not be built; the message says which step, in a few words."""


def _libc() -> ctypes.CDLL:
    return libc_handle()


def _numbers() -> tuple[int, ...]:
    if not sys.platform.startswith("linux") or os.uname().machine not in _SYS:
        raise ViewError(f"namespaces are not supported on {sys.platform}/{os.uname().machine}")
    return _SYS[os.uname().machine]


def _check(result: int, what: str) -> int:
    if result < 0:
        raise ViewError(f"{what}: {os.strerror(ctypes.get_errno())}")
    return result


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def enter_keeper(network: bool) -> None:
    """In the keeper, before it forks the command: new PID and IPC namespaces (the command will be their PID 1),
    a new network namespace unless `network`, and a user namespace mapping only this uid when not root (an
    ordinary user may create the others only inside one)."""
    libc = _libc()
    unshare = _numbers()[0]
    flags = CLONE_NEWPID | CLONE_NEWIPC | (0 if network else CLONE_NEWNET)
    uid, gid = os.geteuid(), os.getegid()
    if uid != 0:
        flags |= CLONE_NEWUSER
    _check(libc.syscall(unshare, ctypes.c_ulong(flags)), "unshare")
    if uid != 0:
        try:
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"{uid} {uid} 1\n")
            _write("/proc/self/gid_map", f"{gid} {gid} 1\n")
        except OSError as exc:
            raise ViewError(f"user namespace maps: {exc.strerror}") from None


def _block_devices() -> list[str]:
    """The block devices under /dev, in its folders too (disks, partitions, loop and device-mapper nodes, a
    device given in a folder of its own), and the character devices that reach a disk as one does (NVMe, SCSI
    generic, bsg passthrough: `_reaches_a_disk`). A run in the view has no capability, but as root it still owns
    root's device nodes: a raw disk would show hidden data around every mount. None of them is needed by a run. The list
    is kept while every folder read is unchanged (a node or folder added, removed or renamed changes its
    folder's times), so a spare keeper reads /dev before its request and the run only looks at the folders; a
    folder changed in the last second (by its change time: a modification time may be put back) is read again
    every time (its times may not move for a change made within the same tick of the file system's clock).
    /dev/pts (terminals only) and the scratch folders (a fresh tmpfs in the view) are not read."""
    global _devices_seen
    if _devices_seen is not None and _folder_times(_devices_seen[0]) == _devices_seen[1]:
        return _devices_seen[2]
    times: dict[str, tuple[int, int, int] | None] = {}
    found: list[str] = []
    for folder in BLOCK_FOLDERS:
        _read_folder(folder, times, found)
    settled = time.time_ns() - SETTLED_NS
    trusted = all(stamp is None or max(stamp[1:]) < settled for stamp in times.values())
    _devices_seen = (tuple(times), tuple(times.values()), found) if trusted else None
    return found


def _read_folder(folder: str, times: dict[str, tuple[int, int, int] | None], found: list[str]) -> None:
    """The block devices in `folder` and its folders added to `found`, each folder's times (taken before it is
    read) to `times`."""
    if folder in times or folder in _UNREAD:
        return
    times[folder] = _folder_times((folder,))[0]
    folders: list[str] = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    if entry.is_symlink():
                        continue  # a link to a device shows the node it leads to: hidden there
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(entry.path)
                    else:
                        node = entry.stat(follow_symlinks=False)
                        if stat.S_ISBLK(node.st_mode) or (
                            stat.S_ISCHR(node.st_mode) and _reaches_a_disk(node)
                        ):
                            found.append(entry.path)
                except OSError:
                    continue
    except OSError:
        return
    for inner in folders:
        _read_folder(inner, times, found)


def _reaches_a_disk(node: os.stat_result) -> bool:
    """Whether a character device reads and writes a disk as its block device would (an NVMe namespace's or
    controller's passthrough node, a SCSI generic or bsg node: a read command needs only the node's file
    rights), by the subsystem the kernel names for its numbers, or by a major number a disk's driver holds
    whatever /sys says (SCSI generic, MTD flash: opening such a node with no driver yet loads the driver, which
    then serves it)."""
    major = os.major(node.st_rdev)
    if major in DISK_MAJORS:
        return True
    try:
        link = os.readlink(f"/sys/dev/char/{major}:{os.minor(node.st_rdev)}/subsystem")
    except OSError:
        return False  # no such device (nor a driver the kernel loads for it), or no /sys
    return os.path.basename(link) in DISK_SUBSYSTEMS


BLOCK_FOLDERS = ("/dev",)
DISK_SUBSYSTEMS = ("nvme", "nvme-generic", "scsi_generic", "bsg", "mtd", "ubi")  # character devices that
# reach a disk (raw flash and its UBI volumes among them); the fixed majors of drivers the kernel loads when
# a node of theirs is opened (char-major-21: sg, char-major-90: mtd), so a node made before its driver was
# loaded (no /sys entry yet) is hidden too
DISK_MAJORS = (21, 90)
_UNREAD = ("/dev/pts", "/dev/shm")
SETTLED_NS = 1_000_000_000
# The folders read, their times, the list of block devices found in them.
_devices_seen: tuple[tuple[str, ...], tuple[tuple[int, int, int] | None, ...], list[str]] | None = None


def _folder_times(folders: tuple[str, ...]) -> tuple[tuple[int, int, int] | None, ...]:
    """Each folder's inode, modification and change times (None where it is missing)."""
    found: list[tuple[int, int, int] | None] = []
    for folder in folders:
        try:
            st = os.stat(folder)
        except OSError:
            found.append(None)
            continue
        found.append((st.st_ino, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(found)


def mounts_under(directory: str, including: bool = False) -> list[str] | None:
    """The mount points beneath `directory` (and at it, when `including`) in this mount namespace, outermost
    first, from mountinfo (whose fifth field is the mount point, a space, tab, newline and backslash written in
    octal; its bytes decoded as Python decodes every path, in the file system encoding); None when it cannot be
    read."""
    try:
        with open("/proc/self/mountinfo", "rb") as handle:
            lines = handle.read().splitlines()
        points = {
            os.fsdecode(line.split(b" ")[4].decode("unicode_escape").encode("latin-1"))  # as paths are read
            for line in lines
            if len(line.split(b" ")) > 4
        }
    except (OSError, ValueError):
        return None
    top = directory.rstrip("/") + "/"
    return sorted((p for p in points if p.startswith(top) or (including and p == directory)), key=len)


def forget_block_devices() -> None:
    """After the mount table changed: the list of block devices is read again when next asked for (a node
    bind-mounted over another /dev name changes no folder's times)."""
    global _devices_seen
    _devices_seen = None


def prepare() -> None:
    """In a spare keeper, before its request: what the view needs that is the same for every run."""
    _block_devices()


def _reopen_standard_files() -> None:
    """Descriptors 0-2 opened outside the view (stdin is /dev/null, opened by the server) reach their file's own
    mount, read-write: through them even a read-only view's file could be chmod-ed (a root run: /dev/null to
    000, for every program of the system). Each one that is a file (not a pipe nor a socket) is opened again
    through the view; one the view does not show as the same file becomes /dev/null."""
    import stat

    for fd in (0, 1, 2):
        try:
            old = os.fstat(fd)
        except OSError:
            continue
        if stat.S_ISFIFO(old.st_mode) or stat.S_ISSOCK(old.st_mode):
            continue
        flags = fcntl_flags(fd)
        try:
            fresh = os.open(os.readlink(f"/proc/self/fd/{fd}"), flags | os.O_NOCTTY)
            same = (os.fstat(fresh).st_dev, os.fstat(fresh).st_ino) == (old.st_dev, old.st_ino)
        except OSError:
            fresh, same = -1, False
        if not same:
            if fresh >= 0:
                os.close(fresh)
            fresh = os.open("/dev/null", os.O_RDWR | os.O_NOCTTY)
        os.dup2(fresh, fd)
        os.close(fresh)


def fcntl_flags(fd: int) -> int:
    """The access mode and O_APPEND of `fd`, to open its file again alike."""
    import fcntl

    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    return (flags & os.O_ACCMODE) | (flags & os.O_APPEND)


def _private_terminals(libc: ctypes.CDLL) -> list[str]:
    """A devpts instance of the run's own over /dev/pts (and /dev/ptmx): the user's terminals are not there to
    write to, and the run's own pseudo-terminals still work. Best effort: where the kernel refuses, the host's
    stay (Landlock still holds them to what it allows). Returns what Landlock must allow."""
    options = b"newinstance,ptmxmode=0666,mode=0620"
    if libc.mount(b"devpts", b"/dev/pts", b"devpts", ctypes.c_ulong(MS_NOSUID | MS_NOEXEC), options) != 0:
        return []
    if libc.mount(b"/dev/pts/ptmx", b"/dev/ptmx", None, ctypes.c_ulong(MS_BIND), None) != 0:
        return ["/dev/pts"]
    return ["/dev/pts", "/dev/ptmx"]


def loopback_up() -> None:
    """Bring up `lo` of the new network namespace (127.0.0.1 and ::1 come with it): the run's own loopback."""
    import fcntl
    import socket
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, siocgifflags, request))[1]
        try:
            fcntl.ioctl(sock, siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))
        except OSError as exc:
            raise ViewError(f"loopback up: {exc.strerror}") from None


# ---------------------------------------------------------------------------------------------------------------
# no way back: capabilities and nested user namespaces
# ---------------------------------------------------------------------------------------------------------------
PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, PR_SET_SECCOMP = 24, 47, 4, 22


def drop_all_capabilities(libc: ctypes.CDLL) -> None:
    """Empty the bounding, ambient and inheritable sets: after `exec` the run holds no capability, root
    included (so it can neither remount the view nor bypass file permissions)."""
    cap = 0
    while libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0 or ctypes.get_errno() != 22:  # EINVAL: past the last
        cap += 1
        if cap > 63:
            break
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header, data = CapHeader(CAP_VERSION_3, 0), (CapData * 2)()
    if libc.capget(ctypes.byref(header), data) == 0:
        data[0].inheritable = data[1].inheritable = 0
        libc.capset(ctypes.byref(header), data)


class _Filter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Filter))]


def forbid_user_namespaces(libc: ctypes.CDLL) -> None:
    """A seccomp filter (inherited, permanent; needs no_new_privs): `unshare` and `clone` with CLONE_NEWUSER
    answer EPERM, `clone3` (whose flags a filter cannot read) ENOSYS, so libc falls back to `clone`; system
    calls of another ABI (x32, 32-bit) answer EPERM."""
    numbers = _numbers()
    unshare, clone, clone3, arch = numbers[0], numbers[1], numbers[2], numbers[6]
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    program = [
        _Filter(ld, 0, 0, 4),  # 0: arch
        _Filter(jeq, 1, 0, arch),  # 1: ours -> 3
        _Filter(ret, 0, 0, eperm),  # 2
        _Filter(ld, 0, 0, 0),  # 3: syscall number
        _Filter(jge, 8, 0, 0x40000000),  # 4: x32 -> 13
        _Filter(jeq, 6, 0, clone3),  # 5: -> 12
        _Filter(jeq, 1, 0, unshare),  # 6: -> 8
        _Filter(jeq, 0, 2, clone),  # 7: -> 8, else -> 10
        _Filter(ld, 0, 0, 16),  # 8: args[0], low 32 bits (the flags)
        _Filter(jset, 3, 0, CLONE_NEWUSER),  # 9: -> 13
        _Filter(ret, 0, 0, allow),  # 10
        _Filter(ret, 0, 0, allow),  # 11 (keeps the jump offsets simple)
        _Filter(ret, 0, 0, enosys),  # 12: clone3
        _Filter(ret, 0, 0, eperm),  # 13
    ]
    array = (_Filter * len(program))(*program)
    _check(libc.prctl(PR_SET_SECCOMP, 2, ctypes.byref(_Program(len(program), array)), 0, 0), "seccomp filter")


# The kernel keyrings' system calls (add_key, request_key, keyctl: consecutive numbers), natively and in the 32-bit
# ABI a 64-bit kernel also serves (its seccomp arch token, its numbers).
_KEYRING_CALLS = {
    "x86_64": ((248, 250), 0x40000003, (286, 288)),
    "aarch64": ((217, 219), 0x40000028, (309, 311)),
}


def forbid_keyrings(libc: ctypes.CDLL) -> None:
    """A seccomp filter (inherited, permanent; needs no_new_privs): the keyring calls answer EPERM, in every ABI
    (x32's numbers are the native ones with bit 30 set). The keyrings are in no namespace a run gets: root's
    user keyring is every root process's, the session keyring the server's; a key outlives the run that added
    it, so it would carry anything from one run to the next (and show a root run the host's root keys). Docker's
    default profile refuses them for the same reason; a run needs none. On a machine whose numbers are not
    listed here (Landlock alone on another architecture) nothing is filtered: the run still starts."""
    numbers = _KEYRING_CALLS.get(os.uname().machine)
    if numbers is None or os.uname().machine not in _SYS:
        return
    (first, last), compat, (compat_first, compat_last) = numbers
    ld, jeq, jge, jgt, and_k, ret = 0x20, 0x15, 0x35, 0x25, 0x54, 0x06
    allow, eperm = 0x7FFF0000, 0x00050000 | 1
    program = [
        _Filter(ld, 0, 0, 4),  # 0: arch
        _Filter(jeq, 0, 4, _numbers()[6]),  # 1: ours -> 2, else -> 6
        _Filter(ld, 0, 0, 0),  # 2: syscall number
        _Filter(and_k, 0, 0, 0xBFFFFFFF),  # 3: x32's as the native one
        _Filter(jge, 0, 5, first),  # 4: -> 5, below -> 10
        _Filter(jgt, 4, 5, last),  # 5: above -> 10, else -> 11
        _Filter(jeq, 0, 3, compat),  # 6: the 32-bit ABI -> 7, else -> 10
        _Filter(ld, 0, 0, 0),  # 7: syscall number
        _Filter(jge, 0, 1, compat_first),  # 8: -> 9, below -> 10
        _Filter(jgt, 0, 1, compat_last),  # 9: above -> 10, else -> 11
        _Filter(ret, 0, 0, allow),  # 10
        _Filter(ret, 0, 0, eperm),  # 11
    ]
    array = (_Filter * len(program))(*program)
    _check(libc.prctl(PR_SET_SECCOMP, 2, ctypes.byref(_Program(len(program), array)), 0, 0), "keyring filter")


def seal(libc: ctypes.CDLL) -> None:
    """After the view, before Landlock's restrict_self (which sets no_new_privs first): nothing can undo it."""
    drop_all_capabilities(libc)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS, needed for an unprivileged seccomp filter
        raise ViewError(f"no_new_privs: {os.strerror(ctypes.get_errno())}")
    forbid_user_namespaces(libc)
