"""The evaluation stage (issue 19, items 1 and 6): `eval_command` measures each run after the run's whole process
tree is gone, in a tree of its own that can write nothing but its private TMPDIR; `hidden` paths only it may read;
`holdout_command` values never reach a tool result.

Each attack is the target's code in a real run through the real server (the MCP client), confined, and where it
applies with `isolation = "off"` too.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from mcp_autoresearch.readers.web.data import SessionView
from mcp_autoresearch.sandbox.policy import probe_isolation

from .conftest import make_repo, run_cli
from .helpers.needs import require

pytestmark = pytest.mark.anyio

ISOLATION = probe_isolation("auto")

# The candidate: its answer goes to out/answer.txt; the metric (lower is better) is what the scorer makes of it.
OBJECTIVE = """\
X = 5
print(X)
"""
SCORER = """\
import sys
print(f"score: {float(open(sys.argv[1]).read().split()[0]):.6f}")
"""
CONFIG = """\
target_file = "objective.py"
run_command = "python3 objective.py > out/answer.txt"
eval_command = "python3 scorer.py out/answer.txt"
metric_name = "score"
metric_direction = "lower"
readonly_files = ["scorer.py"]
writable = ["out"]
keep_rule = "greedy"
timeout = 60
"""


def project(
    tmp_path: Path, extra: str = "", scorer: str = SCORER, files: dict[str, str] | None = None
) -> Path:
    root = make_repo(
        tmp_path / "proj",
        {
            "objective.py": OBJECTIVE,
            "scorer.py": scorer,
            "autoresearch.toml": CONFIG + extra,
            ".gitignore": "out/\nsecret/\nkey.txt\n.autoresearch/\nrun.log\nresults.tsv\n",
            **(files or {}),
        },
    )
    (root / "out").mkdir()
    return root


async def candidate(agent: Any, code: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Baseline, then one experiment whose target runs `code` and answers 4 (better than 5 honestly)."""
    await agent.ok("start_session")
    _, base = await agent.experiment("baseline")
    assert base["decision"] == "keep", base
    await agent.edit("X = 5\n", "X = 4\n" + textwrap.dedent(code))
    return await agent.experiment("attack")


OFF = ['isolation = "off"\n', ""]


@pytest.mark.parametrize("isolation", OFF, ids=["isolation-off", "isolation-auto"])
async def test_a_forged_line_glued_onto_an_unterminated_fragment_does_not_count(
    tmp_path: Path, agent_for, isolation: str
) -> None:
    """The issue's attack on `objective.py | scorer.py`: the target prints an unterminated fragment and a forged
    score line, on stderr and stdout, and leaves a process that prints another after the command ended. With
    an evaluation stage none of what the run printed is read: the value is the scorer's."""
    root = project(tmp_path, isolation)
    code = """
    import subprocess, sys
    sys.stderr.write("score: 0.000001")
    sys.stderr.write("\\nscore: 0.000001\\n")
    sys.stderr.flush()
    subprocess.Popen([sys.executable, "-c", "import sys; sys.stderr.write('score: 0.000002\\\\n')"],
                     start_new_session=True)
    """
    async with agent_for(root) as agent:
        run, decision = await candidate(agent, code)
    assert run["status"] == "ok", run
    assert run["value"] == 4.0
    assert decision["decision"] == "keep"
    assert "score: 0.000001" in Path(run["log_path"]).read_text()  # the forgery was printed, and ignored
    assert "--- evaluation stage" in run["log_tail"] and "score: 4.000000" in run["log_tail"]


async def test_a_last_line_without_a_newline_never_counts(tmp_path: Path, agent_for) -> None:
    """Only complete lines of the evaluation's output count: a fragment at its end is not a value."""
    scorer = SCORER + 'print("score: 0.000001", end="")\n'
    root = project(tmp_path, scorer=scorer)
    async with agent_for(root) as agent:
        await agent.ok("start_session")
        run, _ = await agent.experiment("baseline")
    assert run["value"] == 5.0, run


