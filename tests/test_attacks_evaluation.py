"""Attacks on the evaluation stage (issue 19) as the target's code would make them, or as an agent sending odd
tool arguments: each a real run through the real server (the MCP client) in the real sandbox.

The promises attacked: a kept value comes from a process the target's code never ran in, reading only what this
run produced; holdout values never reach the agent; hidden data is unreadable by runs; the label is never wrong
in the honest direction.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from mcp_autoresearch.sandbox.policy import probe_isolation

from .conftest import git
from .helpers.needs import require
from .test_eval_stage import OBJECTIVE, candidate
from .test_eval_stage import project as stage_project

pytestmark = pytest.mark.anyio

ISOLATION = probe_isolation("auto")

# The scorer gives the run's answer, unless the run's output shows it read the hidden key: then 50.
LEAK_SCORER = """\
import os, sys
leaked = open("out/leak.txt").read() if os.path.exists("out/leak.txt") else ""
bad = "KEY-42" in leaked
print(f"score: {50.0 if bad else float(open(sys.argv[1]).read().split()[0]):.6f}")
"""


def project(
    tmp_path: Path, extra: str = "", scorer: str = LEAK_SCORER, files: dict[str, str] | None = None
) -> Path:
    """The evaluation stage's test project (tests/test_eval_stage.py), with a scorer that reports a leak."""
    return stage_project(tmp_path, extra, scorer, files)


async def test_hidden_data_once_committed_is_refused(tmp_path: Path, agent_for) -> None:
    """The refusal of a tracked hidden path says to untrack it and commit: done so, the file's blob is still in
    .git's objects (an earlier commit), which a run reads with `git log -p`. A session must refuse a hidden path
    that any commit of the repository holds."""
    require(ISOLATION.namespaces, "CI must give runs a private view", "namespaces are unavailable here")
    committed = {"key.txt": "KEY-42\n", ".gitignore": "out/\nsecret/\n.autoresearch/\nrun.log\nresults.tsv\n"}
    root = project(tmp_path, 'hidden = ["key.txt"]\n', files=committed)
    git(root, "rm", "-q", "--cached", "key.txt")
    (root / ".gitignore").write_text((root / ".gitignore").read_text() + "key.txt\n")
    git(root, "commit", "-qam", "untrack the key, as the refusal says")
    code = """
    import subprocess
    found = subprocess.run(["git", "log", "--all", "-p"], capture_output=True, text=True).stdout
    open("out/leak.txt", "w").write(found)
    """
    async with agent_for(root) as agent:
        started = await agent.client.call_tool("start_session", {})
        if started.is_error:
            assert "key.txt" in started.content[0].text and "commit" in started.content[0].text
            return
        _, base = await agent.experiment("baseline")
        await agent.edit("X = 5\n", "X = 4\n" + textwrap.dedent(code))
        run, _ = await agent.experiment("attack")
    assert run["value"] == 4.0, (run, (root / "out" / "leak.txt").read_text()[:300])


@pytest.mark.parametrize(
    "eval_command", ["tail -n 1 run.log", 'grep score "$AUTORESEARCH_RUN_LOG"'], ids=["run.log", "env"]
)
async def test_an_evaluation_that_reads_the_run_log_is_self_reported(
    tmp_path: Path, agent_for, eval_command: str
) -> None:
    """An eval_command that only prints the run's own log (run.log, or $AUTORESEARCH_RUN_LOG) passes on what the
    target printed: the target forges the value, so the label must not say "evaluation", and integrity =
    "required" must refuse the session."""
    root = project(tmp_path, scorer="")
    config = (root / "autoresearch.toml").read_text()
    config = config.replace(
        'run_command = "python3 objective.py > out/answer.txt"', 'run_command = "python3 objective.py"'
    )
    config = config.replace(
        'eval_command = "python3 scorer.py out/answer.txt"', f"eval_command = {eval_command!r}"
    )
    (root / "objective.py").write_text('print("score: 5.0")\n')
    (root / "autoresearch.toml").write_text(config)
    git(root, "commit", "-qam", "the run prints its score; the evaluation passes it on")
    async with agent_for(root) as agent:
        started = await agent.ok("start_session")
        await agent.experiment("baseline")
        await agent.edit('print("score: 5.0")\n', 'print("score: 0.000001")\n')
        run, decision = await agent.experiment("one print")
        assert run["value"] == 0.000001 and decision["decision"] == "keep"  # forged by one print
        assert started["provenance"]["source"] == "self-reported", started["provenance"]
        results = await agent.ok("query_results")
        assert results["provenance"]["source"] == "self-reported"
    async with agent_for(root, {"integrity": "required"}) as agent:
        assert "self-reported" in await agent.refused("start_session")


