"""A run sees only its private view (issue 20): each escape that Landlock alone leaves open, tried by the target's
code during a real run through the real server, is closed by the namespaces the keeper builds around it.

What each test tries: a unix socket server in /tmp (like tmux's), chmod/chown/utime of a project file and of a
file outside the project, the server's /proc, a file in /dev/shm shared with the user, loopback TCP to a server
with the network off. The last tests run the keeper as an ordinary user (a user namespace then makes the view).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from mcp_autoresearch.sandbox import confine
from mcp_autoresearch.sandbox.policy import probe_isolation

from .helpers.needs import require
from .helpers.spares import standing_by

pytestmark = pytest.mark.anyio

ISOLATION = probe_isolation("auto")
require(
    ISOLATION.namespaces,
    f"CI must give runs a private view, but namespaces are unavailable: {ISOLATION.view_reason}",
    f"namespaces are unavailable here: {ISOLATION.view_reason}",
)

MODULES = Path(confine.__file__).parent  # the keeper and its standard-library siblings


async def attack(agent, code: str) -> str:
    """Baseline, then one experiment whose target runs `code` (its metric improves): the run's output."""
    await agent.ok("start_session")
    await agent.experiment("baseline")
    await agent.edit("LR = 0.5", "LR = 0.4\n" + textwrap.dedent(code))
    run, _ = await agent.experiment("attack")
    return Path(run["log_path"]).read_text(errors="replace")


class UnixServer:
    """A unix socket server of the user's, like tmux's at /tmp/tmux-<uid>/default: it records what it got."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.received: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.received.append(conn.recv(100))

    def close(self) -> None:
        self.sock.close()


async def test_a_unix_socket_server_in_tmp_is_unreachable(ml_project: Path, agent_for) -> None:
    """tmux listens at /tmp/tmux-<uid>/default, found without any environment variable: the run's /tmp is its
    own, empty, so the socket is not there to connect to."""
    where = Path(f"/tmp/tmux-view-test-{os.getpid()}") / "default"
    server = UnixServer(where)
    try:
        code = f"""
        import socket
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect({str(where)!r}); s.send(b'new-session -d evil'); print('REACHED')
        except OSError as exc:
            print('refused', exc.strerror)
        """
        async with agent_for(ml_project) as agent:
            text = await attack(agent, code)
    finally:
        server.close()
        shutil.rmtree(where.parent, ignore_errors=True)
    assert "refused No such file or directory" in text and server.received == [], text


async def test_file_metadata_outside_the_writable_paths_cannot_change(ml_project: Path, agent_for) -> None:
    """chmod, chown and utime (which Landlock does not mediate) of the evaluator, of the project directory, of
    .git and of a file outside the project fail with EROFS; in a writable directory they work."""
    outside_dir = Path(tempfile.mkdtemp(prefix="view-outside-", dir=Path.home()))
    outside = outside_dir / "notes.txt"
    outside.write_text("the user's\n")
    root = ml_project
    before = {p: os.stat(p) for p in (root / "prepare.py", root, root / ".git", outside)}
    code = f"""
    import os
    for path in ['prepare.py', '.', '.git', {str(outside)!r}]:
        for what, step in {{'chmod': lambda: os.chmod(path, 0o777), 'chown': lambda: os.chown(path, 12345, 12345),
                            'utime': lambda: os.utime(path, (1, 1))}}.items():
            try:
                step(); print('REACHED', what, path)
            except OSError as exc:
                print('refused', what, path, exc.strerror)
    os.makedirs('out', exist_ok=True)
    open('out/built', 'w').close(); os.chmod('out/built', 0o600); os.utime('out/built', (1, 1))
    print('own outputs ok')
    """
    try:
        async with agent_for(root, {"writable": ["out"]}) as agent:
            text = await attack(agent, code)
        after = {p: os.stat(p) for p in before}
    finally:
        shutil.rmtree(outside_dir)
    assert "REACHED" not in text and text.count("refused") == 12, text
    assert text.count("Read-only file system") == 12 and "own outputs ok" in text, text
    for path, old in before.items():  # (the server itself writes in the project directory and .git)
        times = (lambda s: s.st_mtime) if path.is_file() else (lambda s: None)
        assert (after[path].st_mode, after[path].st_uid, times(after[path])) == (
            old.st_mode,
            old.st_uid,
            times(old),
        ), path


async def test_the_servers_proc_is_invisible(ml_project: Path, agent_for) -> None:
    """The run's /proc is its own PID namespace's: the server (here, this process) has no entry there, the run
    is PID 1, and it sees no process but its own."""
    server = os.getpid()
    code = f"""
    import os
    print('PID', os.getpid())
    print('SERVER', os.path.exists('/proc/{server}'))
    for what in ('cmdline', 'environ'):
        try:
            open('/proc/{server}/' + what, 'rb').read(); print('REACHED', what)
        except OSError as exc:
            print('refused', what, exc.strerror)
    print('PROCESSES', sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))
    """
    async with agent_for(ml_project) as agent:
        text = await attack(agent, code)
    assert "SERVER False" in text and "REACHED" not in text and text.count("No such file") == 2, text
    processes = eval(text.split("PROCESSES ")[1].splitlines()[0])
    assert server not in processes and max(processes) < 50, text  # the run's shell and python only


async def test_dev_shm_is_private_between_the_user_and_runs(ml_project: Path, agent_for) -> None:
    """A shared-memory file of the user's programs is invisible to a run; what a run leaves in /dev/shm (and
    /tmp) is gone for the user and for the next run."""
    mine = Path("/dev/shm") / f"view-user-{os.getpid()}"
    mine.write_text("the user's program state\n")
    left = f"left-by-run-{os.getpid()}"
    code = f"""
    import os
    print('SEES USER FILE', os.path.exists({str(mine)!r}))
    print('LEFT BY EARLIER RUN', os.path.exists('/dev/shm/{left}'), os.path.exists('/tmp/{left}'))
    open('/dev/shm/{left}', 'w').write('x'); open('/tmp/{left}', 'w').write('x')
    open(os.path.join(os.environ['TMPDIR'], 'private'), 'w').write('TMPDIR works')
    print('RUN WROTE')
    """
    try:
        async with agent_for(ml_project) as agent:
            text = await attack(agent, code)
    finally:
        mine.unlink()
    assert "SEES USER FILE False" in text and "RUN WROTE" in text, text
    # The baseline ran first, the attack second: each run writes, and the second saw nothing of the first.
    assert "LEFT BY EARLIER RUN False False" in text, text
    assert not Path("/dev/shm", left).exists() and not Path("/tmp", left).exists()


class TcpServer:
    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


TCP_PROBE = """
import socket
try:
    socket.create_connection(('127.0.0.1', {port}), timeout=10).close(); print('CONNECTED')
