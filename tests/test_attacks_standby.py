"""The standby command process of a spare (`sandbox/standby.py`, `view.View`) attacked as a run, or an honest
run with unusual needs, would: the request it is handed, the paths it shows again, the hidden ones."""

from __future__ import annotations

import os
from pathlib import Path

from mcp_autoresearch.sandbox.launcher import Launcher, LauncherError

from .helpers.needs import require
from .test_launcher import ISOLATION, VIEW, _prepared_like

require(
    ISOLATION.namespaces,
    "CI must run the private view",
    f"namespaces are unavailable here: {ISOLATION.reason}",
)


def _run_env(
    launcher: Launcher, tmp_path: Path, script: str, spec: dict, env: dict[str, str]
) -> tuple[int, int, str]:
    read_fd, write_fd = os.pipe()
    try:
        launched = launcher.spawn(["/bin/sh", "-c", script], tmp_path, env, write_fd, spec)  # type: ignore[arg-type]
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        output = pipe.read().decode()
    code = launched.wait(60)
    launched.close()
    assert code is not None
    return launched.pid, code, output


def _env_of(size: int) -> dict[str, str]:
    """The test's environment with `size` more bytes, in variables under the kernel's limit for one (128 kB)."""
    return {**os.environ, "BIG1": "x" * (size // 2), "BIG2": "y" * (size - size // 2)}


def test_the_largest_request_the_launcher_takes_runs_in_the_standby_process(
    launcher: Launcher, tmp_path: Path
) -> None:
    """An honest run whose environment is as large as the launcher takes (it falls back to a keeper started
    directly beyond) runs in a spare's standby process as it would without one: its request to the standby
    process, a little larger than the launcher's, once did not fit in one message ("the standby command process
    is gone (Message too long)", exit 125)."""
    spec = {**VIEW, "write": [str(tmp_path / "w")]}
    script = 'echo "pid $$ $((${#BIG1} + ${#BIG2}))"'
    taken, refused = 100_000, 300_000
    while refused - taken > 16:  # the launcher's own limit on a request (its channel's buffer)
        size = (taken + refused) // 2
        try:
            _run_env(launcher, tmp_path, script, spec, _env_of(size))
            taken = size
        except LauncherError:
            refused = size
    spares = _prepared_like(launcher, tmp_path, spec)
    keeper, code, output = _run_env(launcher, tmp_path, script, spec, _env_of(taken))
    assert keeper in spares
    assert (code, output) == (0, f"pid 1 {taken}\n"), (code, output)
