"""Review 15: attacks as the target's code would make them (the candidate the agent edits and the server runs),
each a real run through the real server (the MCP client) in the real sandbox."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from mcp_autoresearch.sandbox.policy import probe_isolation

from .conftest import git
from .helpers.needs import require
from .test_eval_stage import candidate
from .test_eval_stage import project as stage_project

pytestmark = pytest.mark.anyio

ISOLATION = probe_isolation("auto")

# The scorer compares the run's answer with the hidden key (3): the score is how far off it is (lower is better).
KEY_SCORER = """\
import sys
key = float(open("key.txt").read())
print(f"score: {abs(key - float(open(sys.argv[1]).read().split()[0])):.6f}")
"""


async def test_a_link_into_hidden_data_from_an_output_outside_the_project(tmp_path: Path, agent_for) -> None:
    """A `writable` output outside the project (a scratch folder) is handed to the evaluation unchecked: the
    outputs inside the project are refused when they hold a link, that one is not. The run replaces its answer
    with a link to the hidden key (it cannot read the key, but it can name it): the scorer, which may read hidden
    data, reads the key as the answer and scores it perfect. The run's honest answer (4) scores 1."""
    require(ISOLATION.namespaces, "CI must give runs a private view", "namespaces are unavailable here")
    scratch = Path(tempfile.mkdtemp(prefix=".autoresearch-test-scratch-", dir=Path.home()))
    try:
        await _link_into_hidden_data(tmp_path, agent_for, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


async def _link_into_hidden_data(tmp_path: Path, agent_for, scratch: Path) -> None:
    root = stage_project(tmp_path, 'hidden = ["key.txt"]\n', scorer=KEY_SCORER)
    config = (root / "autoresearch.toml").read_text()
    config = config.replace('writable = ["out"]', f'writable = ["out", "{scratch}"]')
    config = config.replace("> out/answer.txt", f"> {scratch}/answer.txt").replace(
        "scorer.py out/answer.txt", f"scorer.py {scratch}/answer.txt"
    )
    (root / "autoresearch.toml").write_text(config)
    git(root, "commit", "-qam", "answers go to a scratch folder outside the project")
    (root / "key.txt").write_text("3\n")
    code = f"""
    import os
    os.unlink({str(scratch / "answer.txt")!r})
    os.symlink({str(root / "key.txt")!r}, {str(scratch / "answer.txt")!r})
    """
    async with agent_for(root) as agent:
        run, decision = await candidate(agent, code)
    assert run["value"] != 0.0, (run, decision)
    assert run["status"] == "metric_error" and "answer.txt" in run["error"], run


@pytest.mark.parametrize(
    "made",
    ['os.mkfifo(b"out/p\\xffipe")', 'os.symlink("/etc/hostname", b"out/l\\xffink")'],
    ids=["fifo", "link"],
)
async def test_an_output_named_in_no_encoding(tmp_path: Path, agent_for, made: str) -> None:
    """An output whose name is no UTF-8 (a byte 0xff): the refusal names it, and the answer must still reach the
    agent as a clear metric_error, not a tool error (a lone surrogate in the text cannot be encoded)."""
    root = stage_project(tmp_path)
    code = f"""
    import os
    {made}
    """
    async with agent_for(root) as agent:
        run, decision = await candidate(agent, code)
        assert run["status"] == "metric_error", run
        assert decision["decision"] == "crash", decision
        results = await agent.ok("query_results")
        assert results["counts"], results


@pytest.mark.parametrize("mode", [0o555, 0o000], ids=["read-only", "no-rights"])
async def test_an_output_directory_whose_rights_the_run_took_away(
    tmp_path: Path, agent_for, mode: int
) -> None:
    """The run may change the rights of its own output directory (a writable mount: chmod is no write Landlock
    refuses). One that takes its owner's write right away leaves every later run unable to write its output:
    each honest candidate after it crashes, and no later change can ever beat the one that did it. Every run
    must start from an output directory it can write, as it starts from an empty one."""
    root = stage_project(tmp_path)
    code = f"""
    import os
    os.chmod("out", {mode:#o})
    """
    async with agent_for(root) as agent:
        run, _ = await candidate(agent, code)  # (without its rights the evaluation cannot read out/ either)
        assert run["status"] in ("ok", "metric_error"), run
        await agent.ok("apply_edit", content="X = 3\nprint(X)\n")
        honest, decision = await agent.experiment("honest, after the attack")
    os.chmod(root / "out", 0o755)  # (for the clean-up of tmp_path when the run kept the rights away)
    assert honest["status"] == "ok" and honest["value"] == 3.0, honest
    assert decision["decision"] == "keep", decision


def answering_in(scratch: Path, root: Path, handed: str = "{answer}", more: str = "") -> Path:
    """An evaluation stage's project `root`, its objective writing its answer (5) to `scratch` outside the project,
    a `writable` entry: the scorer reads it there, handed it as `handed` says (`{answer}`: the answer's path);
    `more`: code the objective runs after (`{answer}` as well)."""
    answer = str(scratch / "answer.txt")
    config = (root / "autoresearch.toml").read_text()
    config = config.replace('writable = ["out"]', f'writable = ["out", "{scratch}"]')
    config = config.replace("python3 objective.py > out/answer.txt", "python3 objective.py")
    config = config.replace("scorer.py out/answer.txt", "scorer.py " + handed.format(answer=answer))
    (root / "autoresearch.toml").write_text(config)
    objective = f"import sys\nX = 5\nopen({answer!r}, 'w').write(str(X))\n"
    (root / "objective.py").write_text(objective + more.format(answer=answer))
    git(root, "commit", "-qam", "the objective writes its answer to a scratch folder outside the project")
    return root


async def computes_nothing(root: Path, agent_for) -> None:
    """The baseline, then a candidate that computes nothing (writes no answer): never kept, a metric_error
    naming the answer (the best's, still lying outside the project, is no answer of this run)."""
    async with agent_for(root) as agent:
        await agent.ok("start_session")
        _, base = await agent.experiment("baseline")
        assert base["decision"] == "keep", base
        await agent.ok("apply_edit", content="pass\n")
        run, decision = await agent.experiment("computes nothing")
    assert decision["decision"] != "keep", (run, decision)
    assert run["status"] == "metric_error" and "answer.txt" in run["error"], run


async def test_an_output_outside_the_project_left_by_an_earlier_run(tmp_path: Path, agent_for) -> None:
    """Outputs inside the project are moved aside before every run, so a run that writes nothing is never
    measured on what an earlier run left. An output outside the project (a scratch folder in `writable`) is
    not: a candidate that deletes the whole computation and writes nothing exits 0, the evaluation scores the
    best's answer still lying there, and the candidate is kept as equal and simpler. The file the evaluation
    is handed (named on its command line) must be this run's."""
    scratch = Path(tempfile.mkdtemp(prefix=".autoresearch-test-scratch-", dir=Path.home()))
    try:
        await computes_nothing(answering_in(scratch, stage_project(tmp_path)), agent_for)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


async def test_a_scratch_folder_outside_the_project_whose_rights_the_run_took_away(
    tmp_path: Path, agent_for
) -> None:
    """A `writable` folder outside the project is never moved aside: a run that takes its owner's rights away
    (`chmod 000`) left every later run unable to write its answer there, each honest candidate a crash. Every run
    starts with its owner's rights on each folder it may write, inside the project or not."""
    scratch = Path(tempfile.mkdtemp(prefix=".autoresearch-test-scratch-", dir=Path.home()))
    try:
        root = answering_in(scratch, stage_project(tmp_path))
        answer = str(scratch / "answer.txt")
        async with agent_for(root) as agent:
            await agent.ok("start_session")
            _, base = await agent.experiment("baseline")
            assert base["decision"] == "keep", base
            await agent.ok("apply_edit", content=f"import os\nos.chmod({str(scratch)!r}, 0)\n")
            await agent.experiment("takes the folder's rights away")
            await agent.ok("apply_edit", content=f"X = 3\nopen({answer!r}, 'w').write(str(X))\n")
            honest, decision = await agent.experiment("honest, after the attack")
        assert honest["status"] == "ok" and honest["value"] == 3.0, honest
        assert decision["decision"] == "keep", decision
    finally:
        os.chmod(scratch, 0o700)
        shutil.rmtree(scratch, ignore_errors=True)
