"""A private local Ray head for the tests (shared by the Ray tests, stopped after the last), and the small
builders of a Ray experiment that the Ray tests share."""

from __future__ import annotations

import contextlib
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


_RAY_PORT_FLAGS = (
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
# What a Ray component writes when the port it was given is taken: the job agent then stays alive without its
# HTTP service, and every job is refused with "No available agent" while the head looks healthy.
_PORT_TAKEN = (b"Failed to start HTTP server",)


# What an idle head spends its CPU on, turned down (0.12 of a core idle, 0.07 without them; more on a machine with
# many processes, which the dashboard agent's reporter walks every 5 s): the reporter's statistics and the
# metrics no test reads, and the idle worker processes kept for tasks (a job's supervisor is an actor, with a
# worker of its own, and its entrypoint a subprocess of that: the tests' jobs run no task).
QUIET_HEAD = {
    "REPORTER_UPDATE_INTERVAL_MS": "60000",
    "RAY_enable_metrics_collection": "0",
    "METRICS_RECORD_INTERVAL_S": "600",
    "RAY_prestart_worker_first_driver": "0",
    "RAY_num_workers_soft_limit": "0",
}


def ray_ports() -> dict[str, int]:
    """A different free port for each of the head's servers (`free_port`: outside the kernel's range for
    outgoing connections)."""
    chosen: dict[str, int] = {}
    while len(chosen) < len(_RAY_PORT_FLAGS):
        port = free_port()
        if port not in chosen.values():
            chosen[_RAY_PORT_FLAGS[len(chosen)]] = port
    return chosen


class SharedHead:
    """The private Ray head that the Ray tests share: started by the first one, stopped after the last one
    (`expect` counts them, `stop_after` counts them down). An idle head is not idle: its processes took about a
    quarter of a core, so a head kept to the end of the suite cost more CPU than the Ray tests' own jobs on a
    2-core machine; one started again for each Ray test cost more still."""

    def __init__(self) -> None:
        self._head: contextlib.ExitStack | None = None
        self._address = ""
        self._left = 0

    def expect(self, items: list[pytest.Item]) -> None:
        """The tests this run will run (xdist's workers each collect them all; every Ray test runs on one)."""
        self._left = sum(map(uses_ray, items))

    def address(self) -> str:
        if self._head is None:
            head = contextlib.ExitStack()
            self._address = head.enter_context(private_ray_head())
            self._head = head
        return self._address

    def stop(self) -> None:
        head, self._head = self._head, None
        if head is not None:
            head.close()

    def stop_after(self, item: pytest.Item) -> None:
        if uses_ray(item):
            self._left -= 1
            if self._left <= 0:
                self.stop()


def uses_ray(item: pytest.Item) -> bool:
    return "ray_address" in getattr(item, "fixturenames", ())


SHARED_HEAD = SharedHead()


@pytest.fixture
def ray_address() -> str:
    """The private Ray head that the Ray tests share (`SHARED_HEAD`); the README's command runs them all on one
    worker (conftest's `xdist_group("ray")`)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("Ray is not installed (pip install '.[test]'): the Ray tests must run in CI")
        pytest.skip("Ray is not installed (pip install 'mcp-autoresearch[ray]')")
    return SHARED_HEAD.address()


@contextlib.contextmanager
def private_ray_head() -> Iterator[str]:
    """A Ray head of our own (`ray start --head --block`, every port free, its own temp dir), its job API's
    address, ended by killing its processes: `ray stop` would stop every cluster on the machine. A head that
    lost one of its ports to another process before it bound it is stopped and started again on new ones.
    Also the benchmarks' (bench/slots.py, bench/ray_job_latency.py)."""
    for attempt in range(1, 4):
        head, address, temp = start_head()
        try:
            if head_ready(head, address, temp):
                yield address
                return
            assert attempt < 3, f"the Ray head lost a port or died on three starts (logs were in {temp})"
        finally:
            stop_head(head, temp)


def start_head(ports: dict[str, int] | None = None) -> tuple[subprocess.Popen[bytes], str, str]:
    """`ray start --head --block` on `ports` (else free ones): (the process, the job API's address, its temp
    dir)."""
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit AF_UNIX limits
    ports = ports or ray_ports()
    # No token: Ray 2.52+ would otherwise turn on token auth for a new local cluster and write ~/.ray/auth_token.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env["RAY_AUTH_MODE"] = "disabled"
    env.update(QUIET_HEAD)
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
    return head, f"http://127.0.0.1:{ports['--dashboard-port']}", temp


def _lost_a_port(head: subprocess.Popen[bytes], temp: str) -> bool:
    """The head exited (a server of `ray start` itself could not bind), or a component's log says its port
    was taken."""
    if head.poll() is not None:
        return True
    for log in Path(temp).glob("session_*/logs/*"):
        try:
            text = log.read_bytes()
        except OSError:
            continue
        if any(sign in text for sign in _PORT_TAKEN):
            return True
    return False


def head_ready(head: subprocess.Popen[bytes], address: str, temp: str) -> bool:
    """Whether the head ran a first job, awaited while the head lives and keeps its ports (a loaded machine
    starts it slowly; the job agent answers a little after the dashboard): False when it lost a port or died
    meanwhile (the runtime environment's agent without its port takes the head down after the job was
    accepted). The bound only stops a head that hangs."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    deadline = time.monotonic() + 600
    job = None
    status = None
    while status is None or not status.is_terminal():
        if _lost_a_port(head, temp):
            return False
        assert time.monotonic() < deadline, "the Ray head never ran a first job"
        time.sleep(0.3)
        try:
            if _answers(address):
                client = JobSubmissionClient(address)
                job = job or client.submit_job(entrypoint="true")
                status = client.get_job_status(job)
        except Exception:
            pass
    if _lost_a_port(head, temp):
        return False
    assert status == JobStatus.SUCCEEDED, f"the Ray head's first job ended {status}"
    return True


def stop_head(head: subprocess.Popen[bytes], temp: str) -> None:
    """Every process of the head: its tree, and those it left behind when it exited (found by its temp dir)."""
    tree: list[psutil.Process] = []
    # Its pid only while it is not reaped: a head that exited was reaped by `poll`, and its pid may be another
    # process's now (what it left behind is found by its temp dir below).
    if head.poll() is None:
        try:
            tree = [psutil.Process(head.pid), *psutil.Process(head.pid).children(recursive=True)]
        except psutil.Error:
            pass
    for proc in psutil.process_iter(["cmdline"]):
        if proc not in tree and any(temp in arg for arg in proc.info["cmdline"] or ()):
            tree.append(proc)
    for proc in tree:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(tree, timeout=10)
    subprocess.run(["rm", "-rf", temp], check=False)


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
