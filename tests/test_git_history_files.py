"""Issue 24, item 2: the files that change what git considers history (`info/grafts`, `shallow`,
`objects/info/alternates`) planted by a run. The server compares them after every run like git's configuration
and puts them back; `finish` and `clean` ignore grafts and refuse while `shallow` or alternates exist, naming
the file, so a graft making the user's commit a parent of the session's best can never fast-forward the user's
branch around that commit. Real git, the real server through the MCP client, the real CLI; unconfined
(`isolation = off`) and confined (where Landlock is missing the two are the same).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import git, make_repo, run_cli

pytestmark = pytest.mark.anyio

GIT = (
    "import subprocess\n"
    "def g(*a):\n"
    "    return subprocess.run(['git', *a], capture_output=True, text=True, check=True).stdout.strip()\n"
)


def users_branch(root: Path) -> str:
    """A branch `other` with a commit of the user's that the session never sees; returns that commit."""
    git(root, "checkout", "-q", "-b", "other")
    (root / "on-other.txt").write_text("the user's own work on other\n")
    git(root, "add", "on-other.txt")
    git(root, "commit", "-qm", "the user's commit")
    commit = git(root, "rev-parse", "HEAD").strip()
    git(root, "checkout", "-q", "main")
    return commit


def graft_line(root: Path, child: str, *parents: str) -> str:
    return " ".join(git(root, "rev-parse", name).strip() for name in (child, *parents)) + "\n"


@pytest.mark.parametrize("isolation", ["off", "auto"])
async def test_grafts_planted_by_a_run_never_land_around_the_users_commit(
    ml_project: Path, agent_for, isolation: str
) -> None:
    root = ml_project
    users = users_branch(root)
    grafts = root / ".git" / "info" / "grafts"
    async with agent_for(root, {"isolation": isolation}) as agent:
        started = await agent.ok("start_session", tag="g")
        confined = "landlock" in started["isolation"]
        await agent.experiment("baseline")
        # The candidate (already committed when it runs) gets the user's commit as a second parent.
        code = GIT + (
            "open('.git/info/grafts', 'w').write("
            f"g('rev-parse', 'HEAD') + ' ' + g('rev-parse', 'HEAD^') + ' {users}\\n')"
        )
        await agent.edit("LR = 0.5", "LR = 0.2\n" + code)
        run, decision = await agent.experiment("graft the user's commit in")
        if confined:
            assert run["status"] == "crash", run  # refused: EACCES (Landlock) or EROFS (the private view)
            assert "Permission denied" in run["log_tail"] or "Read-only file system" in run["log_tail"]
        else:
            assert run["status"] == "tampered", run
            assert f"git history file {grafts} (restored)" in run["error"]
        assert decision["decision"] == "crash" and not grafts.exists()
        if not confined:  # the run's version is kept for the person to look at
            kept = root / ".autoresearch" / "tampered" / decision["run_id"] / "git"
            assert users in "".join(p.read_text() for p in kept.iterdir())
        await agent.edit("LR = 0.5", "LR = 0.2")
        run, decision = await agent.experiment("honest")
        assert decision["decision"] == "keep"
    best = git(root, "rev-parse", "autoresearch/g").strip()
    # Later (a daemon of the run, or the run just before the server was killed) the graft is back.
    grafts.write_text(graft_line(root, best, f"{best}^", users))
    git(root, "merge-base", "--is-ancestor", users, best)  # to git as the user runs it, users is an ancestor
    landed = run_cli("finish", "--project", str(root), "--land", "other")
    assert landed.returncode == 2 and "other has diverged" in landed.stderr, landed
    assert f"note: {grafts} is ignored" in landed.stdout
    assert git(root, "rev-parse", "other").strip() == users
    assert "can fast-forward: other" not in run_cli("finish", "--project", str(root)).stdout
    # The same graft on the user's branch does not hide the session's unlanded commit from clean.
    grafts.write_text(graft_line(root, "other", "other^", best))
    git(root, "checkout", "-q", "main")
    plan = run_cli("clean", "--project", str(root), "--tag", "g")
    assert plan.returncode == 0 and "kept commit(s) are on no other branch" in plan.stdout, plan
    assert f"note: {grafts} is ignored" in plan.stdout


