"""Shared by the attack tests (tests/test_attacks_*.py): a session with its baseline kept and traps set
(`armed`), one attacking experiment (`attack`), snapshots of the project, and whether runs are confined here
(`ISOLATION`, `NEEDS_LANDLOCK`: skipped locally without Landlock, an error under CI).
"""

from __future__ import annotations

import hashlib
import os
import textwrap
from pathlib import Path

import pytest

from mcp_autoresearch.sandbox.policy import probe_isolation

ISOLATION = probe_isolation("auto")
if not ISOLATION.confined and os.environ.get("CI"):
    raise RuntimeError(f"CI must confine runs, but Landlock is unavailable here: {ISOLATION.reason}")
NEEDS_LANDLOCK = pytest.mark.skipif(
    not ISOLATION.confined, reason=f"Landlock is unavailable here: {ISOLATION.reason}"
)


SKIP = {".git", ".autoresearch"}


LOGS = {"results.tsv", "run.log"}


def snapshot(root: Path, outside: Path) -> dict[str, str]:
    """Hash of every file of the project (but git internals and the server's logs) and of the outside dir."""
    found = {}
    for base in (root, outside):
        for dirpath, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if d not in SKIP]
            for name in files:
                path = Path(dirpath) / name
                if name in LOGS and path.parent == root:
                    continue
                try:
                    data = path.read_bytes() if not path.is_symlink() else os.readlink(path).encode()
                except OSError:
                    data = b"<unreadable>"
                found[str(path)] = hashlib.sha256(data).hexdigest()
    return found


@pytest.fixture(name="armed")
async def armed_session(ml_project: Path, agent_for, tmp_path: Path, request: pytest.FixtureRequest):
    """A session with its baseline kept, an outside directory with a secret, and some traps in the project.
    Runs are confined unless the test asks for `isolation = off` (indirect parameter)."""
    isolation = getattr(request, "param", "auto")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.py").write_text("secret\n")
    root = ml_project
    (root / "link_out.py").symlink_to(outside / "secret.py")
    (root / "link_dir").symlink_to(outside, target_is_directory=True)
    (root / "link_prepare.py").symlink_to(root / "prepare.py")
    async with agent_for(root, {"isolation": isolation}) as agent:
        await agent.ok("start_session", tag="hostile")
        await agent.experiment("baseline")
        yield agent, root, outside


async def attack(agent, code: str, old: str = "LR = 0.5", new: str = "LR = 0.4") -> tuple[dict, dict]:
    """Baseline, then one experiment whose target runs `code` (its metric improves: LR 0.5 -> 0.4)."""
    await agent.ok("start_session")
    await agent.experiment("baseline")
    await agent.edit(old, new + "\n" + textwrap.dedent(code))
    return await agent.experiment("attack")


def _log_text(run: dict) -> str:
    return Path(run["log_path"]).read_text(errors="replace")


BOTH = pytest.mark.parametrize("isolation", ["auto", "off"])
