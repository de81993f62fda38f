"""Attacks on fresh outputs and private caches (issue 19, items 2 and 3), made as the target's code would make
them: the evil part is the file the agent edits, run by the real server through the MCP client (or a real
`Experiment`), in the real sandbox. Each test failed before its fix, or is marked xfail with the mechanism."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import git, make_repo, run_cli
from .test_disk_full import FILLER, full_project, small_disk  # noqa: F401 (fixtures)
from .test_eval_stage import SCORER

pytestmark = pytest.mark.anyio

# The candidate answers in out/answer.txt; the evaluation and the holdout score what it holds (lower is better).
OBJECTIVE = """\
import sys
X = 5
print(X)
"""
CONFIG = """\
target_file = "objective.py"
run_command = "python3 objective.py > out/answer.txt"
eval_command = "python3 scorer.py out/answer.txt"
holdout_command = "python3 scorer.py out/answer.txt"
checks_command = "python3 objective.py check"
metric_name = "score"
metric_direction = "lower"
readonly_files = ["scorer.py"]
writable = ["out"]
keep_rule = "greedy"
timeout = 60
"""


def eval_project(tmp_path: Path, extra: str = "") -> Path:
    root = make_repo(
        tmp_path / "proj",
        {
            "objective.py": OBJECTIVE,
            "scorer.py": SCORER,
            "autoresearch.toml": CONFIG + extra,
            ".gitignore": "out/\n.autoresearch/\nrun.log\nresults.tsv\n",
        },
    )
    (root / "out").mkdir()
    return root


def holdout_records(root: Path, tag: str) -> list[dict[str, Any]]:
    path = root / ".autoresearch" / "holdout" / f"{tag}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


# The target's code runs again in checks_command (tests import it): there it swaps the answer the evaluation
# scored for a link to an answer of its choosing, which the holdout then reads after the keep.
SWAP_IN_CHECKS = """
if sys.argv[1:] == ["check"]:
    import os
    open("out/chosen.txt", "w").write("0.5\\n")
    os.remove("out/answer.txt")
    os.symlink("chosen.txt", "out/answer.txt")
