"""A free TCP port, for a test's server to listen on."""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 20000  # above Ray's ports for its workers (10002-19999)


def free_port() -> int:
    """A port nothing listens on now (on any address), below the kernel's range for outgoing connections: a port
    from bind(0) is free only for a moment, and any process's next connect (the other workers' Ray heads make
    hundreds) may take it as its local port before the test's server binds it. Another test may still pick the
    same port (a chance of about one in ten thousand per pair)."""
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 0
    while ephemeral - LOWEST >= 1000:
        port = random.randrange(LOWEST, ephemeral)
        with socket.socket() as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # no room below the range: the kernel's choice
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
