"""Review 45b: wedge the session, lose the user's work, unbounded inputs.

A repository git reads but the server cannot (SHA-256 object names, a configuration git cannot parse) was said to
have "no commits yet"; the MCP SDK's log of a refused Host header reached the user's terminal raw and whole; a
target made immutable by an unconfined run stopped every decision with an "internal error" and left a copy of
the target beside it at each try."""

from __future__ import annotations

import array
import fcntl
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import GIT_ENV, TRAIN_PY, git, make_repo, run_cli
from .helpers.ports import free_port

FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_IMMUTABLE_FL = 0x80086601, 0x40086602, 0x10


def _project(root: Path, *init: str) -> Path:
    """train.py + prepare.py committed in a repository made by `git init <init>`."""
    root.mkdir(parents=True)
    (root / "train.py").write_text(TRAIN_PY)
    (root / "prepare.py").write_text("SEED = 1\n")
    git(root, "init", "-q", "-b", "main", *init)
    git(root, "add", "train.py", "prepare.py")
    git(root, "commit", "-q", "-m", "initial")
    return root


@pytest.mark.anyio
async def test_a_sha256_repository_is_said_to_be_one_not_a_repository_without_commits(
    tmp_path: Path, agent_for
) -> None:
    """`git init --object-format=sha256`: GitPython reads no commit there, and the server said "the repository
    has no commits yet; commit the project first", which committing again never changes. It now says what the
    repository is, and that the loop needs SHA-1 object names (it writes SHA-1 objects and refs itself)."""
    root = _project(tmp_path / "p", "--object-format=sha256")
    detected = run_cli("detect", "--project", str(root))
    assert "no commits" not in detected.stderr and "sha256" in detected.stderr, detected.stderr
    async with agent_for(root) as agent:
        refused = await agent.refused("start_session", tag="one")
    assert "sha256" in refused and "SHA-1" in refused and "no commits" not in refused, refused
    assert git(root, "branch", "--list").split() == ["*", "main"]  # nothing made


@pytest.mark.anyio
async def test_a_git_configuration_git_cannot_parse_is_gits_own_error(tmp_path: Path, agent_for) -> None:
    """A .git/config git cannot parse (a clumsy edit, or a run with isolation off): the server said "no commits
    yet" (GitPython's reading of HEAD failed with git and read as none). HEAD is read from the ref files now, and
    the first git command says git's own error."""
    root = _project(tmp_path / "p")
    with (root / ".git" / "config").open("a") as config:
        config.write("[extensions\n\tobjectformat =\n")
    async with agent_for(root) as agent:
        refused = await agent.refused("start_session", tag="one")
    assert "no commits" not in refused and "bad config line" in refused, refused


def test_the_servers_log_of_a_refused_host_is_printable_and_bounded(ml_project: Path) -> None:
    """Any local process of the user reaches `serve --transport http` without a token; the MCP SDK logs a
    refused Host header whole and raw (`Invalid Host header: ...`): an escape sequence in it acted on the
    terminal holding the server's stderr (the page's own check prints it escaped and cut), and 20 KB of Host
    was 20 KB of log a request. Every log line is now escaped (`printable`) and its message cut."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcp_autoresearch", "serve", "--project", str(ml_project)]
        + ["--transport", "http", "--port", str(port)],
        env={**os.environ, **GIT_ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        for line in iter(proc.stderr.readline, b""):
            if b"serving MCP over HTTP at" in line:
                break
        else:
            raise AssertionError(f"the server exited (rc {proc.wait()}) without serving")
        shown = []
        for host in (b"evil\x1b]0;owned\x07\x1b[2J", b"evil\xc2\x9b31m", b"e" * 20_000):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(
                    b"POST /mcp HTTP/1.1\r\nHost: " + host + b"\r\nContent-Type: application/json\r\n"
                    b"Accept: application/json, text/event-stream\r\nContent-Length: 2\r\n\r\n{}"
                )
                assert sock.recv(64).startswith(b"HTTP/1.1 421")
            shown.append(proc.stderr.readline())  # logged before the answer was sent
    finally:
        proc.terminate()
        proc.wait(10)
    assert all(b"Invalid Host header" in line for line in shown), shown
    assert not any(byte < 0x20 or byte == 0x7F for line in shown for byte in line.rstrip(b"\n")), shown[:2]
    assert b"\xc2\x9b" not in shown[1] and b"\\x1b]0;owned" in shown[0], shown[:2]
    assert len(shown[2]) < 2500, len(shown[2])


MAKES_ITSELF_IMMUTABLE = """\
LR = 0.5
import array, fcntl, os
if LR != 0.5:  # the candidate: the target made immutable (root, isolation off)
    fd = os.open("train.py", os.O_RDONLY)
    flags = array.array("l", [0])
    fcntl.ioctl(fd, 0x80086601, flags, True)
    fcntl.ioctl(fd, 0x40086602, array.array("l", [flags[0] | 0x10]), True)
    os.close(fd)
print(f"val_bpb: {abs(LR - 0.1) + 1:.6f}")
"""


def _set_immutable(path: Path, on: bool) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        flags = array.array("l", [0])
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
        value = flags[0] | FS_IMMUTABLE_FL if on else flags[0] & ~FS_IMMUTABLE_FL
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, array.array("l", [value]), True)
    finally:
        os.close(fd)


@pytest.fixture
def immutable_capable(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    probe.write_text("x")
    try:
        _set_immutable(probe, True)
    except OSError as exc:
        pytest.skip(f"cannot make a file immutable here: {exc.strerror}")
    _set_immutable(probe, False)


@pytest.mark.anyio
async def test_a_target_made_immutable_by_a_run_is_a_clear_refusal_and_leaves_no_copy(
    tmp_path: Path, agent_for, immutable_capable: None
) -> None:
    """isolation = "off" (README allows it): the candidate sets the immutable flag on the target. Its discard
    cannot restore the target: commit_or_reset and the next start_session answered "internal error
    (PermissionError ...)" naming a temporary file, and each try left `.train.py.<pid>.<thread>.tmp` in the
    user's project for good. Now the answer names the target and how to give it back its permissions, no copy
    is left, and once the flag is cleared the same call decides."""
    root = make_repo(tmp_path / "p", {"train.py": MAKES_ITSELF_IMMUTABLE, "prepare.py": "SEED = 1\n"})
    (root / "mine.txt").write_text("the user's own\n")
    try:
        async with agent_for(root, {"isolation": "off"}) as agent:
            await agent.ok("start_session", tag="one")
            await agent.experiment("baseline")
            await agent.edit("LR = 0.5", "LR = 0.7")  # worse: discarded, the target must be restored
            run = await agent.ok("run_experiment", description="worse")
            while run["status"] == "running":
                run = await agent.ok("wait_experiment", run_id=run["run_id"])
            for _ in range(2):
                refused = await agent.refused("commit_or_reset", run_id=run["run_id"])
                assert "internal error" not in refused and "chattr -i" in refused, refused
                assert str(root / "train.py") in refused and ".tmp" not in refused, refused
            litter = [p.name for p in root.iterdir() if p.name.endswith(".tmp")]
            assert litter == [], litter
            _set_immutable(root / "train.py", False)  # the person follows the answer
            decision = await agent.ok("commit_or_reset", run_id=run["run_id"])
        assert decision["decision"] == "discard", decision
        assert "LR = 0.5" in (root / "train.py").read_text()
        assert git(root, "status", "--porcelain").splitlines() == ["?? mine.txt"]
    finally:
        _set_immutable(root / "train.py", False)  # else pytest cannot remove tmp_path
