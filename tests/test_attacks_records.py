"""Attacks on the records: the journal (JSONL), results.tsv, the session state and the server's folders.
Edited, deleted, forged, replaced by FIFOs or links, or forged just before a SIGKILL: the records are restored
by content, never emptied, and never carry a forged decision.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import anyio
import psutil
import pytest
from mcp import Client

from .conftest import Agent, served_here, stdio_params
from .helpers.session_attacks import (
    HONEST,
    HONEST_1_4,
    attack,
    baseline_session,  # noqa: F401 (fixtures)
    blocked,
    kept_values,
    run_attack,
)

pytestmark = pytest.mark.anyio


def server_alive(root: Path) -> bool:
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "serve" in proc.cmdline() and str(root) in proc.cmdline():
                return proc.status() != psutil.STATUS_ZOMBIE
    return False


def done_events(root: Path) -> list[dict]:
    lines = (root / ".autoresearch/autoresearch.jsonl").read_text().splitlines()
    return [e["details"] for e in map(json.loads, lines) if e["action"] == "experiment_done"]


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


async def test_fifos_a_run_leaves_never_hang_the_server(session) -> None:
    agent, root, confined = session
    code = (
        "import os\n"
        "for name in ('prepare.py', 'results.tsv', 'run.log', 'README.md', __file__):\n"
        "    if os.path.lexists(name): os.remove(name)\n"
        "    os.mkfifo(name)"
    )
    with anyio.fail_after(
        600
    ):  # a guard against a hang (a FIFO read), never reached by a server that answers
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
        # the next server, with the same rules: what it finds on disk is the subject
        async with served_here(root, {"isolation": isolation}) as agent:
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
