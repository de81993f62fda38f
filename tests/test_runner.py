"""The runner under every fault the issue lists: real subprocesses, real process trees."""

from __future__ import annotations

import os
import resource
import threading
import time
from pathlib import Path

import psutil

from mcp_autoresearch.lifecycle.experiment import Experiment
from mcp_autoresearch.sandbox.process_run import ProcessRun
from mcp_autoresearch.sandbox.processes import marked_processes
from mcp_autoresearch.setup.config import build_config


def run(root: Path, command: str, run_id: str = "r1", **settings):
    config = build_config({"run_command": command, "metric_name": "score", "target_file": "x", **settings})
    return Experiment(config, root, run_id, root / ".autoresearch" / "runs").run()


def processes_of(root: Path) -> list[psutil.Process]:
    return marked_processes(str(root))


def test_metric_line_and_secondary_figures(tmp_path: Path) -> None:
    result = run(tmp_path, "echo 'score: 1.5'; echo 'METRIC other=3'; echo 'peak_vram_mb: 2048'")
    assert result.status == "ok" and result.value == 1.5
    assert result.secondary == {"other": 3.0}
    assert result.memory_gb == 2.0
    assert result.exit_code == 0
    assert (tmp_path / "run.log").read_text() == Path(result.log_path).read_text()


def test_metric_printed_twice_last_wins(tmp_path: Path) -> None:
    assert run(tmp_path, "echo 'score: 1'; echo 'METRIC score=2'; echo 'score: 3'").value == 3.0


def test_metric_printed_early_in_verbose_output_is_found(tmp_path: Path) -> None:
    result = run(tmp_path, "echo 'score: 0.25'; yes 'noise line that is long enough' | head -n 400000")
    assert result.status == "ok" and result.value == 0.25


def test_command_not_found_is_a_crash(tmp_path: Path) -> None:
    result = run(tmp_path, "definitely-not-a-command-xyz")
    assert result.status == "crash"
    assert result.exit_code == 127 and "not found" in result.error
    assert "not found" in result.log_tail


def test_metric_then_crash_does_not_count(tmp_path: Path) -> None:
    result = run(tmp_path, "echo 'score: 1.0'; echo 'Traceback: boom' >&2; exit 1")
    assert result.status == "crash" and result.value is None
    assert "boom" in result.log_tail


def test_nan_is_a_metric_error(tmp_path: Path) -> None:
    result = run(tmp_path, "echo 'score: nan'")
    assert result.status == "metric_error" and "nan" in result.error


def test_no_metric_is_a_metric_error(tmp_path: Path) -> None:
    result = run(tmp_path, "echo nothing here")
    assert result.status == "metric_error" and "no line matching" in result.error


