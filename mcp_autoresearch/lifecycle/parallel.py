"""Runs with slots: up to `slots` experiments in flight at once, each in a checkout of its own.

With slots the user's work tree stays at the best kept commit: `run_experiment` commits the target's content as
a candidate on the best (a commit under `refs/autoresearch/<tag>/`, no branch moves), puts the best's content
back into the target so the agent can write the next idea, and runs the candidate in a free slot
(`checkouts.py`), confined as a single run is, with the slot's own outputs, TMPDIR and devices. The baseline
runs in every slot at once, so the noise it measures is the noise under full load.

When a run ends, the slot is checked (no tracked file changed, nothing planted below a read-only directory) and
so is the user's tree (git's files and refs, tracked and read-only files, the server's own files), as after a
single run. Decisions are `slot_decisions`' job.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SessionError
from ..measure.sequential import measure_baseline_under_load
from ..names import RUN_LOGS, SESSION_REFS
from ..phases import AWAITING_DECISION, advance, in_flight
from ..records.atomic import atomic_write
from ..records.state import Pending, RunOutcome, server_dir
from ..sandbox.processes import kill_marked_processes
from ..session.context import SessionCore
from ..session.editing import Editor
from ..setup.single_file import sha256_bytes, sha256_file
from ..vcs.checkouts import Checkouts
from ..vcs.planted import GitWatch
from .branching import mark_parent, reference, start_point
from .experiment import Experiment, ExperimentResult
from .in_flight import (
    ActiveRun,
    RunHandle,
    RunProgress,
    execute,
    measure_run,
    progress_of,
    tampered_before_best,
    unmeasured,
)
from .running import AlreadyMeasured, Runs, new_run
from .slot_checks import SlotChecks

if TYPE_CHECKING:
    from ..backends.ray_backend import RayBackend

log = logging.getLogger("mcp_autoresearch")


class ParallelRuns:
    """Starts, verifies and stops the session's runs in its slots."""

    def __init__(self, core: SessionCore, editor: Editor, runs: Runs) -> None:
        self.core = core
        self.editor = editor
        self.runs = runs  # the copies-before-restore helpers are shared with single runs
        config = core.config
        self.slots = config.slots
        self.checkouts = Checkouts(
            core.root, core.repo, core.state.tag, config.run_writes, list(config.shared_inputs)
        )
        if config.backend != "ray":  # a Ray job's paths are its worker's
            self.checkouts.check_writable(config.run_writes, self.slots)
        self.checkouts.check_home()
        self.flights: dict[str, ActiveRun] = {}
        self.finish_order: list[str] = [p.run_id for p in core.state.inflight if not in_flight(p)]
        self._changed = threading.Condition(threading.Lock())
        self.checks = SlotChecks(core, self.checkouts, runs, self.slots)
        self.backend: RayBackend | None = None
        self._backend_checked = 0.0
        if config.backend == "ray":
            from ..backends.ray_backend import RayBackend  # only when used: Ray is an optional extra

            self.backend = RayBackend.from_config(config)
            key = hashlib.sha256(str(core.root.resolve()).encode()).hexdigest()[:8]
            self.backend.job_prefix = f"{core.state.tag[:24]}-{key}-"

    # -- what is in flight -----------------------------------------------------------------------------------
    def entry(self, run_id: str) -> Pending | None:
        return next((p for p in self.core.state.inflight if p.run_id == run_id), None)

    def busy_slots(self) -> set[int]:
        used: set[int] = set()
        for pending in self.core.state.inflight:
            if in_flight(pending):
                used.update(range(self.slots) if pending.is_baseline else [pending.slot or 0])
        return used

    def handle(self, run_id: str | None) -> RunHandle | None:
        """The run in flight (without `run_id`: whichever finishes first; None when one already waits)."""
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

    def first_finished(self) -> Pending | None:
        """The run that finished first among those waiting for their decision."""
        waiting = {p.run_id: p for p in self.core.state.inflight if p.phase in AWAITING_DECISION}
        for run_id in self.finish_order:
            if run_id in waiting:
                return waiting[run_id]
        return next(iter(waiting.values()), None)

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
        """A client gave up waiting for this run: it is stopped (giving up on any run stops none of them)."""
        flight = self.flights.get(run_id) if run_id is not None else None
        if flight is not None:
            flight.cancel(reason)

    def wait_after_start(self, wait_s: float | None) -> float | None:
        """run_experiment does not wait for a run in a slot: the agent prepares the next idea meanwhile."""
        return 0.0

    def stop(self, reason: str, join_s: float) -> list[ActiveRun]:
        flights = list(self.flights.values())
        for flight in flights:
            flight.cancel(reason)
        deadline = time.monotonic() + join_s
        for flight in flights:
            if flight.thread is not None:
                flight.thread.join(max(0.0, deadline - time.monotonic()))
        return flights

    # -- starting ------------------------------------------------------------------------------------------
    def start_run(self, description: str, rerun: bool = False) -> str | AlreadyMeasured:
        core = self.core
        with core.lock:
            # First: with the disk full, even git status (which writes the index) fails.
            no_room = self.runs.space.before_run(self._places(range(self.slots)), list(core.config.writable))
            if no_room:
                raise SessionError(no_room)
            self.checks.guard_own()
            inflight = core.state.inflight
            if any(p.is_baseline for p in inflight):
                raise SessionError(
                    "the baseline is running in every slot (it measures the noise under full load); call "
                    "wait_experiment() until it finishes, then commit_or_reset"
                )
            if core.state.best is None and inflight:
                raise SessionError(
                    "the baseline runs in every slot at once: decide the runs in flight first ("
                    + ", ".join(p.run_id for p in inflight)
                    + ")"
                )
            if len(inflight) >= self.slots:
                raise SessionError(self._full_message())
            self._check_backend()
            best = core.state.best
            parent, parent_run = start_point(core, best.commit if best else core.state.base_commit)
            started = new_run(core, self.editor, description, parent, rerun, len(inflight))
            if isinstance(started, AlreadyMeasured):
                return started
            pending, target_bytes = started
            mark_parent(core, pending, parent_run)  # a branched parent: judged against it, never rebased
            run_id, description, is_baseline = pending.run_id, pending.description, pending.is_baseline
            best_bytes = core.repo.show_file(parent, core.target_repo_path)
            if is_baseline:
                commit, slots = parent, list(range(self.slots))
            else:
                message = f"experiment: {description}"
                commit = core.repo.write_commit(
                    core.target_repo_path, target_bytes, message, parent, plain=core.plain_target
                )
                core.repo.set_ref(f"{SESSION_REFS}{core.state.tag}/{run_id}", commit)
                slots = [min(set(range(self.slots)) - self.busy_slots())]
            pending.commit, pending.placement = commit, "slots"
            pending.slot = None if is_baseline else slots[0]
            built_on = reference(core, pending)
            pending.parent_value = built_on.value if built_on else None
            self._launch(pending, slots)
            try:
                inflight.append(pending)
                core.journal.log_experiment_start(run_id, commit, description, pending.parent_run)
                advance(pending, "running", core.save)  # after the append: the record seals the JSONL
            except BaseException:  # nothing starts: no flight is left without its thread
                self.flights.pop(run_id, None)
                if pending in inflight:
                    inflight.remove(pending)
                raise
            core.own.journal_written()
            if not is_baseline:
                # The agent's next idea starts from the best again; this one is safe in its commit.
                if core.plain_target:
                    atomic_write(self.editor.target_path(), best_bytes)
                else:  # git writes it, its filters applied
                    core.repo.restore_paths(parent, [core.target_repo_path])
            self._start_thread(pending)
            return run_id

    def _check_backend(self) -> None:
        """The Ray cluster answers (asked again at most once a minute): else a clear error, and nothing starts."""
        if self.backend is not None and time.monotonic() - self._backend_checked > 60:
            self.backend.check()
            self._backend_checked = time.monotonic()

    def _places(self, slots: Iterable[int]) -> list[Path]:
        """Where runs in these slots write: their checkouts (a Ray job's are its worker's, not this disk)."""
        return [] if self.backend is not None else [self.checkouts.project(slot) for slot in slots]

    def _full_message(self) -> str:
        inflight = self.core.state.inflight
        running = [p.run_id for p in inflight if in_flight(p)]
        waiting = [p.run_id for p in inflight if not in_flight(p)]
        parts = []
        if running:
            parts.append("running: " + ", ".join(running))
        if waiting:
            parts.append("waiting for a decision: " + ", ".join(waiting))
        return (
            f"all {self.slots} slots are in use ({'; '.join(parts)}): call wait_experiment() for the first run to "
            "finish, then commit_or_reset(run_id=...) to free its slot"
        )

    def _launch(self, pending: Pending, slots: list[int]) -> None:
        """The run's in-memory side: its experiments (one per slot it occupies) and git's snapshot."""
        core = self.core
        log_dir = server_dir(core.root, RUN_LOGS, core.state.tag)
        flight = ActiveRun(run_id=pending.run_id, started=time.monotonic(), log_dir=log_dir, slots=slots)
        experiments = [
            Experiment(
                core.config,
                self.checkouts.project(slot),
                pending.run_id if index == 0 else f"{pending.run_id}-slot{slot}",
                log_dir,
                core.state.tag,
                flight.record_progress if index == 0 else None,
                core.isolation,
                env=self._slot_env(slot),
                publish_run_log=False,
                backend=self.backend,
            )
            for index, slot in enumerate(slots)
        ]
        flight.experiment, flight.others = experiments[0], experiments[1:]
        flight.watch = GitWatch(core.repo, core.root, core.state.branch, core.state.tag)
        pending.git_config, pending.refs_digest = flight.watch.before_run()
        self.flights[pending.run_id] = flight

    def _slot_env(self, slot: int) -> dict[str, str]:
        config = self.core.config
        env = {"AUTORESEARCH_SLOT": str(slot), "AUTORESEARCH_SLOTS": str(self.slots)}
        if self.backend is not None:  # a worker of the cluster: Ray gives it its GPUs, its paths are its own
            return env
        if config.slot_devices:
            env["CUDA_VISIBLE_DEVICES"] = config.slot_devices[slot % len(config.slot_devices)]
        project = self.checkouts.project(slot)
        if any(name in self.checkouts.shared for name in (".venv", "venv")):
            # An editable install would import the user's tree: the slot's own sources come first.
            paths = [str(project / "src"), str(project)]
            inherited = os.environ.get("PYTHONPATH")
            env["PYTHONPATH"] = os.pathsep.join(paths + ([inherited] if inherited else []))
        return env

    def _start_thread(self, pending: Pending) -> None:
        flight = self.flights[pending.run_id]
        flight.thread = threading.Thread(
            target=execute,
            args=(self.core, self.runs.space, self, flight, pending),
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

    def free_slot(self) -> int | None:
        free = set(range(self.slots)) - self.busy_slots()
        return min(free) if free else None

    def after_restart(self) -> None:
        """Runs were in flight when the server stopped: what each planted in git's files is undone before git
        runs again (the user's tree was at the best), and reported with that run."""
        state = self.core.state
        head = state.best.commit if state.best else state.base_commit
        for entry in [p for p in state.inflight if p.phase == "running"]:
            found = self.runs.git_watch.after_run(entry.git_config, entry.refs_digest, head, entry.run_id)
            self.checks.suspect(found, "when the server restarted", None, always=True, only=entry)

    # -- the run's placement (`lifecycle.Placement`): slots ---------------------------------------------------
    def prepare(self, flight: ActiveRun, pending: Pending) -> None:
        for slot in flight.slots:
            self.checkouts.prepare(slot, pending.commit or pending.parent_commit)

    def places(self, flight: ActiveRun) -> list[Path]:
        return self._places(flight.slots)

    def disk_full(self, flight: ActiveRun, pending: Pending) -> None:
        """The other runs write on the same full disk: stopped before the reserve is freed."""
        for other in self.flights.values():
            if other is not flight:
                other.cancel(f"stopped: the disk filled up while it ran (see {pending.run_id})")

    def check_after_run(self, flight: ActiveRun, pending: Pending) -> list[str]:
        return self.checks.after_run(pending, flight.watch)

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

    def measure(self, flight: ActiveRun, pending: Pending) -> RunOutcome:
        core = self.core
        experiment, slot = flight.experiment, flight.slots[0]
        assert experiment is not None
        best_commit = pending.parent_commit
        target = self.checkouts.project(slot) / core.target_rel
        return measure_run(
            core,
            flight,
            pending,
            lambda: measure_baseline_under_load([e for e in [experiment, *flight.others] if e], core.config),
            lambda: Experiment(
                core.config,
                self.checkouts.project(slot),
                f"{pending.run_id}-best",
                flight.log_dir,
                core.state.tag,
                flight.record_progress,
                core.isolation,
                env=self._slot_env(slot),
                publish_run_log=False,
                backend=self.backend,
            ),
            lambda run: self._with_best_content(pending, slot, best_commit, run),
            lambda: sha256_file(target) == pending.target_sha256 or not core.plain_target,
        )

    def _with_best_content(
        self, pending: Pending, slot: int, best_commit: str, run: Callable[[], ExperimentResult]
    ) -> ExperimentResult:
        """The best's re-measurement in the candidate's slot: its content in place of the candidate's, then back."""
        core = self.core
        checkouts = self.checkouts
        target = checkouts.project(slot) / core.target_rel
        repo_path = core.target_repo_path
        if sha256_file(target) != pending.target_sha256 and core.plain_target:
            return tampered_before_best("the candidate's run changed the target")
        best_bytes = core.repo.show_file(best_commit, repo_path)
        candidate_bytes = core.repo.show_file(pending.commit or pending.parent_commit, repo_path)
        checkouts.write_target(slot, repo_path, best_bytes)
        try:
            result = run()
        finally:
            changed = sha256_file(target) != sha256_bytes(best_bytes)
            checkouts.write_target(slot, repo_path, candidate_bytes)
        if changed and result.status == "ok":
            result.status = "tampered"
            result.error = "the best's run changed the target"
        return result

    # -- after a restart -----------------------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Runs that were in flight when the server stopped: their processes are ended and they are marked
        interrupted (each is then logged as such by the decisions). Finished runs wait for their decision."""
        core = self.core
        notes = []
        for pending in core.state.inflight:
            if not in_flight(pending):
                continue
            killed = 0
            slots = range(self.slots) if pending.is_baseline else [pending.slot or 0]
            for slot in slots:
                killed += kill_marked_processes(str(self.checkouts.project(slot)))
            if self.backend is not None:
                killed += self.backend.stop_jobs(pending.run_id)
            tampered = self.checks.after_run(pending, None)
            error = "the server stopped during this run"
            if killed:
                error += f" ({killed} leftover processes killed)"
            pending.result = unmeasured("interrupted", error, tampered)
            advance(pending, "finished", core.save)
            self.finish_order.append(pending.run_id)
            notes.append(pending.run_id)
        return notes


def slots_line(parallel: ParallelRuns) -> str:
    """One line on the slots for the briefing and start_session."""
    inflight = parallel.core.state.inflight
    where = "Ray" if parallel.core.config.backend == "ray" else "local"
    running = [p for p in inflight if in_flight(p)]
    waiting = [p for p in inflight if not in_flight(p)]
    parts = [f"{parallel.slots} slots ({where}), {len(parallel.busy_slots())} busy"]
    if running:
        parts.append(
            "running: "
            + ", ".join(f"{p.run_id} ({'all slots' if p.is_baseline else f'slot {p.slot}'})" for p in running)
        )
    if waiting:
        parts.append("waiting for a decision: " + ", ".join(p.run_id for p in waiting))
    return "; ".join(parts)
