"""A security review: the target's code attacks the loop during a real run (the agent uses the tools normally).

Each test is one attack, through the real server (`agent_for`) or real processes. Attacks the design blocks are
plain tests (regressions); attacks that still succeed are marked `xfail(strict=True)` with the mechanism.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from mcp_autoresearch.isolation import probe_isolation

from .conftest import HANG_TIMEOUT_S, git
from .helpers.needs import require

pytestmark = pytest.mark.anyio

ISOLATION = probe_isolation("auto")
require(
    ISOLATION.confined,
    f"CI must confine runs, but Landlock is unavailable here: {ISOLATION.reason}",
    f"Landlock is unavailable here: {ISOLATION.reason}",
)

NEEDS_ABI6 = pytest.mark.skipif((ISOLATION.abi or 0) < 6, reason="signal/socket scoping needs Landlock ABI 6")


async def attack(agent, code: str, old: str = "LR = 0.5", new: str = "LR = 0.4") -> tuple[dict, dict]:
    """Baseline, then one experiment whose target runs `code` (its metric improves: LR 0.5 -> 0.4)."""
    await agent.ok("start_session")
    await agent.experiment("baseline")
    await agent.edit(old, new + "\n" + textwrap.dedent(code))
    return await agent.experiment("attack")


def _descendants_running(word: str) -> list[psutil.Process]:
    """Live (not zombie) descendants of this process whose command line contains `word`."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and word in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _log_text(run: dict) -> str:
    return Path(run["log_path"]).read_text(errors="replace")


# ---------------------------------------------------------------------------------------------------------------
# (d) reaching the server, the keeper or the launcher
# ---------------------------------------------------------------------------------------------------------------
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
        run, decision = await attack(agent, PROC_PROBE + f"print('SERVER', os.path.exists('/proc/{server}/environ'))")
    text = _log_text(run)
    outside = text.split("OUTSIDE")[1].splitlines()[0].split()
    assert "REACHED" not in text, text
    if ISOLATION.namespaces:
        assert outside == [] and "SERVER False" in text, text
    else:
        assert str(server) in outside and len(outside) == 3, text
        assert text.count("refused") == 8 * 3, text
    assert run["status"] == "ok" and run["value"] == 1.3


# ---------------------------------------------------------------------------------------------------------------
# sockets of processes outside the run
# ---------------------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------------------
# (b) links, renames, .git, TMPDIR, file attributes
# ---------------------------------------------------------------------------------------------------------------
async def test_links_and_renames_into_a_writable_dir_are_refused(ml_project: Path, agent_for):
    """REFER: a protected file cannot be hard-linked or moved into `out/` (then written there), the writable
    directory itself cannot be moved, and a symlink planted in it does not carry writes out. Removing the empty
    `out/` is answered as done (a build may remove and recreate its outputs) but it stays where it is."""
    root = ml_project
    code = """
    import os
    steps = {
        'link-evaluator': lambda: os.link('prepare.py', 'out/p.py'),
        'move-evaluator': lambda: os.rename('prepare.py', 'out/p.py'),
        'move-notes': lambda: os.rename('my_notes.txt', 'out/n.txt'),
        'move-out': lambda: os.rename('out', 'out2'),
        'remove-out': lambda: (os.rmdir('out'), os.path.isdir('out') or (_ for _ in ()).throw(OSError(0, 'gone'))),
        'write-through-symlink': lambda: (os.symlink('../prepare.py', 'out/s.py'), open('out/s.py', 'w')),
        'link-git-config': lambda: os.link('.git/config', 'out/config'),
    }
    for what, step in steps.items():
        try:
            step()
            print('REACHED', what)
        except OSError as exc:
            print('refused', what, exc.strerror)
    """
    evaluator, notes = (root / "prepare.py").read_bytes(), (root / "my_notes.txt").read_bytes()
    async with agent_for(root, {"writable": ["out"]}) as agent:
        run, decision = await attack(agent, code)
    text = _log_text(run)
    assert "REACHED remove-out" in text, text  # answered as done, and still there (checked below)
    assert text.count("REACHED") == 1 and text.count("refused") == 6, text
    assert (root / "prepare.py").read_bytes() == evaluator and (root / "my_notes.txt").read_bytes() == notes
    assert (root / "out").is_dir() and not (root / "out" / "p.py").exists()