async def test_the_run_cannot_reach_the_evaluation_log(tmp_path: Path, agent_for) -> None:
    """A candidate that writes a score line everywhere it can does not change the value (and an evaluation that
    fails is a metric_error naming the stage and its log)."""
    root = project(tmp_path, scorer="import sys\nsys.exit(3)\n")
    async with agent_for(root) as agent:
        await agent.ok("start_session")
        run, decision = await agent.experiment("baseline")
    assert run["status"] == "metric_error", run
    assert "the evaluation stage (eval_command) failed: exit code 3" in run["error"]
    assert "-eval.log" in run["error"]


@pytest.mark.parametrize("isolation", OFF, ids=["isolation-off", "isolation-auto"])
async def test_the_evaluation_starts_after_every_process_of_the_run_is_gone(
    tmp_path: Path, agent_for, isolation: str
) -> None:
    """The run leaves a daemon (new session, double fork) that holds a lock on out/lock and keeps rewriting the
    answer. The evaluation takes the lock without waiting: it can only when the daemon is gone; it then reads
    the answer twice around a full re-read of the file and prints 1 if all held, 0 if the daemon was alive."""
    scorer = """\
    import fcntl, os
    free = True
    if os.path.exists("out/lock"):  # (the baseline leaves no daemon)
        try:
            fcntl.flock(open("out/lock", "rb"), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            free = False
    first = open("out/answer.txt", "rb").read()
    again = open("out/answer.txt", "rb").read()
    print(f"score: {float(first.split()[0]) if free and first == again else 99.0:.6f}")
    """
    root = project(tmp_path, isolation, scorer=textwrap.dedent(scorer))
    code = """
    import fcntl, os, sys
    sys.stdout.flush()
    ready_r, ready_w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            lock = open("out/lock", "wb")
            fcntl.flock(lock, fcntl.LOCK_EX)
            ready = True
            while True:  # the answer is always whole: written aside, then renamed over
                with open("out/answer.tmp", "w") as out:
                    out.write("0.5\\n")
                os.replace("out/answer.tmp", "out/answer.txt")
                if ready:
                    os.write(ready_w, b"x")
                    ready = False
        os._exit(0)
    os.read(ready_r, 1)  # the daemon holds the lock
    """
    async with agent_for(root) as agent:
        run, _ = await candidate(agent, code)
    assert run["status"] == "ok", run
    assert (
        run["value"] == 0.5
    )  # what the daemon wrote during the run counts; it was gone when the scorer read


async def test_the_evaluation_can_write_nothing_but_its_tmpdir(tmp_path: Path, agent_for) -> None:
    """The scorer tries to rewrite the run's output, a project file (the scorer; the target is hidden from the
    evaluation, /dev/null in its view), a new file in the project and in a writable output directory; only its
    TMPDIR takes a write. It prints 10 x (TMPDIR written) + every write that got through."""
    require(ISOLATION.confined, "CI must confine runs with Landlock", "Landlock is unavailable here")
    scorer = """\
    import os, tempfile
    got = 0
    for path in ("out/answer.txt", "scorer.py", "new.txt", "out/new.txt"):
        try:
            with open(path, "a") as handle:
                handle.write("x\\n")
            got += 1
        except OSError:
            pass
    with open(os.path.join(os.environ["TMPDIR"], "scratch"), "w") as handle:
        handle.write("ok")
    print(f"score: {10 + got:.6f}")
    """
    root = project(tmp_path, scorer=textwrap.dedent(scorer))
    async with agent_for(root) as agent:
        await agent.ok("start_session")
        run, _ = await agent.experiment("baseline")
    assert run["value"] == 10.0, run
    assert (root / "out" / "answer.txt").read_text() == "5\n"
    assert (root / "objective.py").read_text() == OBJECTIVE
    assert not (root / "new.txt").exists() and not (root / "out" / "new.txt").exists()


HIDDEN = 'hidden = ["secret", "key.txt"]\n'