def test_hang_with_no_output_times_out(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run(tmp_path, "sleep 60", timeout=1)
    assert result.status == "timeout"
    assert time.monotonic() - started < 50  # ended at its timeout, not by its own end (sleep 60)
    assert processes_of(tmp_path) == []


def test_sigterm_ignored_and_setsid_grandchild_are_all_killed(tmp_path: Path) -> None:
    command = (
        "setsid sh -c 'trap \"\" TERM; while true; do sleep 1; done' & "
        "trap '' TERM; while true; do sleep 1; done"
    )
    result = run(tmp_path, command, timeout=1.5)
    assert result.status == "timeout"
    time.sleep(0.2)
    assert processes_of(tmp_path) == []


def test_double_forked_daemon_left_after_success_is_killed(tmp_path: Path) -> None:
    command = "(setsid sh -c 'sleep 300' &) ; echo 'score: 1'"
    result = run(tmp_path, command)
    assert result.status == "ok"
    assert result.leftovers_killed >= 1
    assert processes_of(tmp_path) == []


def test_one_gigabyte_of_output_is_streamed_not_held(tmp_path: Path) -> None:
    me = psutil.Process()
    before = me.memory_info().rss
    result = run(tmp_path, "head -c 1000000000 /dev/zero | tr '\\0' 'x'; echo; echo 'score: 9'", timeout=120)
    growth = me.memory_info().rss - before
    assert result.status == "ok" and result.value == 9.0
    # The log keeps at most log_limit_mb (64 by default): here the end's last whole line (the 1 GB line has no
    # beginning kept: its head would be a line cut in two), and the line saying what was left out.
    assert Path(result.log_path).stat().st_size < 1_000
    assert result.output_cut and "the run: the command printed 1,000.0 MB" in result.output_cut
    assert growth < 50 * 1024 * 1024
    assert len(result.log_tail) <= 2000


def test_binary_and_invalid_utf8_output_is_made_harmless(tmp_path: Path) -> None:
    command = (
        "python3 -c \"import sys; sys.stdout.buffer.write(bytes(range(256)) + b'\\x1b[31mred\\x1b[0m\\n'"
        " + b'\\xff\\xfe invalid\\n' + b'score: 2\\n')\""
    )
    result = run(tmp_path, command)
    assert result.status == "ok" and result.value == 2.0
    assert "\x1b" not in result.log_tail and "\x00" not in result.log_tail
    assert "red" in result.log_tail
    result.log_tail.encode("utf-8")  # valid text


def test_metric_parse_command(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        "echo 'accuracy: 0.93'",
        metric_parse="grep 'accuracy:' run.log | tail -1 | awk '{print $2}'",
    )
    assert result.status == "ok" and result.value == 0.93


def test_metric_parse_that_hangs_is_bounded(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run(tmp_path, "echo hi", metric_parse="sleep 60", timeout=1)
    assert result.status == "metric_error" and "did not finish" in result.error
    assert time.monotonic() - started < 50  # ended at its timeout, not by its own end (sleep 60)


def test_metric_parse_printing_nothing(tmp_path: Path) -> None:
    result = run(tmp_path, "echo hi", metric_parse="true")
    assert result.status == "metric_error" and "no number" in result.error


def test_metric_regex(tmp_path: Path) -> None:
    result = run(tmp_path, "echo 'Final accuracy = 71.5%'", metric_regex=r"accuracy = ([\d.]+)%")
    assert result.value == 71.5


def test_measured_wall_time_and_size(tmp_path: Path) -> None:
    timed = run(tmp_path, "sleep 0.3", metric_measure="wall_time_s")
    assert timed.status == "ok" and 0.25 < timed.value < 3
    sized = run(
        tmp_path,
        "mkdir -p dist && head -c 2048 /dev/zero > dist/a.js && head -c 1024 /dev/zero > dist/b",
        metric_measure="size_kb:dist",
    )
    assert sized.value == 3.0
    missing = run(tmp_path, "true", metric_measure="size_mb:nothing/here.apk")
    assert missing.status == "metric_error" and "does not exist" in missing.error


def test_run_that_deletes_its_log_and_run_log(tmp_path: Path) -> None:
    result = run(tmp_path, "echo 'score: 4'; rm -rf .autoresearch run.log")
    assert result.status == "ok" and result.value == 4.0
    assert Path(result.log_path).exists()
    assert "score: 4" in (tmp_path / "run.log").read_text()


def test_command_that_writes_run_log_itself(tmp_path: Path) -> None:
    result = run(tmp_path, "echo 'score: 5' > run.log 2>&1")
    assert result.value == 5.0


def test_environment_marker_and_stdin(tmp_path: Path) -> None:
    result = run(tmp_path, "echo \"id=$AUTORESEARCH_RUN_ID\"; cat; echo 'score: 1'", run_id="r42")
    assert "id=r42" in Path(result.log_path).read_text()
    assert result.status == "ok"  # `cat` got /dev/null and did not hang


def test_checks_gate(tmp_path: Path) -> None:
    failed = run(tmp_path, "echo 'score: 1'", checks_command="echo 'test_x FAILED'; exit 1")
    assert failed.status == "checks_failed" and "FAILED" in failed.log_tail
    passed = run(tmp_path, "echo 'score: 1'", checks_command="true")
    assert passed.status == "ok"


def test_repeats_give_median_and_spread(tmp_path: Path) -> None:
    counter = tmp_path / "n"
    counter.write_text("0")
    command = 'n=$(cat n); n=$((n+1)); echo $n > n; echo "score: $((n*n))"'
    result = run(tmp_path, command, repeats=3)
    assert result.values == [1.0, 4.0, 9.0]
    assert result.value == 4.0 and result.spread == 8.0


def test_peak_memory_of_tree_is_sampled(tmp_path: Path) -> None:
    command = (
        "python3 -c \"x = bytearray(200 * 1024 * 1024); import time; time.sleep(1.2); print('score: 1')\""
    )
    result = run(tmp_path, command)
    assert result.memory_gb is not None and result.memory_gb >= 0.18


def test_cancel_kills_the_tree(tmp_path: Path) -> None:
    config = build_config(
        {"run_command": "setsid sleep 300 & sleep 300", "metric_name": "score", "target_file": "x"}
    )
    experiment = Experiment(config, tmp_path, "r1", tmp_path / "logs")
    threading.Timer(0.5, experiment.cancel, args=("client cancelled",)).start()
    result = experiment.run()
    assert result.status == "cancelled" and result.error == "client cancelled"
    assert processes_of(tmp_path) == []


def test_progress_callback_reports_elapsed_and_last_line(tmp_path: Path) -> None:
    seen: list[tuple[float, float, str]] = []
    process = ProcessRun(
        command="echo starting; sleep 1.5; echo done",
        cwd=tmp_path,
        log_path=tmp_path / "l.log",
        timeout_s=10,
        on_progress=lambda e, t, line: seen.append((e, t, line)),
        progress_every_s=0.5,
    )
    result = process.run()
    assert result.status == "exited"
    assert seen and seen[0][1] == 10 and seen[0][2] == "starting"


def test_no_zombies_left(tmp_path: Path) -> None:
    """The daemon a run leaves behind is killed and reaped: it is neither alive nor a zombie child of ours.
    (Checked by pid: other tests' orphans may become this process's zombies at any time, since it is a
    subreaper.)"""
    result = run(tmp_path, "(setsid sh -c 'sleep 30' & echo \"daemon=$!\"); echo 'score: 1'")
    daemon = int(Path(result.log_path).read_text().split("daemon=")[1].split()[0])
    time.sleep(0.2)
    try:
        proc = psutil.Process(daemon)
        assert proc.status() != psutil.STATUS_ZOMBIE and "sleep" not in " ".join(proc.cmdline())
    except psutil.NoSuchProcess:
        pass


def peak_rss_growth(action) -> tuple[object, int]:
    """Run `action` while sampling this process's RSS; returns its result and the peak growth in bytes."""
    me = psutil.Process()
    base = me.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = action()
    finally:
        done.set()
        sampler.join()
    return result, peak[0] - base


def test_huge_output_without_newlines_does_not_fill_memory(tmp_path: Path) -> None:
    limit = 60 * 1024 * 1024
    command = "head -c 300000000 /dev/zero | tr '\\0' 'x'"
    result, growth = peak_rss_growth(lambda: run(tmp_path, command + "; printf '\\nscore: 3\\n'", timeout=60))
    assert result.status == "ok" and result.value == 3.0
    assert growth < limit
    missing, growth = peak_rss_growth(lambda: run(tmp_path, command, timeout=60))
    assert missing.status == "metric_error" and growth < limit


def test_metric_lines_across_chunk_boundaries(tmp_path: Path) -> None:
    from mcp_autoresearch.measure.metrics import CHUNK, last_match, read_secondary, user_pattern

    log = tmp_path / "big.log"
    with log.open("wb") as handle:
        for i in range(3 * CHUNK // 40):
            handle.write(f"METRIC m{i % 7}={i}\n".encode() if i % 9973 == 0 else b"x" * 39 + b"\n")
        handle.write(b"METRIC tail=1.5")  # no final newline
    figures = read_secondary(log, None, None)
    assert figures.metrics["tail"] == 1.5
    assert len(figures.metrics) == 8
    assert last_match(log, [user_pattern(r"^METRIC m3=(\d+)")]) is not None
    assert last_match(log, [user_pattern(r"^(never)")]) is None


def test_a_server_holding_more_than_a_thousand_files_still_runs(tmp_path: Path) -> None:
    """A long-lived server may hold many descriptors: a run's pipes and process handles then get numbers past
    1023, which `select` refuses ('filedescriptor out of range'): every run would fail inside the server."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1200
    assert hard == resource.RLIM_INFINITY or hard >= wanted + 200, "this machine allows too few open files"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted + 200), hard))
    fillers: list[int] = []
    try:
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        fillers.append(null)
        while fillers[-1] < wanted:  # every number below `wanted` taken: what the run opens comes after
            fillers.append(os.dup(null))
        result = run(tmp_path, "echo 'score: 2.5'")
        assert result.status == "ok" and result.value == 2.5, result.error
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
