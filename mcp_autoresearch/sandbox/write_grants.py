"""Which paths a run may write beneath: one rule for a run on this machine (`isolation.writable_paths`) and on a
Ray worker (`ray_wrapper`, which ships this module). Standard library only.

The grants are the configured entries (relative ones inside the run's directory), the run's private TMPDIR and
the devices a run needs (GPU, /dev/null, shared memory). An entry beneath another one is not granted by name: it
is writable through its parent, and the run may have replaced it (or a directory on its way) with a link since
the last run, which a grant by name would follow. A missing entry whose parent exists is created first (a rule
needs something to stand on, and a first build must be able to write its output directory); one whose parent is
missing is left out.
"""

from __future__ import annotations

import functools
import glob
import os

DEVICE_FILES = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/ptmx"]
DEVICE_GLOBS = ["/dev/nvidia*", "/dev/kfd"]
DEVICE_DIRS = ["/dev/shm", "/dev/pts", "/dev/dri"]


def inside(outer: str, inner: str) -> bool:
    """`inner` is `outer` or lies beneath it (lexically)."""
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def expand(root: str, entry: str) -> str:
    """An entry as an absolute, normalised path: `~` expanded, a relative one taken from `root`."""
    path = os.path.expanduser(entry)
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(root, path))


def granted_paths(
    root: str,
    entries: list[str],
    tmpdir: str | None,
    *,
    only_inside: bool = False,
    device_dirs: list[str] | None = None,
    device_files: list[str] | None = None,
    device_globs: list[str] | None = None,
) -> list[str]:
    """Every path a run may write beneath (see the module's docstring). `only_inside`: a relative entry that
    climbs out of `root` is dropped (on a Ray worker it would reach other jobs' directories)."""
    dirs = DEVICE_DIRS if device_dirs is None else device_dirs
    expanded = [
        expand(root, entry)
        for entry in entries
        if not only_inside or os.path.isabs(os.path.expanduser(entry)) or inside(root, expand(root, entry))
    ]
    paths: list[str] = []
    for path in expanded:
        if any(other != path and inside(other, path) for other in [*expanded, *dirs]):
            continue
        if not os.path.lexists(path) and os.path.isdir(os.path.dirname(path)):
            try:
                os.mkdir(path)
            except OSError:
                pass
        paths.append(path)
    if tmpdir:
        paths.append(tmpdir)
    paths += dirs + (DEVICE_FILES if device_files is None else device_files)
    for pattern in DEVICE_GLOBS if device_globs is None else device_globs:
        paths += _matching(pattern)
    return paths


def _matching(pattern: str) -> list[str]:
    """The files `pattern` matches, listed again only when its folder changed (a device added or removed
    changes /dev's modification time): listing /dev took 0.2 ms of every run's start."""
    try:
        changed = os.stat(os.path.dirname(pattern)).st_mtime_ns
    except OSError:
        return []
    return list(_matches(pattern, changed))


@functools.lru_cache(maxsize=16)
def _matches(pattern: str, _changed: int) -> tuple[str, ...]:
    return tuple(sorted(glob.glob(pattern)))
