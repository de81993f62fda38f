"""The runs of a session, whatever their placement: start one (every rule before a run, its record, its commit),
run it in the background, wait for it, cancel it, and end it after a restart. Where a run runs, and what that
changes, is its `RunPlacement`: the user's tree (`TreePlacement`, one run at a time) or slots (`SlotPlacement`,
several at once; a Ray worker is a backend of a slot's experiments).

A run always ends finished and recorded in the session state, whatever happens to it; the decision on it is
`decisions`' job. Callers wait for a run through a `RunHandle`, never through the thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from ..measure.sequential import Measurement
from ..names import RUN_LOGS
from ..phases import AWAITING_DECISION, advance, in_flight
from ..records.budget import refuse_past_budget
from ..records.diskspace import DiskSpace
from ..records.state import Pending, RunOutcome, server_dir
from ..session.context import SessionCore
from ..session.editing import Editor
from ..vcs.planted import GitWatch
from .branching import mark_parent, remeasured_commit, start_point
from .candidates import AlreadyMeasured, described, new_run
from .experiment import Experiment, ExperimentResult
from .in_flight import (
    STOPPED,
    ActiveRun,
    RunHandle,
    RunProgress,
    execute,
    measure_run,
    progress_of,
    unmeasured,
)

log = logging.getLogger("mcp_autoresearch")


class RunPlacement(Protocol):
    """Where a run runs, and what that changes in its life: the user's tree (`TreePlacement`) or slots
    (`SlotPlacement`). `slot` is the slot a run's experiment runs in (None: the user's tree). Every method but
    `prepare`, `measure_baseline`, `with_content` and `unchanged` is called with the session's lock held."""

    concurrent: bool  # several runs in flight at once; else at most one, and "no run id" means that one

    def admit(self, space: DiskSpace) -> None:
        """Refuse a new run now, with a clear error (the disk, the server's own files, the runs in flight)."""

    def parent(self) -> str:
        """The commit a new candidate is built on."""

    def place(self, pending: Pending, content: bytes) -> list[int]:
        """Commit the candidate (`pending.commit`), in the order crash recovery needs; returns its slots."""

    def new_watch(self) -> GitWatch:
        """What snapshots git's files and refs for a new run."""

    def experiment(
        self, slot: int | None, name: str, log_dir: Path, progress: Callable[[float, float, str], None] | None
    ) -> Experiment:
        """The commands of one run named `name`, where it runs."""

    def started(self, pending: Pending) -> None:
        """The run is recorded as running: the user's tree is made ready for what comes next."""

    def prepare(self, flight: ActiveRun, pending: Pending) -> None:
        """Put the candidate where it runs (the user's tree holds it already: committed at the start)."""

    def places(self, slots: list[int]) -> list[Path]:
        """Where runs in these slots write on this machine (for the check of the disk's free space)."""

    def measure_baseline(self, flight: ActiveRun) -> Measurement:
        """The unmodified baseline, run until the noise is measured."""

    def with_content(
        self, pending: Pending, slot: int | None, commit: str, run: Callable[[], ExperimentResult]
    ) -> ExperimentResult:
        """`run` with the target's content at `commit` in place of the candidate's, then the candidate's back."""

    def unchanged(self, slot: int | None, pending: Pending) -> bool:
        """The candidate is still what was measured (a keep is confirmed only then)."""

    def check_after_run(self, pending: Pending, watch: GitWatch | None) -> list[str]:
        """What the run changed that it must not (each restored, a copy kept); `watch` None after a restart."""

    def undo_planted(self, pending: Pending) -> None:
        """After a restart, before git runs again: what the run planted in git's files is undone."""

    def undo_start(self, pending: Pending) -> str:
        """After a restart: a run recorded as `starting` never ran; what was placed is undone, its record
        dropped; returns a note."""

    def end_leftovers(self, pending: Pending) -> int:
        """After a restart: the processes (or jobs) the run left are ended; returns how many."""

    def wait_after_start(self, wait_s: float | None) -> float | None:
        """How long run_experiment waits for the run it started."""

    def running_step(self, pending: Pending) -> str:
        """The next step while this run is in flight."""

    def line(self) -> str | None:
        """One line on where runs go, for the briefing and start_session (None: nothing to say)."""