async def test_a_run_cannot_read_hidden_paths_the_evaluation_can(tmp_path: Path, agent_for) -> None:
    """`hidden` data (a directory and a file) is covered in the run's view: the target finds an empty directory
    and an empty file, even by its real path, and through a link it made. The scorer reads both and checks the
    run's output holds none of it: the value is 1 only if the run saw nothing and the scorer saw everything."""
    require(ISOLATION.namespaces, "CI must give runs a private view", "namespaces are unavailable here")
    scorer = """\
    seen = open("secret/val.txt").read() + open("key.txt").read()
    import os
    leaked = open("out/leak.txt").read() if os.path.exists("out/leak.txt") else ""
    ok = seen == "VALIDATION-DATA\\nKEY-42\\n" and "VALIDATION" not in leaked and "KEY-42" not in leaked
    print(f"score: {1.0 if ok else 50.0:.6f}")
    """
    root = project(tmp_path, HIDDEN, scorer=textwrap.dedent(scorer))
    (root / "secret").mkdir()
    (root / "secret" / "val.txt").write_text("VALIDATION-DATA\n")
    (root / "key.txt").write_text("KEY-42\n")
    code = f"""
    import os
    found = []
    for path in ("secret/val.txt", "key.txt", {str(root / "secret" / "val.txt")!r}, {str(root / "key.txt")!r}):
        try:
            found.append(open(path).read())
        except OSError as exc:
            found.append(str(exc))
    found.append(repr(os.listdir("secret")))
    open("out/leak.txt", "w").write("\\n".join(found))
    """
    async with agent_for(root) as agent:
        run, _ = await candidate(agent, code)
    assert run["status"] == "ok", run
    assert run["value"] == 1.0, (run, (root / "out" / "leak.txt").read_text())


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('hidden = ["objective.py"]\n', "would hide the target objective.py"),
        ('hidden = ["out/data"]\n', "overlaps the writable entry 'out'"),
        ('hidden = ["secret"]\neval_command = ""\n', "must not be empty"),
        ('hidden = ["."]\n', "must name files or directories inside the project"),
        ('hidden = [".."]\n', "would hide the project itself"),
        ('backend = "ray"\n', 'not supported with backend = "ray" yet'),
        ('metric_measure = "wall_time_s"\n', "eval_command and metric_measure both say"),
        ('slots = 2\nholdout_command = "python3 scorer.py out/answer.txt"\n', "not supported with slots yet"),
    ],
)
async def test_hidden_paths_a_run_could_reach_are_refused(
    tmp_path: Path, agent_for, extra: str, expected: str
) -> None:
    root = project(tmp_path, extra.replace('eval_command = ""\n', ""))
    if "eval_command" in extra:
        text = (
            (root / "autoresearch.toml")
            .read_text()
            .replace('eval_command = "python3 scorer.py out/answer.txt"', 'eval_command = ""')
        )
        (root / "autoresearch.toml").write_text(text)
    async with agent_for(root) as agent:
        assert expected in await agent.refused("start_session")


async def test_a_hidden_path_tracked_by_git_is_refused(tmp_path: Path, agent_for) -> None:
    """A tracked file is in .git's objects, which a run may read: hiding the checkout's copy would hide nothing."""
    require(ISOLATION.namespaces, "CI must give runs a private view", "namespaces are unavailable here")
    root = project(tmp_path, 'hidden = ["data.txt"]\n', files={"data.txt": "tracked\n"})
    async with agent_for(root) as agent:
        assert "'data.txt' is tracked by git" in await agent.refused("start_session")


async def test_hidden_without_a_private_view_is_refused(tmp_path: Path, agent_for) -> None:
    root = project(tmp_path, HIDDEN + 'isolation = "off"\n')
    async with agent_for(root) as agent:
        assert "hidden from runs by their private view" in await agent.refused("start_session")


HOLDOUT = """\
import sys
print(f"score: {float(open(sys.argv[1]).read().split()[0]) * 1.2345678 + 0.0137:.7f}")
"""