"""


async def test_the_holdout_refuses_an_output_the_checks_turned_into_a_link(tmp_path: Path, agent_for) -> None:
    """A target an earlier session kept (its agent's code is the baseline of this one): the run's output passes
    the unsafe-output check and is evaluated; then the checks (the target's code again) replace
    `out/answer.txt` with a link, and the baseline's holdout, run after the keep with no re-measurement between,
    read through it (0.5) before the fix. Now the holdout refuses the output as the evaluation does."""
    root = eval_project(tmp_path)
    (root / "objective.py").write_text(OBJECTIVE + textwrap.dedent(SWAP_IN_CHECKS))
    git(root, "commit", "-qam", "kept by an earlier session")
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="x")
        run, decision = await agent.experiment("baseline")
    assert run["status"] == "ok" and run["value"] == 5.0, run
    assert decision["decision"] == "keep", decision
    assert (root / "out" / "answer.txt").is_symlink()  # the swap happened after the evaluation
    records = holdout_records(root, "x")
    assert [r["run_id"] for r in records] == ["r1"]
    assert records[0]["holdout"] is None, records[0]
    # Refused as a link, or (the outputs' state is recorded after the measurement) as changed since.
    error = records[0]["error"]
    assert "symbolic link" in error or "changed after the run was measured" in error, records[0]


# A bundler measured by size: `dist/` holds its bundle.
BUILD = """\
import os
os.makedirs("dist", exist_ok=True)
open("dist/bundle.js", "w").write("x" * 10240)
"""
SIZE_CONFIG = """\
target_file = "build.py"
run_command = "python3 build.py"
metric_name = "kb"
metric_measure = "size_kb:dist"
metric_direction = "lower"
writable = ["dist"]
keep_rule = "greedy"
timeout = 60
"""


def size_project(tmp_path: Path, extra: str = "") -> Path:
    return make_repo(
        tmp_path / "web",
        {
            "build.py": BUILD,
            "autoresearch.toml": SIZE_CONFIG + extra,
            ".gitignore": "dist/\n.autoresearch/\nrun.log\nresults.tsv\n",
        },
    )


async def size_attack(root: Path, agent_for: Any, code: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Baseline, then one experiment whose build also runs `code`."""
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="x")
        _, base = await agent.experiment("baseline")
        assert base["decision"] == "keep", base
        await agent.edit('"x" * 10240)\n', '"x" * 10240)\n' + textwrap.dedent(code))
        run, decision = await agent.experiment("attack")
        query = await agent.ok("query_results")
    return run, {**decision, "query": query}


async def test_a_name_that_is_not_utf8_is_named_in_the_refusal(tmp_path: Path, agent_for) -> None:
    """The build leaves a FIFO whose name is not UTF-8 (and holds a newline): the refusal names it readably."""
    root = size_project(tmp_path)
    run, decision = await size_attack(root, agent_for, 'os.mkfifo(b"dist/\\xff\\nbad")\n')
    assert run["status"] == "metric_error", run
    assert "'dist/\\xff\\x0abad' is a FIFO" in run["error"], run
    assert decision["decision"] == "crash", decision  # recorded: the session goes on
    assert decision["query"]["total"] == 2, decision["query"]


# Directories nested deeper than the server's stack (and, at 3000 levels of 2 bytes, than PATH_MAX): a walk
# that recurses, or that opens every path by its full name, cannot see to the bottom.
DEEP = """
here = os.getcwd()
os.chdir("dist")
for _ in range(DEPTH):
    os.mkdir("d")
    os.chdir("d")
os.mkfifo("hidden") if FIFO else None
os.chdir(here)
"""


@pytest.fixture
def deep_tmp_path(tmp_path: Path) -> Iterator[Path]:
    """`tmp_path`, emptied by `rm -rf` afterwards (pytest's own removal recurses, and fails on a deep tree)."""
    yield tmp_path
    subprocess.run(["rm", "-rf", str(tmp_path)], check=True)
    tmp_path.mkdir()


@pytest.mark.parametrize(("depth", "fifo"), [(1500, False), (1500, True), (3000, True)])
async def test_an_output_nested_too_deep_to_walk_is_refused_and_the_next_run_is_fresh(
    deep_tmp_path: Path, agent_for, depth: int, fifo: bool
) -> None:
    """The build nests `depth` directories in `dist/`, with or without a FIFO at the bottom (at 3000, a path
    longer than PATH_MAX). Before the fix the check of the output (or the measurement) raised RecursionError
    (run_experiment: internal error), and so did the removal of the older run's folder two runs later. Now an
    output with the FIFO is refused (`metric_error`, naming the FIFO, or the directory that cannot be read),
    one without is measured, the session goes on, and the next runs start from an empty `dist/`."""
    root = size_project(deep_tmp_path)
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="x")
        _, base = await agent.experiment("baseline")
        assert base["decision"] == "keep", base
        deep = textwrap.dedent(DEEP).replace("DEPTH", str(depth)).replace("FIFO", str(fifo))
        await agent.edit('"x" * 10240)\n', '"x" * 10240)\n' + deep)
        run, decision = await agent.experiment("attack")
        if not fifo:  # measured: the deep directories hold no byte
            assert run["status"] == "ok" and run["value"] == 10.0, run
        else:
            assert run["status"] == "metric_error", run
            assert ("cannot be checked" if depth > 2000 else "/d/hidden' is a FIFO") in run["error"], run
            assert decision["decision"] == "crash", decision
        await agent.edit('"x" * 10240)', '"x" * 10240)  # again')  # the crash reset the target
        honest, _ = await agent.experiment("honest again")
        assert honest["status"] == "ok" and honest["value"] == 10.0, honest
        await agent.edit('"x" * 10240)', '"x" * 10240)  # once more')
        honest, _ = await agent.experiment("honest once more")  # removes the folder of the attack's output
    assert honest["status"] == "ok" and honest["value"] == 10.0, honest
    assert sorted(os.listdir(root / "dist")) == ["bundle.js"]
    aside = sorted(os.listdir(root / ".autoresearch" / "outputs" / "x"))
    # The attack's output: removed with its run's folder when it could be read (it was the run's), else kept.
    assert aside == (["run-r3"] if depth < 2000 else ["found-before-r3", "run-r3"]), aside