class Runs:
    """Starts, waits for, stops and ends the session's runs, whatever their placement (the `Placement` that
    `in_flight.execute` drives)."""

    def __init__(self, core: SessionCore, editor: Editor, placement: RunPlacement) -> None:
        self.core = core
        self.editor = editor
        self.placement = placement
        self.space = DiskSpace(core.root)  # the reserve for the server's records
        self.flights: dict[str, ActiveRun] = {}
        self.finish_order: list[str] = [p.run_id for p in core.state.inflight if not in_flight(p)]
        self._changed = threading.Condition(threading.Lock())
        # Stages that run outside any flight (the holdout, inside a decision) and why the server stops, if it
        # does: `interrupt` cancels them without the session's lock, which the decision holds meanwhile.
        self._stages: set[Experiment] = set()
        self._stopping: str | None = None
        self._stages_lock = threading.Lock()

    @contextmanager
    def side_stage(self, experiment: Experiment) -> Iterator[Experiment]:
        """`experiment` runs outside any flight while in this block: `interrupt` cancels it."""
        with self._stages_lock:
            self._stages.add(experiment)
            reason = self._stopping
        if reason is not None:
            experiment.cancel(reason)
        try:
            yield experiment
        finally:
            with self._stages_lock:
                self._stages.discard(experiment)

    def interrupt(self, reason: str) -> None:
        """The server is leaving (SIGTERM): the side stages running, and any started later, are cancelled now
        (the runs in flight are stopped by `stop`, once the calls are over)."""
        with self._stages_lock:
            self._stopping = reason
            stages = list(self._stages)
        for experiment in stages:
            experiment.cancel(reason)

    # -- what is in flight -----------------------------------------------------------------------------------
    def entry(self, run_id: str) -> Pending | None:
        return next((p for p in self.core.state.inflight if p.run_id == run_id), None)

    def first_finished(self) -> Pending | None:
        """The run that finished first among those waiting for their decision."""
        waiting = {p.run_id: p for p in self.core.state.inflight if p.phase in AWAITING_DECISION}
        for run_id in self.finish_order:
            if run_id in waiting:
                return waiting[run_id]
        return next(iter(waiting.values()), None)

    def forget(self, run_id: str) -> None:
        """The run is decided: it no longer waits."""
        if run_id in self.finish_order:
            self.finish_order.remove(run_id)

    def _asked(self, run_id: str | None) -> str | None:
        """The run a call means: `run_id`, or, one run at a time, the one in flight."""
        if run_id is None and not self.placement.concurrent:
            return next(iter(self.flights), None)
        return run_id

    def handle(self, run_id: str | None) -> RunHandle | None:
        """The run in flight (without `run_id` and several at once: whichever finishes first; None when one
        already waits for its decision, or when that run is not in flight)."""
        run_id = self._asked(run_id)
        if run_id is None:
            if self.first_finished() is not None or not self.flights:
                return None
            return RunHandle(None, self.wait_any, self._first_progress)
        flight = self.flights.get(run_id)
        return RunHandle.of(flight, self.core.config.timeout) if flight is not None else None

    def _first_progress(self) -> RunProgress:
        """wait_experiment without a run id: every run in flight, and the oldest one's progress."""
        limit = self.core.config.timeout
        flights = sorted(self.flights.values(), key=lambda f: f.started)
        if not flights:
            return RunProgress("", 0.0, limit, "", Path())
        first = progress_of(flights[0], limit)
        ids = ", ".join(f.run_id for f in flights)
        return RunProgress(
            f"{ids} in flight; {first.run_id}", first.elapsed_s, limit, first.last_line, first.log_path
        )

    def wait_any(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._changed:
            while True:
                with self.core.lock:
                    if self.first_finished() is not None or not self.flights:
                        return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.5))

    def cancel(self, reason: str) -> None:
        for flight in list(self.flights.values()):
            flight.cancel(reason)

    def cancel_run(self, reason: str, run_id: str | None) -> None:
        """A client gave up waiting for this run: it is stopped (giving up on "any run" stops none of them)."""
        run_id = self._asked(run_id)
        flight = self.flights.get(run_id) if run_id is not None else None
        if flight is not None:
            flight.cancel(reason)

    def stop(self, reason: str, join_s: float) -> list[ActiveRun]:
        """Cancel every run in flight and wait up to `join_s` in all for their threads; returns them."""
        flights = list(self.flights.values())
        for flight in flights:
            flight.cancel(reason)
        deadline = time.monotonic() + join_s
        for flight in flights:
            if flight.thread is not None:
                flight.thread.join(max(0.0, deadline - time.monotonic()))
        return flights

    # -- starting ------------------------------------------------------------------------------------------
    def admit(self, description: str) -> None:
        """The rules of start_run that no content of the target changes (start_run checks them again): room, a
        free slot, no run waiting for its decision, a description, the budgets. Checked before an edit that a
        run is to follow, so that a run refused whatever the edit writes nothing."""
        core = self.core
        with core.lock:
            self.placement.admit(self.space)
            described(description)
            refuse_past_budget(core.state, len(core.journal), len(core.state.inflight))

    def start_run(self, description: str, rerun: bool = False) -> str | AlreadyMeasured:
        """Check every rule, commit the candidate, and start it in the background. Returns the run id, or the
        earlier run when this content was measured before in the session and `rerun` is not set."""
        core, placement = self.core, self.placement
        with core.lock:
            placement.admit(self.space)
            inflight = core.state.inflight
            parent, parent_run = start_point(core, placement.parent())  # the best, or a branched node
            started = new_run(core, self.editor, description, parent, rerun, len(inflight))
            if isinstance(started, AlreadyMeasured):
                return started  # no idea is measured twice unless asked
            pending, content = started
            mark_parent(core, pending, parent_run)  # a branched parent: judged against it, never rebased
            # One run at a time (and not the baseline, whose records are still to be made): its first command
            # starts now, held before its exec until the run's thread lets it go, after the record says
            # "running" below; its keeper, view and Landlock are made meanwhile.
            # Seen by other calls (`flights`) only once recorded as running.
            flight = None if placement.concurrent or pending.is_baseline else self._flight(pending, [])
            appended = False
            try:
                if flight is not None and flight.experiment is not None:
                    flight.experiment.start_ahead()
                slots = placement.place(pending, content)
                written_ahead = any(p is pending for p in inflight)  # then a restart undoes what was placed
                flight = flight or self._flight(pending, slots)
                flight.watch = placement.new_watch()
                pending.git_config, pending.refs_digest = flight.watch.before_run()
                if not written_ahead:
                    inflight.append(pending)
                    appended = True
                core.journal.log_experiment_start(
                    pending.run_id, pending.commit or "", pending.description, pending.parent_run
                )
                advance(pending, "running", core.save)  # after the append: the record seals the JSONL with it
            except BaseException:  # nothing starts: no flight is left without its thread
                if flight is not None and flight.experiment is not None:
                    flight.experiment.drop_ahead("the run was not started")
                if appended and pending in inflight:
                    inflight.remove(pending)
                elif pending in inflight:  # recorded ahead by the placement: undone as after a restart
                    self._undo_failed_start(pending)
                raise
            self.flights[pending.run_id] = flight
            core.own.journal_written()
            placement.started(pending)
            self._start_thread(pending)
            return pending.run_id

    def _undo_failed_start(self, pending: Pending) -> None:
        """A start that failed after the placement recorded it (its commit refused: a ref locked by another git
        command, a full disk): what was placed is undone and its record dropped, as a restart would, so that the
        session is not left with a run "in flight" that has no process. What cannot be undone now (the disk
        still full) is left to the restart."""
        try:
            self.placement.undo_start(pending)
        except Exception as exc:
            log.warning("run %s: its failed start could not be undone now: %s", pending.run_id, exc)

    def _launch(self, pending: Pending, slots: list[int]) -> None:
        """The run's in-memory side: its experiments (one per slot it occupies) and git's snapshot."""
        flight = self._flight(pending, slots)
        flight.watch = self.placement.new_watch()
        pending.git_config, pending.refs_digest = flight.watch.before_run()
        self.flights[pending.run_id] = flight

    def _flight(self, pending: Pending, slots: list[int]) -> ActiveRun:
        """The run in flight, with its experiments (one per slot it occupies): git's snapshot still to take, and
        not yet in `flights`."""
        core = self.core
        log_dir = server_dir(core.root, RUN_LOGS, core.state.tag)  # a planted symlink is replaced
        flight = ActiveRun(run_id=pending.run_id, started=time.monotonic(), log_dir=log_dir, slots=slots)
        experiments = [
            self.placement.experiment(
                slot,
                pending.run_id if index == 0 else f"{pending.run_id}-slot{slot}",
                log_dir,
                flight.record_progress if index == 0 else None,
            )
            for index, slot in enumerate(slots or [None])
        ]
        flight.experiment, flight.others = experiments[0], experiments[1:]
        return flight

    def _start_thread(self, pending: Pending) -> None:
        flight = self.flights[pending.run_id]
        flight.create_live_log()
        flight.thread = threading.Thread(
            target=execute,
            args=(self.core, self.space, self, flight, pending),
            name=f"run-{pending.run_id}",
            daemon=True,
        )
        flight.thread.start()

    def restart(self, pending: Pending, slot: int) -> None:
        """Run an in-flight entry again in `slot` (its change merged onto a newer best). Caller holds the lock."""
        pending.slot = slot
        pending.result = None
        self._launch(pending, [slot])
        advance(pending, "running", self.core.save)
        self._start_thread(pending)

    # -- the run in flight (`in_flight.Placement`) --------------------------------------------------------------
    def prepare(self, flight: ActiveRun, pending: Pending) -> None:
        self.placement.prepare(flight, pending)

    def measure(self, flight: ActiveRun, pending: Pending) -> RunOutcome:
        """Run the candidate as many times as the keep rule needs: the baseline's noise runs, one run (or
        `repeats`) under the greedy rule, the sequential test's runs with the best re-measured as needed."""
        placement = self.placement
        slot = flight.slots[0] if flight.slots else None
        return measure_run(
            self.core,
            flight,
            pending,
            lambda: placement.measure_baseline(flight),
            lambda: placement.experiment(
                slot, f"{pending.run_id}-best", flight.log_dir, flight.record_progress
            ),
            # The parent's content, re-measured: the node the candidate is judged against.
            lambda run: placement.with_content(pending, slot, remeasured_commit(self.core, pending), run),
            lambda: placement.unchanged(slot, pending),
        )

    def places(self, flight: ActiveRun) -> list[Path]:
        return self.placement.places(flight.slots)

    def disk_full(self, flight: ActiveRun, pending: Pending) -> None:
        """The other runs write on the same full disk: stopped before the reserve is freed."""
        for other in self.flights.values():
            if other is not flight:
                other.cancel(f"stopped: the disk filled up while it ran (see {pending.run_id})")

    def check_after_run(self, flight: ActiveRun, pending: Pending) -> list[str]:
        return self.placement.check_after_run(pending, flight.watch)

    def record(self, flight: ActiveRun, pending: Pending, outcome: RunOutcome) -> None:
        if self.entry(pending.run_id) is pending:  # else decided meanwhile (the server stopped)
            pending.result = outcome
            advance(pending, "finished", self.core.save)
            self.finish_order.append(pending.run_id)

    def release(self, flight: ActiveRun, pending: Pending) -> None:
        with self.core.lock:
            if self.flights.get(pending.run_id) is flight:
                del self.flights[pending.run_id]
        flight.done.set()
        with self._changed:
            self._changed.notify_all()

    # -- after a restart -----------------------------------------------------------------------------------
    def after_restart(self) -> None:
        """Runs were in flight when the server stopped: what each planted in git's files is undone before git
        runs again (what was found is reported with that run)."""
        for pending in [p for p in self.core.state.inflight if p.phase == "running"]:
            self.placement.undo_planted(pending)

    def undo_starts(self) -> list[str]:
        """Runs recorded as `starting` when the server stopped never ran: what was placed for them is undone
        (never the agent's edit). Returns what was done."""
        return [self.placement.undo_start(p) for p in list(self.core.state.inflight) if p.phase == "starting"]

    def recover(self) -> list[Pending]:
        """Runs that were in flight when the server stopped: their processes are ended, what they changed is
        checked, and they are marked interrupted (each is then logged as such by the decisions). Finished runs
        wait for their decision. Returns the runs interrupted."""
        interrupted = [p for p in self.core.state.inflight if p.phase == "running"]
        for pending in interrupted:
            killed = self.placement.end_leftovers(pending)
            tampered = self.placement.check_after_run(pending, None)
            error = STOPPED + (f" ({killed} leftover processes killed)" if killed else "")
            pending.result = unmeasured("interrupted", error, tampered)
            advance(pending, "finished", self.core.save)
            self.finish_order.append(pending.run_id)
        return interrupted
