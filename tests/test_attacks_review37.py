"""Review 37: the candidate's code (the target file, what its run may write) against the default confinement
(`isolation = "auto"`), in the areas tried less lately: the evaluation stage's inputs (hidden data), the research
tree, slots, a session resumed, `finish`/`clean` and the web page's data. Real git repositories, real runs under
the real keeper, the real MCP client. A test that found a hole is a strict xfail naming it; the others guard
what held."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from mcp_autoresearch.sandbox.policy import probe_isolation

from .conftest import make_repo
from .helpers.hidden_in_git import forget_commit, key_files, never_read
from .helpers.needs import require
from .helpers.slot_tmpdirs import SECRET, SLOT_EVALUATE, slot_b_reads_slot_a
from .helpers.slots import private_slots_home  # noqa: F401 (the autouse fixture `slots_home`)

pytestmark = pytest.mark.anyio

ISOLATION = probe_isolation("auto")


# --- 1. Hidden data whose blob is still in .git's objects ----------------------------------------------------


async def test_hidden_data_removed_from_history_as_the_refusal_said_is_unreadable(
    tmp_path: Path, agent_for
) -> None:
    """The key the scorer compares against was committed once. The session refuses it, saying to remove it from
    every commit and reflog. Done so (the commit amended, the reflog expired), no ref or reflog holds it, but its
    blob was still a loose object in .git, which every run could read: the candidate decompressed the loose
    objects, found the key and answered it, for a perfect score. With hidden data the runs' view covers the
    repository: the session starts, and the candidate finds nothing."""
    require(ISOLATION.namespaces, "CI must give runs a private view", "namespaces are unavailable here")
    root = make_repo(
        tmp_path / "proj",
        key_files(),
    )
    (root / "out").mkdir()
    async with agent_for(root) as agent:  # the refusal, and the advice it gives
        refusal = await agent.refused("start_session")
        assert "key.txt" in refusal and "git gc --prune=now" in refusal, refusal
    forget_commit(root, "key.txt")
    await never_read(agent_for, root, None)  # no refusal now: the view covers the repository


# --- 2. A wall time measured by the server, of tests the target stopped ---------------------------------------

PACKAGE_FILES = {
    "pyproject.toml": '[project]\nname = "fastpkg"\nversion = "0.1"\n',
    "fastpkg/__init__.py": "",
    "fastpkg/core.py": "def work(n):\n    return sum(range(n))\n",
    "tests/test_core.py": (
        "import time\nfrom fastpkg.core import work\n\n\ndef test_work():\n    time.sleep(1.0)\n"
        "    assert work(10) == 45\n"
    ),
    ".gitignore": ".autoresearch/\nrun.log\nresults.tsv\n.pytest_cache/\n__pycache__/\n",
}
# The candidate: the same function, and an exit with status 0 as soon as pytest imports it (no test runs).
STOPS_PYTEST = """\
import os, sys
if "_pytest" in sys.modules:
    sys.stdout.flush()
    os._exit(0)


def work(n):
    return sum(range(n))
"""


@pytest.mark.xfail(
    strict=True,
    reason="the Python type's test_time_s is the server's wall time, but whether the tests ran is pytest's exit "
    "status, decided in the process the target's code runs in: a target that ends it with status 0 at import is "
    "kept as a large speed-up (the provenance and README's 'Where the number comes from' say so; any check "
    "of the tests' count would be read from that process too)",
)
async def test_a_target_that_ends_the_test_run_at_import_is_not_kept_as_faster_tests(
    tmp_path: Path, agent_for
) -> None:
    """A detected Python package (zero configuration): the metric is the wall time of `pytest -q -x tests`, as
    the server measures it, labelled `server` ("no number is printed"). The target module, imported by the
    tests, calls `os._exit(0)` when pytest imports it: no test runs, the exit status is 0, and the wall time
    falls from over a second to the interpreter's start. The server keeps it."""
    root = make_repo(tmp_path / "proj", PACKAGE_FILES)
    async with agent_for(root) as agent:
        started = await agent.ok("start_session")
        assert started["provenance"]["source"] == "server", started["provenance"]
        assert started["metric_name"] == "test_time_s" and "fastpkg/core.py" in started["target_file"], (
            started
        )
        _, base = await agent.experiment("baseline")
        assert base["decision"] == "keep" and base["value"] > 1.0, base
        await agent.ok("apply_edit", content=STOPS_PYTEST)
        run, decision = await agent.experiment("the same function, pytest stopped at import")
    assert decision["decision"] != "keep", (
        f"kept at {run['value']} s against the baseline's {base['value']} s, though no test ran: {run['log_tail']}"
    )


# --- 3. Another slot's private TMPDIR, where the server's temporary directory is not /tmp -----------------------


async def test_a_run_cannot_read_another_slots_private_tmpdir_when_tmpdir_is_not_tmp(
    tmp_path: Path, agent_for, slots_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server started with TMPDIR=~/tmp (a cluster's small /tmp, a scratch disk: the README supports any
    $TMPDIR). Each run's private TMPDIR (mode 0700, the same user) is made there, beside the others; Landlock
    allows reads everywhere, and the view hid only the usual scratch folders: with two slots, the candidate in
    slot B listed the folder above its own TMPDIR and read the file slot A's run kept in its private TMPDIR
    while A ran. The view hides that folder too, each run's own TMPDIR shown again."""
    require(ISOLATION.namespaces, "CI must give runs a private view", "namespaces are unavailable here")
    scratch = Path.home() / f".review37-tmp-{uuid.uuid4().hex[:8]}"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    try:
        root = make_repo(
            tmp_path / "proj", {"params.py": "X = 0\n\n\n\nY = 0\n", "evaluate.py": SLOT_EVALUATE}
        )
        log = await slot_b_reads_slot_a(agent_for, root, tmp_path / "sync")
        assert SECRET not in log, f"slot B read slot A's private TMPDIR: {log[:400]}"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
