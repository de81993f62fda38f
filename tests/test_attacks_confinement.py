"""Attacks on what a confined run can reach: /proc and signals of the server and keeper, unix sockets,
the terminal, shared memory, the server's token and HTTP tools, inodes, memory and descriptors. Attacks the
design blocks are plain tests (regressions); attacks that still succeed are `xfail(strict=True)` with the
mechanism.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from .conftest import TRAIN_PY, Agent, make_repo
from .helpers.attacks import ISOLATION, _log_text, attack
from .helpers.needs import require
from .test_server_process import anyio_backend, candidate_log_over_http, http_server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.anyio


require(
    ISOLATION.confined,
    f"CI must confine runs, but Landlock is unavailable here: {ISOLATION.reason}",
    f"Landlock is unavailable here: {ISOLATION.reason}",
)


NEEDS_ABI6 = pytest.mark.skipif((ISOLATION.abi or 0) < 6, reason="signal/socket scoping needs Landlock ABI 6")


# (d) reaching the server, the keeper or the launcher
PROC_PROBE = """
import ctypes, os, signal
def status(pid, key):
    for line in open(f'/proc/{pid}/status'):
        if line.startswith(key + ':'):
            return line.split()[1]
outside, pid = [], os.getpid()
while pid > 1 and len(outside) < 3:
    pid = int(status(pid, 'PPid'))
    if status(pid, 'NoNewPrivs') == '0':
        outside.append(pid)  # the keeper, the launcher, the server
print('OUTSIDE', *outside)
libc = ctypes.CDLL(None, use_errno=True)
for pid in outside:
    def fd_write():
        for name in os.listdir(f'/proc/{pid}/fd'):
            try:
                open(f'/proc/{pid}/fd/{name}', 'r+').write('val_bpb: 0.000001\\n')
                return
            except OSError as exc:
                error = exc
        raise error
    tries = {
        'fd-write': fd_write,
        'fd-readlink': lambda: os.readlink(f'/proc/{pid}/fd/0'),
        'mem': lambda: open(f'/proc/{pid}/mem', 'rb'),
        'cwd': lambda: os.listdir(f'/proc/{pid}/cwd/'),
        'root': lambda: os.listdir(f'/proc/{pid}/root/'),
        'kill0': lambda: os.kill(pid, 0),
        'stop': lambda: os.kill(pid, signal.SIGSTOP),
        'ptrace': lambda: (_ for _ in ()).throw(OSError(ctypes.get_errno(), 'ptrace'))
                  if libc.ptrace(16, pid, 0, 0) != 0 else None,
    }
    for what, step in tries.items():
        try:
            step()
            print('REACHED', what, pid)
        except OSError as exc:
            print('refused', what, pid, exc.errno)
"""


@NEEDS_ABI6
async def test_proc_paths_signals_and_ptrace_of_server_keeper_launcher_are_refused(
    ml_project: Path, agent_for
):
    """/proc/<pid>/{fd,mem,cwd,root}, kill and ptrace of every process outside the run's domain (its
    keeper, the launcher, the server itself: here, this test process). In a private view there is none to
    find: the run's /proc shows its own PID namespace only (the server's pid names nothing there)."""
    server = os.getpid()
    async with agent_for(ml_project) as agent:
        run, decision = await attack(
            agent, PROC_PROBE + f"print('SERVER', os.path.exists('/proc/{server}/environ'))"
        )
    text = _log_text(run)
    outside = text.split("OUTSIDE")[1].splitlines()[0].split()
    assert "REACHED" not in text, text
    if ISOLATION.namespaces:
        assert outside == [] and "SERVER False" in text, text
    else:
        assert str(server) in outside and len(outside) == 3, text
        assert text.count("refused") == 8 * 3, text
    assert run["status"] == "ok" and run["value"] == 1.3


# sockets of processes outside the run
class _Listener:
    """A unix socket server outside the run (the test process), standing for any local service that acts on
    what it receives (a session bus, an X server, an agent socket)."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(address)
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    self.received.append(conn.recv(100))
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


