"""Attacks on the bounded run log (`records/run_log.py`) as a run's code or a full disk would make them: a value
read from a log that left part of the output out must be one the run printed last, never a stale one from the
beginning nor a number of the server's own line saying what was left out."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mcp_autoresearch.backends import ray_records
from mcp_autoresearch.lifecycle.experiment import Experiment
from mcp_autoresearch.measure.metrics import MetricError, read_metric_from_log
from mcp_autoresearch.records.run_log import RunLog, log_bounds
from mcp_autoresearch.setup.config import build_config

from .test_run_log import baseline_of, log_project

pytestmark = pytest.mark.anyio


def _loop(count: int, line: str) -> str:
    return f"i=0; while [ $i -lt {count} ]; do echo '{line}'; i=$((i+1)); done"


async def test_a_value_printed_before_the_part_left_out_is_not_read_as_the_last(
    tmp_path: Path, agent_for: Any
) -> None:
    """The run prints `score: 1`, filler, then `score: 2` (its last value) in the part the log leaves out, then
    filler to the end: an honest reading gives 2; the log holds only the 1 of its beginning, which must not be
    read as the run's value."""
    filler = "no metric here " + "y" * 80
    command = f"echo 'score: 1'; {_loop(5000, filler)}; {_loop(5000, 'score: 2')}; {_loop(5000, filler)}"
    root = log_project(tmp_path, command, 0.2)
    run = await baseline_of(agent_for, root)
    assert run["status"] == "metric_error" and "log_limit_mb" in run["error"], run
    assert run["output_cut"], run


async def test_the_numbers_of_the_line_saying_what_was_left_out_are_never_read_as_the_metric(
    tmp_path: Path, agent_for: Any
) -> None:
    """A metric_regex that reads the first number after `score`, across lines: the run prints `score` and no
    number at all, so an honest reading finds none; the server's line in the log must not supply one."""
    command = f"echo 'score'; {_loop(10000, 'no digits in this line, only letters')}"
    root = log_project(tmp_path, command, 0.1, "metric_regex = 'score\\D*(\\d+)'\n")
    run = await baseline_of(agent_for, root)
    assert run["status"] == "metric_error", run
    assert run["output_cut"], run


async def test_metric_parse_output_past_the_limit_is_not_read(tmp_path: Path, agent_for: Any) -> None:
    """metric_parse prints one line longer than the log's end, then its value: its log keeps only the server's
    line and the value, and the first number of its last 4 KB would be the server's count of bytes left out."""
    parse = "head -c 30000 /dev/zero | tr '\\\\0' a; echo; echo 0.5"
    root = log_project(tmp_path, "echo ran", 0.01, f'metric_parse = "{parse}"\n')
    run = await baseline_of(agent_for, root)
    assert (
        run["status"] == "metric_error" and "metric_parse printed more than log_limit_mb" in run["error"]
    ), run


def test_a_log_that_meets_a_full_disk_says_so_and_keeps_no_end_to_read_from(tmp_path: Path) -> None:
    """The log's file becomes /dev/full (a full disk) after the first line: the run's later, last value is
    dropped, and the log's first value must not be read as its last."""
    path = tmp_path / "run.log"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        log = RunLog(fd, 1_000_000)
        log.write(b"score: 1\n")
        os.dup2(full, fd)  # the same descriptor, now writing where no byte fits
        log.write(b"score: 2\n")
        log.finish()
    finally:
        os.close(full)
        os.close(fd)
    assert log.failed and path.read_bytes() == b"score: 1\n"
    assert "could not be written past" in (log.summary("the command") or ""), log.summary()
    assert log.end_from == log.size
    with pytest.raises(MetricError, match="log_limit_mb, or a full disk"):
        read_metric_from_log(path, "score", None, False, log.end_from)


# RunLog in a process whose files may not grow past the middle of the value's line: the log's end is written
# in part (a short write, then EFBIG), as on a disk that fills while the end is written.
_SHORT_TAIL = """
import json, os, resource, signal, sys
from mcp_autoresearch.records.run_log import RunLog, log_bounds
from mcp_autoresearch.setup.config import build_config
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

def written(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    log = RunLog(fd, 200)
    log.write(b"filler line number one\\n" * 20 + b"score: 0.1234\\n")
    log.finish()
    os.close(fd)
    return log

whole = open(written(sys.argv[1] + ".whole") and sys.argv[1] + ".whole", "rb").read()
cut = whole.index(b"score: 0.1234") + len(b"score: 0.12")
resource.setrlimit(resource.RLIMIT_FSIZE, (cut, resource.RLIM_INFINITY))
log = written(sys.argv[1])
print(json.dumps({"end_from": log.end_from, "size": log.size, "failed": log.failed}))
"""


