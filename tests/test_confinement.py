"""Confinement of runs: the keeper (Landlock, subreaper, parent-death) and the server's policy around it.

These tests need Landlock. Where the kernel lacks it they fail when CI is set (CI's machine has it) and are
skipped elsewhere with the reason, never silently.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from mcp_autoresearch.errors import ConfigError
from mcp_autoresearch.lifecycle.experiment import Experiment
from mcp_autoresearch.lifecycle.published_log import without_run_log_redirect
from mcp_autoresearch.sandbox import confine, landlock
from mcp_autoresearch.sandbox.policy import check_writable, denied_write_hint, probe_isolation
from mcp_autoresearch.setup.config import Config

from .conftest import make_repo, run_cli
from .helpers.needs import require

ISOLATION = probe_isolation("auto")
require(
    ISOLATION.confined,
    f"CI must confine runs, but Landlock is unavailable here: {ISOLATION.reason}",
    f"Landlock is unavailable here: {ISOLATION.reason}",
)


def keeper(tmp_path: Path, script: str, *writable: str, **spec) -> subprocess.CompletedProcess[str]:
    argv = confine.command_line(
        sys.executable, {"landlock": True, "write": list(writable), **spec}, ["/bin/sh", "-c", script]
    )
    return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=30)


def test_the_kernel_abi_is_reported() -> None:
    assert ISOLATION.abi is not None and ISOLATION.abi >= 1
    assert ISOLATION.describe() == f"namespaces + landlock (ABI {ISOLATION.abi})"
    assert probe_isolation("off").describe() == 'none: isolation = "off" in the configuration'


def test_writes_only_beneath_writable_paths(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "kept.txt").write_text("original\n")
    done = keeper(
        tmp_path,
        "echo built > out/a.txt && echo ok-out; echo x > kept.txt; echo x > new.txt; rm -f kept.txt;"
        "mkdir sub; ln -s /etc/passwd link; echo y > /dev/null && echo ok-null; cat kept.txt",
        str(tmp_path / "out"),
        "/dev/null",
    )
    assert "ok-out" in done.stdout and "ok-null" in done.stdout and "original" in done.stdout
    assert (tmp_path / "out" / "a.txt").read_text() == "built\n"
    assert (tmp_path / "kept.txt").read_text() == "original\n"
    assert not (tmp_path / "new.txt").exists() and not (tmp_path / "sub").exists()
    assert not (tmp_path / "link").is_symlink()
    assert done.stderr.count("Permission denied") >= 4


def test_a_root_run_with_landlock_alone_makes_no_device_node(tmp_path: Path) -> None:
    """Landlock lets a run make device nodes beneath its writable paths, and with CAP_MKNOD (a root run) it
    could: a block device's node there (a disk's, a loop device's) opens for writing as any file there does, and
    writes the disk beneath every file Landlock keeps read-only (shown by hand with a loop device over a file
    outside the writable paths: the run wrote into that file). CAP_MKNOD is dropped: no node is made, a FIFO
    still is. Failed before: both nodes were made (and the null device's one opened)."""
    if os.geteuid() != 0:
        pytest.skip("only a root run holds CAP_MKNOD")
    (tmp_path / "out").mkdir()
    done = keeper(
        tmp_path,
        "mknod out/disk b 7 0 && echo made-block; mknod out/zero c 1 5 && echo made-char; "
        "mkfifo out/fifo && echo made-fifo",
        str(tmp_path / "out"),
    )
    assert done.stdout.split() == ["made-fifo"], done.stdout + done.stderr
    assert done.stderr.count("Operation not permitted") == 2, done.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["fifo"]


def _inheritable(*caps: int) -> None:
    """In the child before `exec`: `caps` added to its inheritable set, as a container runtime starts root (with
    its default capabilities inheritable, CAP_MKNOD among them)."""
    libc = landlock.libc_handle()
    header, data = landlock.CapHeader(landlock.CAP_VERSION_3, 0), (landlock.CapData * 2)()
    assert libc.capget(ctypes.byref(header), data) == 0
    for cap in caps:
        data[cap // 32].inheritable |= 1 << (cap % 32)
    assert libc.capset(ctypes.byref(header), data) == 0


def test_a_root_run_with_landlock_alone_regains_no_dropped_capability_from_its_inheritable_set(
    tmp_path: Path,
) -> None:
    """Root regains at `exec` every capability of its inheritable set, whatever the bounding set says: started
    with CAP_MKNOD and CAP_SYS_ADMIN inheritable (a container runtime's default set is inheritable in many
    versions), a root run with Landlock alone held both again and made a disk's node beneath its writable path.
    They are lowered in the inheritable set too. Failed before: CapPrm held both, and the node was made."""
    if os.geteuid() != 0:
        pytest.skip("only root regains capabilities at exec")
    (tmp_path / "out").mkdir()
    argv = confine.command_line(
        sys.executable,
        {"landlock": True, "write": [str(tmp_path / "out")]},
        ["/bin/sh", "-c", "grep CapPrm /proc/self/status; mknod out/disk b 7 0 && echo made-block"],
    )
    done = subprocess.run(
        argv,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=lambda: _inheritable(MKNOD, SYS_ADMIN),
    )
    permitted = int(done.stdout.split()[1], 16)
    assert not permitted & (1 << MKNOD | 1 << SYS_ADMIN), done.stdout
    assert "made-block" not in done.stdout and "Operation not permitted" in done.stderr, (
        done.stdout + done.stderr
    )
    assert os.listdir(tmp_path / "out") == []


MKNOD, SYS_ADMIN = 27, 21


def test_a_confined_run_cannot_signal_the_server(tmp_path: Path) -> None:
    if ISOLATION.abi is None or ISOLATION.abi < 6:
        pytest.skip("signal scoping needs Landlock ABI 6")
    done = keeper(tmp_path, f"kill -0 {os.getpid()} && echo reached || echo refused")
    assert "refused" in done.stdout and "not permitted" in done.stderr


def test_exit_status_and_fatal_signal_pass_through(tmp_path: Path) -> None:
    assert keeper(tmp_path, "exit 7").returncode == 7
    assert keeper(tmp_path, "kill -9 $$").returncode == -signal.SIGKILL
    assert keeper(tmp_path, "true").returncode == 0


def test_setup_failure_is_named_and_nothing_runs(tmp_path: Path) -> None:
    argv = [
        sys.executable,
        "-I",
        "-S",
        confine.__file__,
        "--landlock",
        "--bogus",
        "--",
        "/bin/sh",
        "-c",
        "echo ran",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert (
        done.returncode == confine.SETUP_FAILED and confine.MARK in done.stderr and "ran" not in done.stdout
    )


def test_the_command_is_held_by_its_keeper_before_its_first_instruction(tmp_path: Path) -> None:
    """The keeper takes hold of the command (ptrace, to hold it at its exit and end the rest of the run first)
    before the command starts: a reordering of the gate must keep this (`/proc` outside the view shows the
    tracer)."""
    for _ in range(5):
        done = keeper(tmp_path, "grep TracerPid /proc/$$/status; echo keeper=$PPID")
        lines = dict(line.split(maxsplit=1) for line in done.stdout.replace("=", " ").splitlines())
        assert done.returncode == 0 and lines["TracerPid:"] == lines["keeper"], done


def _alive(command: str) -> list[psutil.Process]:
    """Live processes whose whole command line is `command` (not a script that merely mentions it)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if " ".join(proc.info["cmdline"] or []) == command and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def test_daemon_that_sheds_its_environment_dies_with_the_command(tmp_path: Path) -> None:
    a, _ = _unique()
    done = keeper(tmp_path, f"(setsid sh -c 'exec env -i sleep {a}' &); echo started")
    assert done.returncode == 0 and "started" in done.stdout
    assert "killed 1 process" in done.stderr
    assert _alive(f"sleep {a}") == []


def _unique() -> tuple[str, str]:
    """Two sleep durations no other process here uses (left-overs of an earlier failed run cannot match)."""
    base = 10_000 + (os.getpid() * 7 + int(time.monotonic() * 1000)) % 80_000
    return str(base), str(base + 1)


def test_the_tree_dies_when_the_server_dies(tmp_path: Path) -> None:
    """The keeper's parent (here a stand-in for the server) is SIGKILLed: the run and its daemons go too."""
    script = textwrap.dedent(
        """
        import subprocess, sys, time
        from mcp_autoresearch.sandbox import confine
        a, b = sys.argv[1:3]
        argv = confine.command_line(sys.executable, {"landlock": True},
                                    ["/bin/sh", "-c", f"(setsid sh -c 'exec env -i sleep {a}' &); sleep {b}"])
        subprocess.Popen(argv, start_new_session=True)
        time.sleep(60)
        """
    )
    a, b = _unique()
    server = subprocess.Popen([sys.executable, "-c", script, a, b])
    try:
        deadline = time.monotonic() + 20
        while not (_alive(f"sleep {a}") and _alive(f"sleep {b}")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _alive(f"sleep {a}") and _alive(f"sleep {b}")
    finally:
        server.kill()
        server.wait()
    deadline = time.monotonic() + 10
    while (_alive(f"sleep {a}") or _alive(f"sleep {b}")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive(f"sleep {a}") == [] and _alive(f"sleep {b}") == []


def _experiment(root: Path, command: str, run_id: str = "r1", **config) -> Experiment:
    values = {
        "target_file": "t.py",
        "run_command": command,
        "metric_name": "score",
        "timeout": 20.0,
        **config,
    }
    return Experiment(
        Config.model_validate(values), root, run_id, root / ".autoresearch" / "runs", "t", None, ISOLATION
    )


def test_a_metric_printed_after_the_command_ended_does_not_count(tmp_path: Path) -> None:
    """A child's SIGTERM handler prints a better metric when the run is killed: it is not in the log."""
    root = make_repo(tmp_path / "p", {"t.py": "x = 1\n"})
    trap = "trap 'echo score: 0.0001; exit 0' TERM; while :; do sleep 0.05; done"
    result = _experiment(root, f'echo score: 5; (sh -c "{trap}" &); sleep 0.3').run()
    assert result.status == "ok" and result.value == 5.0
    assert "0.0001" not in Path(result.log_path).read_text()
    timed_out = _experiment(root, f'echo score: 5; sh -c "{trap}"', timeout=1.0).run()
    assert timed_out.status == "timeout" and "0.0001" not in Path(timed_out.log_path).read_text()


def test_private_tmpdir_and_no_server_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_repo(tmp_path / "p", {"t.py": "x = 1\n"})
    monkeypatch.setenv("AUTORESEARCH_TOKEN", "s3cret")
    script = 'echo "tmp=$TMPDIR token=${AUTORESEARCH_TOKEN:-none}"; touch "$TMPDIR/f" && echo score: 1'
    result = _experiment(root, script).run()
    text = Path(result.log_path).read_text()
    assert result.status == "ok" and "token=none" in text
    tmpdir = text.split("tmp=")[1].split()[0]
    assert tmpdir.startswith(("/tmp", os.environ.get("TMPDIR", "/tmp"))) and not Path(tmpdir).exists()


def test_shared_caches_are_private_to_each_run_unless_declared_writable(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "p", {"t.py": "x = 1\n"})
    script = 'echo "uv=$UV_CACHE_DIR triton=$TRITON_CACHE_DIR tmp=$TMPDIR"; echo score: 1'
    text = Path(_experiment(root, script).run().log_path).read_text()
    tmp = text.split("tmp=")[1].split()[0]
    assert f"uv={tmp}/caches/uv_cache_dir" in text and f"triton={tmp}/caches/triton_cache_dir" in text
    declared = _experiment(root, script, writable=["~/.cache/uv"]).run()
    assert "uv= " in Path(declared.log_path).read_text()


def test_the_original_tools_run_log_redirect_still_works(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "p", {"t.py": "x = 1\n"})
    assert without_run_log_redirect("python train.py > run.log 2>&1") == "python train.py"
    assert without_run_log_redirect("uv run train.py 2>&1 | tee run.log") == "uv run train.py"
    assert without_run_log_redirect("make > build.log") == "make > build.log"
    result = _experiment(root, "echo score: 3 > run.log 2>&1").run()
    assert result.status == "ok" and result.value == 3.0
    assert (root / "run.log").read_text() == "score: 3\n"


def test_a_denied_write_names_the_setting(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "p", {"t.py": "x = 1\n"})
    result = _experiment(root, "mkdir -p cache && echo data > cache/x && echo score: 1").run()
    assert result.status == "crash" and "writable" in result.error and "cache" in result.error
    allowed = _experiment(root, "mkdir -p cache && echo data > cache/x && echo score: 1", writable=["cache"])
    assert allowed.run().status == "ok"
    assert denied_write_hint("PermissionError: [Errno 13] Permission denied: '/p/data/x.bin'") is not None
    assert denied_write_hint("all fine\n") is None


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (".", "own folder"),
        ("src", "the target"),
        ("data", "read-only"),
        (".git", "git repository"),
        (".git/hooks", "git repository"),
        (".autoresearch", "server's own folder"),
        (".autoresearch/sessions", "server's own folder"),
        (".", "own folder"),
        ("link_out", "leads out of the project"),
    ],
)
def test_writable_entries_that_would_open_the_rules_are_refused(tmp_path: Path, entry: str, why: str) -> None:
    root = tmp_path / "p"
    (root / "src").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "link_out").symlink_to(tmp_path, target_is_directory=True)
    protected = {
        "src/model.py": "the target src/model.py",
        "data/eval.bin": "the read-only file data/eval.bin",
    }
    with pytest.raises(ConfigError, match=why):
        check_writable(root, [entry], protected, ".autoresearch/autoresearch.jsonl")
    assert check_writable(root, ["dist", ".autoresearch/bin", "~/.npm"], protected, "x.jsonl")


def test_detect_reports_isolation_and_writable(tmp_path: Path) -> None:
    root = make_repo(
        tmp_path / "web", {"package.json": '{"scripts": {"build": "node b.js"}}', "src/index.js": "x\n"}
    )
    done = run_cli("detect", "--project", str(root), "--json")
    assert done.returncode == 0, done.stderr
    # A Node project: its runs are cut off from the network (README, "Network").
    assert f'"isolation": "namespaces + landlock (ABI {ISOLATION.abi}); network off"' in done.stdout
    assert '"network": "off"' in done.stdout
    # npm's cache and node_modules/.cache are private to each run, never writable by default (caches.py).
    assert (
        '"dist"' in done.stdout and '"~/.npm"' not in done.stdout and "node_modules/.cache" not in done.stdout
    )
    (root / "autoresearch.toml").write_text('isolation = "off"\n')
    assert "isolation:    none: isolation" in run_cli("detect", "--project", str(root)).stdout
    (root / "autoresearch.toml").write_text('writable = ["src"]\n')
    refused = run_cli("detect", "--project", str(root))
    assert refused.returncode == 2 and "writable entry 'src'" in refused.stderr and "target" in refused.stderr


NO_LANDLOCK = str(Path(__file__).parent / "helpers" / "no_landlock.py")
NO_NAMESPACES = str(Path(__file__).parent / "helpers" / "no_namespaces.py")


@pytest.mark.anyio
async def test_where_landlock_is_blocked_it_is_said_and_required_refuses(ml_project: Path) -> None:
    """As in a container whose seccomp profile refuses the syscalls: detect says so in one line, a session with
    isolation = required refuses to start, and with the default the after-run checks still catch tampering."""
    from mcp import Client

    from .conftest import Agent, stdio_params

    detect = subprocess.run(
        [
            sys.executable,
            NO_LANDLOCK,
            sys.executable,
            "-m",
            "mcp_autoresearch",
            "detect",
            "--project",
            str(ml_project),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "isolation:    namespaces; no landlock: the syscalls are blocked here" in detect.stdout

    def blocked(*extra: str, both: bool = False):
        params = stdio_params(ml_project, *extra)
        params.args = [NO_LANDLOCK, params.command, *params.args]
        if both:  # and no namespaces either: nothing confines the run
            params.args = [NO_NAMESPACES, sys.executable, *params.args]
        params.command = sys.executable
        return params

    (ml_project / "autoresearch.toml").write_text('isolation = "required"\n')
    async with Client(blocked()) as client:
        message = await Agent(client).refused("start_session")
        assert "isolation = required" in message and "blocked" in message
    (ml_project / "autoresearch.toml").unlink()
    async with Client(blocked(both=True)) as client:
        agent = Agent(client)
        started = await agent.ok("start_session")
        assert started["isolation"].startswith("none; no landlock: the syscalls are blocked"), started
        assert "no namespaces: unshare: Operation not permitted" in started["isolation"]
        await agent.experiment("baseline")
        await agent.edit("LR = 0.5", "LR = 0.1\nopen('prepare.py', 'w').write('cheat\\n')")
        run = await agent.ok("run_experiment", description="unconfined tamper")
        assert run["status"] == "tampered" and "prepare.py" in run["error"]
    assert (ml_project / "prepare.py").read_text() == "# fixed evaluation\nSEED = 1\n"


def test_the_launcher_starts_confined_keepers_and_they_die_with_the_server(tmp_path: Path) -> None:
    """The warm launcher forks each keeper; a command sees only its three standard descriptors (never the
    launcher's socket), is confined like any other, and its tree ends when the server is SIGKILLed."""
    script = textwrap.dedent(
        """
        import os, sys, time
        from pathlib import Path
        from mcp_autoresearch.sandbox.launcher import launcher
        out = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
        a, b = sys.argv[3:5]
        cmd = (f"echo fds: $(ls /proc/self/fd); echo x > denied.txt;"
               f"(setsid sh -c 'exec env -i sleep {a}' &); sleep {b}")
        launcher().spawn(["/bin/sh", "-c", cmd], Path(sys.argv[2]), dict(os.environ), out,
                         {"landlock": True, "write": []})
        time.sleep(60)
        """
    )
    out = tmp_path / "out.txt"
    a, b = _unique()
    server = subprocess.Popen([sys.executable, "-c", script, str(out), str(tmp_path), a, b])
    try:
        deadline = time.monotonic() + 20
        while not (_alive(f"sleep {a}") and _alive(f"sleep {b}")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _alive(f"sleep {a}") and _alive(f"sleep {b}")
        text = out.read_text()
        fds = text.split("fds:")[1].splitlines()[0].split()
        assert fds[:3] == ["0", "1", "2"] and len(fds) <= 4, text  # 3 = the directory ls itself reads
        assert "denied.txt: Permission denied" in text
        assert not (tmp_path / "denied.txt").exists()
    finally:
        server.kill()
        server.wait()
    deadline = time.monotonic() + 10
    while (_alive(f"sleep {a}") or _alive(f"sleep {b}")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive(f"sleep {a}") == [] and _alive(f"sleep {b}") == []


@pytest.mark.anyio
async def test_where_namespaces_are_refused_landlock_alone_confines_and_required_refuses(
    ml_project: Path,
) -> None:
    """As where user namespaces are disabled: detect and start_session say `landlock (ABI n); no namespaces:
    <reason>` in one line, isolation = required (which requires both layers) refuses to start, and with the
    default a run is still held to its writable paths by Landlock."""
    from mcp import Client

    from .conftest import Agent, stdio_params

    detect = subprocess.run(
        [
            sys.executable,
            NO_NAMESPACES,
            sys.executable,
            "-m",
            "mcp_autoresearch",
            "detect",
            "--project",
            str(ml_project),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = f"isolation:    landlock (ABI {ISOLATION.abi}); no namespaces: unshare: Operation not permitted"
    assert line in detect.stdout, detect.stdout

    def blocked():
        params = stdio_params(ml_project)
        params.args = [NO_NAMESPACES, params.command, *params.args]
        params.command = sys.executable
        return params

    (ml_project / "autoresearch.toml").write_text('isolation = "required"\n')
    async with Client(blocked()) as client:
        message = await Agent(client).refused("start_session")
        assert "isolation = required needs Landlock and namespaces" in message, message
        assert "no namespaces: unshare: Operation not permitted" in message, message
    (ml_project / "autoresearch.toml").unlink()
    async with Client(blocked()) as client:
        agent = Agent(client)
        started = await agent.ok("start_session")
        assert (
            started["isolation"]
            == f"landlock (ABI {ISOLATION.abi}); no namespaces: unshare: Operation not permitted"
        )
        await agent.experiment("baseline")
        await agent.edit(
            "LR = 0.5",
            "LR = 0.1\ntry:\n    open('prepare.py', 'w')\nexcept OSError as e:\n    print('refused', e.strerror)",
        )
        run = await agent.ok("run_experiment", description="a write Landlock refuses")
        assert "refused Permission denied" in Path(run["log_path"]).read_text()


MITT_BUILD_OUTPUT = """\
Error: EACCES: permission denied, rmdir 'dist'
    at rmdirSync (node:fs:1214:11)
    at rimrafSync (node:internal/fs/rimraf:195:7) {
  errno: -13,
  code: 'EACCES',
  syscall: 'rmdir',
  path: 'dist'
}
"""


@pytest.mark.parametrize(
    ("output", "named"),
    [
        (MITT_BUILD_OUTPUT, "(dist)"),
        (
            MITT_BUILD_OUTPUT.replace("rmdir 'dist'", "rmdir").replace("path: 'dist'", "path: 'lib/x'"),
            "(lib/x)",
        ),
        ("Error: EROFS: read-only file system, open 'index.d.ts'\n", "(index.d.ts)"),
        (
            "npm ERR! code EACCES\nnpm ERR! syscall mkdir\nnpm ERR! path /root/.npm/_cacache\n"
            "npm ERR! errno -13\nnpm ERR! Error: EACCES: permission denied, mkdir '/root/.npm/_cacache'\n",
            "(/root/.npm/_cacache)",
        ),
        ("touch: cannot touch 'x.txt': Read-only file system\n", "(x.txt)"),
        ("build failed: EACCES\n", "(the output names no path"),
    ],
)
def test_the_denied_write_message_names_the_path(output: str, named: str) -> None:
    """mitt's build printed a Node error object whose first quoted word is the code ('EACCES'): the path is
    the one the tool names, never the error code, and where none is named the message says so."""
    hint = denied_write_hint(output)
    assert hint is not None and f"refused a write {named}" in hint, hint