# The target prints every holdout record and log it can find into its own log (shown in tool results).
READ_HOLDOUT = """\
import glob, sys
for path in glob.glob(".autoresearch/holdout/**", recursive=True):
    try:
        sys.stderr.write(path + ": " + open(path).read())
    except OSError:
        pass
"""


async def test_holdout_values_never_reach_a_tool_result(tmp_path: Path, agent_for) -> None:
    """Baseline, a keep, a discard whose target prints whatever holdout records it can read (hidden from runs by
    their view): every tool result (JSON and text) is searched for the holdout's values; the briefing,
    query_results and the web page's data show only how far the keeps hold."""
    extra = 'holdout_command = "python3 holdout.py out/answer.txt"\n'
    root = project(tmp_path, extra, files={"holdout.py": HOLDOUT})
    values = [f"{x * 1.2345678 + 0.0137:.7f}" for x in (5, 4, 6)]
    results: list[Any] = []

    async with agent_for(root) as agent:

        async def call(tool: str, **args: Any) -> dict[str, Any]:
            result = await agent.client.call_tool(tool, args)
            results.append(result)
            assert not result.is_error, result.content[0].text
            return result.structured_content

        await call("start_session", tag="x")
        for description, old, new in (
            ("baseline", None, None),
            ("x4", "X = 5", "X = 4"),
            ("x6", "X = 4\n", "X = 6\n" + (READ_HOLDOUT if ISOLATION.namespaces else "")),
        ):
            if old:
                await call("apply_edit", edits=[{"old_text": old, "new_text": new}])
            run = await call("run_experiment", description=description)
            while run["status"] == "running":
                run = await call("wait_experiment", run_id=run["run_id"])
            await call("commit_or_reset", run_id=run["run_id"])
        query = await call("query_results")
        await call("query_results", order="best")
        await call("detect_project")
        await call("read_target")
        await call("log_result", run_id=run["run_id"], notes="tried 6")
        for resource in (await agent.client.list_resources()).resources:
            results.append(await agent.client.read_resource(resource.uri))
        for prompt in (await agent.client.list_prompts()).prompts:
            results.append(await agent.client.get_prompt(prompt.name))
    assert query["holdout"] is not None and "kept improvements hold 1 of 1" in query["holdout"], query
    text = json.dumps([r.model_dump(mode="json") for r in results])
    assert "Holdout: kept improvements hold 1 of 1" in text  # the briefing
    for value in values:
        assert value not in text and value.rstrip("0") not in text
    status = run_cli("status", "--project", str(root), "--session", "x").stdout
    assert "Holdout: kept improvements hold 1 of 1" in status  # the CLI's status, for the person
    view = SessionView(root, "x")
    view.refresh()
    page = json.dumps([view.summary(), view.experiments(None, 0, 50), view.runs()])
    assert "kept improvements hold 1 of 1" in page  # the web page's summary
    for value in values:
        assert value not in page and value.rstrip("0") not in page
    records = [
        json.loads(line) for line in (root / ".autoresearch" / "holdout" / "x.jsonl").read_text().splitlines()
    ]
    assert [(r["run_id"], r["baseline"]) for r in records] == [("r1", True), ("r2", False)]  # keeps only
    assert [round(r["holdout"], 6) for r in records] == [round(float(v), 6) for v in values[:2]]


async def test_each_repeat_is_a_run_then_an_evaluation(tmp_path: Path, agent_for) -> None:
    """With repeats, every run gets its own evaluation (its own log); the experiment is one row."""
    scorer = SCORER.replace("print(", "import os\nprint(os.environ['AUTORESEARCH_RUN_LOG'])\nprint(")
    root = project(tmp_path, "repeats = 2\n", scorer=scorer)
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="x")
        run, _ = await agent.experiment("baseline")
        rows = await agent.ok("query_results")
    assert run["status"] == "ok" and run["values"] == [5.0, 5.0], run
    logs = root / ".autoresearch" / "runs" / "x"
    evals = sorted(path.name for path in logs.glob("*-eval.log"))
    assert evals == ["r1-1-eval.log", "r1-2-eval.log"], sorted(p.name for p in logs.iterdir())
    assert str(logs / "r1-2.log") in (logs / "r1-2-eval.log").read_text()  # the run it evaluates
    assert rows["total"] == 1


