"""Which descriptors have something to read, for any descriptor number: `select` refuses numbers past 1023
(FD_SETSIZE), which a long-lived server holding many files reaches, and then every run would fail; `poll` has
no such limit."""

from __future__ import annotations

import math
import select
from collections.abc import Iterable

# What `select` counts as readable: data, the other end closed, an error (a pidfd: the process ended).
_READABLE = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR | select.POLLNVAL


def ready_to_read(fds: Iterable[int], timeout_s: float | None) -> set[int]:
    """The descriptors of `fds` that can be read now (or whose other end closed), waiting up to `timeout_s`
    seconds for one (None: until one is)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN | select.POLLPRI)
    timeout_ms = None if timeout_s is None else max(0, math.ceil(timeout_s * 1000))
    return {fd for fd, events in poller.poll(timeout_ms) if events & _READABLE}