CONNECT = """
import socket
try:
    c = socket.socket(socket.AF_UNIX); c.connect({address!r}); c.sendall(b'escaped'); c.close()
    print('REACHED the socket')
except OSError as exc:
    print('refused', exc)
"""


@NEEDS_ABI6
async def test_an_abstract_unix_socket_outside_the_run_is_unreachable(ml_project: Path, agent_for):
    """Landlock ABI 6 scopes abstract unix sockets like signals; the keeper must ask for it (it scoped only
    signals): a run could talk to any abstract socket of the user's session (X11, a session bus)."""
    address = f"\0autoresearch-review-{os.getpid()}-{time.monotonic_ns()}"
    listener = _Listener(address)
    try:
        async with agent_for(ml_project) as agent:
            run, _ = await attack(agent, CONNECT.format(address=address))
    finally:
        listener.close()
    assert listener.received == [], _log_text(run)
    assert "refused" in _log_text(run)


@pytest.mark.xfail(
    not ISOLATION.namespaces,
    strict=True,
    reason="without namespaces: Landlock (ABI <= 7) does not mediate connect() to a named unix socket: a run "
    "reaches any socket file it can find (ssh-agent via SSH_AUTH_SOCK, docker.sock, the system bus)",
)
async def test_a_named_unix_socket_outside_the_run_is_unreachable(
    ml_project: Path, agent_for, tmp_path: Path
):
    address = str(tmp_path / "agent.sock")
    listener = _Listener(address)
    try:
        async with agent_for(ml_project) as agent:
            run, _ = await attack(agent, CONNECT.format(address=address))
    finally:
        listener.close()
    assert listener.received == [], _log_text(run)


async def test_a_root_run_cannot_make_files_immutable(ml_project: Path, agent_for):
    """Landlock does not mediate FS_IOC_SETFLAGS on regular files: a run with CAP_LINUX_IMMUTABLE (a server
    running as root, as in CI and most containers) could `chattr +i` the user's files, `.git` or the
    server's own state, so that the server can no longer write them."""
    if os.geteuid() != 0:
        pytest.skip("only a root run holds CAP_LINUX_IMMUTABLE")
    root = ml_project
    code = """
    import fcntl, glob, os, struct
    FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, IMMUTABLE = 0x80086601, 0x40086602, 0x10
    for path in ['my_notes.txt', 'train.py', '.git/refs/heads', *glob.glob('.autoresearch/sessions/*.json')]:
        try:
            fd = os.open(path, os.O_RDONLY)
            flags = struct.unpack('l', fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack('l', 0)))[0]
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack('l', flags | IMMUTABLE))
            print('REACHED', path)
        except OSError as exc:
            print('refused', path, exc.strerror)
    """
    try:
        async with agent_for(root) as agent:
            run, decision = await attack(agent, code)
            text = _log_text(run)
            assert "REACHED" not in text, text
            assert decision["decision"] == "keep"
    finally:
        for path in [
            root / "my_notes.txt",
            root / "train.py",
            root / ".git/refs/heads",
            *(root / ".autoresearch" / "sessions").glob("*.json"),
        ]:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)