async def test_metric_parse_reads_the_evaluation_log(tmp_path: Path, agent_for) -> None:
    """metric_parse keeps its meaning, on the evaluation's output: the run's own score line is not read."""
    extra = "metric_parse = \"grep '^score:' \\\"$AUTORESEARCH_LOG\\\" | tail -1 | awk '{print $2}'\"\n"
    root = project(tmp_path, extra)
    code = """
    import sys
    print("score: 0.000001", file=sys.stderr)
    """
    async with agent_for(root) as agent:
        run, _ = await candidate(agent, code)
    assert run["status"] == "ok" and run["value"] == 4.0, run


async def test_an_evaluation_that_hangs_is_a_metric_error(tmp_path: Path, agent_for) -> None:
    root = project(tmp_path, "eval_timeout = 2\n", scorer="import time\nwhile True:\n    time.sleep(1)\n")
    async with agent_for(root) as agent:
        await agent.ok("start_session")
        run, _ = await agent.experiment("baseline")
    assert run["status"] == "metric_error", run
    assert "the evaluation stage (eval_command) failed: killed after the 2 s timeout" in run["error"]


async def test_the_evaluation_stage_in_slots(tmp_path: Path, agent_for, monkeypatch) -> None:
    """With slots each candidate is run and evaluated in its own checkout."""
    monkeypatch.setenv("AUTORESEARCH_SLOTS_DIR", str(tmp_path / "slots"))
    root = project(tmp_path, "slots = 2\n")
    async with agent_for(root) as agent:
        await agent.ok("start_session")
        _, base = await agent.experiment("baseline")
        await agent.edit("X = 5\n", "X = 3\n")
        run, decision = await agent.experiment("three")
    assert base["value"] == 5.0 and run["value"] == 3.0 and decision["decision"] == "keep", (base, run)


def test_detect_shows_the_evaluation_stage(tmp_path: Path) -> None:
    root = project(tmp_path, HIDDEN + 'holdout_command = "python3 scorer.py out/answer.txt"\n')
    out = run_cli("detect", "--project", str(root))
    assert out.returncode == 0, out.stderr
    assert "evaluation:   python3 scorer.py out/answer.txt" in out.stdout
    assert f"hidden:       {root / 'secret'}, {root / 'key.txt'}" in out.stdout
    assert "holdout:      set" in out.stdout
    assert "the evaluation stage: eval_command" in out.stdout  # how the metric is measured
    flag = run_cli("detect", "--project", str(root), "--eval-command", "python3 other.py")
    assert "evaluation:   python3 other.py" in flag.stdout


async def test_the_evaluation_reads_hidden_data_outside_the_project(tmp_path: Path, agent_for) -> None:
    """Hidden data under /tmp (a directory every view covers with a fresh tmpfs) is shown to the evaluation,
    read-only, and stays covered for the run."""
    require(ISOLATION.namespaces, "CI must give runs a private view", "namespaces are unavailable here")
    data = tmp_path / "outside" / "answers.txt"
    data.parent.mkdir()
    data.write_text("3\n")
    scorer = (
        f"import sys\nhidden = float(open({str(data)!r}).read())\n"
        "print(f'score: {hidden + float(open(sys.argv[1]).read()):.6f}')\n"
    )
    root = project(tmp_path, f'hidden = ["{data}"]\n', scorer=scorer)
    code = f"""
    import sys
    try:
        print("read: " + open({str(data)!r}).read(), file=sys.stderr)
    except OSError as exc:
        print(f"refused: {{exc}}", file=sys.stderr)
    """
    async with agent_for(root) as agent:
        run, _ = await candidate(agent, code)
    assert run["value"] == 7.0, run
    assert "refused: [Errno 2] No such file" in Path(run["log_path"]).read_text()


