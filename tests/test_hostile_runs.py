"""Hostile runs: the target's own code attacks the server while it runs.

Each test puts the attack into the target through `apply_edit`, runs it through the real MCP client, and checks
that the forbidden outcome does not happen: no kept value other than the honest one, the user's untracked files,
other branches and git configuration untouched, logs equal to the decisions made, no hang. Every test runs
unconfined (`isolation = off`: the server's own defences alone, the case they exist for) and confined (the
default; where Landlock is missing the two are the same).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import anyio
import psutil
import pytest
from mcp import Client

from .conftest import Agent, git, stdio_params

pytestmark = pytest.mark.anyio

HONEST = "LR = 0.2"  # the honest value of this edit: abs(0.2 - 0.1) + 1 = 1.1
HONEST_1_4 = pytest.approx(1.4)  # the baseline's honest value
HONEST_1_1 = pytest.approx(1.1)


def attack(code: str) -> str:
    """The target's new first line: an honest change of LR, then the attack (run as part of train.py)."""
    return HONEST + "\n" + code.strip() + "\n"


async def run_attack(agent, code: str, description: str = "attack") -> tuple[dict, dict]:
    await agent.edit("LR = 0.5", attack(code))
    return await agent.experiment(description)


def kept_values(root: Path) -> list[float]:
    """The kept values in results.tsv, in either of its layouts (value in column 3, or karpathy's in 2)."""
    header, *rows = (root / "results.tsv").read_text().splitlines()
    column = 2 if header.split("\t")[1] == "metric" else 1
    return [float(row.split("\t")[column]) for row in rows if row.split("\t")[3] == "keep"]


def server_alive(root: Path) -> bool:
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "serve" in proc.cmdline() and str(root) in proc.cmdline():
                return proc.status() != psutil.STATUS_ZOMBIE
    return False


def done_events(root: Path) -> list[dict]:
    lines = (root / ".autoresearch/autoresearch.jsonl").read_text().splitlines()
    return [e["details"] for e in map(json.loads, lines) if e["action"] == "experiment_done"]


@pytest.fixture(params=["off", "auto"])
async def session(ml_project: Path, agent_for, request: pytest.FixtureRequest):
    """A session with its baseline kept; yields (agent, root, confined)."""
    async with agent_for(ml_project, {"isolation": request.param}) as agent:
        started = await agent.ok("start_session", tag="evil")
        await agent.experiment("baseline")
        yield agent, ml_project, "landlock" in started["isolation"]


def blocked(run: dict, confined: bool, *named: str) -> bool:
    """Unconfined, the server caught the attack after the run and names what it undid; confined, the run's
    own writes were refused, so it failed (or did nothing)."""
    if confined:
        return run["status"] in ("crash", "ok", "tampered")
    return run["status"] == "tampered" and all(name in run["error"] for name in named)


# -- the session's fixed rules -------------------------------------------------------------------------------
@pytest.mark.parametrize("isolation", ["off", "auto"])
async def test_run_cannot_raise_its_own_timeout_or_experiment_budget(
    ml_project: Path, agent_for, isolation: str
) -> None:
    root = ml_project
    rules = {"max_experiments": 3, "isolation": isolation}
    async with agent_for(root, rules) as agent:
        await agent.ok("start_session", tag="rules")
        await agent.experiment("baseline")
        code = (
            "open('CLAUDE.md', 'w').write('## autoresearch\\n- timeout: 99999\\n- max_experiments: 1000\\n')"
        )
        await run_attack(agent, code)
    if not (root / "CLAUDE.md").exists():  # a confined run may not write the project root
        async with agent_for(root, rules) as agent:
            assert (await agent.ok("start_session", tag="rules"))["resumed"] is True
        return
    async with agent_for(root, rules) as agent:
        message = await agent.refused("start_session", tag="rules")
        assert "configuration changed" in message and "timeout" in message
    (root / "CLAUDE.md").write_text("## autoresearch\n- max_experiments: 1000\n")
    async with agent_for(root, {"isolation": isolation}) as agent:
        assert "max_experiments" in await agent.refused("start_session", tag="rules")


# -- the metric comes from the server's capture only --------------------------------------------------------
async def test_run_log_written_by_the_run_is_not_an_input(session) -> None:
    agent, root, _confined = session
    code = "open('run.log', 'w').write('val_bpb: 0.000100\\n')"
    run, decision = await run_attack(agent, code)
    assert run["value"] in (None, pytest.approx(1.1))
    assert kept_values(root) in ([HONEST_1_4], [HONEST_1_4, HONEST_1_1])
    assert "val_bpb: 0.000100" not in (root / "run.log").read_text().splitlines()


