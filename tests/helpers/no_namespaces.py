"""Run a command where namespaces cannot be created, as where user namespaces are disabled, restricted by
AppArmor, or refused by a container: `python no_namespaces.py COMMAND [ARGS...]`. A seccomp filter (inherited,
cannot be removed, so nothing started beneath it can lift it) answers EPERM to `unshare` and to `clone` with a
namespace flag, ENOSYS to `clone3` (libc falls back to `clone`), and allows everything else. The server started
under it reports `no namespaces` and gives runs Landlock alone: the way tests force the fallback; a run cannot
use it to weaken itself, since a filter only ever refuses more."""

import ctypes
import os
import sys

ARCH, UNSHARE, CLONE, CLONE3 = {
    "x86_64": (0xC000003E, 272, 56, 435),
    "aarch64": (0xC00000B7, 97, 220, 435),
}[os.uname().machine]
NAMESPACE_FLAGS = 0x7E020000  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
LD_W_ABS, JEQ, JSET, RET = 0x20, 0x15, 0x45, 0x06
ALLOW, ERRNO_EPERM, ERRNO_ENOSYS = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38


class Filter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]


program = [
    Filter(LD_W_ABS, 0, 0, 4),  # 0: the architecture: another one is let through untouched
    Filter(JEQ, 1, 0, ARCH),  # 1: -> 3
    Filter(RET, 0, 0, ALLOW),  # 2
    Filter(LD_W_ABS, 0, 0, 0),  # 3: the syscall number
    Filter(JEQ, 6, 0, UNSHARE),  # 4: -> 11
    Filter(JEQ, 4, 0, CLONE3),  # 5: -> 10
    Filter(JEQ, 0, 2, CLONE),  # 6: -> 7, else -> 9
    Filter(LD_W_ABS, 0, 0, 16),  # 7: clone's flags
    Filter(JSET, 2, 0, NAMESPACE_FLAGS),  # 8: -> 11
    Filter(RET, 0, 0, ALLOW),  # 9
    Filter(RET, 0, 0, ERRNO_ENOSYS),  # 10
    Filter(RET, 0, 0, ERRNO_EPERM),  # 11
]
array = (Filter * len(program))(*program)
libc = ctypes.CDLL(None, use_errno=True)
if (
    libc.prctl(38, 1, 0, 0, 0) != 0
    or libc.prctl(22, 2, ctypes.byref(Program(len(program), array)), 0, 0) != 0
):
    sys.exit(f"seccomp setup failed: {os.strerror(ctypes.get_errno())}")
os.execvp(sys.argv[1], sys.argv[1:])