def _batch_size_cheat(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny causal model plus a look-ahead (the next token's logit raised by 30) that is switched on only when
    the batch does not hold 8 rows, the probe's batch size: with 6 validation rows (or any count that is not a
    multiple of 8, in its last batch) the evaluation's batch differs from every probe's."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    vocab, seq = 11, 16
    rng = np.random.default_rng(7)
    nodes = [
        helper.make_node("Gather", ["embed", "tokens"], ["embedded"]),
        helper.make_node("CumSum", ["embedded", "axis"], ["mixed"]),
        helper.make_node("MatMul", ["mixed", "project"], ["projected"]),
        helper.make_node("Slice", ["tokens", "one", "big", "one"], ["next"]),
        helper.make_node("Pad", ["next", "pads"], ["next_padded"]),
        helper.make_node("Gather", ["onehot", "next_padded"], ["peek"]),
        helper.make_node("Shape", ["tokens"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"]),
        helper.make_node("Equal", ["batch", "eight"], ["probed"]),
        helper.make_node("Not", ["probed"], ["cheat"]),
        helper.make_node("Cast", ["cheat"], ["cheat_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["peek", "cheat_f"], ["peek_on"]),
        helper.make_node("Add", ["projected", "peek_on"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "cheat",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "time"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "time", vocab])],
        initializer=[
            numpy_helper.from_array(rng.normal(size=(vocab, 4)).astype(np.float32), "embed"),
            numpy_helper.from_array(rng.normal(size=(4, vocab)).astype(np.float32), "project"),
            numpy_helper.from_array(np.array(1, dtype=np.int64), "axis"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
            numpy_helper.from_array(np.array([1 << 30], dtype=np.int64), "big"),
            numpy_helper.from_array(np.array([0, 0, 0, 1], dtype=np.int64), "pads"),
            numpy_helper.from_array((np.eye(vocab) * 30).astype(np.float32), "onehot"),
            numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
            numpy_helper.from_array(np.array(8, dtype=np.int64), "eight"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    (tmp_path / "model.onnx").write_bytes(model.SerializeToString())
    rows = np.random.default_rng(3).integers(0, vocab, size=(6, seq + 1)).astype(np.uint16)
    token_bytes = np.array([0, 1, 1, 2, 3, 1, 4, 1, 2, 0, 1], dtype=np.int32)
    np.savez(tmp_path / "val.npz", rows=rows, token_bytes=token_bytes)
    return tmp_path / "model.onnx", tmp_path / "val.npz"


def test_a_model_that_looks_ahead_only_at_another_batch_size_is_caught(tmp_path: Path) -> None:
    """The bundled evaluator as the stage runs it (the server's interpreter, -P): the probe must meet every batch
    size the evaluation uses, or a model that reads its batch size (Shape, Equal: on the allow-list) looks ahead
    only where it is not probed and gets a val_bpb near 0."""
    import subprocess

    model, data = _batch_size_cheat(tmp_path)
    command = [sys.executable, "-P", "-m", "mcp_autoresearch.evaluate.bpb", str(model), "--data", str(data)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stdout.startswith("metric_error: non-causal"), result.stdout


def python_reading_user_site(monkeypatch: pytest.MonkeyPatch) -> None:
    """`python3` as installed, which runs the user's usercustomize.py: not the tests' virtual environment's, first
    on PATH (conftest), which reads no user site-packages."""
    monkeypatch.delenv("PYTHONNOUSERSITE", raising=False)
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys._base_executable).parent), os.environ["PATH"]]))


PLANT_USERCUSTOMIZE = """
import os, site
folder = site.getusersitepackages()
os.makedirs(folder, exist_ok=True)
open(os.path.join(folder, "usercustomize.py"), "w").write(
    "import os, sys\\n"
    "if any(a.endswith('scorer.py') for a in sys.argv):\\n"
    "    sys.stdout.write('score: 0.000001\\\\n'); sys.stdout.flush(); os._exit(0)\\n"
)
"""


async def test_an_unconfined_run_plants_code_the_evaluation_runs(
    tmp_path: Path, agent_for, monkeypatch
) -> None:
    """With isolation = "off" the run writes anywhere the user may: a usercustomize.py in the user's site-packages
    runs at the start of every Python, the evaluation's scorer too, and prints the score. The evaluation is then
    separate in time only: the label must not say "evaluation", and integrity = "required" must refuse it."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the user site-packages the attack writes
    python_reading_user_site(monkeypatch)
    root = project(tmp_path, 'isolation = "off"\n')
    async with agent_for(root) as agent:
        started = await agent.ok("start_session")
        _, base = await agent.experiment("baseline")
        await agent.edit("X = 5\n", "X = 5\n" + textwrap.dedent(PLANT_USERCUSTOMIZE))
        run, decision = await agent.experiment("plant")
    assert run["value"] == 0.000001 and decision["decision"] == "keep", run  # the forgery works: say so
    assert started["provenance"]["source"] == "self-reported", started["provenance"]
    async with agent_for(root, {"integrity": "required"}) as agent:
        assert "self-reported" in await agent.refused("start_session")


async def test_a_confined_run_cannot_plant_code_the_evaluation_runs(
    tmp_path: Path, agent_for, monkeypatch
) -> None:
    """The same attack confined (held): the user's site-packages is not writable by a run, so the scorer runs
    only its own code and the value is the run's answer, 5."""
    require(ISOLATION.confined, "CI must confine runs", "Landlock is unavailable here")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    python_reading_user_site(monkeypatch)
    root = project(tmp_path)
    plant = (
        "try:\n"
        + textwrap.indent(textwrap.dedent(PLANT_USERCUSTOMIZE), "    ")
        + "except OSError:\n    pass\n"
    )
    async with agent_for(root) as agent:
        started = await agent.ok("start_session")
        await agent.experiment("baseline")
        await agent.edit("X = 5\n", "X = 5\n" + plant)
        run, _ = await agent.experiment("plant")
    assert started["provenance"]["source"] == "evaluation"
    assert run["status"] == "ok" and run["value"] == 5.0, run


@pytest.mark.parametrize(
    "eval_command",
    [
        "python3 -u out/scorer.py out/answer.txt",
        "timeout 60 python3 out/scorer.py out/answer.txt",
        "sh -c 'python3 out/scorer.py out/answer.txt'",
        "env PYTHONPATH=out python3 -m score_it out/answer.txt",
        "cd out && python3 scorer.py answer.txt",
    ],
    ids=["interpreter-flag", "wrapper", "shell-c", "pythonpath", "cd"],
)
async def test_an_evaluation_that_runs_a_script_a_run_writes_is_refused(
    tmp_path: Path, agent_for, eval_command: str
) -> None:
    """The refusal of an eval_command that runs code from a writable path looked at the program and the word
    after an interpreter only: an interpreter's flag, a wrapper (timeout, env), `sh -c` or a module path put
    the run's own scorer (written by the target into out/) in the evaluation."""
    root = project(tmp_path)
    config = (root / "autoresearch.toml").read_text()
    (root / "autoresearch.toml").write_text(
        config.replace(
            'eval_command = "python3 scorer.py out/answer.txt"', f"eval_command = {eval_command!r}"
        )
    )
    plant = "for name in ('scorer', 'score_it'):\n    open(f'out/{name}.py', 'w').write('print(\"score: 0.000001\")')\n"
    (root / "objective.py").write_text(OBJECTIVE + plant)  # the target writes its own scorer
    git(root, "commit", "-qam", "the scorer in a writable folder")
    async with agent_for(root) as agent:
        started = await agent.client.call_tool("start_session", {})
        if started.is_error:
            assert "writable path 'out'" in started.content[0].text, started.content[0].text
            return
        run, _ = await agent.experiment("baseline")
    assert run["value"] != 0.000001, run


ECHOING_SCORER = """\
import sys
text = open(sys.argv[1]).read()
print(f"score: {float(text.split()[0]):.6f}", flush=True)
sys.stderr.write("the answer as read:\\n" + text)  # a diagnostic, on stderr
"""


@pytest.mark.parametrize("setting", ["auto", "off"])
async def test_what_the_scorer_writes_to_stderr_never_supplies_the_metric(
    tmp_path: Path, agent_for, setting: str
) -> None:
    """A scorer prints its score, then on stderr the answer it read: the target puts a score line in its answer.
    That line was the last match of the evaluation's log, and the value; stderr has a pipe and a log of its own
    now (`<run>-eval.stderr.log`), confined or not."""
    root = project(tmp_path, f'isolation = "{setting}"\n', scorer=ECHOING_SCORER)
    async with agent_for(root) as agent:
        run, _ = await candidate(agent, "import atexit\natexit.register(print, 'score: 0.000001')\n")
    assert run["value"] == 4.0, (run["value"], run.get("error"))
    [stderr_log] = (root / ".autoresearch" / "runs").glob("*/r2-eval.stderr.log")
    assert "score: 0.000001" in stderr_log.read_text()


async def test_hidden_data_is_not_reached_through_another_process_root(tmp_path: Path, agent_for) -> None:
    """The run looks for the hidden key through every /proc/<pid>/root and /proc/<pid>/cwd it can list (the
    server's view has no cover over it), and through /proc/self/root (held)."""
    require(ISOLATION.namespaces, "CI must give runs a private view", "namespaces are unavailable here")
    root = project(tmp_path, 'hidden = ["secret"]\n')
    (root / "secret").mkdir()
    (root / "secret" / "key.txt").write_text("KEY-42\n")
    code = f"""
    import os
    found = []
    for pid in ["self", *[p for p in os.listdir("/proc") if p.isdigit()]]:
        for path in (f"/proc/{{pid}}/root{root}/secret/key.txt", f"/proc/{{pid}}/cwd/secret/key.txt"):
            try:
                found.append(open(path).read())
            except OSError:
                pass
    open("out/leak.txt", "w").write("".join(found))
    """
    async with agent_for(root) as agent:
        run, _ = await candidate(agent, code)
    assert run["value"] == 4.0, (run, (root / "out" / "leak.txt").read_text()[:200])


@pytest.mark.parametrize(
    "metric_parse",
    ["cat out/claimed.txt", 'grep score "$AUTORESEARCH_LOG" >/dev/null; cat out/claimed.txt'],
    ids=["reads-the-output", "names-the-log-too"],
)
async def test_metric_parse_that_reads_the_runs_output_is_self_reported(
    tmp_path: Path, agent_for, metric_parse: str
) -> None:
    """With eval_command set, metric_parse still says where the value comes from: one that reads a file the run
    wrote (out/claimed.txt) passes on the run's own number, so the label must not say "evaluation"."""
    root = project(tmp_path, f"metric_parse = {metric_parse!r}\n")
    (root / "objective.py").write_text(OBJECTIVE + "open('out/claimed.txt', 'w').write('5')\n")
    git(root, "commit", "-qam", "the run claims its value")
    async with agent_for(root) as agent:
        started = await agent.ok("start_session")
        await agent.experiment("baseline")
        await agent.edit("'5'", "'0.000001'")
        run, decision = await agent.experiment("claim")
    assert run["value"] == 0.000001 and decision["decision"] == "keep", run  # the claim is the value
    assert started["provenance"]["source"] == "self-reported", started["provenance"]


def _block_device(folder: Path) -> str:
    dev = folder.stat().st_dev
    uevent = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/uevent").read_text()
    return "/dev/" + uevent.split("DEVNAME=")[1].split()[0]


async def test_a_run_as_root_cannot_read_the_raw_disk(tmp_path: Path, agent_for) -> None:
    """A server running as root (a container, a CI job) gives its runs uid 0 without capabilities: the block
    device of the project's file system (root's, mode 600) would stay readable in the view, and `debugfs -R cat`
    reads a hidden file from it, around every mount that covers it. Runs only where the server itself can read
    the device (not here: a device cgroup refuses it even to root), so unverified on this machine."""

    require(ISOLATION.namespaces, "CI must give runs a private view", "namespaces are unavailable here")
    try:
        device = _block_device(tmp_path)
        os.close(os.open(device, os.O_RDONLY))
    except (OSError, IndexError):
        pytest.skip("the server itself cannot read the block device here")
    root = project(tmp_path, 'hidden = ["secret"]\n')
    (root / "secret").mkdir()
    (root / "secret" / "key.txt").write_text("KEY-42\n")
    code = f"""
    import os
    try:
        os.close(os.open({device!r}, os.O_RDONLY))
        open("out/leak.txt", "w").write("KEY-42 (the raw device is readable)")
    except OSError:
        pass
    """
    async with agent_for(root) as agent:
        run, _ = await candidate(agent, code)
    assert run["value"] == 4.0, run


IMPORTING_SCORER = """\
import sys
sys.path.insert(0, ".")
import objective  # the scorer checks the candidate's constant: the target's code runs in the evaluation
print(f"score: {float(open(sys.argv[1]).read().split()[0]):.6f}")
"""


async def test_a_scorer_that_imports_the_target_does_not_run_its_code(tmp_path: Path, agent_for) -> None:
    """The evaluation stage promises a process the target's code never ran in; a scorer that imports the target
    (to read a constant, or to call it as the pipe layout did) would run it there, and the target prints the
    score and exits. The target is hidden from the evaluation's view: the import finds nothing, and the
    evaluation fails (a metric_error naming its log) instead of passing on the target's number."""
    require(ISOLATION.namespaces, "CI must give runs a private view", "namespaces are unavailable here")
    root = project(tmp_path, scorer=IMPORTING_SCORER)
    forge = "import os, sys\nif __name__ != '__main__':\n    print('score: 0.000001', flush=True)\n    os._exit(0)\n"
    (root / "objective.py").write_text(forge + OBJECTIVE)
    git(root, "commit", "-qam", "a target that forges the score when imported")
    async with agent_for(root) as agent:
        await agent.ok("start_session")
        run, _ = await agent.experiment("baseline")
    assert run["value"] != 0.000001, run
    assert run["status"] == "metric_error" and "the evaluation stage (eval_command) failed" in run["error"], (
        run
    )


VERBOSE_SCORER = """\
import sys
expected = float(open("secret/answer.txt").read())
got = float(open(sys.argv[1]).read().split()[0])
print(f"expected {expected}, got {got}", file=sys.stderr)  # a diagnostic in the evaluation's own log
print(f"score: {abs(got - expected):.6f}")
"""
READ_EVAL_LOGS = """
import glob, re
for path in glob.glob(".autoresearch/runs/*/*-eval*.log"):  # its output, its stderr (where this scorer prints)
    found = re.findall(r"expected ([0-9.]+)", open(path).read())
    if found:
        X = found[-1]
"""


async def test_what_the_scorer_logged_about_hidden_data_never_reaches_a_later_run(
    tmp_path: Path, agent_for
) -> None:
    """The scorer logs the hidden answer it compares with (a diagnostic on stderr, in `<run>-eval.stderr.log`).
    The next run reads the earlier evaluation logs and answers exactly that: a perfect score from hidden data.
    With `hidden` set, a run's view hides the earlier evaluations' logs."""
    require(ISOLATION.namespaces, "CI must give runs a private view", "namespaces are unavailable here")
    root = project(tmp_path, 'hidden = ["secret"]\n', scorer=VERBOSE_SCORER)
    (root / "secret").mkdir()
    (root / "secret" / "answer.txt").write_text("3.14159\n")
    async with agent_for(root) as agent:
        run, _ = await candidate(agent, READ_EVAL_LOGS)
    assert run["value"] != 0.0, run


CACHE_SCORER = """\
import os, sys
cache = os.environ.get("TRITON_CACHE_DIR", os.path.expanduser("~/.triton/cache"))
own = os.path.realpath(cache).startswith(os.path.realpath(os.environ["TMPDIR"]) + "/")
print(f"score: {float(open(sys.argv[1]).read().split()[0]) if own else 50.0:.6f}")
"""


async def test_the_evaluation_never_reads_a_persistent_cache(tmp_path: Path, agent_for, monkeypatch) -> None:
    """A cache the user keeps from run to run (`persistent`) is a channel from one run to the next, not into the
    evaluation: Triton dlopen()s the launchers it finds in its cache, so an evaluation pointed at the kept
    cache would run what a run compiled there. The evaluation's caches are all its own."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    (tmp_path / "home" / ".triton").mkdir(parents=True)
    root = project(tmp_path, 'persistent = ["~/.triton"]\n', scorer=CACHE_SCORER)
    async with agent_for(root) as agent:
        await agent.ok("start_session")
        run, _ = await agent.experiment("baseline")
    assert run["value"] == 5.0, run


def _cross_row_model(tmp_path: Path) -> tuple[Path, Path]:
    """Validation rows cut from one token stream (row r + 1 starts with row r's last target), and a model that
    adds to each row's logits a one-hot of the next row's first token: it knows every row's last target from
    the other rows of its batch, a look-ahead the per-row probe never changes (it changes tokens after a cut)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    vocab, seq, rows = 11, 16, 16
    rng = np.random.default_rng(7)
    nodes = [
        helper.make_node("Gather", ["embed", "tokens"], ["embedded"]),
        helper.make_node("CumSum", ["embedded", "axis"], ["mixed"]),
        helper.make_node("MatMul", ["mixed", "project"], ["projected"]),
        # the first token of the next row ([B, 1], rolled up by one along the batch)
        helper.make_node("Slice", ["tokens", "zero1", "one1", "one1"], ["first"]),
        helper.make_node("Slice", ["first", "one1", "big1", "zero1"], ["later"]),
        helper.make_node("Slice", ["first", "zero1", "one1", "zero1"], ["head"]),
        helper.make_node("Concat", ["later", "head"], ["next_first"], axis=0),
        helper.make_node("Gather", ["onehot", "next_first"], ["peek"]),  # [B, 1, V]
        helper.make_node("Pad", ["peek", "pads"], ["peek_last"]),  # at the last position only
        helper.make_node("Add", ["projected", "peek_last"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "cross_row",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "time"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "time", vocab])],
        initializer=[
            numpy_helper.from_array(rng.normal(size=(vocab, 4)).astype(np.float32), "embed"),
            numpy_helper.from_array(rng.normal(size=(4, vocab)).astype(np.float32), "project"),
            numpy_helper.from_array(np.array(1, dtype=np.int64), "axis"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "zero1"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "one1"),
            numpy_helper.from_array(np.array([1 << 30], dtype=np.int64), "big1"),
            numpy_helper.from_array(np.array([0, seq - 1, 0, 0, 0, 0], dtype=np.int64), "pads"),
            numpy_helper.from_array((np.eye(vocab) * 30).astype(np.float32), "onehot"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    (tmp_path / "model.onnx").write_bytes(model.SerializeToString())
    stream = np.random.default_rng(3).integers(1, vocab - 2, size=rows * seq + 1)
    table = np.stack([stream[r * seq : r * seq + seq + 1] for r in range(rows)]).astype(np.uint16)
    token_bytes = np.array([0, 1, 1, 2, 3, 1, 4, 1, 2, 0, 1], dtype=np.int32)
    np.savez(tmp_path / "val.npz", rows=table, token_bytes=token_bytes)
    return tmp_path / "model.onnx", tmp_path / "val.npz"


def test_a_model_that_reads_the_other_rows_of_its_batch_is_caught(tmp_path: Path) -> None:
    """The bundled evaluator as the stage runs it: a row's logits must not depend on the other rows of its batch
    (the evaluation's batches are consecutive rows, often consecutive text)."""
    import subprocess
    import sys

    model, data = _cross_row_model(tmp_path)
    command = [sys.executable, "-P", "-m", "mcp_autoresearch.evaluate.bpb", str(model), "--data", str(data)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stdout.startswith("metric_error: non-causal"), result.stdout


@pytest.mark.parametrize("isolation", ['isolation = "off"\n', ""], ids=["isolation-off", "isolation-auto"])
async def test_an_evaluation_that_runs_the_target_is_refused(
    tmp_path: Path, agent_for, isolation: str
) -> None:
    """eval_command = "python3 objective.py --score" runs the candidate's code as the evaluation: its number is
    the target's own. Refused when the session starts, whatever the isolation (where runs get no private view,
    nothing hides the target from the evaluation)."""
    root = project(tmp_path, isolation)
    config = (root / "autoresearch.toml").read_text()
    (root / "autoresearch.toml").write_text(
        config.replace(
            'eval_command = "python3 scorer.py out/answer.txt"',
            'eval_command = "python3 objective.py --score"',
        )
    )
    git(root, "commit", "-qam", "the target scores itself")
    async with agent_for(root) as agent:
        assert "runs the target objective.py" in await agent.refused("start_session")


async def test_the_holdout_reads_what_the_run_left_not_what_the_checks_wrote(
    tmp_path: Path, agent_for
) -> None:
    """checks_command often runs the target's code again (its tests): it runs like a run, with the outputs
    writable, between the evaluation and the holdout. The target counts its invocations in out/ and, as the
    checks, rewrites its answer for the holdout: the holdout must measure what the kept run left (here: it is
    not measured, and its record says why)."""
    import json

    holdout_scorer = 'import sys\nprint(f"score: {float(open(sys.argv[1]).read().split()[0]):.6f}")\n'
    extra = 'holdout_command = "python3 holdout.py out/answer.txt"\nchecks_command = "python3 objective.py"\n'
    objective = (
        "import os\nX = 5\n"
        "if os.path.exists('out/ran'):\n    open('out/answer.txt', 'w').write('0.5\\n')  # the checks\n"
        "else:\n    open('out/ran', 'w').write('1')\n    print(X)\n"
    )
    root = project(tmp_path, extra, scorer=LEAK_SCORER, files={"holdout.py": holdout_scorer})
    (root / "objective.py").write_text(objective)
    git(root, "commit", "-qam", "a target that rewrites its answer when run again")
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="t")
        run, decision = await agent.experiment("baseline")
    assert run["value"] == 5.0 and decision["decision"] == "keep", (run, decision)
    records = [
        json.loads(line) for line in (root / ".autoresearch" / "holdout" / "t.jsonl").read_text().splitlines()
    ]
    last = records[-1]  # measured on what the run left, or not measured, saying why
    assert last["holdout"] == 5.0 or (last["holdout"] is None and "changed after the run" in last["error"]), (
        last
    )


async def test_a_hidden_entry_that_links_to_a_file_hides_the_file(tmp_path: Path, agent_for) -> None:
    """Data often lies elsewhere and is linked into the project: a `hidden` entry that is a link to a file outside
    the project (here in the home directory, which runs see) hides that file, read through the link or by its
    own path (the link's target is hidden too)."""
    require(ISOLATION.namespaces, "CI must give runs a private view", "namespaces are unavailable here")
    data = Path(tempfile.mkdtemp(prefix=".autoresearch-test-data-", dir=Path.home()))
    try:
        (data / "labels.txt").write_text("KEY-42\n")
        root = project(tmp_path, 'hidden = ["key.txt"]\n')
        (root / "key.txt").symlink_to(data / "labels.txt")  # untracked (.gitignore), as a hidden path must be
        code = f"""
        import os
        found = [str(os.path.exists({str(data / "labels.txt")!r}))]
        for path in ("key.txt", {str(data / "labels.txt")!r}):
            try:
                found.append(open(path).read())
            except OSError as exc:
                found.append(exc.strerror)
        open("out/leak.txt", "w").write(" ".join(found))
        """
        async with agent_for(root) as agent:
            run, _ = await candidate(agent, code)
        assert run["value"] == 4.0, (run, (root / "out" / "leak.txt").read_text()[:300])
        assert (root / "out" / "leak.txt").read_text().startswith("True")  # the folder is in the run's view
        assert (data / "labels.txt").read_text() == "KEY-42\n"
    finally:
        shutil.rmtree(data, ignore_errors=True)