# -- the user's untracked files ------------------------------------------------------------------------------
async def test_git_add_all_in_a_run_never_costs_an_untracked_file(session) -> None:
    agent, root, confined = session
    (root / "data").mkdir()
    (root / "data" / "cache.bin").write_bytes(b"\x00user data")
    code = "import subprocess; subprocess.run(['git', 'add', '-A'], check=True)"
    run, decision = await run_attack(agent, code)
    assert blocked(run, confined, "my_notes.txt") and decision["decision"] == "crash"
    assert (root / "my_notes.txt").read_text() == "the user's own untracked work\n"
    assert (root / "data" / "cache.bin").read_bytes() == b"\x00user data"
    assert git(root, "status", "--porcelain", "--untracked-files=no") == ""
    assert "?? my_notes.txt" in git(root, "status", "--porcelain")


async def test_a_restore_whose_copy_fails_is_not_done_and_is_reported(session) -> None:
    agent, root, confined = session
    # The run stages the user's untracked file, edits a tracked one, and blocks where copies are kept.
    code = (
        "import subprocess; subprocess.run(['git', 'add', '-A'])\n"
        "open('.autoresearch/tampered', 'w').write('not a directory')\n"
        "open('README.md', 'w').write('edited during the run\\n')"
    )
    run, decision = await run_attack(agent, code)
    assert blocked(run, confined, "README.md (NOT restored") and decision["decision"] == "crash"
    assert (root / "my_notes.txt").read_text() == "the user's own untracked work\n"
    if not confined:  # the run's edit is left in place, named, and the next run refused until it is looked at
        assert (root / "README.md").read_text() == "edited during the run\n"
        assert "README.md" in await agent.refused("run_experiment", description="next")


# -- git configuration and refs planted by a run ------------------------------------------------------------
GIT = (
    "import os, subprocess\n"
    "def g(*a):\n"
    "    done = subprocess.run(['git', '-c', 'user.name=x', '-c', 'user.email=x@x', *a], capture_output=True,"
    " text=True)\n"
    "    assert done.returncode == 0, done.stderr\n"
    "    return done.stdout.strip()\n"
)


async def test_git_config_planted_by_a_run_never_runs_in_the_server(session) -> None:
    agent, root, confined = session
    config_before = (root / ".git/config").read_bytes()
    code = GIT + (
        "open('.git/evil-hook', 'w').write('#!/bin/sh\\ntouch PWNED\\n'); os.chmod('.git/evil-hook', 0o755)\n"
        "g('config', 'core.fsmonitor', os.path.abspath('.git/evil-hook'))\n"
        "g('config', 'filter.evil.clean', 'touch PWNED; cat')\n"
        "g('config', 'core.worktree', '/tmp')\n"
        "open('.git/info/attributes', 'w').write('* filter=evil\\n')\n"
        "os.utime('README.md', (1, 1)); os.utime('prepare.py', (1, 1))"
    )
    run, decision = await run_attack(agent, code)
    assert not (root / "PWNED").exists(), "a command planted in git's configuration ran"
    assert (
        blocked(run, confined, ".git/config (restored)", "info/attributes")
        and decision["decision"] == "crash"
    )
    assert (root / ".git/config").read_bytes() == config_before
    assert not (root / ".git/info/attributes").exists()
    if not confined:
        assert (root / ".autoresearch/tampered/r2/git").is_dir()  # the run's version, kept
    await agent.edit("LR = 0.5", HONEST)
    run, decision = await agent.experiment("honest")
    assert run["status"] == "ok" and decision["decision"] == "keep" and run["value"] == pytest.approx(1.1)
    assert not (root / "PWNED").exists()


async def test_replace_objects_do_not_hide_an_edit(session) -> None:
    agent, root, confined = session
    code = GIT + (
        "open('README.md', 'w').write('forged\\n'); g('add', 'README.md')\n"
        "head = g('rev-parse', 'HEAD')\n"
        "fake = g('commit-tree', g('write-tree'), '-p', g('rev-parse', 'HEAD^'), '-m', 'same')\n"
        "g('replace', head, fake)"
    )
    run, decision = await run_attack(agent, code)
    assert blocked(run, confined, "README.md", "refs/replace/") and decision["decision"] == "crash"
    if replaced := git(root, "replace", "-l").split():
        git(root, "replace", "-d", *replaced)
    assert (root / "README.md").read_text() == "demo\n"
    assert git(root, "status", "--porcelain", "--untracked-files=no") == ""


