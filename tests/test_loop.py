"""The loop through the MCP client: every rule and every refusal of issue 4, on real git repositories."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import HANG_TIMEOUT_S, git

pytestmark = pytest.mark.anyio


def tracked_state(root: Path) -> str:
    return git(root, "status", "--porcelain", "--untracked-files=no")


async def test_full_loop_keep_discard_crash_timeout_and_simpler_wins(ml_project: Path, agent_for) -> None:
    root = ml_project
    async with agent_for(root, {"time_budget": 1, "timeout": HANG_TIMEOUT_S}) as agent:
        info = await agent.ok("detect_project")
        assert info["project_type"] == "ml" and info["target_file"] == "train.py"
        started = await agent.ok("start_session", tag="t1")
        assert started["branch"] == "autoresearch/t1" and started["resumed"] is False
        # karpathy's layout: its analysis.ipynb's columns.
        assert (root / "results.tsv").read_text() == "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"

        run, decision = await agent.experiment("baseline")
        assert run["status"] == "ok" and run["value"] == 1.4 and run["memory_gb"] == 0.5
        assert decision["decision"] == "keep" and decision["reason"] == "baseline"
        base = git(root, "rev-parse", "HEAD").strip()

        await agent.edit("LR = 0.5", "LR = 0.3")
        run, decision = await agent.experiment("lower LR")
        assert run["value"] == 1.2 and run["would_keep"] is True and run["delta"] == -0.2
        assert decision["decision"] == "keep" and decision["prev"] == 1.4
        kept = git(root, "rev-parse", "HEAD").strip()
        assert kept != base and git(root, "log", "-1", "--format=%s").strip() == "experiment: lower LR"

        await agent.edit("LR = 0.3", "LR = 0.9")
        run, decision = await agent.experiment("higher LR")
        assert run["would_keep"] is False and decision["decision"] == "discard"
        assert git(root, "rev-parse", "HEAD").strip() == kept
        assert "LR = 0.3" in (root / "train.py").read_text()
        assert tracked_state(root) == ""
        # The discarded idea stays reachable.
        refs = git(root, "for-each-ref", "--format=%(refname)", "refs/autoresearch/t1/")
        assert "refs/autoresearch/t1/r3" in refs

        await agent.edit("LR = 0.3", "LR = 0.3\nraise SystemExit('boom')")
        run, decision = await agent.experiment("crash on purpose")
        assert run["status"] == "crash" and "boom" in run["log_tail"]
        assert decision["decision"] == "crash"

        await agent.edit("LR = 0.3", "LR = 0.3\nimport time; time.sleep(600)")
        run, decision = await agent.experiment("hang")
        assert run["status"] == "timeout" and decision["decision"] == "crash"

        # Same value, fewer non-blank lines: simpler wins.
        await agent.edit("WIDTH = 4\n", "")
        run, decision = await agent.experiment("remove unused WIDTH")
        assert run["delta"] == 0 and decision["decision"] == "keep" and "simpler" in decision["reason"]

        results = await agent.ok("query_results")
        assert results["total"] == 6
        assert results["counts"] == {"keep": 3, "discard": 1, "crash": 2}
        assert results["baseline"] == 1.4 and results["best"]["value"] == 1.2
        assert results["improvement"] == pytest.approx(0.2)
        assert results["experiments_since_last_keep"] == 0
        best_first = await agent.ok("query_results", order="best", limit=2)
        assert [r["value"] for r in best_first["rows"]] == [1.2, 1.2]

    tsv = (root / "results.tsv").read_text().splitlines()
    assert len(tsv) == 7
    assert [line.split("\t")[3] for line in tsv[1:]] == ["keep", "keep", "discard", "crash", "crash", "keep"]
    assert tsv[4].split("\t")[1] == "0.000000"
    assert (root / "my_notes.txt").read_text() == "the user's own untracked work\n"
    assert "autoresearch" in (root / ".git/info/exclude").read_text()
    assert not (root / ".gitignore").exists()


async def test_higher_is_better_direction(tmp_path: Path, agent_for) -> None:
    from .conftest import make_repo

    root = make_repo(
        tmp_path / "h",
        {
            "solve.py": "K = 2\nprint(f'accuracy: {K / 10}')\n",
            "autoresearch.toml": (
                'target_file = "solve.py"\nrun_command = "python3 solve.py"\nmetric_name = "accuracy"\n'
                'metric_direction = "higher_is_better"\n'
            ),
        },
    )
    async with agent_for(root) as agent:
        await agent.ok("start_session")
        await agent.experiment("baseline")
        await agent.edit("K = 2", "K = 3")
        _, decision = await agent.experiment("bigger K")
        assert decision["decision"] == "keep"
        await agent.edit("K = 3", "K = 1")
        _, decision = await agent.experiment("smaller K")
        assert decision["decision"] == "discard"
        results = await agent.ok("query_results", order="best")
        assert results["best"]["value"] == 0.3 and results["improvement"] == pytest.approx(0.1)


async def test_min_delta_and_agent_cannot_force_keep(ml_project: Path, agent_for) -> None:
    (ml_project / "autoresearch.toml").write_text("min_delta = 0.5\n")
    git(ml_project, "add", "autoresearch.toml")
    git(ml_project, "commit", "-qm", "cfg")
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session")
        await agent.experiment("baseline")
        await agent.edit("LR = 0.5", "LR = 0.3")
        run, decision = await agent.experiment("small gain")
        assert run["would_keep"] is False and decision["decision"] == "discard"
        assert "min_delta" in decision["reason"]
        # The agent can discard an improvement, never keep a non-improvement.
        await agent.edit("LR = 0.5", "LR = 0.1")
        run = await agent.ok("run_experiment", description="big gain, discarded by choice")
        decision = await agent.ok("commit_or_reset", run_id=run["run_id"], discard=True)
        assert decision["decision"] == "discard"


async def test_refusals_of_the_single_file_rule(ml_project: Path, agent_for) -> None:
    root = ml_project
    outside = root.parent / "outside.py"
    outside.write_text("secret\n")
    (root / "link_out.py").symlink_to(outside)
    (root / "link_in.py").symlink_to(root / "train.py")
    async with agent_for(root) as agent:
        await agent.ok("start_session")
        for path in [
            "prepare.py",
            "../outside.py",
            str(outside),
            "link_out.py",
            ".git/config",
            ".git/HEAD",
            "sub/../../outside.py",
            "./prepare.py",
        ]:
            message = await agent.refused("apply_edit", path=path, content="pwned\n")
            assert "single-file rule" in message, path
        # A symlink to the target is not the target either: only its real name is.
        assert "single-file rule" in await agent.refused("apply_edit", path="link_in.py", content="x\n")
        assert (root / "prepare.py").read_text() == "# fixed evaluation\nSEED = 1\n"
        assert outside.read_text() == "secret\n"
        # The target named by its exact path works.
        await agent.ok(
            "apply_edit", path="train.py", edits=[{"old_text": "WIDTH = 4", "new_text": "WIDTH = 4"}]
        )
        await agent.ok(
            "apply_edit",
            path=str(root / "train.py"),
            edits=[{"old_text": "WIDTH = 4", "new_text": "WIDTH = 4"}],
        )


async def test_edit_validation_messages(ml_project: Path, agent_for) -> None:
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session")
        assert "exactly one of" in await agent.refused("apply_edit")
        assert "exactly one of" in await agent.refused("apply_edit", content="x", edits=[])
        assert "does not occur" in await agent.refused(
            "apply_edit", edits=[{"old_text": "nope", "new_text": "x"}]
        )
        assert "occurs 3 times" in await agent.refused(
            "apply_edit", edits=[{"old_text": "print", "new_text": "x"}]
        )
        assert "changed since you read it" in await agent.refused(
            "apply_edit", content="x", expected_sha256="0" * 64
        )
        view = await agent.ok("read_target", start_line=2, end_line=3)
        assert view["content"] == 'WIDTH = 4\nprint("step 1 loss 2.0")\n' and view["total_lines"] == 5
        edit = await agent.ok(
            "apply_edit",
            edits=[{"old_text": "WIDTH = 4", "new_text": "WIDTH = 8"}],
            expected_sha256=view["sha256"],
        )
        assert edit["lines_added"] == 1 and edit["lines_removed"] == 1 and "+WIDTH = 8" in edit["diff"]
        assert "outside the file" in await agent.refused("read_target", start_line=50)


async def test_baseline_first_and_no_unchanged_runs(ml_project: Path, agent_for) -> None:
    async with agent_for(ml_project) as agent:
        assert "start_session first" in await agent.refused("read_target")
        await agent.ok("start_session")
        await agent.edit("LR = 0.5", "LR = 0.2")
        assert "unmodified baseline" in await agent.refused("run_experiment", description="x")
        await agent.edit("LR = 0.2", "LR = 0.5")
        await agent.experiment("baseline")
        assert "unchanged since the best kept commit" in await agent.refused(
            "run_experiment", description="x"
        )
        assert "description is empty" in await agent.refused("run_experiment", description="   ")


async def test_direct_writes_to_other_files_are_refused_before_the_run(ml_project: Path, agent_for) -> None:
    root = ml_project
    async with agent_for(root) as agent:
        await agent.ok("start_session")
        await agent.experiment("baseline")
        await agent.edit("LR = 0.5", "LR = 0.3")
        (root / "README.md").write_text("changed by the agent's own editor\n")
        message = await agent.refused("run_experiment", description="sneaky")
        assert "README.md" in message and "Only train.py may change" in message
        git(root, "checkout", "--", "README.md")
        (root / "prepare.py").write_text("# evaluator rewritten to cheat\n")
        message = await agent.refused("run_experiment", description="sneaky")
        assert "read-only files changed" in message and "prepare.py" in message
        git(root, "checkout", "--", "prepare.py")
        run = await agent.ok("run_experiment", description="honest")
        assert run["status"] == "ok"


@pytest.mark.parametrize(
    ("script", "victim"),
    [
        ("open('prepare.py', 'w').write('cheat\\n')", "prepare.py"),
        ("open('README.md', 'a').write('more\\n')", "README.md"),
        ("open('train.py', 'a').write('# self-modified\\n')", "train.py"),
        ("open('results.tsv', 'a').write('fake\\tval_bpb\\t0.000001\\tkeep\\tforged\\n')", "results.tsv"),
        ("open('.autoresearch/autoresearch.jsonl', 'a').write('{}\\n')", ".autoresearch/autoresearch.jsonl"),
    ],
)
@pytest.mark.parametrize("isolation", ["off", "auto"])
async def test_run_time_tampering_is_detected_and_restored(
    ml_project: Path, agent_for, script: str, victim: str, isolation: str
) -> None:
    """Unconfined, the write happens and is caught and undone after the run; confined (Landlock), it is refused
    by the kernel and the result says which setting would allow it. Either way nothing of it stays."""
    root = ml_project
    async with agent_for(root, {"isolation": isolation}) as agent:
        started = await agent.ok("start_session")
        assert started["isolation"].startswith(
            ("namespaces + landlock", "landlock") if isolation == "auto" else "none"
        )
        await agent.experiment("baseline")
        before = {name: (root / name).read_bytes() for name in ("prepare.py", "README.md")}
        tsv_before = (root / "results.tsv").read_text()
        await agent.edit("LR = 0.5", f"LR = 0.1\n{script}")
        run = await agent.ok("run_experiment", description="tamper")
        if isolation == "off":
            assert run["status"] == "tampered" and victim in run["error"]
        else:
            # Refused by the view's read-only mounts (or by Landlock where there are no namespaces).
            assert run["status"] == "crash"
            assert "Read-only file system" in run["log_tail"] or "Permission denied" in run["log_tail"]
            assert "writable" in run["error"] and victim.split("/")[-1] in run["error"]
        assert run["would_keep"] is False
        # Until the decision only the target's index entry may lag; every other tracked file is restored.
        assert [line for line in tracked_state(root).splitlines() if not line.endswith("train.py")] == []
        for name, content in before.items():
            assert (root / name).read_bytes() == content
        assert (root / "results.tsv").read_text() == tsv_before
        decision = await agent.ok("commit_or_reset", run_id=run["run_id"])
        assert decision["decision"] == "crash"
        assert tracked_state(root) == ""
        rows = (root / "results.tsv").read_text().splitlines()
        assert len(rows) == 3 and "forged" not in "".join(rows)


async def test_dirty_tree_at_start_is_refused_with_file_list(ml_project: Path, agent_for) -> None:
    (ml_project / "prepare.py").write_text("uncommitted work\n")
    async with agent_for(ml_project) as agent:
        message = await agent.refused("start_session")
        assert "prepare.py" in message and "a person must commit or stash them" in message.lower()
    assert (ml_project / "prepare.py").read_text() == "uncommitted work\n"
    assert git(ml_project, "branch", "--show-current").strip() == "main"


async def test_untracked_files_survive_every_discard(ml_project: Path, agent_for) -> None:
    root = ml_project
    (root / "data").mkdir()
    (root / "data" / "cache.bin").write_bytes(b"\x00\x01" * 1000)
    async with agent_for(root) as agent:
        await agent.ok("start_session")
        await agent.experiment("baseline")
        for value in ("0.9", "0.8"):
            await agent.edit("LR = 0.5", f"LR = {value}")
            _, decision = await agent.experiment(f"lr {value}")
            assert decision["decision"] == "discard"
    assert (root / "my_notes.txt").read_text() == "the user's own untracked work\n"
    assert (root / "data" / "cache.bin").read_bytes() == b"\x00\x01" * 1000


async def test_pending_decision_blocks_edit_and_run(ml_project: Path, agent_for) -> None:
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session")
        run = await agent.ok("run_experiment", description="baseline")
        assert "decide run r1 first" in await agent.refused("apply_edit", content="x\n")
        assert "decide run r1 first" in await agent.refused("run_experiment", description="again")
        assert "not decided yet" in await agent.refused("log_result", run_id=run["run_id"], notes="n")
        await agent.ok("commit_or_reset", run_id="r1")
        again = await agent.ok("commit_or_reset", run_id="r1")
        assert again["decision"] == "keep" and again["reason"] == "already decided"
        noted = await agent.ok("log_result", run_id="r1", notes="hypothesis: none; it is the baseline")
        assert noted["added"] == "hypothesis: none; it is the baseline" and noted["notes_count"] == 1
        results = await agent.ok("query_results")
        assert results["rows"][0]["notes"] == ["hypothesis: none; it is the baseline"]
        assert results["rows"][0]["value"] == 1.4  # notes never change values


async def test_max_experiments_is_enforced(ml_project: Path, agent_for) -> None:
    (ml_project / "autoresearch.toml").write_text("max_experiments = 2\n")
    git(ml_project, "add", "-A")
    git(ml_project, "commit", "-qm", "cfg")
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session")
        await agent.experiment("baseline")
        await agent.edit("LR = 0.5", "LR = 0.4")
        await agent.experiment("one")
        await agent.edit("LR = 0.4", "LR = 0.3")
        assert "max_experiments (2) reached" in await agent.refused("run_experiment", description="two")


async def test_head_moved_off_the_session_branch_is_refused(ml_project: Path, agent_for) -> None:
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session")
        await agent.experiment("baseline")
        git(ml_project, "checkout", "-q", "main")
        message = await agent.refused("run_experiment", description="x")
        assert "not on the session branch autoresearch/" in message
        git(ml_project, "checkout", "-q", "-")
        git(ml_project, "commit", "-q", "--allow-empty", "-m", "user commit on the session branch")
        assert "moved" in await agent.refused("run_experiment", description="x")


async def test_resume_and_unrelated_branch(ml_project: Path, agent_for) -> None:
    git(ml_project, "branch", "autoresearch/taken")
    async with agent_for(ml_project) as agent:
        message = await agent.refused("start_session", tag="taken")
        assert "already exists" in message and "another tag" in message
        assert "not usable" in await agent.refused("start_session", tag="../../evil")
        await agent.ok("start_session", tag="mine")
        await agent.experiment("baseline")
    async with agent_for(ml_project) as agent:
        resumed = await agent.ok("start_session")
        assert resumed["resumed"] is True and resumed["tag"] == "mine"
        assert resumed["best_value"] == 1.4 and resumed["experiments"] == 1
        assert "baseline" in resumed["briefing"]
        # Tools work after a restart without calling start_session again.
    async with agent_for(ml_project) as agent:
        assert (await agent.ok("query_results"))["total"] == 1


async def test_second_server_on_the_same_project_is_refused(ml_project: Path, agent_for) -> None:
    async with agent_for(ml_project) as first, agent_for(ml_project) as second:
        await first.ok("start_session")
        message = await second.refused("start_session")
        assert "another autoresearch server holds this project" in message and "pid" in message
    async with agent_for(ml_project) as third:  # the lock was released with the first server
        assert (await third.ok("start_session"))["resumed"] is True


async def test_two_clients_of_one_server_cannot_run_concurrently(ml_project: Path) -> None:
    from mcp import Client

    from mcp_autoresearch.adapters.server import create_server
    from mcp_autoresearch.session.workspace import Workspace

    from .conftest import Agent

    (ml_project / "train.py").write_text(
        (ml_project / "train.py").read_text().replace("LR = 0.5", "import time; time.sleep(1.5)\nLR = 0.5")
    )
    git(ml_project, "commit", "-qam", "slow")
    server = create_server(Workspace(ml_project))
    async with Client(server) as c1, Client(server) as c2:
        a, b = Agent(c1), Agent(c2)
        await a.ok("start_session")
        run = await a.ok("run_experiment", description="baseline", wait_s=0)
        assert run["status"] == "running"
        assert "in flight" in await b.refused("run_experiment", description="second")
        assert "in flight" in await b.refused("apply_edit", content="x")
        done = await b.until_done(run["run_id"])  # however long the machine takes
        assert done["status"] == "ok"


async def test_untracked_target_and_no_git(tmp_path: Path, agent_for) -> None:
    from .conftest import make_repo

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "train.py").write_text("print('val_bpb: 1')\n")
    (plain / "prepare.py").write_text("")
    async with agent_for(plain) as agent:
        assert "not inside a git repository" in await agent.refused("start_session")
    repo = make_repo(tmp_path / "r", {"README.md": "x"})
    (repo / "train.py").write_text("print('val_bpb: 1')\n")
    (repo / "prepare.py").write_text("")
    async with agent_for(repo) as agent:
        assert "not tracked by git" in await agent.refused("start_session")


async def test_rules_cannot_change_between_server_lives(ml_project: Path, agent_for) -> None:
    """An untracked CLAUDE.md can be edited by anyone; a resumed session must not measure by new rules."""
    root = ml_project
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="fixed")
        await agent.experiment("baseline")
    (root / "CLAUDE.md").write_text("## autoresearch\n- run_command: echo 'val_bpb: 0.000001'\n")
    async with agent_for(root) as agent:
        message = await agent.refused("start_session")
        assert "configuration changed" in message and "run_command" in message and "another tag" in message
        assert "configuration changed" in await agent.refused("query_results")
    (root / "CLAUDE.md").unlink()
    async with agent_for(root) as agent:
        assert (await agent.ok("start_session"))["resumed"] is True


async def test_outside_writes_to_the_servers_files_are_undone(ml_project: Path, agent_for) -> None:
    root = ml_project
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="own")
        await agent.experiment("baseline")
        tsv = (root / "results.tsv").read_text()
        state_file = root / ".autoresearch" / "sessions" / "own.json"
        state = state_file.read_text()
        # The agent's shell forges a row and a better best value between two calls.
        with (root / "results.tsv").open("a") as handle:
            handle.write("abcdef0\tval_bpb\t0.000001\tkeep\tforged\n")
        state_file.write_text(state.replace('"value": 1.4', '"value": 0.001'))
        await agent.edit("LR = 0.5", "LR = 0.4")
        run = await agent.ok("run_experiment", description="after forgery")
        assert run["best_value"] == 1.4
        assert (root / "results.tsv").read_text() == tsv
        assert '"value": 0.001' not in state_file.read_text()


@pytest.mark.parametrize("layout", ["unicode path", "monorepo subdirectory"])
async def test_unusual_layouts(tmp_path: Path, agent_for, layout: str) -> None:
    from .conftest import make_repo

    body = "K = 5\nprint(f'score: {K}')\n"
    if layout == "unicode path":
        target = "src dir/mödel file.py"
        repo = make_repo(
            tmp_path / "u",
            {
                target: body,
                "autoresearch.toml": (
                    f'target_file = "{target}"\nrun_command = "python3 \\"{target}\\""\nmetric_name = "score"\n'
                ),
            },
        )
        (repo / target).chmod(0o755)
        git(repo, "commit", "-qam", "executable")
        project = repo
    else:
        repo = make_repo(
            tmp_path / "m",
            {
                "other/readme.txt": "x\n",
                "services/ml/model.py": body,
                "services/ml/autoresearch.toml": (
                    'target_file = "model.py"\nrun_command = "python3 model.py"\nmetric_name = "score"\n'
                ),
            },
        )
        target, project = "model.py", repo / "services" / "ml"
    async with agent_for(project) as agent:
        await agent.ok("start_session", tag="layout")
        await agent.experiment("baseline")
        await agent.edit("K = 5", "K = 2")
        _, kept = await agent.experiment("smaller K")
        await agent.edit("K = 2", "K = 7")
        _, discarded = await agent.experiment("bigger K")
    assert (kept["decision"], discarded["decision"]) == ("keep", "discard")
    assert git(repo, "status", "--porcelain", "--untracked-files=no") == ""
    assert "K = 2" in (project / target).read_text()
    assert git(repo, "fsck", "--no-progress") == ""
    if layout == "unicode path":
        assert git(repo, "ls-tree", "HEAD", "src dir/").startswith("100755")


async def test_readonly_directory_protects_every_file_below(ml_project: Path, agent_for) -> None:
    root = ml_project
    (root / "evaluation").mkdir()
    (root / "evaluation" / "data.csv").write_text("1,2\n")  # untracked, so only the hash protects it
    (root / "autoresearch.toml").write_text('readonly_files = ["prepare.py", "evaluation"]\n')
    git(root, "add", "autoresearch.toml")
    git(root, "commit", "-qm", "cfg")
    async with agent_for(root) as agent:
        await agent.ok("start_session")
        await agent.experiment("baseline")
        (root / "evaluation" / "data.csv").write_text("9,9\n")
        await agent.edit("LR = 0.5", "LR = 0.4")
        message = await agent.refused("run_experiment", description="x")
        assert "evaluation/data.csv" in message


async def test_target_with_end_of_line_conversion_is_committed_by_git(ml_project: Path, agent_for) -> None:
    """With a `text eol=crlf` attribute git stores LF and checks out CRLF; the candidate must be what git stores."""
    root = ml_project
    (root / ".gitattributes").write_text("train.py text eol=crlf\n")
    git(root, "add", ".gitattributes")
    git(root, "commit", "-qm", "attributes")
    (root / "train.py").unlink()
    git(root, "checkout", "--", "train.py")  # checked out again: CRLF in the work tree, LF in git
    assert b"\r\n" in (root / "train.py").read_bytes()
    async with agent_for(root) as agent:
        await agent.ok("start_session")
        await agent.experiment("baseline")
        await agent.edit("LR = 0.5", "LR = 0.3")
        _, decision = await agent.experiment("lower LR")
        assert decision["decision"] == "keep"
    stored = subprocess.run(["git", "cat-file", "-p", "HEAD:train.py"], cwd=root, capture_output=True).stdout
    assert b"\r\n" not in stored and b"LR = 0.3" in stored
    assert git(root, "status", "--porcelain", "--untracked-files=no") == ""


async def test_jsonl_has_the_original_tools_shape(ml_project: Path, agent_for) -> None:
    import json

    async with agent_for(ml_project, {"time_budget": 1, "timeout": HANG_TIMEOUT_S}) as agent:
        await agent.ok("start_session")
        await agent.experiment("baseline")
        await agent.edit("LR = 0.5", "LR = 0.5\nimport time; time.sleep(600)")
        await agent.experiment("hang")
    events = [
        json.loads(line)
        for line in (ml_project / ".autoresearch/autoresearch.jsonl").read_text().splitlines()
    ]
    assert [e["action"] for e in events] == [
        "session_start",
        "experiment_start",
        "experiment_done",
        "experiment_start",
        "experiment_done",
    ]
    for event in events:
        assert set(event) == {"tool", "action", "status", "details", "local_time", "timestamp"}
        assert event["tool"] == "autoresearch" and event["status"] in ("success", "fail")
    baseline, hang = events[2], events[4]
    for key in (
        "status",
        "metric",
        "value",
        "prev",
        "delta",
        "commit",
        "description",
        "memory_gb",
        "tag",
        "error",
    ):
        assert key in baseline["details"] and key in hang["details"]
    assert baseline["status"] == "success" and baseline["details"]["error"] is None
    assert hang["status"] == "fail" and hang["details"]["status"] == "crash"
    assert hang["details"]["error"] == "timeout" and "timeout" in hang["details"]["error_detail"]


async def test_decision_never_moves_a_branch_the_user_checked_out(ml_project: Path, agent_for) -> None:
    root = ml_project
    main_before = git(root, "rev-parse", "main").strip()
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="mine")
        await agent.experiment("baseline")
        await agent.edit("LR = 0.5", "LR = 0.9")
        run = await agent.ok("run_experiment", description="worse")
        assert run["would_keep"] is False
        git(root, "checkout", "-q", "-f", "main")  # the user switches branches while the run waits
        message = await agent.refused("commit_or_reset", run_id=run["run_id"])
        assert "not on the session branch" in message
        assert git(root, "rev-parse", "main").strip() == main_before
        git(root, "checkout", "-q", "autoresearch/mine")
        decision = await agent.ok("commit_or_reset", run_id=run["run_id"])
        assert decision["decision"] == "discard"
        git(root, "checkout", "-q", "main")
        train_on_main = (root / "train.py").read_text()
        assert "not on the session branch" in await agent.refused("apply_edit", content="x = 1\n")
        assert (root / "train.py").read_text() == train_on_main
    assert git(root, "rev-parse", "main").strip() == main_before
    assert git(root, "status", "--porcelain", "--untracked-files=no") == ""


async def test_a_users_edit_during_a_run_is_restored_but_kept(ml_project: Path, agent_for) -> None:
    root = ml_project
    (root / "run.log").write_text("the original tool's last log\n")  # untracked, the user's
    # The run stands in for a person editing during a long run: unconfined, so the write happens.
    async with agent_for(root, {"isolation": "off"}) as agent:
        started = await agent.ok("start_session", tag="keepcopy")
        assert any("run.log" in line for line in started["recovered"])
        assert (root / ".autoresearch" / "run-previous.log").read_text() == "the original tool's last log\n"
        await agent.experiment("baseline")
        await agent.edit(
            "LR = 0.5", "LR = 0.4\nopen('README.md', 'w').write('an edit made during the run\\n')"
        )
        run = await agent.ok("run_experiment", description="touches README")
        assert run["status"] == "tampered" and ".autoresearch/tampered/r2/" in run["error"]
    assert (root / "README.md").read_text() == "demo\n"
    assert (
        root / ".autoresearch" / "tampered" / "r2" / "README.md"
    ).read_text() == "an edit made during the run\n"