async def test_git_internals_and_git_commands_are_read_only_to_a_run(ml_project: Path, agent_for):
    root = ml_project
    config_before = (root / ".git" / "config").read_bytes()
    main_before = git(root, "rev-parse", "main")
    code = """
    import os, subprocess
    steps = {
        'config': lambda: open('.git/config', 'a').write('[core]\\n\\tfsmonitor = touch pwned\\n'),
        'HEAD': lambda: open('.git/HEAD', 'w').write('ref: refs/heads/main\\n'),
        'ref': lambda: open('.git/refs/heads/main', 'w').write('0' * 40 + '\\n'),
        'replace': lambda: os.makedirs('.git/refs/replace'),
        'hook': lambda: open('.git/hooks/post-checkout', 'w').write('#!/bin/sh\\n'),
        'index': lambda: open('.git/index', 'r+b').write(b'x'),
        'exclude': lambda: open('.git/info/exclude', 'a').write('prepare.py\\n'),
    }
    for what, step in steps.items():
        try:
            step()
            print('REACHED', what)
        except OSError as exc:
            print('refused', what, exc.strerror)
    for cmd in (['git', 'config', 'core.fsmonitor', 'touch pwned'],
                ['git', 'update-index', '--skip-worktree', 'prepare.py'],
                ['git', 'branch', '-f', 'main', 'HEAD~1'], ['git', 'stash', '-u']):
        done = subprocess.run(cmd, capture_output=True)
        print('REACHED' if done.returncode == 0 else 'refused', ' '.join(cmd[:2]))
    """
    async with agent_for(root) as agent:
        run, decision = await attack(agent, code)
        assert decision["decision"] == "keep", (run, decision)
    text = _log_text(run)
    assert "REACHED" not in text and text.count("refused") == 11, text
    assert (root / ".git" / "config").read_bytes() == config_before
    assert git(root, "rev-parse", "main") == main_before
    assert (root / "my_notes.txt").exists() and not (root / "pwned").exists()


async def test_links_planted_in_tmpdir_and_a_deep_tree_are_removed_safely(
    ml_project: Path, agent_for, tmp_path
):
    """The server removes the run's TMPDIR: links to the project and to a file outside must be unlinked, not
    followed; a very deep tree must not make the server fail or leave the directory behind."""
    root = ml_project
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("the user's file\n")
    code = f"""
    import os
    tmp = os.environ['TMPDIR']
    print('TMP', tmp)
    os.symlink({str(root)!r}, os.path.join(tmp, 'project'))
    os.symlink({str(outside)!r}, os.path.join(tmp, 'outside'))
    os.symlink({str(outside / "keep.txt")!r}, os.path.join(tmp, 'keep.txt'))
    os.chdir(tmp)
    for _ in range(3000):
        os.mkdir('d'); os.chdir('d')
    """
    async with agent_for(root) as agent:
        run, decision = await attack(agent, code)
    assert run["status"] == "ok" and decision["decision"] == "keep", (run, decision)
    tmp = _log_text(run).split("TMP ")[1].split()[0]
    assert not os.path.lexists(tmp)
    assert (outside / "keep.txt").read_text() == "the user's file\n"
    assert (root / "prepare.py").exists() and (root / "my_notes.txt").exists()


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


# ---------------------------------------------------------------------------------------------------------------
# (c) liveness: stopping itself, a fork storm, a flood of output
# ---------------------------------------------------------------------------------------------------------------
async def test_a_run_that_stops_itself_times_out_and_leaves_nothing(ml_project: Path, agent_for):
    code = """
    import os, signal, subprocess
    subprocess.Popen(['sh', '-c', 'kill -STOP $$; sleep 1000'], start_new_session=True)
    os.kill(os.getppid(), signal.SIGSTOP)  # the shell that runs the command
    os.kill(os.getpid(), signal.SIGSTOP)
    """
    began = time.monotonic()
    async with agent_for(ml_project, {"timeout": HANG_TIMEOUT_S}) as agent:
        run, decision = await attack(agent, code)
    assert run["status"] == "timeout" and decision["decision"] == "crash", run
    assert time.monotonic() - began < 500  # ended at its timeout, not by its own end (sleep 1000)
    assert _descendants_running("sleep 1000") == []


async def test_a_fork_storm_is_ended_at_the_timeout(ml_project: Path, agent_for):
    """A bounded fork storm (every process re-forks when a child dies, each in a new session) is ended at the
    timeout; the server answers and nothing is left."""
    code = """
    import os, time
    tag = 'review-storm'
    def worker(depth):
        kids = 0
        while True:
            try:
                if kids < 3 and depth < 5 and os.fork() == 0:
                    os.setsid()
                    depth += 1; kids = 0
                    continue
                kids += 1
            except OSError:
                pass
            try:
                os.waitpid(-1, os.WNOHANG) and None
            except ChildProcessError:
                pass
            time.sleep(0.01)
    worker(0)
    """
    async with agent_for(ml_project, {"timeout": HANG_TIMEOUT_S}) as agent:
        run, decision = await attack(agent, code)
    assert run["status"] == "timeout", run
    time.sleep(0.5)
    assert _descendants_running("train.py") == []


