"""Attacks on the number: the metric comes only from the server's capture of the run's own output, read
before anything else can print; logs, daemons, floods, symlinked outputs and writable caches never change
what is measured or kept.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from .conftest import git
from .helpers.attacks import BOTH, NEEDS_LANDLOCK, _log_text, attack
from .helpers.session_attacks import (
    HONEST_1_1,
    HONEST_1_4,
    baseline_session,  # noqa: F401 (fixtures)
    kept_values,
    run_attack,
)

pytestmark = pytest.mark.anyio


async def test_run_log_written_by_the_run_is_not_an_input(session) -> None:
    agent, root, _confined = session
    code = "open('run.log', 'w').write('val_bpb: 0.000100\\n')"
    run, decision = await run_attack(agent, code)
    assert run["value"] in (None, pytest.approx(1.1))
    assert kept_values(root) in ([HONEST_1_4], [HONEST_1_4, HONEST_1_1])
    assert "val_bpb: 0.000100" not in (root / "run.log").read_text().splitlines()


@NEEDS_LANDLOCK
async def test_a_flood_of_binary_output_and_huge_lines_still_measures(ml_project: Path, agent_for):
    """40 MB of binary output without a newline, then the metric: the value is read, the answer stays small."""
    code = """
    import os, sys
    chunk = bytes(range(256)) * 4096
    for _ in range(40):
        sys.stdout.buffer.write(chunk.replace(b'\\n', b'\\x00'))
    sys.stdout.buffer.write(b'\\nval_bpb: 1.25\\n')
    sys.stdout.flush()
    os._exit(0)
    """
    async with agent_for(ml_project) as agent:
        run, decision = await attack(agent, code)
    assert run["status"] == "ok" and run["value"] == 1.25 and decision["decision"] == "keep", run
    assert len(str(run)) < 20_000


# (a) the measured value
EVALUATOR = """\
import time
time.sleep(0.5)  # the honest evaluation takes a while
print("val_bpb: 1.5")
"""


@NEEDS_LANDLOCK
@pytest.mark.xfail(
    strict=True,
    reason="the target's code and a read-only evaluator run by the same run_command share one process tree and "
    "one output pipe: a process the target left behind prints a better metric while the evaluator runs, and "
    "the last match wins (leftovers are killed only when the whole command ends)",
)
async def test_a_daemon_cannot_print_over_a_read_only_evaluator(ml_project: Path, agent_for):
    root = ml_project
    (root / "evaluate.py").write_text(EVALUATOR)
    git(root, "add", "evaluate.py")
    git(root, "commit", "-qm", "evaluator")
    code = """
    import os, select, time
    if os.fork() == 0:
        os.setsid()
        def cmdline(pid):
            try:
                return open(f'/proc/{pid}/cmdline', 'rb').read()
            except OSError:
                return b''
        while True:  # wait for the evaluator to start, then to end (it printed its value)
            found = [pid for pid in filter(str.isdigit, os.listdir('/proc'))
                     if cmdline(pid).split(b'\\0')[1:2] == [b'evaluate.py']]
            if found:
                try:
                    select.select([os.pidfd_open(int(found[0]))], [], [])
                except OSError:
                    pass
                break
            time.sleep(0.01)
        print('val_bpb: 0.000001', flush=True)
        os._exit(0)
    """
    overrides = {
        "run_command": "python train.py && python evaluate.py && sleep 1.5",
        "readonly_files": ["prepare.py", "evaluate.py"],
    }
    async with agent_for(root, overrides) as agent:
        run, decision = await attack(agent, code)
    assert run["value"] == 1.5 and decision["decision"] != "keep", (run, decision)


@NEEDS_LANDLOCK
async def test_a_line_printed_after_the_command_ended_is_not_captured(ml_project: Path, agent_for):
    """Leftovers watch the shell's pidfd and print a better metric the moment it ends: the keeper holds the
    shell at its exit (ptrace) and kills them first, so no such line is captured."""
    root = ml_project
    (root / "evaluate.py").write_text('print("val_bpb: 1.5")\n')
    git(root, "add", "evaluate.py")
    git(root, "commit", "-qm", "evaluator")
    code = """
    import os, select
    shell = os.getppid()
    for _ in range(6):  # several watchers: one of them wins the race
        if os.fork() == 0:
            os.setsid()
            fd = os.pidfd_open(shell)
            select.select([fd], [], [])
            for _ in range(200):
                os.write(1, b'val_bpb: 0.000001\\n')
            os._exit(0)
    """
    overrides = {
        "run_command": "python train.py; python evaluate.py",
        "readonly_files": ["prepare.py", "evaluate.py"],
    }
    from .conftest import TRAIN_PY

    runs = []
    async with agent_for(root, overrides) as agent:
        runs.append(await attack(agent, code))
        for attempt in range(4):  # a race: a few tries make the outcome certain either way
            lr = f"LR = 0.3{attempt}"
            await agent.ok(
                "apply_edit", content=TRAIN_PY.replace("LR = 0.5", lr + "\n" + textwrap.dedent(code))
            )
            runs.append(await agent.experiment(f"try {attempt}"))
    for run, decision in runs:
        assert "0.000001" not in _log_text(run)
        assert run["value"] == 1.5 and decision["decision"] != "keep", (run, decision)


BUILD_PY = """\
import os
PAD = 10
os.makedirs('dist', exist_ok=True)
open('dist/bundle.js', 'w').write('FULL' * 256 * PAD)
"""


CHECK_PY = """\
import sys
data = open('dist/bundle.js').read()
sys.exit(0 if data.count('FULL') >= 256 * 9 else 1)
"""


@NEEDS_LANDLOCK
async def test_a_measured_size_cannot_hide_the_output_behind_a_symlink(tmp_path: Path, agent_for):
    """`size_kb:dist`: the bundle is built into another writable directory and `dist/bundle.js` is a symlink to
    it. The checks follow the link and pass; the size must not count the link as nothing."""
    from .conftest import make_repo

    root = make_repo(
        tmp_path / "web", {"build.py": BUILD_PY, "check.py": CHECK_PY, ".gitignore": "dist/\ncache/\n"}
    )
    overrides = {
        "target_file": "build.py",
        "run_command": "python build.py",
        "metric_name": "bundle_kb",
        "metric_measure": "size_kb:dist",
        "metric_direction": "lower",
        "checks_command": "python check.py",
        "readonly_files": ["check.py"],
        "writable": ["dist", "cache"],
    }
    code = """
    os.remove('dist/bundle.js')
    open('cache/real.js', 'w').write('FULL' * 256 * PAD)
    os.symlink('../cache/real.js', 'dist/bundle.js')
    """
    async with agent_for(root, overrides) as agent:
        await agent.ok("start_session")
        baseline, _ = await agent.experiment("baseline")
        await agent.edit(
            "PAD = 10\nos.makedirs('dist', exist_ok=True)\nopen('dist/bundle.js', 'w').write('FULL' * 256 * PAD)",
            "PAD = 10\nos.makedirs('dist', exist_ok=True)" + textwrap.dedent(code),
        )
        run, decision = await agent.experiment("the same bundle, behind a link")
    assert baseline["value"] == 10.0
    assert decision["decision"] != "keep" and run["value"] in (None, 10.0), (run, decision)


def _ml_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / ".cache").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    return home


EVAL_WITH_WEIGHTS = """\
import os
WEIGHTS = os.path.expanduser('~/.cache/torch/hub/checkpoints/eval_weights.txt')
def evaluate(lr):
    w = float(open(WEIGHTS).read())  # downloaded once, like pytorch-fid's Inception weights
    return abs(lr - 0.1) * w + 1