@pytest.mark.parametrize("isolation", ["off", "auto"])
async def test_shallow_and_alternates_planted_by_a_run_are_restored_and_block_landing(
    ml_project: Path, agent_for, isolation: str, tmp_path: Path
) -> None:
    root = ml_project
    shallow = root / ".git" / "shallow"
    alternates = root / ".git" / "objects" / "info" / "alternates"
    store = tmp_path / "elsewhere" / "objects"
    store.mkdir(parents=True)
    async with agent_for(root, {"isolation": isolation}) as agent:
        started = await agent.ok("start_session", tag="s")
        confined = "landlock" in started["isolation"]
        await agent.experiment("baseline")
        code = GIT + (
            "open('.git/shallow', 'w').write(g('rev-parse', 'HEAD') + '\\n')\n"
            f"open('.git/objects/info/alternates', 'w').write('{store}\\n')"
        )
        await agent.edit("LR = 0.5", "LR = 0.2\n" + code)
        run, decision = await agent.experiment("cut history and borrow objects")
        if not confined:
            assert run["status"] == "tampered", run
            assert f"git history file {shallow} (restored)" in run["error"]
            assert f"git history file {alternates} (restored)" in run["error"]
        assert decision["decision"] == "crash" and not shallow.exists() and not alternates.exists()
        await agent.edit("LR = 0.5", "LR = 0.2")
        assert (await agent.experiment("honest"))[1]["decision"] == "keep"
    main = git(root, "rev-parse", "main").strip()
    git(root, "checkout", "-q", "main")
    for planted, content in ((shallow, main + "\n"), (alternates, f"{store}\n")):
        planted.write_text(content)
        landed = run_cli("finish", "--project", str(root), "--land", "main")
        assert (
            landed.returncode == 2
            and f"{planted} exists" in landed.stderr
            and "Traceback" not in landed.stderr
        )
        assert "Nothing was changed" in landed.stderr and git(root, "rev-parse", "main").strip() == main
        removed = run_cli("clean", "--project", str(root), "--tag", "s", "--yes")
        assert removed.returncode == 2 and f"{planted} exists" in removed.stderr
        assert git(root, "rev-parse", "autoresearch/s").strip() != main  # nothing was removed
        planted.unlink()
    assert run_cli("finish", "--project", str(root), "--land", "main").returncode == 0


SLOT_TARGET = "X = 0\n"
SLOT_EVALUATE = "import runpy\nprint(f\"score: {abs(runpy.run_path('params.py')['X'] - 3):.6f}\")\n"


@pytest.mark.parametrize("isolation", ["off", "auto"])
async def test_grafts_planted_from_a_slot_are_restored(
    tmp_path: Path, agent_for, isolation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTORESEARCH_SLOTS_DIR", str(tmp_path / "slots-home"))
    root = make_repo(tmp_path / "proj", {"params.py": SLOT_TARGET, "evaluate.py": SLOT_EVALUATE})
    users = users_branch(root)
    grafts = root / ".git" / "info" / "grafts"
    settings = {
        "target_file": "params.py",
        "run_command": "python3 evaluate.py",
        "metric_name": "score",
        "readonly_files": ["evaluate.py"],
        "keep_rule": "greedy",
        "slots": 2,
        "slot_devices": [],
        "isolation": isolation,
    }
    # The slot's checkout is not the user's tree: the run names the user's repository by its path.
    plant = GIT + (
        f"head = g('-C', {str(root)!r}, 'rev-parse', 'autoresearch/gs')\n"
        f"open({str(grafts)!r}, 'w').write(head + ' {users}\\n')\n"
    )
    async with agent_for(root, settings) as agent:
        started = await agent.ok("start_session", tag="gs")
        confined = "landlock" in started["isolation"]
        await agent.ok("run_experiment", description="baseline")
        await agent.until_done()
        assert (await agent.ok("commit_or_reset"))["decision"] == "keep"
        await agent.ok("apply_edit", content=plant + "X = 2\n")
        await agent.ok("run_experiment", description="graft from a slot")
        run = await agent.until_done()
        if not confined:
            assert run["status"] == "tampered" and f"git history file {grafts} (restored)" in run["error"], (
                run
            )
        assert (await agent.ok("commit_or_reset"))["decision"] == "crash"
        assert not grafts.exists()
