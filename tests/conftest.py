"""Fixtures: real git repositories in temp dirs, and the server driven through the real MCP client."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from mcp import Client, StdioServerParameters

from mcp_autoresearch.adapters.server import create_server
from mcp_autoresearch.session.session import Session
from mcp_autoresearch.session.workspace import Workspace

from .helpers.ray_head import (
    SHARED_HEAD,
    ray_address,  # noqa: F401  (the private Ray head the Ray tests share)
    uses_ray,
)
from .helpers.rewrite_once import rewrite_once
from .helpers.sdk_once import build_each_tool_once, check_each_schema_once
from .helpers.spares import launcher  # noqa: F401  (a launcher of the test's own)
from .web_support import browser  # noqa: F401  (Chromium, for the dashboard's browser tests)


def _interpreter_first() -> str | None:
    """`python3` in the tests' commands starts an interpreter straight away, and the folder put first on PATH for
    it is returned. In a virtual environment (the README's `.venv`), its own folder comes first, as activating it
    would: `python3` is then neither a version manager's shim (pyenv's is a bash script that starts about 30
    processes before the interpreter: 0.2 s of CPU a call) nor the base interpreter, whose site-packages may hold
    `.pth` files that run at every start (this machine's imports certifi: 20 ms more a start; the tests start about
    1400). Outside one, the base interpreter's folder comes first where `python3` is a script, unless it is a
    system folder (it would shadow every other program of the same name, /usr/local/bin's)."""
    if sys.prefix != sys.base_prefix:
        first = str(Path(sys.executable).parent)
    else:
        found = shutil.which("python3")
        if found is None:
            return None
        with open(found, "rb") as program:
            if program.read(2) != b"#!":
                return None  # the interpreter itself (or a link to it)
        first = str(Path(sys._base_executable).parent)
        if first in ("/usr/bin", "/bin", "/usr/local/bin"):
            return None
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != first:  # not again in xdist's workers, which inherit it
        os.environ["PATH"] = os.pathsep.join([first, path])
    return first


PATH_FIRST = _interpreter_first()  # what conftest put first on PATH (None: nothing)
check_each_schema_once()
build_each_tool_once()

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test User",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test User",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}

# The timeout of a session whose experiments include one that hangs: far above what the tiny honest runs take even
# on a loaded 2-core machine (a 2 s timeout timed out an honest baseline there), and soon reached by the hang.
HANG_TIMEOUT_S = 10.0

# A tiny "training script": the metric depends on the constant LR; the evaluator is a separate read-only file.
TRAIN_PY = """\
LR = 0.5
WIDTH = 4
print("step 1 loss 2.0")
print(f"val_bpb: {abs(LR - 0.1) + 1:.6f}")
print("peak_vram_mb: 512.0")
"""


# The tests that look at which spare keeper took a command, and those that mount a file system: a mount makes
# every launcher on the machine let its spares go and make new ones (`forkserver.serve`), so the two never run
# at the same time (one worker runs them all).
SPARES_MODULES = {
    "test_attacks_block_devices",
    "test_attacks_prepared",
    "test_attacks_rehearsal",
    "test_attacks_speedups",
    "test_attacks_standby",
    "test_launcher",
    "test_private_view",
    "test_run_tmpdirs",
    "test_standby",
}
MOUNTING_FIXTURES = {"small_disk", "few_inodes"}


@pytest.hookimpl(tryfirst=True)  # before xdist's, which reads the groups (`--dist loadgroup`)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """For pytest-xdist (`-n 4 --dist loadgroup`, the README's command): every test that uses the shared Ray
    head runs on one worker (one head for the whole run, not one per worker), the tests of spares and of mounts
    on one worker (SPARES_MODULES), and the long soak starts first, so that no worker is left with it at the end
    while the other has nothing to do; the Ray tests follow it, in a row."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if uses_ray(item):
            item.add_marker(pytest.mark.xdist_group("ray"))
        elif item.module.__name__.rsplit(".", 1)[-1] in SPARES_MODULES or fixtures & MOUNTING_FIXTURES:
            item.add_marker(pytest.mark.xdist_group("spares"))
    # Stable: the rest keep their order. The Ray tests one after another, so that the head they share lives no
    # longer than they run.
    items.sort(key=lambda item: (item.get_closest_marker("slow") is None, not uses_ray(item)))


def pytest_sessionstart(session: pytest.Session) -> None:
    """Before xdist's controller starts its workers (its own hook runs last): the test modules rewritten once."""
    rewrite_once(session.config)


def pytest_collection_finish(session: pytest.Session) -> None:
    """A worker of `--dist loadgroup` whose groups were not applied fails (pytest 9.2 with xdist 3.8 silently ran
    every group's tests on any worker: several Ray heads, and the mounting tests beside the spares' tests)."""
    if getattr(session.config.option, "loadgroup", False):
        ungrouped = [item.nodeid for item in session.items if item.get_closest_marker("xdist_group")]
        if ungrouped and not all("@" in nodeid for nodeid in ungrouped):
            raise pytest.UsageError(
                f"xdist did not group {ungrouped[0]} (--dist loadgroup): pytest {pytest.__version__} and this "
                "pytest-xdist do not work together; install the versions pyproject.toml's test extra names"
            )
    SHARED_HEAD.expect(session.items)
    # What collection made (modules, the SDK's models, the items) lives as long as the worker: the garbage
    # collector stops walking it (it took a tenth of a worker's CPU, each full collection over all of it).
    gc.collect()
    gc.freeze()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Any:
    """The shared Ray head stops after the last Ray test."""
    try:
        return (yield)
    finally:
        SHARED_HEAD.stop_after(item)