except OSError as exc:
    print('refused', exc.strerror)
"""


@pytest.mark.parametrize("network", ["off", "on"])
async def test_loopback_tcp_to_the_host_is_refused_with_the_network_off(
    ml_project: Path, agent_for, network: str
) -> None:
    """With `network = "off"` the run's loopback is its own: a server on the host's 127.0.0.1 (the server's
    HTTP transport, say) is not there. With "on" it is (the setting is what decides)."""
    server = TcpServer()
    try:
        async with agent_for(ml_project, {"network": network}) as agent:
            text = await attack(agent, TCP_PROBE.format(port=server.port))
            started = await agent.ok("detect_project")
    finally:
        server.sock.close()
    if network == "off":
        assert "refused Connection refused" in text and server.accepted == 0, text
        assert started["isolation"].endswith("; network off"), started
    else:
        assert "CONNECTED" in text and server.accepted >= 1, text  # a keep is run again: once or more


async def test_a_run_cannot_undo_its_view(ml_project: Path, agent_for) -> None:
    """Root included: no capability is left (so no remount), and no user namespace can be made (so no new
    mount namespace in which to shed the view)."""
    code = """
    import ctypes, os, subprocess
    print([line for line in open('/proc/self/status') if line.startswith('CapEff')][0].strip())
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(None, b'/', None, 32 | 1 << 14 | 4096, None) == 0:  # MS_REMOUNT | MS_REC | MS_BIND, rw
        print('REACHED remount')
    else:
        print('refused remount', os.strerror(ctypes.get_errno()))
    if libc.unshare(0x10000000 | 0x20000) == 0:
        print('REACHED unshare')
    else:
        print('refused unshare', os.strerror(ctypes.get_errno()))
    """
    async with agent_for(ml_project) as agent:
        text = await attack(agent, code)
    assert "CapEff:\t0000000000000000" in text and "REACHED" not in text, text
    assert (
        "refused remount Operation not permitted" in text
        and "refused unshare Operation not permitted" in text
    )


# ---------------------------------------------------------------------------------------------------------------
# an ordinary user: the keeper makes a user namespace for the view
# ---------------------------------------------------------------------------------------------------------------
USER = 12345
NEEDS_ROOT = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv"
)

USER_PROBE = """
import os, socket, sys
sock, shared = sys.argv[1], sys.argv[2]
print('PID', os.getpid(), 'UID', os.getuid())
for what, step in {'chmod': lambda: os.chmod('evaluate.py', 0o777), 'utime': lambda: os.utime('evaluate.py', (1, 1)),
                   'chmod-root': lambda: os.chmod('.', 0o700)}.items():
    try:
        step(); print('REACHED', what)
    except OSError as exc:
        print('refused', what, exc.strerror)
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sock); print('REACHED socket')
except OSError as exc:
    print('refused socket', exc.strerror)
