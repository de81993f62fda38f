"""Run a command where the Landlock syscalls are refused, as in a container whose seccomp profile does not
know them: `python no_landlock.py COMMAND [ARGS...]`. A seccomp filter (inherited, cannot be removed) answers
EPERM to landlock_create_ruleset / add_rule / restrict_self and allows everything else."""

import ctypes
import os
import sys

ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}[os.uname().machine]
LD_W_ABS, JEQ, JGT, RET = 0x20, 0x15, 0x25, 0x06
ALLOW, ERRNO_EPERM = 0x7FFF0000, 0x00050000 | 1


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
    Filter(LD_W_ABS, 0, 0, 4),  # the architecture: another one is let through untouched
    Filter(JEQ, 1, 0, ARCH),
    Filter(RET, 0, 0, ALLOW),
    Filter(LD_W_ABS, 0, 0, 0),  # the syscall number
    Filter(JGT, 0, 2, 443),  # nr > 443 ? next : ALLOW (index 7)
    Filter(JGT, 1, 0, 446),  # nr > 446 ? ALLOW (index 7) : next
    Filter(RET, 0, 0, ERRNO_EPERM),
    Filter(RET, 0, 0, ALLOW),
]
array = (Filter * len(program))(*program)
libc = ctypes.CDLL(None, use_errno=True)
if (
    libc.prctl(38, 1, 0, 0, 0) != 0
    or libc.prctl(22, 2, ctypes.byref(Program(len(program), array)), 0, 0) != 0
):
    sys.exit(f"seccomp setup failed: {os.strerror(ctypes.get_errno())}")
os.execvp(sys.argv[1], sys.argv[1:])
