"""Who is on the other end of a loopback connection: a run of this server's, or someone else.

A run with the network on shares the user's loopback, so it can reach the server's HTTP transport; without a
token (the loopback default) nothing else would stop it calling the tools, and with slots it could start or
decide another slot's experiment. Every process of a run descends from this server (launcher, keeper, command,
whatever the command starts: the keeper is a subreaper, so nothing leaves the tree). The kernel's own tables say
which socket a connection is (`/proc/net/tcp`, `tcp6`) and which processes hold it (the file tables of every
thread, `/proc/<pid>/task/<tid>/fd`: a thread may have a table of its own, `unshare(CLONE_FILES)`). A connection
is refused when a descendant of this server holds its client socket, and also when no process this server can
see holds it: a run can keep the socket out of every file table for a moment (in flight in a unix socket, passed
to itself with SCM_RIGHTS) while the request is checked, then take it back to read the answer; an honest client
holds its socket while it waits for the answer. A connection from another machine has no row in the tables and
is not concerned. While no run is in flight (the server's only child is its launcher, which has no keeper) there
is no run to refuse, and the scan of /proc is skipped. Linux only; elsewhere nothing is found (runs are not
confined there either). Without a token, the same tables also say whose (which user's) the client socket is:
`stranger_holding`. Never imports the MCP SDK.
"""

from __future__ import annotations

import ipaddress
import os
import sys

import psutil

from ..sandbox import launcher

NO_HOLDER = "no process this server can see holds the connection's socket"


Address = tuple[str, int]  # (host, port), as the socket's peername and sockname give them
Ends = tuple[Address, Address]  # (the client's, the server's)
_At = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]  # an address as the tables compare it


def ends_of(client: object, server: object) -> Ends | None:
    """A connection's ends from ASGI's `client` and `server` (or a socket's peername and sockname): None when
    either is unknown (not a TCP connection)."""
    if not (isinstance(client, tuple | list) and isinstance(server, tuple | list)):
        return None
    if len(client) < 2 or len(server) < 2 or not client[1] or not server[1]:
        return None
    return (str(client[0]), int(client[1])), (str(server[0]), int(server[1]))


def _address(host: str, port: int) -> _At | None:
    """An address as the tables compare it: an IPv4 address mapped into IPv6 (a dual-stack socket's) as IPv4."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped, port
    return address, port


def _table_address(field: str) -> _At | None:
    """`/proc/net/tcp`'s `ADDRESS:PORT` in hex, the address's 32-bit words in the host's byte order."""
    host, _, port = field.rpartition(":")
    try:
        raw = bytes.fromhex(host)
        if sys.byteorder == "little":
            raw = b"".join(raw[at : at + 4][::-1] for at in range(0, len(raw), 4))
        address = ipaddress.ip_address(raw)
    except ValueError:
        return None
    return _address(str(address), int(port, 16))


def _client_rows(ends: list[Ends]) -> dict[Ends, list[tuple[str, int]]]:
    """For each connection: (inode, owner's uid) of every TCP socket (in any state: a half-closed one is still
    read from) whose local address and port are the client's and remote ones the server's. Both addresses are
    compared, not only the ports: a run that binds its socket to another loopback address with the server's port
    as its own (127.0.0.2:PORT to 127.0.0.1:PORT) would otherwise match the server's side of the connection too
    (local PORT, remote PORT), which the server holds. A socket no process holds any more shows inode 0 (its
    owner stays until it is in TIME_WAIT, which shows uid 0). The tables are read once for all of them."""
    rows: dict[Ends, list[tuple[str, int]]] = {end: [] for end in ends}
    wanted: dict[tuple[_At, _At], Ends] = {}
    ports: set[tuple[str, str]] = set()
    for end in ends:
        (client_host, client_port), (server_host, server_port) = end
        client, server = _address(client_host, client_port), _address(server_host, server_port)
        if client is not None and server is not None:
            wanted[(client, server)] = end
            ports.add((f"{client_port:04X}", f"{server_port:04X}"))
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines, None)
                for line in lines:
                    fields = line.split()
                    if len(fields) < 10:
                        continue
                    if (fields[1].rsplit(":", 1)[-1], fields[2].rsplit(":", 1)[-1]) not in ports:
                        continue
                    local, remote = _table_address(fields[1]), _table_address(fields[2])
                    found = wanted.get((local, remote)) if local and remote else None
                    if found is not None:
                        rows[found].append((fields[9], int(fields[7]) if fields[7].isdigit() else -1))
        except OSError:
            continue
    return rows


def stranger_holding(client: Address, server: Address) -> str | None:
    """Why a connection to a server without a token is refused: the loopback is every user's of the machine, so
    its client socket must be this user's (or root's, who reads this user's files anyway). The kernel's table
    names each socket's owner. A connection without a socket a process holds (closed, or reset right after its
    request was sent) is refused too: its owner can no longer be told. None for this user's own connection."""
    return strangers_holding([(client, server)])[0]