print('SHM', os.path.exists(shared))
open('out/built', 'w').write('ok'); print('OUT OK')
print('PROCESSES', len([p for p in os.listdir('/proc') if p.isdigit()]))
"""


KEEPER_MODULES = (
    "command.py",
    "confine.py",
    "keeper_tree.py",
    "landlock.py",
    "namespaces.py",
    "output_dirs.py",
    "prepared.py",
    "standby.py",
    "view.py",
    "forkserver.py",
)


def _as_user(tmp_path: Path, start) -> None:
    """`start(home, project, probe_args)` runs USER_PROBE confined as uid 12345 (system python, a copy of the
    stdlib-only keeper in /tmp) and returns its output and exit code: the same refusals, through a user
    namespace that maps only that uid."""
    home = Path(tempfile.mkdtemp(prefix="view-user-"))
    try:
        for name in KEEPER_MODULES:
            shutil.copy(MODULES / name, home / name)
        project = home / "project"
        (project / "out").mkdir(parents=True)
        (project / "evaluate.py").write_text("print(1)\n")
        (project / "probe.py").write_text(USER_PROBE)
        sockdir = Path(f"/tmp/tmux-{USER}-view-test-{os.getpid()}")
        subprocess.run(["chown", "-R", f"{USER}:{USER}", str(home)], check=True)
        shared = Path("/dev/shm") / f"view-user-test-{os.getpid()}"
        shared.write_text("x")
        server = UnixServer(sockdir / "default")
        try:
            text, code = start(home, project, [str(sockdir / "default"), str(shared)])
        finally:
            server.close()
            shutil.rmtree(sockdir, ignore_errors=True)
            shared.unlink()
        assert code == 0, text
        assert f"PID 1 UID {USER}" in text and "REACHED" not in text, text
        assert text.count("Read-only file system") == 3 and "refused socket No such file" in text, text
        assert "SHM False" in text and "OUT OK" in text and "PROCESSES 1" in text, text
        assert (project / "out" / "built").read_text() == "ok"
    finally:
        shutil.rmtree(home)


AS_USER = [
    "setpriv",
    "--reuid",
    str(USER),
    "--regid",
    str(USER),
    "--clear-groups",
    "/usr/bin/python3",
    "-I",
    "-S",
]


@NEEDS_ROOT
def test_as_an_ordinary_user_the_keeper_builds_the_same_view(tmp_path: Path) -> None:
    def start(home: Path, project: Path, probe: list[str]) -> tuple[str, int]:
        argv = [str(home / "confine.py"), "--landlock", "--view", "--no-network", "-w", str(project / "out")]
        done = subprocess.run(
            [*AS_USER, *argv, "--", "/usr/bin/python3", "probe.py", *probe],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": "/usr/bin:/bin"},
        )
        return done.stdout + done.stderr, done.returncode

    _as_user(tmp_path, start)


@NEEDS_ROOT
def test_as_an_ordinary_user_a_prepared_spare_builds_the_same_view(tmp_path: Path) -> None:
    """Through the launcher run by uid 12345: once its spare keepers are made like the last request (their user,
    PID and IPC namespaces entered and their ruleset made before the request: an IPC namespace of their own
    already), one of them runs the probe."""

    def start(home: Path, project: Path, probe: list[str]) -> tuple[str, int]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        launcher = subprocess.Popen(
            [*AS_USER, str(home / "forkserver.py"), str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            env={"PATH": "/usr/bin:/bin"},
        )
        theirs.close()
        spec = {"landlock": True, "view": True, "network": False, "write": [str(project / "out")]}
        try:
            deadline = time.monotonic() + 60
            while len(psutil.Process(launcher.pid).children()) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)  # the launcher started (as that user) and forked its first spares
            own = os.readlink(f"/proc/{launcher.pid}/ns/ipc")

            def prepared_spares() -> bool:
                spares = []
                for child in psutil.Process(launcher.pid).children():
                    try:  # a keeper still ending is no spare (a zombie has no namespaces left)
                        if standing_by(child):
                            spares.append(os.readlink(f"/proc/{child.pid}/ns/ipc"))
                    except (OSError, psutil.Error):
                        continue
                return len(spares) == 2 and own not in spares

            for _ in range(2):  # the spares forked at the start know no request: two requests use them up
                assert _launch(ours, ["/bin/sh", "-c", "true"], project, spec)[1] == 0
            while not prepared_spares() and time.monotonic() < deadline + 60:
                time.sleep(0.01)  # the spares forked after them, made like them
            assert prepared_spares()
            output, code = _launch(ours, ["/usr/bin/python3", "probe.py", *probe], project, spec)
            return output, code
        finally:
            ours.close()
            launcher.wait(30)

    _as_user(tmp_path, start)


def _launch(sock: socket.socket, argv: list[str], cwd: Path, spec: dict) -> tuple[str, int]:
    """One request to a launcher, as `launcher.Launcher.spawn` makes it; its output and exit code, from the
    keeper's report."""
    read_fd, write_fd = os.pipe()
    report_r, report_w = os.pipe()
    request = {"argv": argv, "cwd": str(cwd), "env": {"PATH": "/usr/bin:/bin"}, "spec": spec}
    socket.send_fds(sock, [json.dumps(request).encode()], [write_fd, write_fd, report_w])
    os.close(write_fd)
    os.close(report_w)
    while "pid" not in json.loads(sock.recv(1 << 16)):  # exits of earlier keepers come in between
        pass
    with os.fdopen(read_fd, "rb") as pipe:
        output = pipe.read().decode()
    with os.fdopen(report_r, "rb") as report:
        return output, int(report.read())


