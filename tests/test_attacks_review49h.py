"""Review 49h: the transports, the web page and concurrent calls, attacked by a hostile local process, a web page
and a run (real `dashboard --web` process, real in-process server, real runs)."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest

from .conftest import GIT_ENV
from .helpers.ports import free_port
from .test_attacks_review27 import exchange, until_listening

pytestmark = pytest.mark.anyio

# A run (network on) opens connections to `dashboard --web` and sends nothing on them; two processes, each up to
# its own descriptor limit, then each tells the test it holds them (a connection to RELEASE_PORT) and holds them
# until the test closes that connection.
DASHBOARD_HOARDER = """
import os, socket
children = []
for n in range(2):
    child = os.fork()
    if child == 0:
        held = []
        try:
            while len(held) < 1500:
                sock = socket.socket()
                sock.settimeout(5)
                sock.connect(('127.0.0.1', PAGE_PORT))
                held.append(sock)
        except OSError:
            pass
        print('HOLDS', n, len(held), flush=True)
        signal = socket.create_connection(('127.0.0.1', RELEASE_PORT))
        signal.recv(1)
        os._exit(0)
    children.append(child)
for child in children:
    os.waitpid(child, 0)
"""


async def test_a_run_cannot_use_up_the_dashboards_descriptors(
    ml_project: Path, agent_for: Any, tmp_path: Path
) -> None:
    """`dashboard --web` beside a server refused a run's requests (`RefuseServersRuns`), but only once a request
    came: a connection that sends nothing held one of the dashboard's descriptors for as long as the run kept it.
    A run with the network on opened connections until the dashboard had none left (soft limit 1024): the page
    stopped answering the user while the run went on. Each connection to the dashboard must be checked as it is
    accepted, as the HTTP transport's are (`accept_check.py`): the dashboard holds few descriptors while the run
    holds its connections, and the user's request is answered."""
    port = free_port()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

    def lower_limit() -> None:  # the usual default soft limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))

    with socket.socket() as release:
        release.bind(("127.0.0.1", 0))
        release.listen(8)
        release_port = release.getsockname()[1]
        async with agent_for(ml_project, {"network": "on"}) as agent:
            await agent.ok("start_session", tag="hoard")
            await agent.experiment("baseline")
            env = {k: v for k, v in {**os.environ, **GIT_ENV}.items() if k != "AUTORESEARCH_TOKEN"}
            argv = [sys.executable, "-m", "mcp_autoresearch", "dashboard", "--web"]
            dashboard = subprocess.Popen(
                [*argv, "--project", str(ml_project), "--port", str(port)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=lower_limit,
            )
            signals: list[socket.socket] = []
            try:
                until_listening(port)
                code = textwrap.dedent(DASHBOARD_HOARDER)
                code = code.replace("PAGE_PORT", str(port)).replace("RELEASE_PORT", str(release_port))
                await agent.edit("LR = 0.5", "LR = 0.4\n" + code)
                run = await agent.ok(
                    "run_experiment", description="holds the dashboard's descriptors", wait_s=0
                )
                for _ in range(2):  # both processes hold their connections now
                    signals.append((await anyio.to_thread.run_sync(release.accept))[0])
                held = len(os.listdir(f"/proc/{dashboard.pid}/fd"))
                assert held < 300, f"the dashboard holds {held} descriptors for the run's connections"
                status, _ = await anyio.to_thread.run_sync(
                    exchange, socket.socket(), port, "GET", "/api/summary"
                )
                assert status == 200
            finally:
                for signal in signals:
                    signal.close()
                release.close()  # a measurement again (of a keep) finds no one to wait for: it ends at once
                dashboard.terminate()
                dashboard.wait()
            done = await agent.until_done(run["run_id"])
            assert done["status"] != "running"