def test_a_value_cut_in_two_by_a_full_disk_while_the_end_is_written_is_never_read(tmp_path: Path) -> None:
    """The file may not grow past the middle of the last line when the log writes its end: the part of it that
    made it into the file (`score: 0.12` of `score: 0.1234`) is never read as the value."""
    path = tmp_path / "run.log"
    done = subprocess.run([sys.executable, "-c", _SHORT_TAIL, str(path)], capture_output=True, check=True)
    state = json.loads(done.stdout)
    data = path.read_bytes()
    assert data.endswith(b"score: 0.12"), data  # the attack: the value's line cut in two
    assert state["failed"] and state["end_from"] == state["size"] == len(data), (state, data)
    with pytest.raises(MetricError):
        read_metric_from_log(path, "score", None, False, state["end_from"])


async def test_the_memory_figure_is_never_read_from_the_line_saying_what_was_left_out(
    tmp_path: Path, agent_for: Any
) -> None:
    """A memory_regex that reads the first number after `peak`, across lines: the run prints `peak` and no
    number after it but its metric; the server's line must not supply the memory figure."""
    command = f"echo 'peak'; {_loop(10000, 'no digits in this line, only letters')}; echo 'score: 3'"
    root = log_project(tmp_path, command, 0.1, "memory_regex = 'peak\\D*(\\d+)'\n")
    run = await baseline_of(agent_for, root)
    assert run["status"] == "ok" and run["value"] == 3.0 and run["output_cut"], run
    forged = int(
        re.search(r"peak\D*(\d+)", Path(run["log_path"]).read_text()).group(1)
    )  # in the server's line
    assert run["memory_gb"] != round(forged / 1024, 3), run  # None, or the tree's sampled peak: never that