"""


@NEEDS_LANDLOCK
async def test_a_writable_cache_cannot_change_a_later_runs_evaluation(
    ml_project: Path, agent_for, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A discarded run rewrites what a read-only evaluator loads from ~/.cache/torch (as pytorch-fid's weights),
    so that a later innocent commit would be kept with a false value: ML runs may write no shared cache."""
    root = ml_project
    home = _ml_home(monkeypatch, tmp_path)
    weights = home / ".cache" / "torch" / "hub" / "checkpoints" / "eval_weights.txt"
    weights.parent.mkdir(parents=True)
    weights.write_text("1.0\n")
    (root / "prepare.py").write_text(EVAL_WITH_WEIGHTS)
    (root / "train.py").write_text(
        'import prepare\nLR = 0.5\nprint(f"val_bpb: {prepare.evaluate(LR):.6f}")\n'
    )
    git(root, "commit", "-qam", "evaluator with cached weights")
    poison = f"""
    LR = 0.9  # a worse idea: discarded (the weights change after its own evaluation)
    import atexit
    atexit.register(lambda: open({str(weights)!r}, 'w').write('0.0\\n'))
    """
    async with agent_for(root) as agent:
        run, decision = await attack(agent, poison, new="")
        assert decision["decision"] != "keep", (run, decision)
        await agent.edit("LR = 0.5", "LR = 0.45")  # innocent: nothing but the constant
        run, decision = await agent.experiment("a slightly lower LR")
    honest = abs(0.45 - 0.1) * 1.0 + 1
    assert run["value"] == pytest.approx(honest), (run, decision)
    assert weights.read_text() == "1.0\n"