async def test_the_servers_token_cannot_be_read_from_its_environment(ml_project: Path):
    """/proc/<server>/environ: Landlock does not mediate it. In the private view the server is not in the run's
    /proc at all; without namespaces the server is not dumpable (and a root run lacks CAP_SYS_PTRACE), so reading
    it is refused, and the token there is overwritten besides."""
    from mcp import Client

    from .conftest import Agent, stdio_params

    token = f"s3cret-{os.getpid()}-{time.monotonic_ns()}"
    code = """
    import os
    def status(pid, key):
        for line in open(f'/proc/{pid}/status'):
            if line.startswith(key + ':'):
                return line.split()[1]
    pid = os.getpid()
    while pid > 1:
        pid = int(status(pid, 'PPid'))
        server = b'serve' in open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')
        try:
            for item in open(f'/proc/{pid}/environ', 'rb').read().split(b'\\0'):
                if item.startswith(b'AUTORESEARCH_TOKEN='):
                    print('LEAKED', item.decode())
        except OSError as exc:
            print('refused', 'the server' if server else pid, exc.strerror)
    """
    params = stdio_params(ml_project)
    params.env = {**params.env, "AUTORESEARCH_TOKEN": token}
    async with Client(params) as client:
        run, _ = await attack(Agent(client), code)
    assert token not in _log_text(run)
    if not ISOLATION.namespaces:  # in the view the server is not there to read
        assert "refused the server " in _log_text(run), _log_text(run)  # not merely overwritten: closed


# devices and shared directories every run may write
async def test_a_run_cannot_type_into_the_users_terminal(ml_project: Path, agent_for):
    """/dev/pts is writable to runs; TIOCSTI pushes input into a terminal that is not the caller's own only with
    CAP_SYS_ADMIN, which a root run no longer has: nothing is typed into the user's shell."""
    master, slave = os.openpty()
    try:
        pts = os.ttyname(slave)
        code = f"""
        import fcntl, os, termios
        fd = os.open({pts!r}, os.O_RDWR | os.O_NOCTTY)
        try:
            for ch in b'touch pwned\\n':
                fcntl.ioctl(fd, termios.TIOCSTI, bytes([ch]))
            print('REACHED typed')
        except OSError as exc:
            print('refused', exc.strerror)
        """
        async with agent_for(ml_project) as agent:
            run, _ = await attack(agent, code)
        os.set_blocking(slave, False)
        try:
            typed = os.read(slave, 100)
        except BlockingIOError:
            typed = b""
        except OSError:
            typed = b""
        assert "REACHED" not in _log_text(run) and typed == b"", _log_text(run)
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.xfail(
    not ISOLATION.namespaces,
    strict=True,
    reason="without namespaces: /dev/shm is writable beneath, for every run: a run deletes or rewrites any "
    "shared-memory file of the user's other programs (or plants one a later run reads); Landlock cannot tell "
    "the run's own files apart",
)
async def test_a_run_cannot_delete_another_programs_shared_memory(ml_project: Path, agent_for):
    shared = Path("/dev/shm") / f"review-other-program-{os.getpid()}-{time.monotonic_ns()}"
    shared.write_bytes(b"another program's state\n")
    try:
        code = f"""
        import os
        try:
            os.remove({str(shared)!r}); print('REACHED')
        except OSError as exc:
            print('refused', exc.strerror)
        """
        async with agent_for(ml_project) as agent:
            run, _ = await attack(agent, code)
        assert shared.exists(), _log_text(run)
    finally:
        shared.unlink(missing_ok=True)