async def test_a_flood_of_binary_output_and_huge_lines_still_measures(ml_project: Path, agent_for):
    """40 MB of binary output without a newline, then the metric: the value is read, the answer stays small."""
    code = """
    import os, sys
    chunk = bytes(range(256)) * 4096
    for _ in range(40):
        sys.stdout.buffer.write(chunk.replace(b'\\n', b'\\x00'))
    sys.stdout.buffer.write(b'\\nval_bpb: 1.25\\n')
    sys.stdout.flush()
    os._exit(0)
    """
    async with agent_for(ml_project) as agent:
        run, decision = await attack(agent, code)
    assert run["status"] == "ok" and run["value"] == 1.25 and decision["decision"] == "keep", run
    assert len(str(run)) < 20_000


# ---------------------------------------------------------------------------------------------------------------
# (a) the measured value
# ---------------------------------------------------------------------------------------------------------------
EVALUATOR = """\
import time
time.sleep(0.5)  # the honest evaluation takes a while
print("val_bpb: 1.5")
"""


@pytest.mark.xfail(
    strict=True,
    reason="the target's code and a read-only evaluator run by the same run_command share one process tree and "
    "one output pipe: a process the target left behind prints a better metric while the evaluator runs, and "
    "the last match wins (leftovers are killed only when the whole command ends)",
)
async def test_a_daemon_cannot_print_over_a_read_only_evaluator(ml_project: Path, agent_for):
    root = ml_project
    (root / "evaluate.py").write_text(EVALUATOR)
    git(root, "add", "evaluate.py")
    git(root, "commit", "-qm", "evaluator")
    code = """
    import os, select, time
    if os.fork() == 0:
        os.setsid()
        def cmdline(pid):
            try:
                return open(f'/proc/{pid}/cmdline', 'rb').read()
            except OSError:
                return b''
        while True:  # wait for the evaluator to start, then to end (it printed its value)
            found = [pid for pid in filter(str.isdigit, os.listdir('/proc'))
                     if cmdline(pid).split(b'\\0')[1:2] == [b'evaluate.py']]
            if found:
                try:
                    select.select([os.pidfd_open(int(found[0]))], [], [])
                except OSError:
                    pass
                break
            time.sleep(0.01)
        print('val_bpb: 0.000001', flush=True)
        os._exit(0)
    """
    overrides = {
        "run_command": "python train.py && python evaluate.py && sleep 1.5",
        "readonly_files": ["prepare.py", "evaluate.py"],
    }
    async with agent_for(root, overrides) as agent:
        run, decision = await attack(agent, code)
    assert run["value"] == 1.5 and decision["decision"] != "keep", (run, decision)


async def test_a_line_printed_after_the_command_ended_is_not_captured(ml_project: Path, agent_for):
    """Leftovers watch the shell's pidfd and print a better metric the moment it ends: the keeper holds the
    shell at its exit (ptrace) and kills them first, so no such line is captured."""
    root = ml_project
    (root / "evaluate.py").write_text('print("val_bpb: 1.5")\n')
    git(root, "add", "evaluate.py")
    git(root, "commit", "-qm", "evaluator")
    code = """
    import os, select
    shell = os.getppid()
    for _ in range(6):  # several watchers: one of them wins the race
        if os.fork() == 0:
            os.setsid()
            fd = os.pidfd_open(shell)
            select.select([fd], [], [])
            for _ in range(200):
                os.write(1, b'val_bpb: 0.000001\\n')
            os._exit(0)
    """
    overrides = {
        "run_command": "python train.py; python evaluate.py",
        "readonly_files": ["prepare.py", "evaluate.py"],
    }
    from .conftest import TRAIN_PY

    runs = []
    async with agent_for(root, overrides) as agent:
        runs.append(await attack(agent, code))
        for attempt in range(4):  # a race: a few tries make the outcome certain either way
            lr = f"LR = 0.3{attempt}"
            await agent.ok(
                "apply_edit", content=TRAIN_PY.replace("LR = 0.5", lr + "\n" + textwrap.dedent(code))
            )
            runs.append(await agent.experiment(f"try {attempt}"))
    for run, decision in runs:
        assert "0.000001" not in _log_text(run)
        assert run["value"] == 1.5 and decision["decision"] != "keep", (run, decision)