async def test_index_flags_do_not_hide_an_edit(session) -> None:
    agent, root, confined = session
    code = GIT + (
        "open('README.md', 'w').write('hidden edit\\n'); g('update-index', '--skip-worktree', 'README.md')\n"
        "src = open('train.py').read().replace('LR = 0.2', 'LR = 0.1', 1)\n"
        "open('train.py', 'w').write(src); g('update-index', '--assume-unchanged', 'train.py')"
    )
    run, decision = await run_attack(agent, code)
    assert blocked(run, confined, "index flags hiding", "README.md", "train.py")
    assert decision["decision"] == "crash"
    assert (root / "README.md").read_text() == "demo\n"
    assert "LR = 0.5" in (root / "train.py").read_text()
    assert all(line[0] == "H" for line in git(root, "ls-files", "-v").splitlines())


async def test_symbolic_session_branch_never_moves_another_branch(session) -> None:
    agent, root, confined = session
    main_before = git(root, "rev-parse", "main").strip()
    code = GIT + "g('symbolic-ref', 'refs/heads/autoresearch/evil', 'refs/heads/main')"
    run, decision = await run_attack(agent, code)
    assert blocked(run, confined, "symbolic ref to refs/heads/main") and decision["decision"] == "crash"
    assert git(root, "rev-parse", "main").strip() == main_before
    assert not (root / ".git/refs/heads/autoresearch/evil").read_text().startswith("ref:")
    await agent.edit("LR = 0.5", HONEST)
    run, decision = await agent.experiment("honest")
    assert decision["decision"] == "keep" and git(root, "rev-parse", "main").strip() == main_before
    assert kept_values(root) == [HONEST_1_4, HONEST_1_1]


async def test_refs_moved_by_a_run_are_tampering(session) -> None:
    agent, root, confined = session
    code = GIT + "g('branch', '-f', 'main', 'HEAD'); g('tag', 'evil')"
    run, decision = await run_attack(agent, code)
    assert blocked(run, confined, "refs/heads/main", "refs/tags/evil")
    assert decision["decision"] == "crash" and kept_values(root) == [HONEST_1_4]


# -- the server's own files: never followed, never blocking -------------------------------------------------
async def test_fifos_a_run_leaves_never_hang_the_server(session) -> None:
    agent, root, confined = session
    code = (
        "import os\n"
        "for name in ('prepare.py', 'results.tsv', 'run.log', 'README.md', __file__):\n"
        "    if os.path.lexists(name): os.remove(name)\n"
        "    os.mkfifo(name)"
    )
    with anyio.fail_after(600):  # a guard against a hang (a FIFO read), never reached by a server that answers
        run, decision = await run_attack(agent, code)
        assert blocked(run, confined, "prepare.py", "train.py") and decision["decision"] == "crash", run[
            "error"
        ]
        assert (await agent.ok("query_results"))["total"] == 2
    for name in ("prepare.py", "README.md", "train.py", "results.tsv"):
        assert (root / name).is_file(), name
    assert (root / "README.md").read_text() == "demo\n" and "LR = 0.5" in (root / "train.py").read_text()
    statuses = [row.split("\t")[3] for row in (root / "results.tsv").read_text().splitlines()[1:]]
    assert statuses == ["keep", "crash"]


async def test_symlinked_server_folders_never_carry_writes_outside(session, tmp_path: Path) -> None:
    agent, root, confined = session
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine\n")
    code = (
        f"import os, shutil\nOUT = {str(outside)!r}\n"
        "shutil.rmtree('.autoresearch/runs')\n"
        "os.symlink(OUT, '.autoresearch/runs'); os.symlink(OUT, '.autoresearch/tampered')\n"
        "open('README.md', 'w').write('edited by the run\\n')"
    )
    run, decision = await run_attack(agent, code)
    assert blocked(run, confined, "README.md") and decision["decision"] == "crash"
    await agent.edit("LR = 0.5", HONEST)
    run, decision = await agent.experiment("honest")
    assert decision["decision"] == "keep" and run["value"] == pytest.approx(1.1)
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]
    assert (root / ".autoresearch/runs").is_dir() and not (root / ".autoresearch/runs").is_symlink()
    assert (root / "README.md").read_text() == "demo\n"
    if not confined:
        assert (root / ".autoresearch/tampered/r2/README.md").read_text() == "edited by the run\n"


