"""Attacks on the Ray backend's wrapper and keeper on the worker: output after the deadline, a run that ignores
SIGTERM and keeps forking. The job ends at its limit and leaves no process behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.anyio


FLOOD_AT_THE_END = """\
import signal, sys, time
def flood(*_):
    sys.stdout.write("x" * 300000 + "\\n")
    sys.stdout.flush()
signal.signal(signal.SIGTERM, flood)
print("started", flush=True)
time.sleep(60)
"""


@pytest.mark.filterwarnings("ignore:ssl=None is deprecated:DeprecationWarning")
def test_output_after_the_deadline_cannot_wedge_the_wrapper_past_its_timeout(
    tmp_path: Path, ray_address: str
) -> None:
    """At its deadline the wrapper stops forwarding and ends the tree through the keeper; a run that fills the
    pipe as it is stopped must not leave the keeper blocked writing its note into a pipe nobody reads (and the
    wrapper waiting for the keeper): the job would outlive its limit until the server's overdue stop."""
    from mcp_autoresearch.backends.ray_backend import REPORT_SLACK_S

    from .helpers.ray_head import _experiment, _project

    root = _project(tmp_path)
    (root / "flood.py").write_text(FLOOD_AT_THE_END)
    result = _experiment(root, ray_address, "python3 flood.py; echo after", timeout=2).run()
    assert result.status == "timeout", result
    # The wrapper's own report gives the duration (the tree ended at the limit); a wedged wrapper never reports,
    # and the server then stops the job as overdue, its duration past the limit and REPORT_SLACK_S (not a bound
    # on this machine's speed: the two cases differ by the slack).
    assert result.duration_s < 2 + REPORT_SLACK_S, f"no report from the wrapper: {result.duration_s:.0f} s"
    assert "x" * 1000 not in Path(result.log_path).read_text()


FORKER = """\
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("started", flush=True)
while True:
    if os.fork() == 0:
        time.sleep(120)
        os._exit(0)
    time.sleep(0.01)
"""


@pytest.mark.filterwarnings("ignore:ssl=None is deprecated:DeprecationWarning")
def test_a_cancelled_job_leaves_no_process_behind_on_the_worker(tmp_path: Path, ray_address: str) -> None:
    """A run that ignores SIGTERM and keeps starting processes: Ray's stop_job SIGKILLs only the processes it saw
    when it was asked (3 s later); the keeper must have swept the whole tree before Ray kills the keeper, or
    every process born in between survives the cancel, orphaned, on the worker."""
    import threading
    import time

    import psutil

    from .helpers.ray_head import _experiment, _project

    root = _project(tmp_path)
    script = (
        f"forker_{os.getpid()}_{tmp_path.name}.py"  # only this test's processes are looked for (and killed)
    )
    (root / script).write_text(FORKER)
    experiment = _experiment(root, ray_address, f"trap '' TERM; python3 {script}; echo after")
    log = tmp_path / "logs" / "r1.log"

    def cancel_when_started() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and b"started" not in (log.read_bytes() if log.exists() else b""):
            time.sleep(0.1)
        time.sleep(0.5)
        experiment.cancel("client cancelled")

    threading.Thread(target=cancel_when_started, daemon=True).start()
    result = experiment.run()

    def survivors() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            if proc.info["status"] != psutil.STATUS_ZOMBIE and script in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        return found

    # Ended by the sweep, or (a leak) alive for the 120 s each sleeps: waited for, up to a fifth of that.
    deadline = time.monotonic() + 24
    while (left := survivors()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for proc in left:  # ours: started by this test's job
        try:
            proc.kill()
        except psutil.Error:
            pass
    assert result.status == "cancelled", result
    assert not left, f"{len(left)} processes of the cancelled run are still running"