async def test_a_run_cannot_call_the_servers_http_tools(ml_project: Path):
    """A run may open TCP connections (with the network on, or without namespaces), but a --token on the server's
    command line is overwritten in the memory /proc/<server>/cmdline shows: what the run finds there is refused."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    from .conftest import GIT_ENV, Agent

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token = f"cmdline-{time.monotonic_ns()}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mcp_autoresearch",
            "serve",
            "--project",
            str(ml_project),
            "--transport",
            "http",
            "--port",
            str(port),
            "--token",
            token,
        ],
        env={**os.environ, **GIT_ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    code = f"""
    import json, os, urllib.request
    token = None
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            args = open(f'/proc/{{pid}}/cmdline', 'rb').read().split(b'\\0')
        except OSError:
            continue
        if b'--token' in args and b'{port}' in args:
            token = args[args.index(b'--token') + 1].decode()
    body = {{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {{"protocolVersion": "2025-11-25",
            "capabilities": {{}}, "clientInfo": {{"name": "run", "version": "1"}}}}}}
    request = urllib.request.Request('http://127.0.0.1:{port}/mcp', json.dumps(body).encode(), {{
        'Content-Type': 'application/json', 'Accept': 'application/json, text/event-stream',
        'Authorization': f'Bearer {{token}}'}})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            print('REACHED the server', answer.status)
    except Exception as exc:
        print('refused', exc)
    """
    try:
        assert server.stderr is not None
        for line in iter(
            server.stderr.readline, b""
        ):  # it says so once it listens: no polling against a clock
            if b"serving MCP over HTTP at" in line:
                break
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http,
            Client(streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http)) as client,
        ):
            run, _ = await attack(Agent(client), code)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert "REACHED" not in _log_text(run), _log_text(run)


# the server's HTTP tools: a run hides the client socket from the check of who holds it
# Raw HTTP over a socket the run controls. `how` is the way the socket is kept out of /proc/<pid>/fd:
# - "thread": a thread with a file table of its own (unshare(CLONE_FILES)) opens it: the process's fd folder is
#   the leader's table, the socket is only in /proc/<pid>/task/<tid>/fd;
# - "in flight": right after sending, the run passes the socket to itself over a socketpair (SCM_RIGHTS) and
#   closes it: while the server checks, no process has it in a file table; the run takes it back to read.
HIDDEN_CLIENT = """
import ctypes, json, os, socket, threading, time
PORT = int(PORT_VALUE)
libc = ctypes.CDLL(None, use_errno=True)
def exchange(payload, session, how):
    body = json.dumps(payload).encode()
    head = (f'POST /mcp HTTP/1.1\\r\\nHost: 127.0.0.1:{PORT}\\r\\nAuthorization: Bearer any\\r\\n'
            'Content-Type: application/json\\r\\nAccept: application/json, text/event-stream\\r\\n'
            + (f'mcp-session-id: {session}\\r\\n' if session else '')
            + f'Content-Length: {len(body)}\\r\\nConnection: close\\r\\n\\r\\n').encode()
    sock = socket.create_connection(('127.0.0.1', PORT))
    sock.sendall(head + body)
    if how == 'in flight':
        left, right = socket.socketpair()
        socket.send_fds(left, [b'x'], [sock.fileno()])
        sock.close()
        time.sleep(0.5)
        _, fds, _, _ = socket.recv_fds(right, 1, 1)
        sock = socket.socket(fileno=fds[0])
    answer = b''
    while chunk := sock.recv(65536):
        answer += chunk
    sock.close()
    text = answer.decode(errors='replace')
    status = int(text.split(' ', 2)[1]) if text.startswith('HTTP/') else 0
    found = [line.split(':', 1)[1].strip() for line in text.split('\\r\\n') if line.lower().startswith('mcp-session-id:')]
    return status, (found[0] if found else None), text
def in_own_table(how, out):
    if how == 'thread' and libc.unshare(0x400) != 0:  # CLONE_FILES: this thread's own file table
        out.append(('unshare refused', ctypes.get_errno()))
        return
    init = {'jsonrpc': '2.0', 'id': 1, 'method': 'initialize', 'params': {'protocolVersion': '2025-11-25',
            'capabilities': {}, 'clientInfo': {'name': 'hidden', 'version': '1'}}}
    for attempt in range(5):
        status, session, _ = exchange(init, None, how)
        if status == 200:
            break
    out.append(('initialize', status))
    if status != 200:
        return
    exchange({'jsonrpc': '2.0', 'method': 'notifications/initialized'}, session, how)
    status, _, text = exchange({'jsonrpc': '2.0', 'id': 2, 'method': 'tools/call', 'params': {
        'name': 'apply_edit', 'arguments': {'content': 'LR = 0.0001\\n'}}}, session, how)
    if status == 200 and '"isError":true' not in text.replace(' ', ''):
        out.append(('ACCEPTED apply_edit', text[-300:]))
