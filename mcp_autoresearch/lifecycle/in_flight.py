"""The life of a run in flight, one code path whatever its placement: the user's tree (a single run), a slot's
checkout, or a Ray worker (a backend of the slot's experiment). The run is measured in a background thread,
checked afterwards for what it changed, and recorded as finished, whatever happens to it; its waiters are then
let go. `execute` drives the run through a `Placement`: `running.Runs`, which hands what differs between
placements (where the candidate is put, where the run writes, how the after-run checks are done) to the run's
`RunPlacement`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..measure.sequential import Measurement, Sequential, confirm_keep
from ..measure.standing import noise_beside
from ..records.atomic import open_own
from ..records.diskspace import DiskSpace, mark_disk_full
from ..records.state import Pending, RunOutcome, TestRecord
from ..statuses import RunStatus
from .branching import reference, reference_values
from .experiment import ExperimentResult

if TYPE_CHECKING:
    from ..session.context import SessionCore
    from ..vcs.planted import GitWatch
    from .experiment import Experiment

log = logging.getLogger("mcp_autoresearch")

STOPPED = "the server stopped during this run"


@dataclass
class ActiveRun:
    """A run executing in a background thread of this process (in the user's tree, or in slots)."""

    run_id: str
    started: float
    log_dir: Path  # where the run's logs are written: <run_id>.log, or <run_id>-<n>.log with repeats
    experiment: Experiment | None = None
    done: threading.Event = field(default_factory=threading.Event)
    progress: tuple[float, float, str] | None = None  # elapsed, limit, last line of output
    thread: threading.Thread | None = None
    best: Experiment | None = None  # the best's re-measurements (sequential rule)
    slots: list[int] = field(default_factory=list)  # the slots it occupies (none: the user's tree)
    watch: GitWatch | None = None  # git's files and refs as the run found them (slots: its own snapshot)
    others: list[Experiment] = field(default_factory=list)  # the baseline's runs in the other slots

    def cancel(self, reason: str) -> None:
        for experiment in (self.experiment, self.best, *self.others):
            if experiment is not None:
                experiment.cancel(reason)

    def record_progress(self, elapsed: float, limit: float, line: str) -> None:
        self.progress = (elapsed, limit, line)

    def create_live_log(self) -> None:
        """The log the run writes first, empty, before the run's thread starts: the path a "running" reply gives
        can be `tail -f`ed at once (the run truncates and writes it when its process starts)."""
        first = (
            self.experiment.next_log() if self.experiment is not None else self.log_dir / f"{self.run_id}.log"
        )
        try:
            os.close(open_own(first, os.O_WRONLY))
        except OSError:  # a full disk, a folder there: the run reports it when it opens the log itself
            pass

    def live_log(self) -> Path:
        """The log being written now (the newest of the run's logs), for a person to `tail -f`."""
        logs = [*self.log_dir.glob(f"{self.run_id}.log"), *self.log_dir.glob(f"{self.run_id}-*.log")]
        try:
            return max(logs, key=lambda path: path.stat().st_mtime_ns)
        except (ValueError, OSError):  # nothing written yet
            return self.log_dir / f"{self.run_id}.log"


@dataclass(frozen=True)
class RunProgress:
    run_id: str
    elapsed_s: float
    limit_s: float
    last_line: str  # the last line of output so far ("" before the first)
    log_path: Path  # the live log

    @property
    def message(self) -> str:
        return f"{self.run_id}: {self.elapsed_s:.0f}s of {self.limit_s:g}s limit" + (
            f" | {self.last_line}" if self.last_line else ""
        )


class RunHandle:
    """What a caller may do with a run in flight (or, with slots and no run id, whichever finishes first):
    wait for it to finish, and ask how far it got."""

    def __init__(
        self, run_id: str | None, wait: Callable[[float], bool], progress: Callable[[], RunProgress]
    ) -> None:
        self.run_id = run_id
        self._wait = wait
        self.progress = progress

    @classmethod
    def of(cls, active: ActiveRun, limit_s: float) -> RunHandle:
        return cls(active.run_id, active.done.wait, lambda: progress_of(active, limit_s))

    def wait(self, timeout_s: float) -> bool:
        """Block up to `timeout_s` seconds; True once the run has finished (and its result is recorded)."""
        return self._wait(max(0.0, timeout_s))


def progress_of(active: ActiveRun, limit_s: float) -> RunProgress:
    return RunProgress(
        run_id=active.run_id,
        elapsed_s=round(time.monotonic() - active.started, 1),
        limit_s=limit_s,
        last_line=active.progress[2] if active.progress else "",
        log_path=active.live_log(),
    )


class Placement(Protocol):
    """The steps of a run in flight (`running.Runs`). Every method but `prepare` and `measure` is called with
    the session's lock held."""

    def prepare(self, active: ActiveRun, pending: Pending) -> None:
        """Put the candidate where it runs (the user's tree holds it already: committed at the start)."""

    def measure(self, active: ActiveRun, pending: Pending) -> RunOutcome:
        """Run it as many times as the keep rule needs."""

    def places(self, active: ActiveRun) -> list[Path]:
        """Where the run wrote on this machine (for the check of the disk's free space)."""

    def disk_full(self, active: ActiveRun, pending: Pending) -> None:
        """The disk filled up while it ran: stop what else writes there."""

    def check_after_run(self, active: ActiveRun, pending: Pending) -> list[str]:
        """What it changed that it must not (each restored, a copy kept)."""

    def record(self, active: ActiveRun, pending: Pending, outcome: RunOutcome) -> None:
        """Write down how it ended (it is `finished` from now on)."""

    def release(self, active: ActiveRun, pending: Pending) -> None:
        """It is no longer in flight: let its waiters go."""


def execute(
    core: SessionCore, space: DiskSpace, placement: Placement, active: ActiveRun, pending: Pending
) -> None:
    """The background half of a run. Whatever happens here, the run ends finished and recorded. Its saves (the
    best's swaps, the record of how it ended) write the public copy of the state once, before its waiters go."""
    try:
        with core.public_copy.one_call(core.write_public):
            _execute(core, space, placement, active, pending)
    finally:
        placement.release(active, pending)


def _execute(
    core: SessionCore, space: DiskSpace, placement: Placement, active: ActiveRun, pending: Pending
) -> None:
    try:
        try:
            placement.prepare(active, pending)
            outcome = placement.measure(active, pending)
        finally:  # a command started ahead that no run took: ended, never run
            if active.experiment is not None:
                active.experiment.drop_ahead("the run ended before its first command")
    except Exception as exc:  # a bug or an OS failure: still a logged crash, never a lost experiment
        log.exception("run %s failed inside the server", pending.run_id)
        outcome = unmeasured("crash", f"internal error while running: {type(exc).__name__}: {exc}", [])
    with core.lock:
        full = space.after_run(placement.places(active), list(core.config.writable))
        if full:
            placement.disk_full(active, pending)
            space.release()  # first: the checks and records below need the space
        try:
            tampered = placement.check_after_run(active, pending)
        except Exception as exc:
            log.exception("verifying run %s failed", pending.run_id)
            tampered = [f"(the check itself failed: {type(exc).__name__}: {exc})"]
        if tampered and outcome.status != "cancelled":
            outcome.status = "tampered"
            outcome.error = (
                "the run changed files it must not: "
                + ", ".join(tampered)
                + " (tracked ones restored from git; what they held is kept in"
                + f" .autoresearch/tampered/{pending.run_id}/)"
            )
        mark_disk_full(outcome, full)
        placement.record(active, pending, outcome)


def measure_run(
    core: SessionCore,
    active: ActiveRun,
    pending: Pending,
    baseline: Callable[[], Measurement],
    best_run: Callable[[], Experiment],
    with_best: Callable[[Callable[[], ExperimentResult]], ExperimentResult],
    unchanged: Callable[[], bool],
) -> RunOutcome:
    """Run the candidate as many times as the keep rule needs, whatever its placement: the baseline's noise
    runs, one run (or `repeats`) under the greedy rule, the sequential test's runs with the best re-measured as
    needed (`best_run`, in the best's content: `with_best`); a keep is confirmed while `unchanged` holds; then
    the checks command, once every run is over."""
    assert active.experiment is not None
    if pending.is_baseline:
        measured = baseline()
    elif core.state.keep_rule != "sequential" or core.state.best is None:
        measured = Measurement(active.experiment.run(checks=False))
    else:
        known = reference_values(core, pending)  # the parent's runs: the best's unless it was branched
        active.best = best_run()
        measured = Sequential(
            active.experiment,
            active.best,
            with_best,
            known,
            noise_beside(core.state, known, reference(core, pending) is core.state.best),
            core.config,
            core.state.metric_direction,
        ).run()
    if not pending.is_baseline:
        measured = confirm_keep(
            measured,
            active.experiment,
            core.state,
            core.config,
            pending.nonblank_lines,
            unchanged,
            reference(core, pending),
        )
        # The checks after every run of the measurement, the re-measurement after a keep included: their log,
        # written before it, told a run that it was being re-measured (and how many runs had judged it).
        measured.result = active.experiment.check(measured.result)
    return outcome_of(measured)


def outcome_of(measured: Measurement) -> RunOutcome:
    """How a measured run ended, as the state records it."""
    outcome = RunOutcome.model_validate(asdict(measured.result))
    outcome.best_values = measured.best_values
    outcome.remeasured, outcome.regression = measured.remeasured, measured.regression
    outcome.best_regression = measured.best_regression
    outcome.test = TestRecord.of(measured.step) if measured.step is not None else None
    return outcome


def unmeasured(status: RunStatus, error: str, tampered: list[str]) -> RunOutcome:
    """A run that ended without a measurement of its own (an internal error, or the server stopped)."""
    if tampered:
        error += "; files it changed were restored: " + ", ".join(tampered)
    return RunOutcome(status=status, error=error)


def tampered_before_best(error: str) -> ExperimentResult:
    """The best's re-measurement does not run: the candidate's run changed what it must not."""
    return ExperimentResult(
        status="tampered",
        value=None,
        values=[],
        spread=None,
        duration_s=0.0,
        memory_gb=None,
        exit_code=None,
        log_path="",
        log_tail="",
        error=error,
    )


DEFAULT_WAIT_S = 30.0  # how long a call waits for a run before answering `running`
MAX_WAIT_S = 50.0  # the longest wait: many clients give up on a call after about 60 s


def clamp_wait(wait_s: float | None) -> float:
    """How long a call waits for a run: `wait_s` within [0, MAX_WAIT_S], DEFAULT_WAIT_S when not given."""
    if wait_s is None:
        return DEFAULT_WAIT_S
    return max(0.0, min(float(wait_s), MAX_WAIT_S))
