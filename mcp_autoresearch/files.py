"""Writing files so that a crash at any moment leaves the old content or the new one, never half of one."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path


def atomic_write(path: Path, data: bytes | Iterable[bytes], mode: int | None = None) -> int:
    """Write to a temporary file beside `path`, fsync it, and rename it over `path`. A symlink standing at
    `path` is replaced, never followed. `mode` defaults to the existing file's permissions. Returns the size."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    if mode is None:
        try:
            mode = path.lstat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, mode)
    size = 0
    try:
        for chunk in (data,) if isinstance(data, bytes) else data:
            view = memoryview(chunk)
            size += len(view)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    return size