for how in ('thread', 'in flight'):
    out = []
    worker = threading.Thread(target=in_own_table, args=(how, out))
    worker.start()
    worker.join()
    print(how, out)
"""


@pytest.mark.parametrize("http_server", ["no token"], indirect=True)
async def test_a_run_cannot_hide_its_client_socket_from_the_servers_check(
    http_server: tuple[str, str, str],  # noqa: F811 (the fixture imported above)
    ml_project: Path,
) -> None:
    url, token, _how = http_server
    port = url.split(":")[-1].split("/")[0]
    code = textwrap.dedent(HIDDEN_CLIENT).replace("PORT_VALUE", port)
    log = await candidate_log_over_http(url, token, "hidden", code)
    assert "thread [('initialize', 403)]" in log, log
    assert "in flight [('initialize', 403)]" in log, log
    assert "ACCEPTED" not in log, log
    assert "LR = 0.0001" not in (ml_project / "train.py").read_text()


# the disk: a run fills the file system's inodes, not its bytes
# Empty files in the writable output until the file system has no inode left: no byte is used, so a check of free
# bytes sees room, but git (objects, locks), the logs and the state files cannot be created any more.
INODE_FILLER = """
import os
os.makedirs('out', exist_ok=True)
made = 0
try:
    while True:
        os.close(os.open(f'out/f{made}', os.O_CREAT | os.O_WRONLY, 0o600))
        made += 1
except OSError as exc:
    print('no inode left after', made, 'files:', exc.strerror)
"""


@pytest.fixture
def few_inodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project on a tmpfs of its own with plenty of bytes and few inodes (root needed, as in test_disk_full)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            raise RuntimeError("CI runs as root and must mount a small tmpfs for this test")
        pytest.skip("needs a tmpfs mount of its own (root)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m,nr_inodes=3000", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        if os.environ.get("CI"):
            raise RuntimeError(f"mount -t tmpfs failed: {mounted.stderr.strip()}")
        pytest.skip(f"mount -t tmpfs failed: {mounted.stderr.strip()}")
    monkeypatch.setenv("AUTORESEARCH_SLOTS_DIR", str(disk / "slots"))
    try:
        yield make_repo(disk / "proj", {"train.py": TRAIN_PY, "prepare.py": "SEED = 1\n"})
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


async def test_a_run_that_uses_up_the_inodes_is_disk_full_and_the_session_goes_on(
    few_inodes: Path, agent_for: Any
) -> None:
    root = few_inodes
    async with agent_for(root, {"writable": ["out"], "keep_rule": "greedy"}) as agent:
        await agent.ok("start_session", tag="inodes")
        await agent.experiment("baseline")
        await agent.edit("LR = 0.5", "LR = 0.4\n" + textwrap.dedent(INODE_FILLER))
        run = await agent.until_done(
            (await agent.ok("run_experiment", description="no inode left"))["run_id"]
        )
        assert run["status"] == "disk_full", run
        assert "out" in run["error"] and "files" in run["error"], run["error"]
        decided = await agent.ok("commit_or_reset", run_id=run["run_id"])
        assert decided["decision"] == "crash", decided
        refused = await agent.refused("run_experiment", description="too early")
        assert "disk" in refused, refused
        for entry in (root / "out").iterdir():
            entry.unlink()
        await agent.edit("LR = 0.5", "LR = 0.3")
        again, decided = await agent.experiment("after freeing the inodes")
        assert again["status"] == "ok" and decided["decision"] == "keep", (again, decided)
    rows = (root / "results.tsv").read_text().splitlines()[1:]
    assert [row.split("\t")[3] for row in rows] == ["keep", "crash", "keep"], rows


# the view: what the command held before its mount namespace was made
# The run's standard input is /dev/null, opened by the server in the user's mount namespace: through it the file's
# own mount (read-write) is reached, not the view's read-only copy. A root run could chmod the system's /dev/null
# to 000 (here: the same mode again, and its times, which a read-only mount refuses just the same).
OLD_MOUNTS = """
import os, stat
for fd in (0, 1, 2):
    where = os.readlink(f'/proc/self/fd/{fd}')
    try:
        os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode))
        os.utime(fd, None)
        print('CHANGED', fd, where)
    except OSError as exc:
        print('refused', fd, where, exc.strerror)
