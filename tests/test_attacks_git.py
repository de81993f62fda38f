"""Attacks on the server's git: a run that commits, moves refs, plants configuration, replace objects, index
flags or loose objects. The session branch, the user's branches and untracked files, and git's own settings
stay as the server left them; what a run changed is named (`tampered`) and never kept.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import git, run_cli
from .helpers.attacks import (
    NEEDS_LANDLOCK,
    _log_text,
    armed_session,  # noqa: F401 (fixtures)
    attack,
)
from .helpers.session_attacks import (
    HONEST,
    HONEST_1_1,
    HONEST_1_4,
    baseline_session,  # noqa: F401 (fixtures)
    blocked,
    kept_values,
    run_attack,
)

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("armed", ["off", "auto"], indirect=True)
async def test_git_internals_and_state_written_by_a_run_do_not_fool_the_loop(armed) -> None:
    agent, root, _outside = armed
    await agent.edit(
        "LR = 0.5",
        "LR = 0.1\nimport subprocess, sys; done = subprocess.run(['git', 'commit', '-q', "
        "'--allow-empty', '-m', 'forged keep']); sys.exit(done.returncode)",
    )
    run = await agent.ok("run_experiment", description="commit from inside the run")
    if "landlock" in (await agent.ok("start_session", tag="hostile"))["isolation"]:
        assert run["status"] == "crash"  # .git is read-only to a confined run: the commit fails
    else:
        assert run["status"] == "tampered" and "session branch" in run["error"]
    decision = await agent.ok("commit_or_reset", run_id=run["run_id"])
    assert decision["decision"] == "crash"
    assert "forged keep" not in git(root, "log", "--format=%s", "-3")


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


@NEEDS_LANDLOCK
async def test_git_internals_and_git_commands_are_read_only_to_a_run(ml_project: Path, agent_for):
    root = ml_project
    config_before = (root / ".git" / "config").read_bytes()
    main_before = git(root, "rev-parse", "main")
    code = """
    import os, subprocess
    steps = {
        'config': lambda: open('.git/config', 'a').write('[core]\\n\\tfsmonitor = touch pwned\\n'),
        'HEAD': lambda: open('.git/HEAD', 'w').write('ref: refs/heads/main\\n'),
        'ref': lambda: open('.git/refs/heads/main', 'w').write('0' * 40 + '\\n'),
        'replace': lambda: os.makedirs('.git/refs/replace'),
        'hook': lambda: open('.git/hooks/post-checkout', 'w').write('#!/bin/sh\\n'),
        'index': lambda: open('.git/index', 'r+b').write(b'x'),
        'exclude': lambda: open('.git/info/exclude', 'a').write('prepare.py\\n'),
    }
    for what, step in steps.items():
        try:
            step()
            print('REACHED', what)
        except OSError as exc:
            print('refused', what, exc.strerror)
    for cmd in (['git', 'config', 'core.fsmonitor', 'touch pwned'],
                ['git', 'update-index', '--skip-worktree', 'prepare.py'],
                ['git', 'branch', '-f', 'main', 'HEAD~1'], ['git', 'stash', '-u']):
        done = subprocess.run(cmd, capture_output=True)
        print('REACHED' if done.returncode == 0 else 'refused', ' '.join(cmd[:2]))
    """
    async with agent_for(root) as agent:
        run, decision = await attack(agent, code)
        assert decision["decision"] == "keep", (run, decision)
    text = _log_text(run)
    assert "REACHED" not in text and text.count("refused") == 11, text
    assert (root / ".git" / "config").read_bytes() == config_before
    assert git(root, "rev-parse", "main") == main_before
    assert (root / "my_notes.txt").exists() and not (root / "pwned").exists()


RUN_PLANTS_NEXT_BLOB = r"""
import hashlib, os, subprocess, zlib
git_dir = subprocess.run(["git", "rev-parse", "--git-common-dir"], capture_output=True, text=True).stdout.strip()
nxt = open(__file__, "rb").read().split(b"# NEXT\n")[0].replace(b"LR = 0.9", b"LR = 0.2", 1)
kept = hashlib.sha1(b"blob %d\0" % len(nxt) + nxt).hexdigest()  # the id of what the agent sends next
forged = b"LR = 0.2\nimport os  # never measured, never checked\nprint('val_bpb: 1.100000')\n"
path = os.path.join(git_dir, "objects", kept[:2], kept[2:])
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path, "wb") as out:
    out.write(zlib.compress(b"blob %d\0" % len(forged) + forged))
"""


async def test_an_object_planted_for_the_next_candidate_is_replaced_when_it_is_committed(
    ml_project: Path, agent_for
) -> None:
    """A run plants, at the id the agent's next content will have, an object holding other content; git (and
    gitdb) write no object they already have, so the next candidate's commit would name the planted file. The
    server's own write replaces it: what is kept and landed is what was measured."""
    root = ml_project
    original = (root / "train.py").read_text()
    async with agent_for(root, {"isolation": "off"}) as agent:
        await agent.ok("start_session", tag="plant")
        await agent.experiment("baseline")
        planting = original.replace("LR = 0.5", "LR = 0.9") + "# NEXT\n" + RUN_PLANTS_NEXT_BLOB
        await agent.ok("apply_edit", content=planting)
        assert (await agent.experiment("plants the next blob"))[1]["decision"] == "discard"
        measured = original.replace("LR = 0.5", "LR = 0.2")
        await agent.ok("apply_edit", content=measured)
        assert (await agent.experiment("lower LR"))[1]["decision"] == "keep"
    git(root, "checkout", "-q", "main")
    done = run_cli("finish", "--project", str(root), "--land", "landed")
    assert done.returncode == 0, done.stdout + done.stderr
    assert git(root, "show", "landed:train.py") == measured


RUN_FORGES_HEAD = r"""
import os, subprocess
git_dir = subprocess.run(["git", "rev-parse", "--git-common-dir"], capture_output=True, text=True).stdout.strip()
kept = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
path = os.path.join(git_dir, "objects", kept[:2], kept[2:])
os.chmod(path, 0o644)
with open(path, "wb") as out:
    out.write(b"not a git object")  # corrupt (a well-formed other content naming other parents: hash mismatch)
"""


@pytest.mark.xfail(
    strict=True,
    reason="an unconfined run can rewrite the object of the best kept commit (or its tree): every later git "
    "command reading it fails ('corrupt loose object', or 'hash mismatch' for one naming other parents) and commit_or_reset can no longer decide; GitWatch "
    "snapshots configuration and history files, not the objects of the best commit, so nothing puts it back",
)
async def test_a_run_rewriting_the_best_commits_object_does_not_wedge_the_session(
    ml_project: Path, agent_for
) -> None:
    root = ml_project
    async with agent_for(root, {"isolation": "off"}) as agent:
        await agent.ok("start_session", tag="wedge")
        await agent.experiment("baseline")
        await agent.edit("LR = 0.5", "LR = 0.4")
        assert (await agent.experiment("LR 0.4"))[1]["decision"] == "keep"
        await agent.edit("LR = 0.4", "LR = 0.9\n" + RUN_FORGES_HEAD)
        run = await agent.ok("run_experiment", description="rewrites the best commit")
        while run["status"] == "running":
            run = await agent.ok("wait_experiment", run_id=run["run_id"])
        result = await agent.client.call_tool("commit_or_reset", {"run_id": run["run_id"]})
        assert not result.is_error, result.content[0].text
        await agent.edit("LR = 0.4", "LR = 0.2")
        assert (await agent.experiment("lower LR"))[1]["decision"] == "keep"
