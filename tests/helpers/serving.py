"""A server process of ours that listens (`serve --transport http`, `dashboard --web`), awaited by the line it
prints once it listens, not by polling against a clock."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

from ..conftest import GIT_ENV


def serving(argv: list[str], announced: bytes, token: str = "") -> Iterator[subprocess.Popen[bytes]]:
    """`python -m mcp_autoresearch *argv`, yielded once (`for _proc in serving(...)`) after it printed `announced`
    on stderr, then stopped; `token` as $AUTORESEARCH_TOKEN (else none in its environment)."""
    env = {k: v for k, v in {**os.environ, **GIT_ENV}.items() if k != "AUTORESEARCH_TOKEN"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcp_autoresearch", *argv],
        env={**env, "AUTORESEARCH_TOKEN": token} if token else env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    for line in iter(proc.stderr.readline, b""):  # said once it listens (serve) or just before (dashboard)
        if announced in line:
            break
    else:
        proc.kill()
        raise AssertionError(f"exited (rc {proc.wait()}) without serving")
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(30)