BUILD_PY = """\
import os
PAD = 10
os.makedirs('dist', exist_ok=True)
open('dist/bundle.js', 'w').write('FULL' * 256 * PAD)
"""
CHECK_PY = """\
import sys
data = open('dist/bundle.js').read()
sys.exit(0 if data.count('FULL') >= 256 * 9 else 1)
"""


async def test_a_measured_size_cannot_hide_the_output_behind_a_symlink(tmp_path: Path, agent_for):
    """`size_kb:dist`: the bundle is built into another writable directory and `dist/bundle.js` is a symlink to
    it. The checks follow the link and pass; the size must not count the link as nothing."""
    from .conftest import make_repo

    root = make_repo(
        tmp_path / "web", {"build.py": BUILD_PY, "check.py": CHECK_PY, ".gitignore": "dist/\ncache/\n"}
    )
    overrides = {
        "target_file": "build.py",
        "run_command": "python build.py",
        "metric_name": "bundle_kb",
        "metric_measure": "size_kb:dist",
        "metric_direction": "lower",
        "checks_command": "python check.py",
        "readonly_files": ["check.py"],
        "writable": ["dist", "cache"],
    }
    code = """
    os.remove('dist/bundle.js')
    open('cache/real.js', 'w').write('FULL' * 256 * PAD)
    os.symlink('../cache/real.js', 'dist/bundle.js')
    """
    async with agent_for(root, overrides) as agent:
        await agent.ok("start_session")
        baseline, _ = await agent.experiment("baseline")
        await agent.edit(
            "PAD = 10\nos.makedirs('dist', exist_ok=True)\nopen('dist/bundle.js', 'w').write('FULL' * 256 * PAD)",
            "PAD = 10\nos.makedirs('dist', exist_ok=True)" + textwrap.dedent(code),
        )
        run, decision = await agent.experiment("the same bundle, behind a link")
    assert baseline["value"] == 10.0
    assert decision["decision"] != "keep" and run["value"] in (None, 10.0), (run, decision)


async def test_a_nested_writable_entry_cannot_be_swapped_for_a_link(ml_project: Path, agent_for):
    """writable = ["out", "out/cache"]: a run replaces out/cache with a link to the project; the next run must
    not get write access through it (the grant is opened by path, following links)."""
    root = ml_project
    swap = """
    import os, shutil
    shutil.rmtree('out/cache', ignore_errors=True)
    os.symlink('..', 'out/cache')
    """
    delete = """
    import os
    for name in ('my_notes.txt', 'prepare.py'):
        try:
            os.remove(name); print('REACHED', name)
        except OSError as exc:
            print('refused', name, exc.strerror)
    """
    async with agent_for(root, {"writable": ["out", "out/cache"]}) as agent:
        run, decision = await attack(agent, swap)
        assert run["status"] == "ok", (run, _log_text(run))
        await agent.ok(
            "apply_edit",
            content=(root / "train.py")
            .read_text()
            .replace("LR = 0.4", "LR = 0.3")
            .replace(textwrap.dedent(swap), textwrap.dedent(delete)),
        )
        run, decision = await agent.experiment("deletes through the link")
    assert (root / "my_notes.txt").exists(), _log_text(run)
    assert "REACHED" not in _log_text(run)


def _ml_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / ".cache").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    return home


EVAL_WITH_WEIGHTS = """\
import os
WEIGHTS = os.path.expanduser('~/.cache/torch/hub/checkpoints/eval_weights.txt')
def evaluate(lr):
    w = float(open(WEIGHTS).read())  # downloaded once, like pytorch-fid's Inception weights
    return abs(lr - 0.1) * w + 1
"""


