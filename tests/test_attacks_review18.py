"""Review 18: attacks of the target's code on what a run can see and hold while it runs (what earlier runs left
beside it, the view's hidden folders, the machine's memory), through the real server (the MCP client) in the real
sandbox, or the real keeper. Each test here failed before its fix (or is a strict xfail naming the fix)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from mcp_autoresearch.sandbox.policy import probe_isolation

from .helpers.needs import require
from .helpers.session_attacks import baseline_then_content
from .test_eval_stage import project as stage_project

pytestmark = pytest.mark.anyio

ISOLATION = probe_isolation("auto")

# The candidate answers with what the previous run left in `out/`, moved aside by the server before this run into
# `.autoresearch/outputs/<tag>/`: it computes nothing, and is one line long.
COPIES_THE_LAST_ANSWER = "import glob; print(open(sorted(glob.glob('.autoresearch/outputs/**/answer.txt', recursive=True))[-1]).read())\n"


async def test_a_run_cannot_answer_with_the_outputs_an_earlier_run_left(tmp_path: Path, agent_for) -> None:
    """Every run starts from empty output directories: what the previous run left is moved aside into
    `.autoresearch/outputs/<tag>/run-<id>/`. That folder was readable to the next run: a candidate that computes
    nothing and prints the best's answer from there was scored as the best, and kept as equal and simpler."""
    require(ISOLATION.confined or ISOLATION.namespaces, "CI confines runs", "runs are not confined here")
    root = stage_project(tmp_path)
    async with agent_for(root) as agent:
        description = "computes nothing, copies the best's answer"
        run, decision = await baseline_then_content(agent, COPIES_THE_LAST_ANSWER, description)
    assert decision["decision"] != "keep", (run, decision)
    assert run["status"] == "crash" and "IndexError" in Path(run["log_path"]).read_text(), run


# In a slot, the other slots' checkouts lie beside this one's: their `out/` holds what their last run left.
COPIES_ANOTHER_SLOTS_ANSWER = (
    "import glob, os; print(open([p for p in sorted(glob.glob('../*/out/answer.txt'))"
    " if not os.path.samefile(os.path.dirname(p), 'out')][0]).read())\n"
)


async def test_a_run_in_a_slot_cannot_answer_with_another_slots_outputs(
    tmp_path: Path, agent_for, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With slots, each slot's checkout is read-only to the runs of the others, but readable: the baseline ran
    in every slot, and a candidate that computes nothing printed the answer another slot's run left in its
    `out/` (the best's), was scored as the best and kept as equal and simpler. (The slots lie in the user's
    cache, `~/.cache/mcp-autoresearch/slots`; beneath /tmp, as the other tests' are, the view hides them.)"""
    require(ISOLATION.namespaces, "CI gives runs a private view", "namespaces are unavailable here")
    home = Path(tempfile.mkdtemp(prefix=".autoresearch-test-slots-", dir=Path.home()))
    monkeypatch.setenv("AUTORESEARCH_SLOTS_DIR", str(home))
    root = stage_project(tmp_path, "slots = 2\n")
    try:
        async with agent_for(root) as agent:
            description = "computes nothing, copies another slot's answer"
            run, decision = await baseline_then_content(agent, COPIES_ANOTHER_SLOTS_ANSWER, description)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert decision["decision"] != "keep", (run, decision)
    assert run["status"] == "crash" and "IndexError" in Path(run["log_path"]).read_text(), run


# Where the view hides a directory it mounts an empty tmpfs there: /run (/var/run), $XDG_RUNTIME_DIR, each
# `hidden` folder. The probe writes into each, then says how much memory those file systems could hold.
WRITES_THE_COVERS = """
import os, sys
for folder in sys.argv[1:]:
    try:
        with open(os.path.join(folder, "pinned"), "wb") as handle:
            handle.write(b"x" * 4096)
        print("WROTE", folder, os.statvfs(folder).f_blocks * os.statvfs(folder).f_frsize)
    except OSError as exc:
        print("REFUSED", folder, exc.strerror)
"""


def test_without_landlock_the_folders_the_view_hides_are_read_only(tmp_path: Path) -> None:
    """Without Landlock (a kernel without it, or a container's seccomp profile refusing its syscalls: `detect`
    says `namespaces; no landlock`), the view alone holds a run: every mount read-only but its writable paths.
    The empty tmpfs the view puts over /run, $XDG_RUNTIME_DIR and every `hidden` folder were writable, each up to
    half the machine's memory: a run wrote where nothing is writable, and pinned memory far past the bounds
    the scratch folders keep (/tmp and /dev/shm a quarter, /var/tmp a tenth), which the OOM killer never frees
    by ending the run."""
    import subprocess
    import sys

    from mcp_autoresearch.sandbox import confine
    from mcp_autoresearch.sandbox.policy import keeper_spec

    require(ISOLATION.namespaces, "CI gives runs a private view", "namespaces are unavailable here")
    hidden = Path(tempfile.mkdtemp(prefix=".autoresearch-test-hidden-", dir=Path.home()))
    try:
        spec = keeper_spec(ISOLATION, [str(tmp_path / "out")], 1.0, [], [str(hidden)])
        spec["landlock"] = False  # as where Landlock is missing
        (tmp_path / "out").mkdir()
        done = subprocess.run(
            confine.command_line(
                sys.executable,
                spec,
                [sys.executable, "-c", WRITES_THE_COVERS, "/run", str(hidden), "out"],
            ),
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
        )
    finally:
        shutil.rmtree(hidden, ignore_errors=True)
    lines = done.stdout.splitlines()
    assert any(line.startswith("WROTE out ") for line in lines), (done.stdout, done.stderr)
    for folder in ("/run", str(hidden)):
        assert f"REFUSED {folder} Read-only file system" in lines, (done.stdout, done.stderr)


def test_a_runs_processes_are_the_oom_killers_first_choice(tmp_path: Path) -> None:
    """A run's processes kept the server's OOM score: a run that fills its scratch tmpfs (within its bounds, a
    quarter of the machine's memory for /dev/shm) pins memory no process's RSS counts, and where memory is short
    (a cgroup's limit, a container, a busy machine) the OOM killer ended the biggest process: the server.
    Measured in a 300 MB memory cgroup: a 120 MB server, its run writing 400 MB to /dev/shm: the server was
    SIGKILLed; with the run's processes at oom_score_adj 1000 they went first and the server lived."""
    import subprocess
    import sys

    from mcp_autoresearch.sandbox import confine
    from mcp_autoresearch.sandbox.policy import keeper_spec

    require(ISOLATION.confined or ISOLATION.namespaces, "CI confines runs", "runs are not confined here")
    spec = keeper_spec(ISOLATION, [str(tmp_path)], 1.0, [], [])
    done = subprocess.run(
        confine.command_line(sys.executable, spec, ["/bin/cat", "/proc/self/oom_score_adj"]),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.stdout.strip() == "1000", (done.stdout, done.stderr)