# A scorer that uses a compile cache as Triton does: TRITON_CACHE_DIR, else ~/.triton/cache. A cached entry for
# the work it is given is used instead of computing it (as a compiled kernel would be).
CACHED_SCORER = """\
import os, sys
cache = os.environ.get("TRITON_CACHE_DIR") or os.path.expanduser("~/.triton/cache")
entry = os.path.join(cache, "score")
if os.path.exists(entry):
    print(f"score: {float(open(entry).read()):.6f}")
else:
    print(f"score: {float(open(sys.argv[1]).read().split()[0]):.6f}")
"""
# The target plants that entry in the cache it keeps from run to run.
PLANT_IN_CACHE = """
import os
cache = os.environ.get("TRITON_CACHE_DIR") or os.path.expanduser("~/.triton/cache")
os.makedirs(cache, exist_ok=True)
open(os.path.join(cache, "score"), "w").write("0.001")
"""


@pytest.mark.parametrize("isolation", ['isolation = "off"\n', ""], ids=["isolation-off", "isolation-auto"])
async def test_the_evaluation_never_reads_a_persistent_cache_a_run_wrote(
    tmp_path: Path, agent_for, monkeypatch: pytest.MonkeyPatch, isolation: str
) -> None:
    """`persistent = ["~/.triton/cache"]` keeps Triton's cache from run to run, as README suggests for a costly
    cold cache. The run plants an entry there; before the fix the evaluation stage (given the same cache
    variables as the runs) read it and scored 0.001. Now every cache of the evaluation is its own."""
    home = tmp_path / "home"
    (home / ".triton" / "cache").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    root = eval_project(tmp_path, 'persistent = ["~/.triton/cache"]\n' + isolation)
    (root / "scorer.py").write_text(CACHED_SCORER)
    git(root, "commit", "-qam", "a scorer with a compile cache")
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="x")
        _, base = await agent.experiment("baseline")
        assert base["decision"] == "keep", base
        await agent.edit("X = 5\n", "X = 4\n" + textwrap.dedent(PLANT_IN_CACHE))
        run, _ = await agent.experiment("attack")
    assert (
        home / ".triton" / "cache" / "score"
    ).exists()  # planted (a persistent cache is the run's to write)
    assert run["status"] == "ok" and run["value"] == 4.0, run


@pytest.mark.parametrize("spelling", ["absolute", "home"])
async def test_an_output_named_by_an_absolute_path_starts_empty_too(
    tmp_path: Path, agent_for, monkeypatch: pytest.MonkeyPatch, spelling: str
) -> None:
    """`writable` names the project's `dist` by its absolute path (or through `~`): before the fix it was never
    emptied, so a FIFO an earlier (failed) run left there made the next, honest build `metric_error`."""
    monkeypatch.setenv("HOME", str(tmp_path))
    root = make_repo(
        tmp_path / "web", {"build.py": BUILD, ".gitignore": "dist/\n.autoresearch/\nrun.log\nresults.tsv\n"}
    )
    entry = str(root / "dist") if spelling == "absolute" else "~/web/dist"
    (root / "autoresearch.toml").write_text(
        SIZE_CONFIG.replace('writable = ["dist"]', f'writable = ["{entry}"]')
    )
    git(root, "add", "autoresearch.toml")
    git(root, "commit", "-qm", "config")
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="x")
        _, base = await agent.experiment("baseline")
        assert base["decision"] == "keep", base
        await agent.edit('"x" * 10240)\n', '"x" * 10240)\nos.mkfifo("dist/left")\nraise SystemExit(1)\n')
        run, _ = await agent.experiment("attack")
        assert run["status"] == "crash", run
        await agent.edit('"x" * 10240)', '"x" * 10000)')  # the crash reset the target
        honest, _ = await agent.experiment("honest")
    assert honest["status"] == "ok", honest
    assert sorted(os.listdir(root / "dist")) == ["bundle.js"]