async def test_a_run_that_needs_the_network_is_told_which_setting_gives_it(
    ml_project: Path, agent_for
) -> None:
    code = """
    import socket
    socket.getaddrinfo('pypi.org', 443)
    """
    async with agent_for(ml_project, {"network": "off"}) as agent:
        await agent.ok("start_session")
        await agent.experiment("baseline")
        await agent.edit("LR = 0.5", "LR = 0.4\n" + textwrap.dedent(code))
        run, _ = await agent.experiment("fetches something")
    assert run["status"] == "crash" and 'set network = "on"' in run["error"], run


async def test_the_network_setting_is_fixed_for_the_session(ml_project: Path, agent_for) -> None:
    async with agent_for(ml_project, {"network": "off"}) as agent:
        started = await agent.ok("start_session", tag="n1")
        assert started["isolation"].endswith("; network off"), started
    async with agent_for(ml_project, {"network": "on"}) as agent:
        refused = await agent.refused("start_session", tag="n1")
    assert "network: 'off' -> 'on'" in refused, refused


def test_detect_shows_the_network_and_takes_the_flag(ml_project: Path) -> None:
    def detect(*extra: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "mcp_autoresearch", "detect", "--project", str(ml_project), *extra],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "network:      on" in detect()  # ML: a training script may fetch from a hub
    off = detect("--network", "off")
    assert "network:      off" in off and "; network off" in off


async def test_the_users_terminals_are_not_there_and_the_runs_own_work(ml_project: Path, agent_for) -> None:
    """A terminal of the user's (a pseudo-terminal this test holds, like a shell's) is absent from the run's
    /dev/pts, an instance of its own, where the run can still open pseudo-terminals."""
    master, slave = os.openpty()
    name = os.ttyname(slave)
    code = f"""
    import os
    try:
        fd = os.open({name!r}, os.O_WRONLY); os.write(fd, b'rm -rf ~\\\\n'); print('REACHED')
    except OSError as exc:
        print('refused', exc.strerror)
    m, s = os.openpty(); os.write(s, b'own'); print('OWN PTY', os.read(m, 3))
    """
    try:
        async with agent_for(ml_project) as agent:
            text = await attack(agent, code)
        os.set_blocking(master, False)
        try:
            typed = os.read(master, 100)
        except OSError:
            typed = b""
    finally:
        os.close(master)
        os.close(slave)
    assert "refused No such file or directory" in text and "OWN PTY b'own'" in text and typed == b"", text


