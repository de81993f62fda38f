"""One experiment: the configured command run `repeats` times, measured, and gated by the checks command.

This is the trustworthy measurement the session logs: every value here comes from a run this module started.
"""

from __future__ import annotations

import functools
import secrets
import statistics
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..measure.metrics import (
    Measure,
    MetricError,
    Secondary,
    first_float,
    measure,
    read_metric_from_log,
    read_secondary,
)
from ..measure.output_checks import Snapshot, snapshot
from ..records.logtail import clean_text, read_tail_bytes
from ..records.run_log import MB, kept_end_copy, live_tail
from ..sandbox.policy import (
    Isolation,
    denied_write_hint,
    keeper_available,
    maven_hint,
    network_hint,
    setup_failure,
)
from ..sandbox.process_run import ProcessResult, ProcessRun, ProgressCallback
from ..setup.config import Config
from ..setup.single_file import sha256_file
from ..statuses import RunStatus
from ..terminal_text import printable
from .evaluation import EVAL_SUFFIX, stage_failure, stderr_said
from .fresh_outputs import (
    OutputsError,
    give_rights_back,
    make_fresh,
    output_holding,
    record,
    record_measured,
    unmoved_entries,
    unsafe_for_stage,
)
from .named_paths import snapshot_named
from .published_log import clear_run_log, publish_run_log, without_run_log_redirect
from .stage_confinement import StageConfinement
from .tally import ExperimentResult, Tally

if TYPE_CHECKING:
    from ..backends.ray_backend import RayBackend, RayJobRun

METRIC_PARSE_TIMEOUT_S = 30.0
# The original tool's commands end in `> run.log 2>&1` (or `| tee run.log`): the server captures the output and
# writes run.log itself, so that redirect is dropped (a confined run may not write the project root).
SEED_RANGE = 2**31  # AUTORESEARCH_SEED is below this: a seed every RNG accepts (numpy, torch, random)