async def test_clean_removes_a_run_folder_nested_deeper_than_recursion(
    deep_tmp_path: Path, agent_for
) -> None:
    """A run leaves 1500 nested directories in `dist/`; the next run moves them into `run-r2/`. Before the fix
    `mcp-autoresearch clean` died on them with a RecursionError traceback; now it removes them."""
    root = size_project(deep_tmp_path)
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="x")
        await agent.experiment("baseline")
        deep = textwrap.dedent(DEEP).replace("DEPTH", "1500").replace("FIFO", "False")
        await agent.edit('"x" * 10240)\n', '"x" * 10240)\n' + deep)
        run, _ = await agent.experiment("deep")
        assert run["status"] == "ok", run
        await agent.edit('"x" * 10240)', '"x" * 20000)')
        await agent.experiment("next (worse: no re-measurement)")
    aside = root / ".autoresearch" / "outputs" / "x"
    assert "run-r2" in os.listdir(aside)
    git(root, "checkout", "-q", "main")
    done = run_cli("clean", "--project", str(root), "--tag", "x", "--yes", cwd=root)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert not (aside / "run-r2").exists()


async def test_a_full_disk_is_reported_past_directories_nested_deeper_than_recursion(
    full_project: Path,  # noqa: F811 (the fixture imported above)
    agent_for: Any,
) -> None:
    """A run nests 1500 directories in its output, then fills the disk. Before the fix the search for what grew
    died on them (RecursionError in the run's thread: the run stayed "running" for ever); now the run is
    `disk_full`, naming the file that filled it."""
    root = full_project
    deep = textwrap.dedent(DEEP).replace("DEPTH", "1500").replace("FIFO", "False").replace('"dist"', '"out"')
    async with agent_for(root, {"writable": ["out"], "keep_rule": "greedy"}) as agent:
        await agent.ok("start_session", tag="full")
        await agent.experiment("baseline")
        await agent.edit(
            "LR = 0.5", "LR = 0.4\nimport os\nos.makedirs('out', exist_ok=True)\n" + deep + FILLER
        )
        run = await agent.ok("run_experiment", description="deep, then fill the disk")
        for _ in range(50):  # before the fix the run's thread died and the run stayed "running" for ever
            if run["status"] != "running":
                break
            run = await agent.ok("wait_experiment", run_id=run["run_id"])
    assert run["status"] == "disk_full", (run["error"], run)
    assert "out/fill.bin" in run["error"], run["error"]


REWRITE_IN_CHECKS = """
if sys.argv[1:] == ["check"]:
    open("out/answer.txt", "w").write("0.5\\n")
"""


async def test_the_holdout_reads_what_the_evaluation_read_not_what_the_checks_rewrote(
    tmp_path: Path, agent_for
) -> None:
    """A baseline whose checks (the target's code) rewrite `out/answer.txt` as a plain file after it was
    evaluated: the holdout scores the evaluated answer (5), or is not measured and says why (it scored 0.5: the
    outputs' state after the measurement is recorded now, and a change since stops the holdout)."""
    root = eval_project(tmp_path)
    (root / "objective.py").write_text(OBJECTIVE + textwrap.dedent(REWRITE_IN_CHECKS))
    git(root, "commit", "-qam", "kept by an earlier session")
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="x")
        run, decision = await agent.experiment("baseline")
    assert run["value"] == 5.0 and decision["decision"] == "keep", (run, decision)
    [record] = holdout_records(root, "x")
    assert record["holdout"] in (5.0, None), record
