"""The server's own process: closed to the other processes of its user, and its secret kept out of /proc.

A run is a process of the same user as the server. Two files of the server's /proc directory would give it the
HTTP token: `environ` (the environment the server started with) and `cmdline` (readable by every process of the
machine). The server is made not dumpable (its `environ`, `mem`, `fd` and `maps` then need CAP_SYS_PTRACE, which
a root run does not keep, and no core dump holds the token), and a token it was given is overwritten in the
memory both files are read from. Linux only; elsewhere both do nothing. This module never exits the process and
never raises.
"""

from __future__ import annotations

import ctypes
import logging

from .landlock import libc_handle

log = logging.getLogger("mcp_autoresearch")

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3
# Fields of /proc/self/stat, counted from the one after the command name: arg_start, arg_end, env_start, env_end.
_ARG_START, _ENV_END = 45, 48


def _libc() -> ctypes.CDLL | None:
    """The C library already loaded in this process (`find_library` would start `ldconfig -p` every time)."""
    try:
        return libc_handle()
    except OSError:
        return None


def close_own_proc() -> bool:
    """Make this process not dumpable (idempotent). True when it is, afterwards. A program it starts is dumpable
    again after `exec`: the launcher, keepers and runs keep their own /proc files readable to the server."""
    libc = _libc()
    if libc is None:
        return False
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("could not make the server not dumpable: errno %d", ctypes.get_errno())
        return False
    return bool(libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0)


def scrub_from_proc(secret: str) -> int:
    """Overwrite every copy of `secret` in this process's startup command line and environment (the memory
    /proc/<pid>/cmdline and /proc/<pid>/environ show) with `*`. Python keeps its own copies of both, so
    `sys.argv` and `os.environ` are unaffected. Returns how many copies were overwritten."""
    needle = secret.encode()
    if len(needle) < 4:
        return 0  # too short to tell from other text: nothing is overwritten
    try:
        with open("/proc/self/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        bounds = [int(value) for value in fields[_ARG_START : _ENV_END + 1]]
    except (OSError, ValueError, IndexError):
        return 0
    count = 0
    for name, start, end in (("cmdline", bounds[0], bounds[1]), ("environ", bounds[2], bounds[3])):
        if not 0 < start < end or end - start > 1 << 24:
            continue
        try:
            with open(f"/proc/self/{name}", "rb") as handle:
                shown = handle.read()
        except OSError:
            continue
        region = ctypes.string_at(start, end - start)
        if region != shown:
            continue  # not the memory the kernel shows (the region was moved): write nothing
        found = region.find(needle)
        while found >= 0:
            ctypes.memset(start + found, ord("*"), len(needle))
            count += 1
            found = region.find(needle, found + len(needle))
    return count