async def test_a_writable_cache_cannot_change_a_later_runs_evaluation(
    ml_project: Path, agent_for, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A discarded run rewrites what a read-only evaluator loads from ~/.cache/torch (as pytorch-fid's weights),
    so that a later innocent commit would be kept with a false value: ML runs may write no shared cache."""
    root = ml_project
    home = _ml_home(monkeypatch, tmp_path)
    weights = home / ".cache" / "torch" / "hub" / "checkpoints" / "eval_weights.txt"
    weights.parent.mkdir(parents=True)
    weights.write_text("1.0\n")
    (root / "prepare.py").write_text(EVAL_WITH_WEIGHTS)
    (root / "train.py").write_text(
        'import prepare\nLR = 0.5\nprint(f"val_bpb: {prepare.evaluate(LR):.6f}")\n'
    )
    git(root, "commit", "-qam", "evaluator with cached weights")
    poison = f"""
    LR = 0.9  # a worse idea: discarded (the weights change after its own evaluation)
    import atexit
    atexit.register(lambda: open({str(weights)!r}, 'w').write('0.0\\n'))
    """
    async with agent_for(root) as agent:
        run, decision = await attack(agent, poison, new="")
        assert decision["decision"] != "keep", (run, decision)
        await agent.edit("LR = 0.5", "LR = 0.45")  # innocent: nothing but the constant
        run, decision = await agent.experiment("a slightly lower LR")
    honest = abs(0.45 - 0.1) * 1.0 + 1
    assert run["value"] == pytest.approx(honest), (run, decision)
    assert weights.read_text() == "1.0\n"


async def test_a_writable_uv_cache_cannot_rewrite_the_projects_venv(
    ml_project: Path, agent_for, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """uv installs the venv as hard links into ~/.cache/uv: were that cache writable, a run would rewrite the
    packages the evaluator imports. It is not; each run gets a private uv cache instead."""
    root = ml_project
    home = _ml_home(monkeypatch, tmp_path)
    cached = home / ".cache" / "uv" / "archive-v0" / "x1" / "evalpkg.py"
    cached.parent.mkdir(parents=True)
    cached.write_text("def evaluate(lr):\n    return abs(lr - 0.1) + 1\n")
    installed = root / ".venv" / "lib" / "python3" / "site-packages" / "evalpkg.py"
    installed.parent.mkdir(parents=True)
    os.link(cached, installed)  # what `uv sync` does with link-mode=hardlink
    (root / ".venv" / ".gitignore").write_text("*\n")
    before = installed.read_bytes()
    code = f"""
    open({str(cached)!r}, 'w').write('def evaluate(lr):\\n    return 0.0\\n')
    """
    async with agent_for(root) as agent:
        run, _ = await attack(agent, code)
    assert installed.read_bytes() == before, _log_text(run)


# ---------------------------------------------------------------------------------------------------------------
# devices and shared directories every run may write
# ---------------------------------------------------------------------------------------------------------------
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


async def test_gos_writable_bin_is_no_way_into_the_servers_folder(ml_project: Path, agent_for):
    """`.autoresearch/bin` (Go's default) is writable: nothing beside it is, through `..`, links or renames."""
    root = ml_project
    code = """
    import glob, os
    state = glob.glob('.autoresearch/sessions/*.json')[0]
    steps = {
        'dotdot': lambda: open('.autoresearch/bin/../sessions/forged.json', 'w'),
        'state-through-dotdot': lambda: open('.autoresearch/bin/../' + state[len('.autoresearch/'):], 'a'),
        'link-state': lambda: os.link(state, '.autoresearch/bin/state.json'),
        'move-state': lambda: os.rename(state, '.autoresearch/bin/state.json'),
        'move-bin': lambda: os.rename('.autoresearch/bin', '.autoresearch/old'),
        'jsonl': lambda: open(glob.glob('.autoresearch/*.jsonl')[0], 'a'),
    }
    for what, step in steps.items():
        try:
            step(); print('REACHED', what)
        except OSError as exc:
            print('refused', what, exc.strerror)
    open('.autoresearch/bin/app', 'w').write('built\\n')
    os.symlink('../sessions', '.autoresearch/bin/sessions')
    """
    async with agent_for(root, {"writable": [".autoresearch/bin"]}) as agent:
        run, decision = await attack(agent, code)
        text = _log_text(run)
        assert "REACHED" not in text and text.count("refused") == 6, text
        assert run["status"] == "ok" and decision["decision"] == "keep", (run, text)
        from .conftest import TRAIN_PY

        await agent.ok("apply_edit", content=TRAIN_PY.replace("LR = 0.5", "LR = 0.3"))
        run, decision = await agent.experiment("the next run, with the links left in bin/")
        assert decision["decision"] == "keep", (run, decision)
    # Every run starts from an empty bin/: the first run's files were moved aside, the links with them.
    assert not (root / ".autoresearch" / "bin" / "app").exists()
    kept = list((root / ".autoresearch" / "outputs").glob("*/run-*/.autoresearch/bin"))
    assert kept and all(sorted(p.name for p in bin.iterdir()) == ["app", "sessions"] for bin in kept), kept


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
        for line in iter(server.stderr.readline, b""):  # it says so once it listens: no polling against a clock
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
