"""The server's own process against its runs (issue 20): what a run finds in /proc/<server> gives it no way in.

A real server over the HTTP transport, with slots, runs an experiment that reads the server's command line and
environment and tries every string it found as the bearer token on the server's own MCP endpoint.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_autoresearch.sandbox.policy import probe_isolation

from .conftest import GIT_ENV, Agent
from .helpers.needs import require
from .helpers.ports import free_port

pytestmark = pytest.mark.anyio

ISOLATION = probe_isolation("auto")
require(
    ISOLATION.confined,
    f"CI must confine runs, but Landlock is unavailable here: {ISOLATION.reason}",
    f"Landlock is unavailable here: {ISOLATION.reason}",
)

# The run's side: find the server among its ancestors, collect every string of its cmdline and environ (and of
# the run's own environment), and try each as the token: initialize, then apply_edit and run_experiment.
THIEF = """
import json, os, urllib.error, urllib.request
def ppid(pid):
    for line in open(f'/proc/{pid}/status'):
        if line.startswith('PPid:'):
            return int(line.split()[1])
def post(port, token, body, session=None):
    headers = {'Authorization': f'Bearer {token}', 'Content-Type': 'application/json',
               'Accept': 'application/json, text/event-stream'}
    if session:
        headers['mcp-session-id'] = session
    request = urllib.request.Request(f'http://127.0.0.1:{port}/mcp', json.dumps(body).encode(), headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as answer:
            return answer.status, answer.headers.get('mcp-session-id'), answer.read().decode(errors='replace')
    except urllib.error.HTTPError as exc:
        return exc.code, None, ''
found, pid, port = set(os.environ.values()), os.getpid(), None  # its own environment too: never inherited
hinted = PORT  # in a private view the server is not in /proc: a run could still scan loopback for it
found.add('any')  # a server without a token takes any (or none)
while pid > 1 and port is None:
    pid = ppid(pid)
    args = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')
    if b'serve' in args and b'--port' in args:
        port = args[args.index(b'--port') + 1].decode()
        found.update(a.decode(errors='replace') for a in args if a)
        print('cmdline read', pid)
        try:
            for item in open(f'/proc/{pid}/environ', 'rb').read().split(b'\\0'):
                found.update(item.decode(errors='replace').split('=', 1))
            print('environ read', pid)
        except OSError as exc:
            print('environ refused', pid, exc.strerror)
port = port or hinted
init = {'jsonrpc': '2.0', 'id': 1, 'method': 'initialize', 'params': {'protocolVersion': '2025-11-25',
        'capabilities': {}, 'clientInfo': {'name': 'thief', 'version': '1'}}}
calls = [('apply_edit', {'content': 'LR = 0.0001\\n'}), ('run_experiment', {'description': 'planted'})]
accepted = 0
for token in sorted(found):
    if not token or any(ord(c) < 33 or ord(c) > 126 for c in token):
        continue  # not something a header can carry
    status, session, _ = post(port, token, init)
    if status != 200:
        continue
    post(port, token, {'jsonrpc': '2.0', 'method': 'notifications/initialized'}, session)
    for n, (name, arguments) in enumerate(calls, 2):
        status, _, text = post(port, token, {'jsonrpc': '2.0', 'id': n, 'method': 'tools/call',
                                              'params': {'name': name, 'arguments': arguments}}, session)
        accepted += status == 200 and '"isError":true' not in text.replace(' ', '')
        print('ACCEPTED', name, 'with', token, text[:200])
print('tried', len(found), 'accepted', accepted)
"""

TOML = 'target_file = "train.py"\nslots = 2\nkeep_rule = "greedy"\n'


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["command line", "environment", "no token"])
def http_server(
    request: pytest.FixtureRequest, ml_project: Path, tmp_path: Path
) -> Iterator[tuple[str, str, str]]:
    """The server as a user starts it, with slots; the token given on its command line or in its environment."""
    (ml_project / "autoresearch.toml").write_text(TOML)
    port, token = free_port(), f"tok-{os.getpid()}-{time.monotonic_ns()}"
    env = {**os.environ, **GIT_ENV, "AUTORESEARCH_SLOTS_DIR": str(tmp_path / "slots")}
    argv = [sys.executable, "-m", "mcp_autoresearch", "serve", "--project", str(ml_project)]
    argv += ["--transport", "http", "--port", str(port)]
    if request.param == "command line":
        argv += ["--token", token]
    elif request.param == "environment":
        env["AUTORESEARCH_TOKEN"] = token
    else:  # loopback needs none: only the check of who is calling keeps a run out
        token = "any"
    stderr = tmp_path / "server.err"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
    while b"serving MCP over HTTP" not in stderr.read_bytes():
        if proc.poll() is not None:
            raise AssertionError(stderr.read_text())
        time.sleep(0.05)
    while True:  # uvicorn listens just after the line
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            break
        except ConnectionRefusedError:
            time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/mcp", token, request.param
    finally:
        proc.terminate()
        proc.wait(30)
    warned = "warning: --token puts the token on the command line" in stderr.read_text()
    assert warned == (request.param == "command line"), stderr.read_text()


async def candidate_log_over_http(url: str, token: str, tag: str, code: str) -> str:
    """Over the HTTP transport at `url`: a session whose baseline is kept, then a candidate that runs `code`
    (its first lines); the candidate's run log."""
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        agent = Agent(client)
        await agent.ok("start_session", tag=tag)
        await agent.ok("run_experiment", description="baseline")
        await agent.until_done()
        assert (await agent.ok("commit_or_reset"))["decision"] == "keep"
        await agent.edit("LR = 0.5", "LR = 0.4\n" + code)
        run = await agent.ok("run_experiment", description=f"the candidate of {tag}")
        run = await agent.until_done(run["run_id"])
        return Path(run["log_path"]).read_text()


async def test_a_run_cannot_call_the_server_with_what_its_proc_files_show(
    http_server: tuple[str, str, str], ml_project: Path
) -> None:
    url, token, _how = http_server
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        agent = Agent(client)
        started = await agent.ok("start_session", tag="thief")
        assert started["slots"].startswith("2 slots"), started
        await agent.ok("run_experiment", description="baseline")
        await agent.until_done()
        assert (await agent.ok("commit_or_reset"))["decision"] == "keep"
        thief = textwrap.dedent(THIEF).replace("PORT", repr(url.split(":")[-1].split("/")[0]))
        await agent.edit("LR = 0.5", "LR = 0.4\n" + thief)
        run = await agent.ok("run_experiment", description="read the server's /proc files")
        run = await agent.until_done(run["run_id"])
        log = Path(run["log_path"]).read_text()
        if ISOLATION.namespaces:  # its own /proc: the server is not there
            assert "cmdline read" not in log, log
        else:
            assert "cmdline read" in log and "environ refused" in log, log  # it looked, and environ is closed
        assert "accepted 0" in log and "ACCEPTED" not in log, log
        assert token not in log
        results = await agent.ok("query_results")
        assert results["total"] == 1  # only the baseline: nothing the run tried was run or logged
