"""Review 17: attacks on the day's change (fresh outputs known across restarts, owner rights given back before a
run, the checks of outputs outside the project, slots' writable entries), as the target's code would make them:
each a real run through the real server (the MCP client) in the real sandbox. Each test here failed before its
fix."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from mcp_autoresearch.sandbox.policy import probe_isolation

from .conftest import git
from .helpers.needs import require
from .test_attacks_review15 import answering_in, computes_nothing
from .test_eval_stage import candidate
from .test_eval_stage import project as stage_project

pytestmark = pytest.mark.anyio

ISOLATION = probe_isolation("auto")


async def test_a_link_planted_above_a_nested_entry_never_has_the_server_chmod_a_folder_elsewhere(
    tmp_path: Path, agent_for
) -> None:
    """Before every run the server gives its owner's rights back on each `writable` and `persistent` folder
    (`give_rights_back`). An entry beneath another one (`out/tool/cache` below the output `out`) lies in a folder
    the run may write: the run replaces `out/tool` by a link to a folder of the user's, and the server, opening
    the entry without following a link at its last component only, went through it and made the user's
    read-only `cache` writable (0o555 -> 0o755). Nothing above an entry that a run may write is followed."""
    victim = tmp_path / "mine"
    (victim / "cache").mkdir(parents=True)
    (victim / "cache" / "data.txt").write_text("the user's, kept read-only on purpose\n")
    os.chmod(victim / "cache", 0o555)
    root = stage_project(tmp_path, 'persistent = ["out/tool/cache"]\n')
    code = f"""
    import os
    os.symlink({str(victim)!r}, "out/tool")
    """
    try:
        async with agent_for(root) as agent:
            await candidate(agent, code)
            await agent.ok("apply_edit", content="X = 3\nprint(X)\n")
            after, _ = await agent.experiment("any later run")
        assert after["status"] == "ok", after
        assert stat.S_IMODE(os.stat(victim / "cache").st_mode) == 0o555
    finally:
        os.chmod(victim / "cache", 0o755)


# The scorer reads the answer where the objective leaves it (a scratch folder outside the project, named in the
# scorer, not on the evaluation's command line) and compares it with the hidden key (3): lower is better.
PATH_SCORER = """\
key = float(open("key.txt").read())
print(f"score: {{abs(key - float(open({answer!r}).read().split()[0])):.6f}}")
"""


@pytest.mark.parametrize(
    "leads", ["/proc/self/cwd/key.txt", "/proc/thread-self/cwd/key.txt"], ids=["self", "thread-self"]
)
async def test_a_link_to_hidden_data_through_the_evaluations_own_working_directory(
    tmp_path: Path, agent_for, leads: str
) -> None:
    """A link to hidden data left in a writable folder outside the project is refused before the evaluation
    (`link_into_hidden`, review 15): the server resolves the link and compares where it leads with the hidden
    paths. A link through `/proc/self/cwd` leads to a different place for each process: the server resolved it
    through its own working directory (any folder but the project's), the scorer, started in the project, reads
    the hidden key through it and scores the key as the run's answer: perfect. A link through /proc is refused."""
    require(ISOLATION.namespaces, "CI must give runs a private view", "namespaces are unavailable here")
    scratch = Path(tempfile.mkdtemp(prefix=".autoresearch-test-scratch-", dir=Path.home()))
    answer = str(scratch / "answer.txt")
    try:
        root = stage_project(tmp_path, 'hidden = ["key.txt"]\n', scorer=PATH_SCORER.format(answer=answer))
        config = (root / "autoresearch.toml").read_text()
        config = config.replace('writable = ["out"]', f'writable = ["out", "{scratch}"]')
        config = config.replace("python3 objective.py > out/answer.txt", "python3 objective.py")
        config = config.replace("scorer.py out/answer.txt", "scorer.py")
        (root / "autoresearch.toml").write_text(config)
        (root / "objective.py").write_text(f"X = 5\nopen({answer!r}, 'w').write(str(X))\n")
        git(root, "commit", "-qam", "the answer goes to a scratch folder the scorer knows")
        (root / "key.txt").write_text("3\n")
        assert os.getcwd() != str(
            root
        )  # (the server runs in this process: its working directory is elsewhere)
        async with agent_for(root) as agent:
            await agent.ok("start_session")
            _, base = await agent.experiment("baseline")
            assert base["decision"] == "keep", base
            await agent.ok(
                "apply_edit", content=f"import os\nos.unlink({answer!r})\nos.symlink({leads!r}, {answer!r})\n"
            )
            run, decision = await agent.experiment("the key as the answer")
        assert run["value"] != 0.0, (run, decision)
        assert run["status"] == "metric_error" and "answer.txt" in run["error"], run
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_a_writable_entry_of_the_work_tree_by_a_linked_full_path_is_refused_with_slots(
    tmp_path: Path,
) -> None:
    """With slots a `writable` entry naming the work tree's folder by its full path is refused (every slot's run
    was handed the work tree's `out/`, read-only there): spelt through a link to the project (a home folder
    reached through a link, say), it was accepted, and every honest run failed as before."""
    from mcp_autoresearch.errors import ConfigError
    from mcp_autoresearch.setup.project import load_project

    from .test_slots import project as slots_project
    from .test_slots import settings

    root = slots_project(tmp_path)
    linked = tmp_path / "linked"
    linked.symlink_to(root, target_is_directory=True)
    with pytest.raises(ConfigError, match=r"full path.*write it relative to the project \('out'\)"):
        load_project(str(root), settings(writable=[str(linked / "out")]))


STDIN_SCORER = """\
import sys
print(f"score: {float(sys.stdin.read().split()[0]):.6f}")
"""


async def test_an_output_outside_the_project_handed_to_the_scorer_by_a_redirection(
    tmp_path: Path, agent_for
) -> None:
    """What the evaluation's command names beneath a writable folder outside the project must be this run's
    (review 15: a candidate that computed nothing was scored on the best's answer still lying there). The words of
    the command are read as paths: `scorer.py <{scratch}/answer.txt` (a redirection written without a space) named
    `<{scratch}/answer.txt`, no path at all, so the best's answer was scored again for a run that wrote nothing."""
    scratch = Path(tempfile.mkdtemp(prefix=".autoresearch-test-scratch-", dir=Path.home()))
    try:
        root = answering_in(scratch, stage_project(tmp_path, scorer=STDIN_SCORER), handed="<{answer}")
        await computes_nothing(root, agent_for)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


async def test_a_target_read_in_parts_whose_lines_end_otherwise_than_with_a_newline(
    ml_project: Path, agent_for
) -> None:
    """read_target numbers lines as `str.splitlines` splits them (a carriage return, a form feed, U+2028 end a line
    too) but counted the lines of a part cut to the answer's bound by its newlines: a target of old Mac line ends
    (CR alone) longer than the bound was answered as `line_cut` ("the first line alone is longer") with
    hundreds of lines in `content` and `end_line` 1, so the next part (from line 2) repeated them all."""
    lines = [f"A{i} = {i}\r" for i in range(20_000)] + ["print('val_bpb: 1.0')\r"]
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session", tag="crlines")
        await agent.ok("run_experiment", description="baseline", decide=True)
        await agent.ok("apply_edit", content="".join(lines))
        view = await agent.ok("read_target")
        assert view["truncated"] and not view["line_cut"], view | {"content": view["content"][:40]}
        end = view["end_line"]
        assert view["content"] == "".join(lines[:end])
        rest = await agent.ok("read_target", start_line=end + 1)
        assert rest["content"] == "".join(lines[end : rest["end_line"]]), rest | {"content": ""}
        assert rest["content"].startswith(f"A{end} = {end}\r"), rest | {"content": rest["content"][:40]}


# The checks run the target's code again after the evaluation: there it writes an answer of its choosing where
# the holdout reads (the scratch folder outside the project).
REWRITE_IN_CHECKS = """
if sys.argv[1:] == ["check"]:
    open({answer!r}, "w").write("0.5\\n")
"""


async def test_the_holdout_never_reads_an_answer_outside_the_project_the_checks_rewrote(
    tmp_path: Path, agent_for
) -> None:
    """Inside the project the holdout refuses outputs changed after the measurement (the checks, the target's
    code, ran between: review 14). An answer in a scratch folder outside the project is not recorded: the checks
    rewrite it (0.5, not the 5 the run computed) and the holdout, the user's guard against overfitting, records
    the checks' answer as the keep's."""
    from .test_attacks_outputs import eval_project, holdout_records

    scratch = Path(tempfile.mkdtemp(prefix=".autoresearch-test-scratch-", dir=Path.home()))
    try:
        root = answering_in(scratch, eval_project(tmp_path), more=REWRITE_IN_CHECKS)
        async with agent_for(root) as agent:
            await agent.ok("start_session", tag="x")
            run, decision = await agent.experiment("baseline")
        assert run["status"] == "ok" and run["value"] == 5.0, run
        assert decision["decision"] == "keep", decision
        records = holdout_records(root, "x")
        assert [r["run_id"] for r in records] == ["r1"]
        assert records[0]["holdout"] is None and "changed after the run" in records[0]["error"], records[0]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