async def test_a_session_refuses_a_changed_evaluation_stage(tmp_path: Path, agent_for) -> None:
    root = project(tmp_path)
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="x")
    config = root / "autoresearch.toml"
    config.write_text(config.read_text().replace("scorer.py out/answer.txt", "scorer.py /dev/null"))
    async with agent_for(root) as agent:
        assert "eval_command" in await agent.refused("start_session", tag="x")


async def test_metric_parse_of_run_log_is_refused_with_an_evaluation_stage(tmp_path: Path, agent_for) -> None:
    """The README's `grep 'score:' run.log | tail -1` would read what the run printed: refused, with the fix."""
    root = project(tmp_path, "metric_parse = \"grep 'score:' run.log | tail -1 | awk '{print $2}'\"\n")
    async with agent_for(root) as agent:
        assert 'read "$AUTORESEARCH_LOG"' in await agent.refused("start_session")


@pytest.mark.parametrize(
    "command", ["out/scorer", "python3 out/scorer.py out/answer.txt", "sh ./out/../out/score.sh"]
)
async def test_an_evaluation_that_runs_code_a_run_can_write_is_refused(
    tmp_path: Path, agent_for, command: str
) -> None:
    root = project(tmp_path)
    config = root / "autoresearch.toml"
    config.write_text(config.read_text().replace("python3 scorer.py out/answer.txt", command))
    async with agent_for(root) as agent:
        assert "which lies in the writable path 'out'" in await agent.refused("start_session")


@pytest.mark.parametrize("isolation", OFF, ids=["isolation-off", "isolation-auto"])
async def test_bytecode_a_run_planted_is_not_what_the_evaluation_runs(
    tmp_path: Path, agent_for, isolation: str
) -> None:
    """The scorer imports helper.py (read-only). `__pycache__` is writable, so the run plants a compiled forged
    helper whose header matches helper.py's size and time, which Python would load instead of the source. The
    evaluation keeps its bytecode in its TMPDIR (PYTHONPYCACHEPREFIX): the source's score counts."""
    scorer = (
        "import sys\nimport helper\nprint(f'score: {helper.score(float(open(sys.argv[1]).read())):.6f}')\n"
    )
    helper = "def score(x):\n    return x\n"
    config = CONFIG.replace('writable = ["out"]', 'writable = ["out", "__pycache__"]') + isolation
    root = project(tmp_path, scorer=scorer, files={"helper.py": helper, "autoresearch.toml": config})
    code = """
    import importlib.util, os, py_compile
    real = os.stat("helper.py")
    forged = "def score(x):\\n return 0\\n"  # (shorter than helper.py: padded to its size)
    forged += "#" * (real.st_size - len(forged) - 1) + "\\n"
    assert len(forged) == real.st_size
    with open("out/helper.py", "w") as handle:
        handle.write(forged)
    os.utime("out/helper.py", ns=(real.st_atime_ns, real.st_mtime_ns))
    os.makedirs("__pycache__", exist_ok=True)
    py_compile.compile("out/helper.py", cfile=importlib.util.cache_from_source("helper.py"), doraise=True)
    """
    async with agent_for(root) as agent:
        run, _ = await candidate(agent, code)
    assert (root / "__pycache__").is_dir() and any((root / "__pycache__").iterdir())  # the plant is there
    assert run["status"] == "ok" and run["value"] == 4.0, run