class Experiment:
    """Runs one experiment; `cancel()` from any thread ends the current process tree."""

    def __init__(
        self,
        config: Config,
        root: Path,
        run_id: str,
        log_dir: Path,
        tag: str | None = None,
        on_progress: ProgressCallback | None = None,
        isolation: Isolation | None = None,
        env: dict[str, str] | None = None,
        publish_run_log: bool = True,
        backend: RayBackend | None = None,
        slot: tuple[Path, Path] | None = None,
    ) -> None:
        self.config = config
        self.publish_run_log = publish_run_log  # run.log at the root shows the run's output (not in a slot)
        self.env = env or {}  # added to every command's environment (a slot's devices and number)
        self.root = root
        self.run_id = run_id
        self.log_dir = log_dir
        self.tag = tag
        self.on_progress = on_progress
        self.isolation = isolation
        self.backend = backend  # where run_command and checks_command run (None: here)
        self._lock = threading.Lock()
        self._current: ProcessRun | RayJobRun | None = None
        self._cancel_reason: str | None = None
        self._tally = Tally()  # every run so far: `run` may be called again to add runs
        self._last_run = ""  # the name of the last run (for `fresh_outputs.record`)
        # A log that left part of its output out (log_limit_mb, a full disk): where its kept end begins
        self._log_ends: dict[Path, int] = {}
        self._parsed_evaluation: Path | None = None  # the evaluation's log metric_parse reads while it runs
        self.stages = StageConfinement(config, root, log_dir, isolation, slot)
        # The first run's process, started ahead and held before its exec (`start_ahead`): (it, its log, what
        # the measured output held before it)
        self._ahead: tuple[ProcessRun | RayJobRun, Path, Snapshot] | None = None

    def cancel(self, reason: str) -> None:
        with self._lock:
            self._cancel_reason = reason
            if self._current is not None:
                self._current.cancel(reason)

    def _process(
        self,
        command: str,
        log_path: Path,
        timeout: float,
        marker: str,
        progress: ProgressCallback | None,
        extra_env: dict[str, str] | None = None,
        remote: bool = False,
        measure: str | None = None,
        stage: str = "run",
    ) -> ProcessRun | RayJobRun:
        """The command as a process here, or as a Ray job when `remote` and a backend is set (`measure`: the
        output size the worker measures). `stage`: "eval" confines it as the evaluation stage."""
        env = {"AUTORESEARCH_TIME_BUDGET": f"{self.config.time_budget:g}", **self.env, **(extra_env or {})}
        if self.tag:
            env["AUTORESEARCH_TAG"] = self.tag
        process: ProcessRun | RayJobRun
        if remote and self.backend is not None:
            setting = self.isolation.setting if self.isolation is not None else "off"
            process = self.backend.process(
                command,
                self.root,
                log_path,
                timeout,
                env,
                marker,
                progress,
                self.config.run_writes,
                setting != "off",
                required=setting == "required",
                measure=measure,
                log_limit=round(self.config.log_limit_mb * MB),
            )
        else:
            kept = self.isolation is not None and keeper_available()
            stages, shown = self.stages, self._parsed_evaluation
            process = ProcessRun(
                command=command,
                cwd=self.root,
                log_path=log_path,
                timeout_s=timeout,
                env=env,
                run_marker=marker,
                project_marker=str(self.root),
                on_progress=progress,
                wrapper=functools.partial(stages.wrap, stage=stage, shown=shown) if kept else None,
                launch=functools.partial(stages.launch, stage=stage, shown=shown) if kept else None,
                # confined or not, no tool cache outlives its run
                private_env=stages.eval_env if stage == "eval" else stages.private_caches,
                # the evaluation's and metric_parse's stderr on a pipe and log of their own: only their stdout
                # supplies the metric (a warning on stderr holds numbers too)
                stderr_log=log_path.with_suffix(".stderr.log") if stage in ("eval", "parse") else None,
                log_limit=round(self.config.log_limit_mb * MB),
                live_tail=live_tail(log_path) if stage == "run" else None,
            )
        with self._lock:
            if self._cancel_reason is not None:
                process.cancel(self._cancel_reason)
            self._current = process
        return process

    def next_log(self) -> Path:
        """The log the next run of the command writes: `<run>.log`, or `<run>-<n>.log` with repeats (and for every
        run after the first)."""
        index = len(self._tally.durations) + 1
        suffix = "" if index == 1 and self.config.repeats == 1 else f"-{index}"
        return self.log_dir / f"{self.run_id}{suffix}.log"

    def _run_process(self, log_path: Path) -> ProcessRun | RayJobRun:
        """The process of one run of the command, writing `log_path`, with a seed of its own."""
        config = self.config
        assert config.run_command is not None
        return self._process(
            without_run_log_redirect(config.run_command),
            log_path,
            config.timeout,
            self.run_id,
            self.on_progress,
            {"AUTORESEARCH_SEED": str(secrets.randbelow(SEED_RANGE))},
            remote=True,
            measure=config.metric_measure,
        )

    def _before_run(self, log_path: Path) -> Snapshot:
        """Before a run's process starts: no run.log of an earlier run at the root, the outputs moved aside
        (`OutputsError` when they cannot be). Returns what the measured output holds."""
        if self.publish_run_log:
            clear_run_log(self.root)
        return self._fresh_outputs(log_path.stem)

    def start_ahead(self) -> None:
        """The first run's process started now, held right before its exec until `run` lets it go: the caller
        records the run meanwhile (the keeper, the view and Landlock cost the run's path nothing). Only where
        the launcher starts the run (a confined run here; not a Ray job) and nothing ran yet; outputs that cannot
        be moved aside leave it to `run`, which says so. A run started ahead is always `run` or dropped
        (`drop_ahead`)."""
        config = self.config
        if self._ahead is not None or self._tally.durations or self.backend is not None:
            return
        if config.run_command is None or self.isolation is None or not keeper_available():
            return
        log_path = self.next_log()
        try:
            fresh = self._before_run(log_path)
        except OutputsError:
            return
        process = self._run_process(log_path)
        assert isinstance(process, ProcessRun)
        try:
            process.start()
        except OSError:  # (its log could not be made: a full disk) `run` starts it again and says why
            return
        self._ahead = (process, log_path, fresh)

    def drop_ahead(self, reason: str) -> None:
        """A process started ahead that will not run (the run was not recorded): ended before its exec."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead[0].cancel(reason)
            ahead[0].run()

    def run(self, runs: int | None = None, checks: bool = True) -> ExperimentResult:
        """Run the command `runs` more times (default: `repeats`), adding to the runs of earlier calls (the
        value is the median of all of them), then the checks command when `checks`. Every run gets its own
        AUTORESEARCH_SEED, a random number that says nothing of which run it is: a run may vary its seed with
        it, but cannot tell the runs that judge it from the re-measurements after a keep."""
        config = self.config
        assert config.run_command is not None
        tally = self._tally
        for _ in range(config.repeats if runs is None else runs):
            ahead, self._ahead = self._ahead, None  # (started for the first run: the one this is)
            if ahead is not None:
                process, log_path, fresh = ahead
            else:
                log_path = self.next_log()
                process = self._run_process(log_path)
                try:
                    fresh = self._before_run(log_path)
                except OutputsError as exc:
                    return self._failed(tally, ("crash", f"{exc} (nothing ran)"), None, log_path)
            suffix = log_path.stem.removeprefix(self.run_id)
            tally.eval_log = None
            unmoved = unmoved_entries(self.root, list(config.writable), list(config.persistent))
            outside = snapshot_named(self.root, unmoved, config.eval_command or "")
            started_at = time.time()
            done = process.run()
            self._note_log_end(log_path, done)
            self._last_run = f"{self.run_id}{suffix}"
            self._record_outputs()
            if self.publish_run_log:
                publish_run_log(self.root, log_path)
            tally.add_run(done.duration_s, done.peak_rss_bytes, done.leftovers_killed, done.exit_code)
            tally.note_output(
                done.output_cut, f"run {len(tally.durations)}" if config.repeats > 1 else "the run"
            )
            failure = self._process_failure(done.status, done.exit_code, done.error)
            if failure is None:
                failure = self._capture_mismatch(done)
            if failure:
                return self._failed(tally, failure, None, log_path)
            kept_end = self._log_ends.get(log_path, 0)
            figures = read_secondary(log_path, config.metric_name, config.memory_regex, kept_end)
            measured_log = log_path
            if config.eval_command:  # the run's whole tree is gone: the evaluation reads what it left
                measured_log = log_path.with_name(log_path.stem + EVAL_SUFFIX + ".log")
                tally.eval_log = measured_log
                unsafe = unsafe_for_stage(self.root, config, started_at, config.eval_command, outside)
                if unsafe:
                    reason = f"the run's outputs are not handed to the evaluation: {unsafe}"
                    return self._failed(tally, ("metric_error", reason), None, log_path)
                holdout = config.holdout_command or ""  # what it reads: the run's own, as measured
                record_measured(self.root, list(config.writable), self._last_run, unmoved, holdout)
                failure = self._evaluate(config.eval_command, log_path, measured_log, "eval_command")
                if failure:
                    return self._failed(tally, failure, None, measured_log)
                figures = Secondary(
                    figures.memory_mb, read_secondary(measured_log, config.metric_name, None).metrics
                )
            try:
                tally.values.append(
                    self._metric(measured_log, done.duration_s, started_at, done.sizes, fresh)
                )
            except MetricError as exc:
                said = stderr_said(measured_log) if config.eval_command else None
                where = f" (in the evaluation's output, {measured_log})" if config.eval_command else ""
                where += f"; its stderr ends: {said}" if said else ""
                return self._failed(tally, ("metric_error", f"{exc}{where}"), None, measured_log)
            tally.add_figures(figures)
        result = tally.result("ok", statistics.median(tally.values), log_path, None)
        return self.check(result) if checks else result

    def _evaluate(
        self, command: str, run_log: Path | None, log_path: Path, what: str
    ) -> tuple[RunStatus, str] | None:
        """The evaluation stage (or the holdout: `what`) in its own confined tree, after the run (whose log is
        `run_log`); None when it succeeded (its output is then in `log_path`), else the failure."""
        config = self.config
        extra = {"AUTORESEARCH_RUN_LOG": str(run_log)} if run_log else {}
        done = self._process(
            command, log_path, config.eval_timeout, f"{self.run_id}{EVAL_SUFFIX}", None, extra, stage="eval"
        ).run()
        self._note_log_end(log_path, done)
        self._tally.leftovers += done.leftovers_killed
        if run_log is not None:  # not the holdout: nothing of its output is shown to the agent
            self._tally.note_output(done.output_cut, what)
        if done.status == "cancelled":
            return "cancelled", done.error or "cancelled"
        if done.status != "exited" or done.exit_code != 0:
            said = stderr_said(log_path) if run_log is not None else None  # the holdout's is never shown
            return "metric_error", stage_failure(
                what, done.status, done.exit_code, done.error, log_path, said
            )
        return self._capture_mismatch(done)

    def evaluate_only(self, command: str, log_path: Path, what: str) -> tuple[float | None, str | None]:
        """Run `command` as an evaluation stage on what the project holds now (the holdout after a keep): its
        value, or None and why not. Its outputs are checked as the evaluation's are (the checks, which run the
        target's code, ran after the evaluation and may have left a link or a FIFO there)."""
        unsafe = unsafe_for_stage(self.root, self.config, 0.0, command)
        if unsafe:
            return None, f"the outputs are not handed to {what}: {unsafe}"
        failure = self._evaluate(command, None, log_path, what)
        if failure:
            return None, failure[1]
        try:
            return self._metric(log_path, 0.0, time.time()), None
        except MetricError as exc:
            return None, str(exc)

    def check(self, result: ExperimentResult) -> ExperimentResult:
        """The checks command after a measurement that succeeded: a failure makes it `checks_failed`."""
        config = self.config
        if not config.checks_command or result.status != "ok":
            return result
        checks_log = self.log_dir / f"{self.run_id}-checks.log"
        checks = self._process(
            config.checks_command,
            checks_log,
            config.checks_timeout,
            f"{self.run_id}-checks",
            None,
            remote=True,
        ).run()
        self._record_outputs()  # what the checks wrote there is the run's too (not the user's)
        self._tally.leftovers += checks.leftovers_killed
        self._tally.note_output(checks.output_cut, "checks_command")
        failure = self._process_failure(checks.status, checks.exit_code, checks.error)
        if failure:
            status, error = failure
            if status in ("crash", "timeout"):
                status, error = "checks_failed", f"checks_command failed: {error}"
            failed = self._failed(self._tally, (status, error), result.value, checks_log)
            # the runs it was judged by, not its re-measurement after a keep (run before the checks)
            failed.values, failed.spread = list(result.values), result.spread
            return failed
        result.leftovers_killed = self._tally.leftovers
        return result

    def _failed(
        self, tally: Tally, failure: tuple[RunStatus, str], value: float | None, log_path: Path
    ) -> ExperimentResult:
        """A failed result; when the run was confined and its output shows a refused write, say which setting
        allows it; when the keeper could not confine it, say that instead."""
        status, error = failure
        error = printable(error)  # it may name a file the run created: bytes that are not UTF-8, a newline
        result = tally.result(status, value, log_path, error)
        head = clean_text(read_tail_bytes(log_path, 2048)) if tally.exit_code == 125 else ""
        refused = setup_failure(head) if head else None
        if refused:
            result.error = f"the run could not be confined ({refused}); nothing ran"
        elif self.isolation is not None and status != "cancelled":
            text = clean_text(read_tail_bytes(log_path, 16384))
            confined = self.isolation.confined or self.isolation.namespaces
            hint = (maven_hint(text) or denied_write_hint(text)) if confined else None
            if self.isolation.namespaces and self.isolation.network == "off":
                hint = network_hint(text) or hint
            if hint:
                result.error = f"{error}; {hint}"
        return result

    def _capture_mismatch(self, done: ProcessResult) -> tuple[RunStatus, str] | None:
        """The metric is read from the server's log of the run's output; where the run was not confined it could
        have rewritten that file: it must still hold exactly what was captured."""
        if self.isolation is not None and self.isolation.confined and self.backend is None:
            return None  # (a Ray worker may not confine: the log is checked whatever this machine can do)
        if done.captured_sha256 and sha256_file(done.log_path) != done.captured_sha256:
            return "tampered", "the run's log file was changed after its output was captured"
        return None

    @staticmethod
    def _process_failure(
        status: str, exit_code: int | None, error: str | None
    ) -> tuple[RunStatus, str] | None:
        if status == "timeout":
            return "timeout", error or "timed out"
        if status == "cancelled":
            return "cancelled", error or "cancelled"
        if status == "failed_to_start":
            return "crash", f"the command could not be started: {error}"
        if status == "rejected":
            return "crash", error or "the run's report was rejected"
        if exit_code != 0:
            if exit_code is not None and exit_code < 0:
                return "crash", f"killed by signal {-exit_code}"
            hint = " (command not found?)" if exit_code == 127 else ""
            return "crash", f"exit code {exit_code}{hint}"
        return None

    def _fresh_outputs(self, name: str) -> Snapshot:
        """Before run `name`: the outputs moved aside (`fresh_outputs`; not for a Ray job, which runs in a
        copy of its own), then what the measured output holds (to tell what this run wrote)."""
        if self.backend is None:
            give_rights_back(self.root, self.config.run_writes)
            make_fresh(self.root, list(self.config.writable), self.tag, name)
        spec = self.config.metric_measure
        return (
            snapshot(self.root / Measure.parse(spec).path) if spec and spec != "wall_time_s" else frozenset()
        )

    def _record_outputs(self) -> None:
        if self.backend is None and self._last_run:
            record(self.root, list(self.config.writable), self._last_run, self.tag)

    def _metric(
        self,
        log_path: Path,
        duration_s: float,
        started_at: float,
        sizes: dict[str, int | str] | None = None,
        fresh: Snapshot = frozenset(),
    ) -> float:
        config = self.config
        if config.metric_parse:
            return self._parse_metric(config.metric_parse, log_path)
        if config.metric_regex or not config.metric_measure:
            assert config.metric_name is not None
            whole = config.eval_command is not None  # a line the evaluation did not end never counts
            kept_end = self._log_ends.get(log_path, 0)
            return read_metric_from_log(log_path, config.metric_name, config.metric_regex, whole, kept_end)
        if sizes is not None and config.metric_measure in sizes:  # measured where the run ran (Ray)
            found = sizes[config.metric_measure]
            if isinstance(found, str):
                raise MetricError(found)
            return Measure.parse(config.metric_measure).in_unit(found)
        scope = output_holding(self.root, list(config.writable), Measure.parse(config.metric_measure).path)
        return measure(
            config.metric_measure, self.root, duration_s, started_at, config.target_file, fresh, scope
        )

    def _parse_metric(self, command: str, log_path: Path) -> float:
        """`metric_parse` on the log (`AUTORESEARCH_LOG`, and `run.log` where it shows it): of a cut log, only the
        end it kept (a copy), since a value before the part left out may not be the last one printed."""
        out_path = log_path.with_name(log_path.stem + "-metric.out")
        limit = min(METRIC_PARSE_TIMEOUT_S, self.config.timeout)
        parsed = log_path
        if (end_from := self._log_ends.get(log_path)) is not None:
            try:
                parsed = kept_end_copy(log_path, end_from)
            except OSError as exc:
                raise MetricError(f"the end of the log could not be copied for metric_parse: {exc}") from None
        shown = self.publish_run_log and not self.config.eval_command and parsed != log_path
        if shown:  # run.log shows the run's log: the original tool's parsers read it there
            publish_run_log(self.root, parsed)
        try:
            env = {"AUTORESEARCH_LOG": str(parsed)}
            self._parsed_evaluation = log_path if self.config.eval_command else None
            parse = self._process(command, out_path, limit, f"{self.run_id}-metric", None, env, stage="parse")
            result = parse.run()
        finally:
            self._parsed_evaluation = None
            if shown:
                publish_run_log(self.root, log_path)
        if result.log_end_from is not None:  # its first number near the end could be the server's, or stale
            raise MetricError("metric_parse printed more than log_limit_mb: it should print the metric alone")
        if result.status == "timeout":
            raise MetricError(f"metric_parse did not finish within {limit:g} s")
        if result.status == "cancelled":
            raise MetricError("cancelled while parsing the metric")
        output = clean_text(read_tail_bytes(out_path, 4096))
        if (
            result.status != "exited" or result.exit_code != 0
        ):  # its error message may hold a number: no value
            said = clean_text(read_tail_bytes(out_path.with_suffix(".stderr.log"), 4096)) + "\n" + output
            last = said.strip().splitlines()[-1:] or [result.error or "no output"]
            raise MetricError(f"metric_parse failed (exit code {result.exit_code}): {last[0][:200]}")
        return first_float(output)

    def _note_log_end(self, log_path: Path, done: ProcessResult) -> None:
        """Where the value may be read in this log: from the start, or from the end it kept of a cut output."""
        if done.log_end_from is None:
            self._log_ends.pop(log_path, None)
        else:
            self._log_ends[log_path] = done.log_end_from
