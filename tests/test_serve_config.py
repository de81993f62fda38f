"""Issue 12, item 14: a bad configuration file does not stop `serve` (the user would only see "failed to
connect"). The server starts; detect_project and every tool that needs the configuration answer with the error
(key, value, file); a corrected file is read without a restart. Bad command-line flags still exit 2 at once."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mcp import Client

from mcp_autoresearch.errors import ConfigError
from mcp_autoresearch.setup.project import load_project

from .conftest import Agent, run_cli, stdio_params
from .helpers.ports import free_port

pytestmark = pytest.mark.anyio

BAD = "# Notes\n\n## autoresearch\n- time_budget: abc\n"
GOOD = "# Notes\n\n## autoresearch\n- time_budget: 60\n"


def config_error(root: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_project(root)
    return str(caught.value)


async def test_bad_configuration_file_is_reported_not_fatal(ml_project: Path) -> None:
    root = ml_project
    (root / "CLAUDE.md").write_text(BAD)
    message = config_error(root)
    assert "CLAUDE.md" in message and "time_budget" in message and "'abc'" in message
    async with Client(stdio_params(root)) as client:
        agent = Agent(client)
        assert message in await agent.refused("detect_project")
        for tool, args in (
            ("start_session", {"tag": "cfg"}),
            ("read_target", {}),
            ("apply_edit", {"content": "x"}),
            ("run_experiment", {"description": "baseline"}),
            ("commit_or_reset", {}),
            ("query_results", {}),
        ):
            assert message in await agent.refused(tool, **args), tool
        prompt = (await client.get_prompt("loop", {})).messages[0].content.text
        assert message in prompt and "detect_project" in prompt
        # Fixed while the server runs: picked up on the next call.
        (root / "CLAUDE.md").write_text(GOOD)
        info = await agent.ok("detect_project")
        assert info["time_budget"] == 60 and info["config_source"]["time_budget"].startswith("CLAUDE.md")
        await agent.ok("start_session", tag="cfg")
        _, decision = await agent.experiment("baseline")
        assert decision["decision"] == "keep"
    # A later server that finds the file broken again: resuming the session refuses with the same message.
    (root / "CLAUDE.md").write_text(BAD)
    async with Client(stdio_params(root)) as client:
        agent = Agent(client)
        assert message in await agent.refused("read_target")
        assert message in await agent.refused("query_results")
        (root / "CLAUDE.md").write_text(GOOD)
        assert (await agent.ok("query_results"))["total"] == 1


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_serve_logs_the_bad_file_and_waits_for_a_client(ml_project: Path, transport: str) -> None:
    """The bad file is said on stderr, and the server then serves: it answers a ping over stdio, it listens
    over HTTP (awaited, never a fixed wait)."""
    (ml_project / "CLAUDE.md").write_text(BAD)
    port = free_port()
    extra = ["--transport", "http", "--port", str(port)] if transport == "http" else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcp_autoresearch", "serve", "--project", str(ml_project), *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    awaited = ["serving anyway"] + (["serving MCP over HTTP"] if transport == "http" else [])
    said: list[str] = []
    guard = threading.Timer(600, proc.kill)  # a guard against a hang only: a server that never says it
    guard.start()
    try:
        while not all(any(text in line for line in said) for text in awaited):
            line = proc.stderr.readline()
            assert line, f"the server left: {''.join(said)}"
            said.append(line)
    finally:
        guard.cancel()
    if transport == "http":
        socket.create_connection(("127.0.0.1", port), timeout=60).close()  # it listens
        proc.terminate()
    else:
        proc.stdin.write(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}) + "\n")
        proc.stdin.flush()
        assert '"result"' in proc.stdout.readline()  # it serves
    _, err = proc.communicate(input="", timeout=60)  # stdio: end of input, the server exits on its own
    err = "".join(said) + err
    assert transport == "http" or proc.returncode == 0, err
    assert config_error(ml_project) in err and "serving anyway" in err


@pytest.mark.parametrize(
    "flags",
    [
        ["--direction", "sideways"],
        ["--time-budget", "abc"],
        ["--target", "missing.py"],
        ["--readonly", "../outside.txt"],
        ["--config", "missing.toml"],
        ["--transport", "carrier-pigeon"],
    ],
)
def test_bad_flags_still_exit_2_at_once(ml_project: Path, flags: list[str]) -> None:
    began = time.monotonic()
    out = run_cli("serve", "--project", str(ml_project), *flags)
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr
    assert time.monotonic() - began < 30