try:
    os.utime('/dev/null', None)
    print('CHANGED by path')
except OSError as exc:
    print('refused by path', exc.strerror)
"""


@pytest.mark.skipif(not ISOLATION.namespaces, reason="the view needs namespaces")
async def test_the_runs_standard_files_are_seen_through_the_view(ml_project: Path, agent_for: Any) -> None:

    async with agent_for(ml_project) as agent:
        run, _ = await attack(agent, OLD_MOUNTS)
    log = _log_text(run)
    assert "refused 0 /dev/null Read-only file system" in log and "refused by path" in log, log
    assert "CHANGED 0" not in log and "CHANGED by path" not in log, log


# named unix sockets outside the hidden directories
@pytest.mark.xfail(
    strict=True,
    reason="connect(2) to a named unix socket needs neither a writable mount nor Landlock's write rights (before "
    "ABI 9's LANDLOCK_ACCESS_FS_RESOLVE_UNIX): the view hides only /tmp, /var/tmp, /dev/shm, /run and "
    "$XDG_RUNTIME_DIR, so a socket elsewhere (in the project, in ~, LXD's /var/snap/lxd/common/lxd/unix.socket, "
    "which makes a root caller its admin) is reached; a seccomp notification cannot decide it safely (the address "
    "is read from the run's memory, which it can change before the kernel reads it)",
)
async def test_a_named_unix_socket_in_the_project_is_unreachable(ml_project: Path, agent_for: Any) -> None:

    address = str(ml_project / ".service.sock")  # a dev server's or a daemon's socket in the user's tree
    listener = _Listener(address)
    try:
        async with agent_for(ml_project) as agent:
            run, _ = await attack(agent, CONNECT.format(address=address))
    finally:
        listener.close()
    assert listener.received == [], _log_text(run)


# memory: the fresh scratch file systems
SCRATCH_SIZES = """
import os
total = 0
for path in ('/tmp', '/var/tmp', '/dev/shm'):
    info = os.statvfs(path)
    total += info.f_blocks * info.f_frsize
print('SCRATCH', total)
"""


@pytest.mark.skipif(not ISOLATION.namespaces, reason="the view needs namespaces")
async def test_a_run_cannot_pin_more_memory_in_scratch_files_than_the_machine_has(
    ml_project: Path, agent_for: Any
) -> None:
    """Each fresh tmpfs (/tmp, /var/tmp, /dev/shm) held up to half the RAM: a run could pin 150% of it in files no
    process's memory counts, and the OOM killer then ends the user's programs or the server, never the run (a
    strict xfail until this session). Bounded now: a quarter each for /tmp and /dev/shm, a tenth for /var/tmp."""

    async with agent_for(ml_project) as agent:
        run, _ = await attack(agent, SCRATCH_SIZES)
    total = int(_log_text(run).split("SCRATCH ", 1)[1].split()[0])
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert total < memory, (total, memory)


def _log_text_of(logs: Path, word: str) -> list[str]:
    """The lines starting with `word` in every run's log."""
    return [
        line
        for path in logs.rglob("*.log")
        for line in path.read_text(errors="replace").splitlines()
        if line.startswith(word)
    ]


