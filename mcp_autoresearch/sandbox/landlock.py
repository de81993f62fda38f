"""Landlock: the kernel's file system rules for a run (writes only beneath the writable paths), and the probe of
the ABI the kernel has.

Standard library only, imported by `confine.py` (the keeper) by path, and by the server through it to ask the
kernel which ABI it has (`probe`, which restricts nothing).
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys

_SYS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446), "riscv64": (444, 445, 446)}
PR_SET_NO_NEW_PRIVS = 38
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1

# Filesystem access rights (ABI 1 unless noted).
WRITE_FILE = 1 << 1
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6
PR_CAPBSET_DROP = 24
# Capabilities a root run must not keep, because Landlock does not mediate what they allow: file flags such as
# `chattr +i` on the user's or the server's files (FS_IOC_SETFLAGS on a file opened read-only), kernel modules,
# raw I/O, reboot, the system clock, BPF, mounts and namespaces (CAP_SYS_ADMIN), network configuration, and the
# /proc files (environ, mem) of a process that is not dumpable, such as the server (CAP_SYS_PTRACE; CAP_SYS_ADMIN
# and CAP_PERFMON also open its environ), and device nodes (CAP_MKNOD: a disk's node made beneath a writable path
# opens for writing there, and writes the disk beneath every read-only file).
DROPPED_CAPS = (
    9,
    12,
    16,
    17,
    19,
    21,
    22,
    25,
    27,
    32,
    33,
    38,
    39,
)  # LINUX_IMMUTABLE NET_ADMIN SYS_MODULE SYS_RAWIO
# SYS_PTRACE SYS_ADMIN SYS_BOOT SYS_TIME MKNOD MAC_OVERRIDE MAC_ADMIN PERFMON BPF

_WRITE_ABI1 = (
    WRITE_FILE
    | REMOVE_DIR
    | REMOVE_FILE
    | MAKE_CHAR
    | MAKE_DIR
    | MAKE_REG
    | MAKE_SOCK
    | MAKE_FIFO
    | MAKE_BLOCK
)
_WRITE_ABI1 |= MAKE_SYM


class ConfineError(Exception):
    """Landlock is missing or refused; the message says why, in a few words."""


def libc_handle() -> ctypes.CDLL:
    """The C library, loaded once per process (a fork inherits it: each new handle looks every function up
    again, on a run's path)."""
    if not _LOADED:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        _LOADED.append(libc)
    return _LOADED[0]


_LOADED: list[ctypes.CDLL] = []


def _syscalls() -> tuple[int, int, int]:
    machine = os.uname().machine
    if not sys.platform.startswith("linux"):
        raise ConfineError(f"Landlock is a Linux feature (this is {sys.platform})")
    if machine not in _SYS:
        raise ConfineError(f"Landlock syscall numbers are not known for {machine}")
    return _SYS[machine]


def probe() -> int:
    """The Landlock ABI version of the running kernel; ConfineError with the reason when there is none."""
    create, _, _ = _syscalls()
    libc = libc_handle()
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(create, None, ctypes.c_size_t(0), ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    if abi < 0:
        err = ctypes.get_errno()
        reasons = {
            38: "the kernel has no Landlock (before 5.13, or built without it)",  # ENOSYS
            95: "Landlock is disabled at boot (lsm= does not list landlock)",  # EOPNOTSUPP
            1: "the syscalls are blocked here (a container's seccomp profile?)",  # EPERM
        }
        raise ConfineError(reasons.get(err, f"landlock_create_ruleset failed: {os.strerror(err)}"))
    return int(abi)


def write_rights(abi: int) -> int:
    """Every write-type right this ABI knows: the rights the ruleset handles, and grants beneath writable dirs."""
    rights = _WRITE_ABI1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    return rights


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def build_ruleset(writable: list[str], scope_signal: bool = True) -> tuple[int, int]:
    """A ruleset fd that denies every write except beneath `writable` (paths that do not exist are skipped),
    and, with ABI >= 6, signals out of the domain. Returns (fd, abi). Restricts nothing by itself."""
    abi = probe()
    create = _syscalls()[0]
    libc = libc_handle()
    libc.syscall.restype = ctypes.c_long
    handled = write_rights(abi)
    # Scoped: signals and abstract unix sockets of processes outside the run (the server, the user's session).
    scoped = SCOPE_SIGNAL | SCOPE_ABSTRACT_UNIX_SOCKET
    attr = _RulesetAttr(handled, 0, scoped if (scope_signal and abi >= 6) else 0)
    size = 24 if abi >= 6 else 8
    fd = libc.syscall(create, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if fd < 0:
        raise ConfineError(f"landlock_create_ruleset failed: {os.strerror(ctypes.get_errno())}")
    allow_beneath(int(fd), abi, writable)
    return int(fd), abi


def allow_beneath(ruleset_fd: int, abi: int, paths: list[str]) -> None:
    """Add to the ruleset: every write right beneath each directory of `paths`, writing (not creating or
    removing) for each file; paths that do not exist are skipped."""
    for path in paths:
        try:
            target = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue  # nothing there to allow
        try:
            allow_file(ruleset_fd, abi, target, path)
        finally:
            os.close(target)


def allow_file(ruleset_fd: int, abi: int, target: int, path: str) -> None:
    """Add to the ruleset the file open as `target` (an O_PATH descriptor of `path`): every write right beneath
    it for a directory, writing (not creating or removing) for a file. A failure closes the ruleset."""
    libc = libc_handle()
    handled = write_rights(abi)
    file_rights = WRITE_FILE | (TRUNCATE if abi >= 3 else 0)
    is_dir = stat.S_ISDIR(os.fstat(target).st_mode)
    rule = _PathBeneathAttr(handled if is_dir else file_rights, target)
    if (
        libc.syscall(
            _syscalls()[1],
            ctypes.c_int(ruleset_fd),
            ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
            ctypes.byref(rule),
            ctypes.c_uint32(0),
        )
        < 0
    ):
        err = ctypes.get_errno()
        os.close(ruleset_fd)
        raise ConfineError(f"landlock_add_rule({path}) failed: {os.strerror(err)}")


def restrict_self(ruleset_fd: int) -> None:
    """no_new_privs, then the ruleset: from here on this process and every descendant are confined."""
    _, _, restrict = _syscalls()
    libc = libc_handle()
    libc.syscall.restype = ctypes.c_long
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise ConfineError(f"prctl(NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}")
    drop_capabilities(libc)
    if libc.syscall(restrict, ctypes.c_int(ruleset_fd), ctypes.c_uint32(0)) < 0:
        raise ConfineError(f"landlock_restrict_self failed: {os.strerror(ctypes.get_errno())}")


def drop_capabilities(libc: ctypes.CDLL) -> None:
    """Remove DROPPED_CAPS from the bounding set and from the inheritable set (which lowers them in the ambient
    set too), so neither this process after `exec` nor any descendant holds them. The bounding set alone is not
    enough: root regains at `exec` every capability of its inheritable set, bounding set or not (a container
    runtime may start root with its default capabilities inheritable, CAP_MKNOD among them; a service may be
    given ambient ones). Without CAP_SETPCAP (not root) the bounding set stays, and lowering the inheritable
    set needs no privilege."""
    for cap in DROPPED_CAPS:
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    header, data = CapHeader(CAP_VERSION_3, 0), (CapData * 2)()
    if libc.capget(ctypes.byref(header), data) == 0:
        for cap in DROPPED_CAPS:
            data[cap // 32].inheritable &= ~(1 << (cap % 32))
        libc.capset(ctypes.byref(header), data)


CAP_VERSION_3 = 0x20080522


class CapHeader(ctypes.Structure):
    """capget/capset's header (the structures of <linux/capability.h>, version 3: two data words)."""

    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]