def pytest_sessionfinish() -> None:
    SHARED_HEAD.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def git(cwd: Path, *args: str) -> str:
    """git's output. Without automatic maintenance: a commit would start `git maintenance run --auto` after it
    (a process more for each of the fixtures' commits, about a thousand a run)."""
    return subprocess.run(
        ["git", "-c", "maintenance.auto=false", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV},
    ).stdout


def make_repo(path: Path, files: dict[str, str], commit: bool = True) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        file = path / name
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(content)
    git(path, "init", "-q", "-b", "main")
    if commit:
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", "initial")
    return path


def finished_run(session: Session, description: str) -> str:
    """In process: a run started on `session` and awaited to its end; its id."""
    run_id = session.start_run(description)
    assert isinstance(run_id, str)
    handle = session.run_handle(run_id)
    assert handle is not None and handle.wait(120)
    return run_id


def decided_baseline(workspace: Workspace, tag: str) -> Session:
    """In process: session `tag` started on `workspace`, its baseline run and decided; the session."""
    workspace.start_session(tag)
    session = workspace.session
    session.commit_or_reset(finished_run(session, "baseline"))
    return session


@pytest.fixture
def ml_project(tmp_path: Path) -> Path:
    """An ML-shaped project (train.py + prepare.py), committed, plus an untracked file of the user's."""
    root = make_repo(
        tmp_path / "proj",
        {"train.py": TRAIN_PY, "prepare.py": "# fixed evaluation\nSEED = 1\n", "README.md": "demo\n"},
    )
    (root / "my_notes.txt").write_text("the user's own untracked work\n")
    return root


def structured(result: Any) -> dict[str, Any]:
    if result.is_error:
        raise AssertionError(f"tool failed: {result.content[0].text}")
    return result.structured_content


def error_text(result: Any) -> str:
    assert result.is_error, f"expected a refusal, got {result.structured_content}"
    return result.content[0].text


class Agent:
    """A thin helper over the MCP client: call a tool and get its structured result or its error text."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def ok(self, tool: str, **args: Any) -> dict[str, Any]:
        return structured(await self.client.call_tool(tool, args))

    async def refused(self, tool: str, **args: Any) -> str:
        return error_text(await self.client.call_tool(tool, args))

    async def edit(self, old: str, new: str) -> dict[str, Any]:
        return await self.ok("apply_edit", edits=[{"old_text": old, "new_text": new}])

    async def until_done(self, run_id: str | None = None) -> dict[str, Any]:
        """wait_experiment until the run (with slots and no run_id: the first to finish) is no longer running."""
        args = {"run_id": run_id} if run_id else {}
        run = await self.ok("wait_experiment", **args)
        while run["status"] == "running":
            run = await self.ok("wait_experiment", **args)
        return run

    async def experiment(self, description: str, **wait: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        run = await self.ok("run_experiment", description=description, **wait)
        while run["status"] == "running":
            run = await self.ok("wait_experiment", run_id=run["run_id"])
        decision = await self.ok("commit_or_reset", run_id=run["run_id"])
        return run, decision


async def call_ok(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    """One tool call that must succeed, on a bare client (a server over stdio that a test kills)."""
    return structured(await client.call_tool(tool, args))


@asynccontextmanager
async def served_here(root: Path, overrides: dict[str, Any] | None = None) -> AsyncIterator[Agent]:
    """A server for `root` in the test's own process, over the in-memory client. A test whose subject is a
    server process (its signals, its pipes, a kill at a step) restarts it with this when what it checks next is
    what a new server finds on disk: the records, git, the runs left behind. The same code resumes the session;
    a new server process would add its start (about 2 s of CPU, most of it the MCP SDK's import), and one thing
    only a new process has: a git lock file older than its start counts as stale (`ref_files.stale`), so a test
    of taking such locks over starts a real process."""
    workspace = Workspace(root, overrides)
    async with Client(create_server(workspace)) as client:
        yield Agent(client)


def resumed_here(root: Path, tag: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the next server's start_session says (`served_here`), from a test that is not async."""

    async def resume() -> dict[str, Any]:
        async with served_here(root, overrides) as agent:
            return await agent.ok("start_session", tag=tag)

    return anyio.run(resume)


@pytest.fixture
async def agent_for() -> AsyncIterator[Any]:
    """Factory: `async with agent_for(root, **overrides) as agent` over the in-memory client."""
    yield served_here


def stdio_params(root: Path, *extra: str) -> StdioServerParameters:
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **GIT_ENV}
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_autoresearch", "serve", "--project", str(root), *extra],
        env=env,
        cwd=str(root),
    )


def stdio_server_pid(root: Path) -> int:
    """The pid of the stdio server (`stdio_params`) this test started for `root`."""
    for proc in psutil.Process().children(recursive=True):
        try:
            command = proc.cmdline()
        except psutil.Error:
            continue
        if "serve" in command and str(root) in command:
            return proc.pid
    raise AssertionError(f"no server process for {root}")


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp_autoresearch", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV},
        timeout=120,
    )