# -- the server's state and journal: never trusted from a file the run wrote --------------------------------
async def test_jsonl_and_tsv_edited_in_place_are_restored_by_content(session) -> None:
    agent, root, confined = session
    jsonl = ".autoresearch/autoresearch.jsonl"
    code = f"""
import os
for name, old, new in (({jsonl!r}, b'"value": 1.4,', b'"value": 0.1,'), ('results.tsv', b'1.400000', b'0.100000')):
    st = os.stat(name)
    data = open(name, 'rb').read()
    open(name, 'r+b').write(data.replace(old, new))  # same size, same inode
    os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the mtime put back
"""
    run, decision = await run_attack(agent, code)
    assert blocked(run, confined, jsonl, "results.tsv") and decision["decision"] == "crash"
    assert b'"value": 0.1,' not in (root / jsonl).read_bytes()
    assert "0.100000" not in (root / "results.tsv").read_text()
    results = await agent.ok("query_results")
    assert results["best"]["value"] == 1.4 and [r["status"] for r in results["rows"]] == ["crash", "keep"]
    assert [(d["status"], d["value"]) for d in done_events(root)][0] == ("keep", 1.4)


async def test_deleted_jsonl_is_restored_never_emptied(session) -> None:
    agent, root, confined = session
    run, decision = await run_attack(agent, "import os; os.remove('.autoresearch/autoresearch.jsonl')")
    assert blocked(run, confined, "autoresearch.jsonl") and decision["decision"] == "crash"
    await agent.edit("LR = 0.5", HONEST)
    await agent.experiment("honest")
    assert [d["status"] for d in done_events(root)] == ["keep", "crash", "keep"]
    assert [line.split("\t")[3] for line in (root / "results.tsv").read_text().splitlines()[1:]] == [
        "keep",
        "crash",
        "keep",
    ]


FORGE_AND_KILL = """
import json, os, signal, time
time.sleep(1)
path = '.autoresearch/sessions/evil.json'
state = json.load(open(path))
state['inflight'][0].update(phase='finished', result={'status': 'ok', 'value': -1000.0})
state['best']['value'] = -1000.0
json.dump(state, open(path, 'w'))
with open('.autoresearch/autoresearch.jsonl', 'a') as log:
    log.write(json.dumps({'action': 'experiment_done', 'details': {'tag': 'evil', 'run_id': 'r2', 'status': 'keep',
        'value': -1000.0, 'run_status': 'ok'}}) + '\\n')
open('results.tsv', 'a').write('abcdef0\\tval_bpb\\t-1000.000000\\tkeep\\tforged\\n')
pid = os.getppid()
while pid > 1:  # up to the server, which is killed
    if b'mcp_autoresearch\\0serve' in open(f'/proc/{pid}/cmdline', 'rb').read():
        os.kill(pid, signal.SIGKILL)
        break
    pid = int(open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[1])
time.sleep(5)
"""


@pytest.mark.parametrize("isolation", ["off", "auto"])
async def test_forged_state_and_journal_then_sigkill_are_never_applied(
    ml_project: Path, isolation: str, tmp_path: Path
) -> None:
    root = ml_project
    (tmp_path / "rules.toml").write_text(f'isolation = "{isolation}"\n')
    extra = ("--config", str(tmp_path / "rules.toml"))
    params = stdio_params(root, *extra)
    with anyio.fail_after(600):  # a guard against a hang, never reached by a server that answers
        async with Client(params) as client:
            agent = Agent(client)
            await agent.ok("start_session", tag="evil")
            await agent.experiment("baseline")
            await agent.edit("LR = 0.5", attack(FORGE_AND_KILL))
            run = await agent.ok("run_experiment", description="forge and kill", wait_s=0.2)
            while run["status"] == "running" and server_alive(root):
                with contextlib.suppress(Exception):
                    run = await agent.ok("wait_experiment", run_id=run["run_id"], wait_s=2)
            killed = not server_alive(root)
            assert killed or isolation != "off", "unconfined, the run kills the server"
            if not killed:
                await agent.ok("commit_or_reset", run_id=run["run_id"])
        async with Client(stdio_params(root, *extra)) as client:
            agent = Agent(client)
            resumed = await agent.ok("start_session", tag="evil")
            if killed:
                assert resumed["resumed"] is True and resumed["best_value"] == 1.4
                assert any(
                    "evil.json was written outside the server" in line for line in resumed["recovered"]
                )
            results = await agent.ok("query_results")
    assert results["best"]["value"] == 1.4 and results["counts"]["keep"] == 1
    assert [r["status"] for r in results["rows"]] == ["crash", "keep"]
    assert kept_values(root) == [HONEST_1_4]
    assert "-1000" not in (root / ".autoresearch/autoresearch.jsonl").read_text()
    assert "-1000" not in (root / ".autoresearch/sessions/evil.json").read_text()
    assert "forged" not in (root / "results.tsv").read_text()
