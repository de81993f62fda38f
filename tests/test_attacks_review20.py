"""Review 20: attacks on the day's changes (a run's OOM score, start_session's wait, the discard's copy of a
target changed by hand, `detect`'s new warnings), as the target's code (the real keeper, the real sandbox) or as
a hostile or sloppy agent. Each test here failed before its fix (or is a strict xfail naming the fix)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mcp_autoresearch.adapters.demo import example_source
from mcp_autoresearch.sandbox import confine
from mcp_autoresearch.sandbox.policy import keeper_spec, probe_isolation
from mcp_autoresearch.setup.project import load_project

from .conftest import make_repo
from .helpers.needs import require
from .helpers.session_attacks import baseline_then_content

ISOLATION = probe_isolation("auto")


def test_without_landlock_a_run_cannot_lower_its_oom_score_again(tmp_path: Path) -> None:
    """Every process of a run starts at oom_score_adj 1000 (the OOM killer's first choice, not the server). A
    process may lower its own score without privilege, down to the lowest a privileged process set (0 for a
    user's session). With Landlock, /proc is not writable to a run; without it (a kernel without Landlock, or a
    container's seccomp profile refusing it: `namespaces; no landlock`), the view's /proc was writable, and one
    `echo 0 > /proc/self/oom_score_adj` made the server the OOM killer's choice again."""
    require(ISOLATION.namespaces, "CI gives runs a private view", "namespaces are unavailable here")
    spec = keeper_spec(ISOLATION, [str(tmp_path)], 1.0, [], [])
    spec["landlock"] = False  # as where Landlock is missing
    done = subprocess.run(
        confine.command_line(
            sys.executable,
            spec,
            ["/bin/sh", "-c", "echo 0 > /proc/self/oom_score_adj; cat /proc/self/oom_score_adj"],
        ),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.stdout.strip() == "1000", (done.stdout, done.stderr)


def test_the_bundled_example_gets_no_false_warning_from_detect(tmp_path: Path) -> None:
    """The `tune` example (`mcp-autoresearch demo`, a new user's first project) was told by `detect` that a run
    can read the answers its scorer compares against (its scorer computes them, from math.sin: nothing to hide)
    and that its `writable = ["out"]` would become an empty directory where its build might write a file (its
    run writes `> out/samples.txt`: a directory is what it needs). `hidden = []` now says there is nothing to
    hide, and an entry a command writes beneath is not warned about."""
    source = example_source("tune")
    files = {path.name: path.read_text() for path in source.iterdir() if path.is_file()}
    root = make_repo(tmp_path / "tune", files)
    warnings = load_project(root).info.warnings
    assert not [w for w in warnings if "hidden is empty" in w or w.startswith("writable entry")], warnings
    # Without `hidden = []`, the evaluation stage is still warned about; a missing entry used as a file too.
    config = (root / "autoresearch.toml").read_text().replace("hidden = []\n", "")
    (root / "autoresearch.toml").write_text(config.replace("out/samples.txt", "out"))
    warnings = load_project(root).info.warnings
    assert any("hidden is empty" in w for w in warnings), warnings
    assert any(w.startswith("writable entry 'out' does not exist yet") for w in warnings), warnings


def test_start_session_waiting_through_the_servers_shutdown_starts_nothing(tmp_path: Path) -> None:
    """start_session(tag=b) sent during a step of session a waits for that step without the workspace's lock
    (so other calls answer meanwhile). The server's shutdown, which takes that lock, then went first: it ended
    session a's runs and released the project's lock; the step ended, and the waiting call went on to check out
    session b and take the project's lock again, on a server already shut down (its own finally shut down
    nothing of b's, or it left while b was half made). A call that waited through a shutdown starts nothing."""
    import threading

    from mcp_autoresearch.errors import SessionError
    from mcp_autoresearch.session.workspace import Workspace

    from .conftest import TRAIN_PY, git
    from .test_attacks_review16 import _thread_in

    root = make_repo(tmp_path / "proj", {"train.py": TRAIN_PY, "prepare.py": "SEED = 1\n"})
    workspace = Workspace(root)
    workspace.start_session("a")
    session = workspace._session
    assert session is not None
    answers: dict[str, object] = {}

    def switch() -> None:
        try:
            answers["switch"] = workspace.start_session("b")
        except SessionError as exc:
            answers["switch"] = exc

    waiting = threading.Thread(target=switch)
    with session.lock:  # a step of session a under way
        waiting.start()
        while not _thread_in("start_session", "workspace.py", "current.lock"):
            threading.Event().wait(0.01)
        workspace.shutdown()  # the server leaves: session a's runs ended, the project's lock released
    waiting.join()
    assert isinstance(answers["switch"], SessionError), answers
    assert "server" in str(answers["switch"]) and "stopped" in str(answers["switch"]), answers
    assert git(root, "rev-parse", "--abbrev-ref", "HEAD").strip() == "autoresearch/a"
    assert workspace._session is session


@pytest.mark.anyio
async def test_a_run_in_a_slot_cannot_answer_with_what_an_earlier_sessions_runs_left(
    tmp_path: Path, agent_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`.autoresearch/outputs` is hidden from a run, but the one hidden was the slot's own checkout's: the
    project's, where an earlier session (without slots) moved aside what each of its runs left, the best's answer
    among them, stayed readable at its full path to a run in a slot. A candidate that computes nothing printed the
    best's answer from there and was kept as equal and simpler."""
    import shutil
    import tempfile

    from .conftest import git
    from .test_eval_stage import project as stage_project

    require(ISOLATION.namespaces, "CI gives runs a private view", "namespaces are unavailable here")
    home = Path(tempfile.mkdtemp(prefix=".autoresearch-test-slots-", dir=Path.home()))
    monkeypatch.setenv("AUTORESEARCH_SLOTS_DIR", str(home))
    place = Path(tempfile.mkdtemp(prefix=".autoresearch-test-project-", dir=Path.home()))
    root = stage_project(place)  # not beneath /tmp, which the view hides whole
    copies = (
        "import glob; print(min(float(open(p).read()) for p in "
        f"glob.glob({str(root / '.autoresearch/outputs')!r} + '/**/answer.txt', recursive=True)))\n"
    )
    try:
        async with agent_for(root) as agent:
            await agent.ok("start_session", tag="a")
            await agent.experiment("baseline")
            await agent.edit("X = 5\n", "X = 3\n")
            _, better = await agent.experiment("X = 3")
            assert better["decision"] == "keep", better
            await agent.edit("X = 3\n", "X = 4\n")
            await agent.experiment("X = 4")  # before it ran, the best's out/answer.txt (3) was moved aside
        config = (root / "autoresearch.toml").read_text()
        (root / "autoresearch.toml").write_text(config + "slots = 2\n")
        git(root, "commit", "-qam", "slots")
        async with agent_for(root) as agent:
            description = "computes nothing, copies session a's best answer"
            run, decision = await baseline_then_content(agent, copies, description, tag="b")
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(place, ignore_errors=True)
    assert decision["decision"] != "keep", (run, decision)
    assert run["status"] == "crash" and "ValueError" in str(run), run