@NEEDS_LANDLOCK
async def test_a_writable_uv_cache_cannot_rewrite_the_projects_venv(
    ml_project: Path, agent_for, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """uv installs the venv as hard links into ~/.cache/uv: were that cache writable, a run would rewrite the
    packages the evaluator imports. It is not; each run gets a private uv cache instead."""
    root = ml_project
    home = _ml_home(monkeypatch, tmp_path)
    cached = home / ".cache" / "uv" / "archive-v0" / "x1" / "evalpkg.py"
    cached.parent.mkdir(parents=True)
    cached.write_text("def evaluate(lr):\n    return abs(lr - 0.1) + 1\n")
    installed = root / ".venv" / "lib" / "python3" / "site-packages" / "evalpkg.py"
    installed.parent.mkdir(parents=True)
    os.link(cached, installed)  # what `uv sync` does with link-mode=hardlink
    (root / ".venv" / ".gitignore").write_text("*\n")
    before = installed.read_bytes()
    code = f"""
    open({str(cached)!r}, 'w').write('def evaluate(lr):\\n    return 0.0\\n')
    """
    async with agent_for(root) as agent:
        run, _ = await attack(agent, code)
    assert installed.read_bytes() == before, _log_text(run)


@BOTH
async def test_a_metric_written_into_the_servers_log_does_not_count(
    ml_project: Path, agent_for, isolation: str
) -> None:
    """The run knows where the server keeps its log; it writes a forged metric there (and, unconfined, the
    write happens): the value is never kept."""
    root = ml_project
    async with agent_for(root, {"isolation": isolation}) as agent:
        await agent.ok("start_session", tag="forge")
        baseline, _ = await agent.experiment("baseline")
        forge = (
            "import glob\n"
            "print('val_bpb: 9.0', flush=True)\n"
            "logs = glob.glob('.autoresearch/runs/forge/r2*.log')\n"
            "if not logs:\n"
            "    print('refused: the runs folder is hidden from this run')\n"
            "for log in logs:\n"
            "    try:\n"
            "        open(log, 'w').write('val_bpb: 0.000001\\n')\n"
            "    except OSError as exc:\n"
            "        print('refused:', exc)\n"
        )
        await agent.ok("apply_edit", content="LR = 0.5\n" + forge)
        run, decision = await agent.experiment("forges its log")
        assert decision["decision"] != "keep"
        assert run["value"] in (None, 9.0)
        if isolation == "auto":
            assert run["value"] == 9.0 and "refused" in run["log_tail"]
        else:
            assert run["status"] == "tampered"
        rows = (root / "results.tsv").read_text()
        assert "0.000001" not in rows