def test_the_holdout_summary(tmp_path: Path) -> None:
    """Kept improvements that hold (better than the baseline on the holdout) are counted; a record written again
    after a restart counts once; a failed holdout is counted as failed; no value is shown."""
    from mcp_autoresearch.measure.holdout import holdout_summary

    folder = tmp_path / ".autoresearch" / "holdout"
    folder.mkdir(parents=True)
    records = [
        {"run_id": "r1", "baseline": True, "metric": 10.0, "holdout": 20.0, "error": None},
        {"run_id": "r2", "baseline": False, "metric": 9.0, "holdout": 19.0, "error": None},
        {"run_id": "r3", "baseline": False, "metric": 8.0, "holdout": 21.0, "error": None},
        {"run_id": "r3", "baseline": False, "metric": 8.0, "holdout": 21.0, "error": None},
        {"run_id": "r4", "baseline": False, "metric": 7.5, "holdout": None, "error": "exit code 1"},
        {"run_id": "r5", "baseline": False, "metric": 7.0, "holdout": 19.5, "error": None},
    ]
    (folder / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + "not json\n")
    line = holdout_summary(tmp_path, "t", "lower_is_better")
    assert line == (
        "holdout: kept improvements hold 2 of 3; the latest keep vs the baseline: +2.5% on the holdout, +30.0% on "
        "the metric (+ is better) (1 holdout run(s) failed: see .autoresearch/holdout/)"
    )
    assert holdout_summary(tmp_path, "other", "lower_is_better") is None


async def test_the_checks_command_cannot_read_hidden_paths(tmp_path: Path, agent_for) -> None:
    """checks_command runs like a run: a hidden file is empty to it, a hidden directory has no entries."""
    require(ISOLATION.namespaces, "CI must give runs a private view", "namespaces are unavailable here")
    checks = 'checks_command = "test ! -s key.txt && test -z \\"$(ls secret)\\""\n'
    root = project(tmp_path, HIDDEN + checks)
    (root / "secret").mkdir()
    (root / "secret" / "val.txt").write_text("VALIDATION-DATA\n")
    (root / "key.txt").write_text("KEY-42\n")
    async with agent_for(root) as agent:
        await agent.ok("start_session")
        run, _ = await agent.experiment("baseline")
    assert run["status"] == "ok", run


@pytest.mark.parametrize("staged", [False, True], ids=["scorer-in-the-run", "evaluation-stage"])
async def test_a_line_printed_after_the_scorer_exited(tmp_path: Path, agent_for, staged: bool) -> None:
    """The issue's `objective.py | scorer.py`: the scorer reads the target's answer from a pipe and prints the
    honest line; the target waits until the scorer has exited and prints a forged line after it. In the run's
    process tree the last match wins and the forgery is kept (the self-reported mode); with the evaluation stage
    the scorer runs after the target is gone, and only its line counts."""
    config = CONFIG.replace(
        'run_command = "python3 objective.py > out/answer.txt"\neval_command = "python3 scorer.py out/answer.txt"',
        'run_command = "python3 objective.py | python3 scorer.py /dev/stdin"',
    )
    root = project(tmp_path, files={} if staged else {"autoresearch.toml": config})
    code = """
    import os, select, sys
    import stat
    print(X, flush=True)

    def scorer():
        for pid in os.listdir("/proc"):
            try:
                if pid.isdigit() and b"scorer.py" in open(f"/proc/{pid}/cmdline", "rb").read().split(b"\\0"):
                    return os.pidfd_open(int(pid))
            except OSError:
                pass
        return None

    # Piped into the scorer: it is found running first (it cannot end before this end of the pipe closes; found
    # before its exec, it would be taken for gone, and the forgery would come before its line); its end is then
    # awaited on a pidfd (readable once it has exited, its line written).
    found = None
    while stat.S_ISFIFO(os.fstat(1).st_mode) and found is None:
        found = scorer()
    os.close(1)  # the scorer reads its end of the pipe and prints the honest line
    if found is not None:
        select.select([found], [], [])
    sys.stderr.write("score: 0.000001\\n")
    os._exit(0)
    """
    async with agent_for(root) as agent:
        run, decision = await candidate(agent, code)
    if staged:
        assert run["value"] == 4.0, run
        assert "score: 0.000001" in Path(run["log_path"]).read_text()  # printed, and ignored
    else:
        assert run["value"] == 0.000001 and decision["decision"] == "keep", run
        assert "score: 4.000000" in Path(run["log_path"]).read_text()  # the honest line, printed before
