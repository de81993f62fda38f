"""A private local Ray head for the tests (started once per test session), and the small builders of a Ray
experiment that the Ray tests share."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from mcp_autoresearch.backends.ray_backend import RayBackend
from mcp_autoresearch.lifecycle.experiment import Experiment
from mcp_autoresearch.sandbox.policy import probe_isolation
from mcp_autoresearch.setup.config import build_config

from .ports import free_port

ISOLATION = probe_isolation("auto")


def _answers(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"{address}/api/version", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """A Ray head of our own (`ray start --head --block`, every port free, its own temp dir), ended at the end
    by killing the process tree we started: `ray stop` would stop every cluster on the machine."""
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("Ray is not installed (pip install '.[test]'): the Ray tests must run in CI")
        pytest.skip("Ray is not installed (pip install 'mcp-autoresearch[ray]')")
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit AF_UNIX limits
    ports = {
        flag: free_port()
        for flag in (
            "--port",
            "--dashboard-port",
            "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port",
            "--runtime-env-agent-port",
            "--metrics-export-port",
            "--node-manager-port",
            "--object-manager-port",
            "--ray-client-server-port",
        )
    }
    # No token: Ray 2.52+ would otherwise turn on token auth for a new local cluster and write ~/.ray/auth_token.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env["RAY_AUTH_MODE"] = "disabled"
    ray_cli = str(Path(sys.executable).with_name("ray"))
    argv = [
        ray_cli,
        "start",
        "--head",
        "--block",
        "--num-cpus=2",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--temp-dir={temp}",
        "--disable-usage-stats",
        *(f"{flag}={port}" for flag, port in ports.items()),
    ]
    head = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    address = f"http://127.0.0.1:{ports['--dashboard-port']}"
    try:
        # Awaited while the head lives (a loaded machine starts it slowly); the bound only stops a head that hangs.
        deadline = time.monotonic() + 600
        while not _answers(address):
            assert head.poll() is None, "ray start --head failed"
            assert time.monotonic() < deadline, "the Ray job API never answered"
            time.sleep(0.2)
        _warm_up(address, head)
        yield address
    finally:
        tree = [psutil.Process(head.pid)]
        try:
            tree += tree[0].children(recursive=True)
        except psutil.Error:
            pass
        for proc in tree:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(tree, timeout=10)
        subprocess.run(["rm", "-rf", temp], check=False)


def _warm_up(address: str, head: subprocess.Popen[bytes]) -> None:
    """The job agent answers a little after the dashboard (and, on a loaded machine, the dashboard may stop
    answering for a while): the first job is retried while the head lives, until it is accepted."""
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + 600
    while True:
        try:
            client = JobSubmissionClient(address)
            job = client.submit_job(entrypoint="true")
            break
        except Exception:
            assert head.poll() is None, "the Ray head died while it started"
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    while not client.get_job_status(job).is_terminal():
        time.sleep(0.2)


def _config(command: str, **settings: object):
    return build_config(
        {
            "run_command": command,
            "metric_name": "score",
            "target_file": "train.py",
            "backend": "ray",
            **settings,
        }
    )


def _project(tmp_path: Path) -> Path:
    root = tmp_path / "snapshot"
    root.mkdir()
    (root / "train.py").write_text("print('score: 1')\n")
    (root / ".git").mkdir()  # never uploaded
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return root


def _experiment(root: Path, address: str, command: str, **settings: object) -> Experiment:
    config = _config(command, ray_address=address, **settings)
    return Experiment(
        config, root, "r1", root.parent / "logs", isolation=ISOLATION, backend=RayBackend.from_config(config)
    )