# the server's descriptors: a run opens connections to the HTTP port and holds them
# Every open connection holds one of the server's descriptors, and a run need not send a request at all. Two
# processes open connections until the server stops accepting, say so, and hold them until the test's release
# file appears in the run's checkout.
FD_HOARDER = """
import os, socket, sys
PORT = int(PORT_VALUE)
children = []
for n in range(2):
    child = os.fork()
    if child == 0:
        held = []
        try:
            while len(held) < 4000:
                sock = socket.socket()
                sock.settimeout(2)
                sock.connect(('127.0.0.1', PORT))
                held.append(sock)
        except OSError as exc:
            pass
        print('HOLDS', n, len(held), flush=True)
        for _ in range(1200):
            if os.path.exists('release'):
                break
            os.system('sleep 0.05')
        os._exit(0)
    children.append(child)
for child in children:
    os.waitpid(child, 0)
"""


async def test_a_run_cannot_use_up_the_servers_descriptors(ml_project: Path, tmp_path: Path) -> None:
    """Each connection a run opened to the HTTP port held one of the server's descriptors until the run closed
    it (the checks came with a request's headers, which a run need not send): two processes of a run used them
    all up (2 x 1021 against a soft limit of 1024), the server's after-run checks failed, the run was judged
    'tampered' and `apply_edit` met an internal error (git could not open HEAD) until it ended. Each connection
    is now checked as it is accepted (`accept_check.py`) and a run's closed at once."""
    import asyncio
    import resource
    import socket
    import sys
    import time

    from .conftest import GIT_ENV

    (ml_project / "autoresearch.toml").write_text(
        'target_file = "train.py"\nslots = 2\nkeep_rule = "greedy"\n'
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

    def lower_limit() -> None:  # the usual default soft limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))

    env = {**os.environ, **GIT_ENV, "AUTORESEARCH_SLOTS_DIR": str(tmp_path / "slots")}
    argv = [sys.executable, "-m", "mcp_autoresearch", "serve", "--project", str(ml_project)]
    stderr = tmp_path / "server.err"
    with stderr.open("wb") as err:
        server = subprocess.Popen(
            argv + ["--transport", "http", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            preexec_fn=lower_limit,
        )
    try:
        while b"serving MCP over HTTP" not in stderr.read_bytes():
            assert server.poll() is None, stderr.read_text()
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/mcp"
        async with (
            httpx2.AsyncClient(headers={"Authorization": "Bearer any"}, timeout=120) as http,
            Client(streamable_http_client(url, http_client=http)) as client,
        ):
            agent = Agent(client)
            await agent.ok("start_session", tag="fds")
            await agent.ok("run_experiment", description="baseline")
            await agent.until_done()
            await agent.ok("commit_or_reset")
            await agent.edit(
                "LR = 0.5", "LR = 0.4\n" + textwrap.dedent(FD_HOARDER).replace("PORT_VALUE", str(port))
            )
            hoarder = await agent.ok("run_experiment", description="holds the server's descriptors")
            logs = ml_project / ".autoresearch" / "runs"
            while sum(path.read_text(errors="replace").count("HOLDS") for path in logs.rglob("*.log")) < 2:
                assert server.poll() is None
                await asyncio.sleep(0.05)
            held = _log_text_of(logs, "HOLDS")
            open_now = len(os.listdir(f"/proc/{server.pid}/fd"))
            try:
                answer = await client.call_tool(
                    "apply_edit", {"content": TRAIN_PY.replace("LR = 0.5", "LR = 0.3")}
                )
            finally:
                for folder in (tmp_path / "slots").glob("*/*"):  # each slot's checkout: the run's folder
                    if folder.is_dir():
                        (folder / "release").write_text("")
            done = await agent.until_done(hoarder["run_id"])
            assert not answer.is_error, (answer.content, done)
            # the run held its connections (its own descriptors), the server did not
            assert sum(int(line.split()[2]) for line in held) > 1000 and open_now < 300, (held, open_now)
            assert done["status"] != "tampered", done
    finally:
        server.terminate()
        server.wait(30)