def strangers_holding(ends: list[Ends]) -> list[str | None]:
    """`stranger_holding` for each connection (its client's and server's addresses), the tables read once."""
    rows_of = _client_rows(ends)
    own = os.geteuid()
    answers: list[str | None] = []
    for end in ends:
        rows = rows_of[end]
        strangers = sorted({uid for _inode, uid in rows if uid not in (own, 0)})
        if strangers:
            answers.append(f"this request comes from a process of another user (uid {strangers[0]})")
        elif not any(inode != "0" for inode, _uid in rows):
            answers.append("no process holds the connection's socket any more (its owner cannot be told)")
        else:
            answers.append(None)
    return answers


def _held(fd_dir: str, wanted: set[str]) -> set[str]:
    """The links of `wanted` found in the file table `fd_dir`."""
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return set()
    found = set()
    for name in names:
        try:
            link = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue
        if link in wanted:
            found.add(link)
    return found


def _threads(pid: str) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def _descends_from(pid: str, ancestor: int) -> bool | None:
    """Whether `ancestor` is on the parent chain of `pid` (read now, not from an earlier snapshot); None when
    `pid` itself can no longer be read (it ended meanwhile: a run's process that held the socket and exited
    before it was looked at must not pass for someone else's). An ancestor that cannot be read ends the chain
    (with `hidepid`, another user's processes, an agent's sshd among them, are not shown)."""
    seen: set[str] = set()
    while pid not in ("0", "1") and pid not in seen:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                parent = stat.read().rsplit(")", 1)[1].split()[1]
        except (OSError, IndexError):
            return None if not seen else False
        seen.add(pid)
        pid = parent
        if pid == str(ancestor):
            return True
    return False


def _own_pid() -> int:
    """This server's pid as /proc numbers it: in a PID namespace made without its own /proc (`unshare -p`,
    `bwrap --unshare-pid` without `--proc`) /proc numbers processes as the host does, and `os.getpid()` is
    another process there."""
    try:
        return int(os.readlink("/proc/self"))
    except (OSError, ValueError):
        return os.getpid()


def _runs_may_exist() -> bool:
    """False only when no process of a run can exist: this server's children are its launcher, whose children
    have none (a run's processes descend from a keeper the launcher forked; anything else, a git process or a
    run's process re-parented to this server included, takes the full check)."""
    ours = launcher.running_pid()
    try:
        for child in psutil.Process(_own_pid()).children():
            if child.pid != ours or any(keeper.children() for keeper in child.children()):
                return True
    except psutil.Error:
        return True
    return False


def run_holding(client: Address, server_address: Address, server: int | None = None) -> str | None:
    """Why the connection from `client` to `server_address` is refused: a descendant of the server (this
    process, or the one whose /proc pid is `server`: `dashboard --web` beside it) holds its client socket (a
    run), or no visible process does. None when a process that is not a run holds it (the agent, a browser), or
    when the connection is not a local one."""
    return runs_holding([(client, server_address)], server)[0]


def runs_holding(ends: list[Ends], server: int | None = None) -> list[str | None]:
    """`run_holding` for each connection (its client's and server's addresses), the kernel's tables and /proc read once for all of
    them (connections checked as they are accepted come in bursts: `accept_check.py`)."""
    if server is None:
        if not _runs_may_exist():
            return [None] * len(ends)
        server = _own_pid()
    rows_of = _client_rows(ends)
    links_of = {
        end: {f"socket:[{inode}]" for inode, _uid in rows if inode != "0"} for end, rows in rows_of.items()
    }
    wanted = set().union(*links_of.values()) if links_of else set()
    holder: dict[
        str, tuple[int, str]
    ] = {}  # link -> (the order it was found in, the first process holding it)
    pids = [name for name in os.listdir("/proc") if name.isdigit()] if wanted else []
    for look_at_threads in (False, True):  # the processes' own tables first (most threads share them)
        for pid in pids:
            if len(holder) == len(wanted):
                break
            tables = (
                [f"/proc/{pid}/task/{tid}/fd" for tid in _threads(pid)]
                if look_at_threads
                else [f"/proc/{pid}/fd"]
            )
            for table in tables:
                for link in _held(table, wanted - holder.keys()):
                    holder[link] = (len(holder), pid)
    answers: list[str | None] = []
    for end in ends:
        if not rows_of[end]:  # not a local connection
            answers.append(None)
            continue
        found = sorted(holder[link] for link in links_of[end] if link in holder)
        if not found:
            answers.append(NO_HOLDER)
            continue
        descends = _descends_from(found[0][1], server)
        if descends is None:
            answers.append(
                f"the process that held the connection's socket (pid {found[0][1]}) ended meanwhile"
            )
        elif descends:
            # only a run's process can hand a run's socket on, and only to a process of the run
            answers.append(
                f"this request comes from a process of one of the server's runs (pid {found[0][1]})"
            )
        else:
            answers.append(None)
    return answers
