"""Review 33: the server's libc handle (`ownprocess`), the tests' `python3` that skips a version manager's shim
(conftest), and the Ray head the Ray tests share. Real servers, real runs, the real keeper."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client

from .conftest import PATH_FIRST, Agent, git, stdio_params, stdio_server_pid
from .helpers.attacks import ISOLATION, _log_text
from .helpers.needs import require

pytestmark = pytest.mark.anyio

require(
    ISOLATION.confined,
    f"CI must confine runs, but Landlock is unavailable here: {ISOLATION.reason}",
    f"Landlock is unavailable here: {ISOLATION.reason}",
)

# The run: which interpreter started it, an attempt to write the user's untracked file (the checkout is
# read-only to a confined run), then the metric.
SHIMMED_TRAIN = """\
import os, sys
LR = 0.5
print("EXE", sys.executable, flush=True)
try:
    with open("my_notes.txt", "a") as notes:
        notes.write("overwritten by the run\\n")
    print("WROTE", flush=True)
except OSError as exc:
    print("DENIED", exc.strerror, flush=True)
print(f"val_bpb: {abs(LR - 0.1) + 1:.6f}")
"""


def _users_path_without_the_tests_prepend() -> str:
    """PATH as the user had it, without the interpreter's folder that conftest puts first."""
    entries = os.environ.get("PATH", "").split(os.pathsep)
    while entries and entries[0] == PATH_FIRST:
        entries = entries[1:]
    return os.pathsep.join(entries)


def _synthetic_shims(where: Path) -> Path:
    """A version manager's shims in their simplest form: scripts named `python3` and `python` that exec the
    interpreter (pyenv's does the same after ~30 processes of bash)."""
    where.mkdir()
    for name in ("python3", "python"):
        shim = where / name
        shim.write_text(f'#!/bin/sh\necho SHIM "$0" >&2\nexec "{sys._base_executable}" "$@"\n')
        shim.chmod(0o755)
    return where


def _shim_path(kind: str, tmp_path: Path) -> str:
    if kind == "synthetic":
        return os.pathsep.join([str(_synthetic_shims(tmp_path / "shims")), "/usr/bin", "/bin"])
    users = _users_path_without_the_tests_prepend()
    found = shutil.which("python3", path=users)
    if found is None:
        pytest.skip("no python3 on PATH")
    with open(found, "rb") as program:
        if program.read(2) != b"#!":
            pytest.skip(f"python3 on the user's PATH is the interpreter itself ({found}), not a shim")
    return users


@pytest.mark.parametrize("command", ["python3 train.py", None])  # None: what detection chose (`python ...`)
@pytest.mark.parametrize("kind", ["synthetic", "users"])
async def test_a_run_through_a_python_shim_on_path_works_confined(
    ml_project: Path, tmp_path: Path, kind: str, command: str | None
) -> None:
    """The tests' own commands skip the shim (conftest); a user's server does not. With PATH as the user has it
    (python3 a script of a version manager), the run still starts, is measured, and stays confined."""
    path = _shim_path(kind, tmp_path)
    (ml_project / "train.py").write_text(SHIMMED_TRAIN)
    if command is not None:
        (ml_project / "autoresearch.toml").write_text(f'run_command = "{command}"\n')
    git(ml_project, "add", "-A")
    git(ml_project, "commit", "-qm", "shimmed run")
    params = stdio_params(ml_project)
    params.env = {**(params.env or {}), "PATH": path}
    async with Client(params) as client:
        agent = Agent(client)
        await agent.ok("start_session")
        run = await agent.ok("run_experiment", description="baseline", wait_s=0.5)
        if run["status"] == "running":
            run = await agent.until_done(run["run_id"])
        log = _log_text(run)
    assert run["status"] == "ok" and run["value"] == pytest.approx(1.4), (run, log)
    assert "DENIED" in log and "WROTE" not in log, log
    if kind == "synthetic":
        assert "SHIM" in log, log  # the shim started it, not the interpreter conftest puts first
    assert (ml_project / "my_notes.txt").read_text() == "the user's own untracked work\n"


# A process of the server's user, as a run without a private view is (and as a root run is: no CAP_SYS_PTRACE):
# what it can open of /proc/<pid>. The same probe against a dumpable process of that user shows that it reads.
PROC_READER = """
import os, sys
pid = sys.argv[1]
def tries():
    yield 'environ', lambda: open(f'/proc/{pid}/environ', 'rb').read()
    yield 'mem', lambda: open(f'/proc/{pid}/mem', 'rb')
    yield 'maps', lambda: open(f'/proc/{pid}/maps', 'rb').read()
    yield 'fd0', lambda: os.readlink(f'/proc/{pid}/fd/0')
    yield 'auxv', lambda: open(f'/proc/{pid}/auxv', 'rb').read()
    yield 'task-environ', lambda: open(f'/proc/{pid}/task/{pid}/environ', 'rb').read()
for what, step in tries():
    try:
        shown = step()
        print('READ', what, (shown if isinstance(shown, bytes) else b'')[:0])
    except OSError as exc:
        print('refused', what, exc.errno)
print('CMDLINE', open(f'/proc/{pid}/cmdline', 'rb').read().replace(b'\\0', b' ').decode(errors='replace'))
"""


def _without_capabilities(argv: list[str]) -> list[str]:
    """`argv` as a user without capabilities: for root every capability dropped (else a root reader is refused
    only because its target holds capabilities it lacks, dumpable or not, and the test would show nothing)."""
    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("root without setpriv: cannot drop the capabilities")
    return [setpriv, "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all", *argv]


def _read_proc_without_ptrace(pid: int) -> str:
    """PROC_READER on `pid`, as the same user without CAP_SYS_PTRACE."""
    argv = _without_capabilities([sys.executable, "-c", PROC_READER, str(pid)])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_the_servers_proc_files_stay_closed_to_its_user_before_and_after_runs(ml_project: Path) -> None:
    """The server made not dumpable with the shared libc handle: a process of its user without CAP_SYS_PTRACE
    (a run outside a private view) opens none of /proc/<server>/{environ,mem,maps,auxv}, nor reads
    where its descriptors lead (the names of /proc/<server>/fd a root user without capabilities lists: the folder is
    root's once the process is not dumpable), at start and after
    runs (nothing the server did since made it dumpable again), and its cmdline does not show the token."""
    token = f"r33tok-{os.getpid()}-{os.urandom(4).hex()}"
    control = subprocess.Popen(
        _without_capabilities([sys.executable, "-c", "import sys; sys.stdin.read()"]), stdin=subprocess.PIPE
    )
    try:
        opened = _read_proc_without_ptrace(control.pid)
    finally:
        control.communicate(b"")
    assert "refused" not in opened, opened  # the probe reads a dumpable process of the same user
    params = stdio_params(ml_project, "--token", token)
    params.env = {**(params.env or {}), "AUTORESEARCH_TOKEN": token}
    params.command, *params.args = _without_capabilities([params.command, *params.args])
    async with Client(params) as client:
        server = stdio_server_pid(ml_project)
        seen = [_read_proc_without_ptrace(server)]
        agent = Agent(client)
        await agent.ok("start_session")
        run = await agent.ok("run_experiment", description="baseline", wait_s=0.5)
        if run["status"] == "running":
            run = await agent.until_done(run["run_id"])
        assert run["status"] == "ok", run
        await agent.ok("commit_or_reset", run_id=run["run_id"])
        seen.append(_read_proc_without_ptrace(server))
    for text in seen:
        assert "READ" not in text and text.count("refused") == 6, text
        assert token not in text, text
