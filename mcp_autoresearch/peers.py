"""Who is on the other end of a loopback connection: a run of this server's, or someone else.

A run with the network on shares the user's loopback, so it can reach the server's HTTP transport; without a
token (the loopback default) nothing else would stop it calling the tools, and with slots it could start or
decide another slot's experiment. Every process of a run descends from this server (launcher, keeper, command,
whatever the command starts: the keeper is a subreaper, so nothing leaves the tree), so a connection whose
client socket is open in one of this server's descendants comes from a run and is refused. The kernel's own
tables say which socket a connection is (`/proc/net/tcp`, `tcp6`) and which processes hold it (`/proc/<pid>/fd`).
Linux only; elsewhere nothing is found (runs are not confined there either). Never imports the MCP SDK.
"""

from __future__ import annotations

import os

import psutil

_ESTABLISHED = "01"


def _socket_inodes(client_port: int, server_port: int) -> set[str]:
    """Inodes of the established TCP sockets whose local port is the client's and remote port the server's."""
    wanted_local, wanted_remote = f"{client_port:04X}", f"{server_port:04X}"
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines, None)
                for line in lines:
                    fields = line.split()
                    if len(fields) < 10 or fields[3] != _ESTABLISHED:
                        continue
                    if (
                        fields[1].rsplit(":", 1)[-1] == wanted_local
                        and fields[2].rsplit(":", 1)[-1] == wanted_remote
                    ):
                        inodes.add(fields[9])
        except OSError:
            continue
    return inodes


def run_holding(client_port: int, server_port: int) -> int | None:
    """The pid of a descendant of this process that holds the client end of the connection from `client_port`
    to `server_port`, or None when no descendant does (the agent, a browser, anything that is not a run)."""
    try:
        descendants = psutil.Process().children(recursive=True)
    except psutil.Error:
        return None
    if not descendants:
        return None
    inodes = _socket_inodes(client_port, server_port)
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for process in descendants:
        fd_dir = f"/proc/{process.pid}/fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        for name in names:
            try:
                if os.readlink(f"{fd_dir}/{name}") in wanted:
                    return process.pid
            except OSError:
                continue
    return None