def test_the_end_a_log_keeps_is_the_8_mb_the_readme_says(tmp_path: Path) -> None:
    """README: past the limit the log keeps "the last 8 MB", 1 MB being 10⁶ bytes; output_cut says as much."""
    fd = os.open(tmp_path / "run.log", os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        log = RunLog(fd, 20_000_000)
        line = b"x" * 99 + b"\n"
        for _ in range(25):
            log.write(line * 10_000)
        log.finish()
    finally:
        os.close(fd)
    assert log.kept[1] <= 8_000_000 and "and the last 8.0 MB" in (log.summary() or ""), log.summary()


@pytest.mark.parametrize(
    "parse",
    [
        "grep 'score:' \\\"$AUTORESEARCH_LOG\\\" | tail -n 1 | cut -d' ' -f2",
        "grep 'score:' run.log | tail -n 1 | cut -d' ' -f2",  # the original tool's form: run.log at the root
    ],
)
async def test_metric_parse_never_reads_a_value_from_before_the_part_left_out(
    tmp_path: Path, agent_for: Any, parse: str
) -> None:
    """metric_parse greps the last `score:` line of the run's log (`AUTORESEARCH_LOG`, or `run.log`): the run's
    last value (2) is in the part left out, its first (1) in the log's beginning; the parser must not be handed
    that beginning to read 1 from. `run.log` shows the whole log again afterwards, for people."""
    filler = "no metric here " + "y" * 80
    command = f"echo 'score: 1'; {_loop(5000, filler)}; {_loop(5000, 'score: 2')}; {_loop(5000, filler)}"
    root = log_project(tmp_path, command, 0.2, f'metric_parse = "{parse}"\n')
    run = await baseline_of(agent_for, root)
    assert run["status"] == "metric_error" and run["output_cut"], run
    assert (root / "run.log").read_bytes() == Path(run["log_path"]).read_bytes()


async def test_a_line_of_the_run_that_says_output_was_left_out_is_not_believed(
    tmp_path: Path, agent_for: Any
) -> None:
    """The run prints, under the limit, the server's line saying output was left out between two values: the
    log holds all of the output, nothing says it was cut, and its last value is read."""
    fake = (
        "autoresearch: 9,999 bytes of output left out here: the run printed 99,999 bytes, and its log keeps "
        "the first 1 and the last 1 (log_limit_mb)"
    )
    command = f"echo 'score: 2'; echo '{fake}'; echo 'score: 3'"
    root = log_project(tmp_path, command, 0.01)
    run = await baseline_of(agent_for, root)
    assert run["status"] == "ok" and run["value"] == 3.0 and run.get("output_cut") is None, run


def test_a_secondary_metric_printed_before_the_part_left_out_is_not_reported(tmp_path: Path) -> None:
    """`METRIC loss=1` in the log's beginning, `METRIC loss=2` (its last value) in the part left out: the
    result must not report loss = 1 as the run's."""
    filler = "no metric here " + "y" * 80
    lines = f"{_loop(5000, filler)}; {_loop(5000, 'METRIC loss=2')}; {_loop(5000, filler)}"
    command = f"echo 'METRIC loss=1'; {lines}; echo 'METRIC aux=4'; echo 'score: 3'"
    config = build_config(
        {"run_command": command, "metric_name": "score", "target_file": "x", "log_limit_mb": 0.2}
    )
    result = Experiment(config, tmp_path, "r1", tmp_path / ".autoresearch" / "runs").run()
    assert result.status == "ok" and result.value == 3.0 and result.output_cut, result
    assert result.secondary == {"aux": 4.0}, result.secondary


def _through_ray_records(data: bytes, limit: int, rng: random.Random, path: Path) -> tuple[bytes, RunLog]:
    """`data` printed on a Ray worker whose wrapper bounds what it sends (`Framed.bound`), framed, unframed by
    the server into its RunLog: the server's log and the log."""
    private, public = ray_records.key_pair()
    framed_path = path.with_suffix(".framed")
    with open(framed_path, "wb") as sink:
        framed = ray_records.Framed(sink.fileno())
        framed.bound(*log_bounds(limit))
        framed.begin(public)
        at = 0
        while at < len(data):
            size = rng.randrange(1, 5_000)
            framed.data(data[at : at + size])
            at += size
        framed.end({"exit": 0})
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        log = RunLog(fd, limit)
        unframer = ray_records.Unframer(log.write, private, log.skip)
        unframer.feed(framed_path.read_text("utf-8", "surrogateescape"))
        assert unframer.tampered is None and unframer.report == {"exit": 0}
        log.finish()
    finally:
        os.close(fd)
    return path.read_bytes(), log


def _local(data: bytes, limit: int, path: Path) -> bytes:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        log = RunLog(fd, limit)
        log.write(data)
        log.finish()
    finally:
        os.close(fd)
    return path.read_bytes()


def test_a_ray_wrapper_sends_what_the_servers_log_keeps_and_the_log_is_the_same_as_a_local_runs(
    tmp_path: Path,
) -> None:
    """The wrapper sends only the head and the end of a long output (what reaches the cluster's log of the job),
    and a `cut` record: the server's log is byte for byte the log a local run of the same output gets."""
    rng = random.Random(5)
    cut = 0
    for trial in range(150):
        lines = [b"L%d " % i + b"x" * rng.randrange(0, 200) + b"\n" for i in range(rng.randrange(0, 400))]
        if rng.random() < 0.3:
            lines.insert(rng.randrange(len(lines) + 1), b"y" * rng.randrange(100, 20_000))  # a long line
        data = b"".join(lines)
        limit = rng.choice([100, 1_000, 5_000, 20_000, len(data) or 1, len(data) + 1])
        got, log = _through_ray_records(data, limit, rng, tmp_path / "ray.log")
        assert got == _local(data, limit, tmp_path / "local.log"), (trial, limit)
        assert hashlib.sha256(got).hexdigest() == log.sha256 and log.printed == len(data), trial
        framed = (tmp_path / "ray.framed").stat().st_size
        assert framed <= 3 * limit + 4_000, (trial, framed, limit)  # never the whole output when it is longer
        cut += log.left_out > 0
    assert cut > 50  # most trials left output out


def test_a_ray_run_past_its_head_still_shows_its_latest_output_while_it_runs(tmp_path: Path) -> None:
    """The wrapper holds the end of a long output until the run ends: the server's progress line (what
    `wait_experiment` shows) still gets the output's last bytes, never its log."""
    private, public = ray_records.key_pair()
    framed_path = tmp_path / "ray.framed"
    with open(framed_path, "wb") as sink:
        framed = ray_records.Framed(sink.fileno())
        framed.bound(*log_bounds(10_000))
        framed.begin(public)
        framed.data(b"line of the head\n" * 1_000)  # past the head: the wrapper holds the rest
        framed.data(b"step 41 of 100\n")
    fd = os.open(tmp_path / "ray.log", os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        log = RunLog(fd, 10_000)
        ray_records.Unframer(log.write, private, log.skip, log.note_recent).feed(framed_path.read_text())
        assert log.size <= 5_000 and b"step 41" not in (tmp_path / "ray.log").read_bytes()
        assert log.recent().endswith(b"line of the head\n"), log.recent()[-100:]
    finally:
        os.close(fd)