def test_the_servers_python_and_path_stay_visible_beneath_a_hidden_directory(tmp_path: Path) -> None:
    """A virtual environment beneath /tmp (a clone in /tmp, as CI's may be) whose python the run command names:
    the view shows it again, read-only; never a hidden directory itself (that would show the user's sockets)."""
    from mcp_autoresearch.sandbox.policy import HIDDEN_ROOTS, view_reads

    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    tool = venv_bin / "tool"
    tool.write_text("#!/bin/sh\necho 'score: 1.5'\n")
    tool.chmod(0o755)
    old = os.environ["PATH"]
    os.environ["PATH"] = f"{venv_bin}:/tmp:{old}"
    try:
        reads = view_reads()
        spec = keeper_spec_for_view(reads)
        result = subprocess.run(
            confine.command_line(sys.executable, spec, ["tool"]), capture_output=True, text=True, cwd=tmp_path
        )
    finally:
        os.environ["PATH"] = old
    assert sys.prefix in reads and str(venv_bin) in reads
    assert not set(reads) & set(HIDDEN_ROOTS)
    assert "score: 1.5" in result.stdout, result.stderr


def keeper_spec_for_view(reads: list[str]) -> dict:
    from mcp_autoresearch.sandbox.policy import keeper_spec, probe_isolation

    return keeper_spec(probe_isolation("auto"), [], 1.0, reads)


def test_no_block_device_is_left_in_the_view(tmp_path: Path) -> None:
    """A run as root owns root's disks (mode 600, root's own): through a raw disk it would read what every mount
    of the view covers (hidden data, the evaluator's files). In the view each block device is /dev/null."""
    require(ISOLATION.namespaces, "CI must give runs a private view", "namespaces are unavailable here")
    devices = [e.path for e in os.scandir("/dev") if stat.S_ISBLK(e.stat(follow_symlinks=False).st_mode)]
    assert devices, "this machine shows no block device under /dev: nothing to check"
    probe = "import os, stat, sys; print(sum(stat.S_ISBLK(os.stat(p).st_mode) for p in sys.argv[1:]))"
    result = subprocess.run(
        confine.command_line(
            sys.executable, keeper_spec_for_view([]), [sys.executable, "-c", probe, *devices]
        ),
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.stdout.strip() == "0", (result.stdout, result.stderr)


def test_a_record_is_shown_empty_and_read_only_and_a_hidden_file_is_no_file(tmp_path: Path) -> None:
    """The server's records (`records`: the JSONL, results.tsv) read empty in the view and a write to them is
    refused; a `hide`n file is /dev/null, no regular file at all (a scorer importing the hidden target finds no
    module). Before, the records were /dev/null too: a run's append to results.tsv went nowhere, unseen."""
    require(ISOLATION.namespaces, "CI must give runs a private view", "namespaces are unavailable here")
    (tmp_path / "results.tsv").write_text("r1\tscore\t0.5\tkeep\n")
    (tmp_path / "objective.py").write_text("X = 1\n")
    spec = keeper_spec_for_view([])
    spec["records"], spec["hide"] = [str(tmp_path / "results.tsv")], [str(tmp_path / "objective.py")]
    argv = confine.command_line(sys.executable, spec, ["/bin/sh", "-c", PROBE_RECORDS])
    assert confine.parse_args(argv[4:])[0]["records"] == [str(tmp_path / "results.tsv")]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)
    assert result.stdout.split() == ["size=0", "append-refused", "hidden-not-regular"], (
        result.stdout,
        result.stderr,
    )
    assert (tmp_path / "results.tsv").read_text() == "r1\tscore\t0.5\tkeep\n"


PROBE_RECORDS = (
    'echo "size=$(wc -c < results.tsv)"; '
    "(echo forged >> results.tsv) 2>/dev/null && echo append-done || echo append-refused; "
    "test -f objective.py && echo hidden-regular || echo hidden-not-regular"
)
