"""Runs with slots (the `RunPlacement` of slot runs): up to `slots` experiments in flight at once, each in a
checkout of its own.

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
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SessionError
from ..measure.sequential import Measurement, measure_baseline_under_load
from ..names import SESSION_REFS
from ..phases import in_flight
from ..records.atomic import atomic_write
from ..records.diskspace import DiskSpace
from ..records.state import Pending
from ..sandbox.processes import kill_marked_processes
from ..session.context import SessionCore
from ..session.editing import Editor
from ..setup.single_file import sha256_bytes, sha256_file
from ..vcs.checkouts import Checkouts
from ..vcs.planted import GitWatch
from .branching import reference
from .experiment import Experiment, ExperimentResult
from .in_flight import ActiveRun, tampered_before_best
from .slot_checks import SlotChecks
from .tree_checks import TreeChecks

if TYPE_CHECKING:
    from ..backends.ray_backend import RayBackend

log = logging.getLogger("mcp_autoresearch")


class SlotPlacement:
    """Where slot runs run: the slots' checkouts (or, with a Ray backend, jobs on its workers)."""

    concurrent = True

    def __init__(self, core: SessionCore, editor: Editor, tree: TreeChecks) -> None:
        self.core = core
        self.editor = editor
        self.tree = tree  # the user's tree is checked after every run, as after a single run
        config = core.config
        self.slots = config.slots
        self.checkouts = Checkouts(
            core.root, core.repo, core.state.tag, config.run_writes, list(config.shared_inputs)
        )
        if config.backend != "ray":  # a Ray job's paths are its worker's
            self.checkouts.check_writable(config.run_writes, self.slots)
        self.checkouts.check_home()
        self.checks = SlotChecks(core, self.checkouts, tree, self.slots)
        self.backend: RayBackend | None = None
        self._backend_checked = 0.0
        if config.backend == "ray":
            from ..backends.ray_backend import RayBackend  # only when used: Ray is an optional extra

            self.backend = RayBackend.from_config(config)
            key = hashlib.sha256(str(core.root.resolve()).encode()).hexdigest()[:8]
            self.backend.job_prefix = f"{core.state.tag[:24]}-{key}-"

    # -- the slots -----------------------------------------------------------------------------------------
    def busy_slots(self) -> set[int]:
        used: set[int] = set()
        for pending in self.core.state.inflight:
            if in_flight(pending):
                used.update(range(self.slots) if pending.is_baseline else [pending.slot or 0])
        return used

    def free_slot(self) -> int | None:
        free = set(range(self.slots)) - self.busy_slots()
        return min(free) if free else None

    def _own_slots(self, pending: Pending) -> Iterable[int]:
        return range(self.slots) if pending.is_baseline else [pending.slot or 0]

    # -- starting ------------------------------------------------------------------------------------------
    def admit(self, space: DiskSpace) -> None:
        core = self.core
        # First: with the disk full, even git status (which writes the index) fails.
        no_room = space.before_run(self.places(list(range(self.slots))), list(core.config.writable))
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

    def parent(self) -> str:
        best = self.core.state.best
        return best.commit if best else self.core.state.base_commit

    def place(self, pending: Pending, content: bytes) -> list[int]:
        """A commit under `refs/autoresearch/<tag>/` (no branch moves), before the run's record: a restart
        finds no record of a run that never started, and the ref only keeps its idea reachable."""
        core = self.core
        if pending.is_baseline:
            commit, slots = pending.parent_commit, list(range(self.slots))
        else:
            message = f"experiment: {pending.description}"
            commit = core.repo.write_commit(
                core.target_repo_path, content, message, pending.parent_commit, plain=core.plain_target
            )
            core.repo.set_ref(f"{SESSION_REFS}{core.state.tag}/{pending.run_id}", commit)
            slots = [min(set(range(self.slots)) - self.busy_slots())]
        pending.commit, pending.placement = commit, "slots"
        pending.slot = None if pending.is_baseline else slots[0]
        built_on = reference(core, pending)  # its parent: the best unless it was branched
        pending.parent_value = built_on.value if built_on else None
        return slots

    def new_watch(self) -> GitWatch:
        core = self.core
        return GitWatch(core.repo, core.root, core.state.branch, core.state.tag)  # one per run in flight

    def experiment(
        self, slot: int | None, name: str, log_dir: Path, progress: Callable[[float, float, str], None] | None
    ) -> Experiment:
        core = self.core
        assert slot is not None
        return Experiment(
            core.config,
            self.checkouts.project(slot),
            name,
            log_dir,
            core.state.tag,
            progress,
            core.isolation,
            env=self._slot_env(slot),
            publish_run_log=False,
            backend=self.backend,
            slot=(self.checkouts.home, self.checkouts.top(slot)),
        )

    def started(self, pending: Pending) -> None:
        """The agent's next idea starts from the same parent again (the best unless the work tree was branched);
        this one is safe in its commit."""
        if pending.is_baseline:
            return
        core = self.core
        if core.plain_target:
            atomic_write(
                self.editor.target_path(), core.repo.show_file(pending.parent_commit, core.target_repo_path)
            )
        else:  # git writes it, its filters applied
            core.repo.restore_paths(pending.parent_commit, [core.target_repo_path])

    def wait_after_start(self, wait_s: float | None) -> float | None:
        """run_experiment does not wait for a run in a slot: the agent prepares the next idea meanwhile."""
        return 0.0

    def running_step(self, pending: Pending) -> str:
        if pending.is_baseline:
            return (
                f"the baseline runs in all {self.slots} slots at once (the noise under full load); "
                "call wait_experiment() until it finishes, then commit_or_reset"
            )
        free = self.slots - len(self.core.state.inflight)
        where = f"{pending.run_id} runs in slot {pending.slot}"
        if free > 0:
            return (
                f"{where}; the target holds the best again: edit the next idea and run_experiment "
                f"({free} slot{'s' if free != 1 else ''} free), or wait_experiment() for the first run to finish"
            )
        return (
            f"{where}; every slot is busy: call wait_experiment() for the first run to finish, then decide it"
        )

    def line(self) -> str | None:
        """One line on the slots for the briefing and start_session."""
        inflight = self.core.state.inflight
        where = "Ray" if self.core.config.backend == "ray" else "local"
        running = [p for p in inflight if in_flight(p)]
        waiting = [p for p in inflight if not in_flight(p)]
        parts = [f"{self.slots} slots ({where}), {len(self.busy_slots())} busy"]
        if running:
            parts.append(
                "running: "
                + ", ".join(
                    f"{p.run_id} ({'all slots' if p.is_baseline else f'slot {p.slot}'})" for p in running
                )
            )
        if waiting:
            parts.append("waiting for a decision: " + ", ".join(p.run_id for p in waiting))
        return "; ".join(parts)

    def _check_backend(self) -> None:
        """The Ray cluster answers (asked again at most once a minute): else a clear error, and nothing starts."""
        if self.backend is not None and time.monotonic() - self._backend_checked > 60:
            self.backend.check()
            self._backend_checked = time.monotonic()

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

    # -- the run in flight ---------------------------------------------------------------------------------
    def prepare(self, flight: ActiveRun, pending: Pending) -> None:
        for slot in flight.slots:
            self.checkouts.prepare(slot, pending.commit or pending.parent_commit)

    def places(self, slots: list[int]) -> list[Path]:
        """Where runs in these slots write: their checkouts (a Ray job's are its worker's, not this disk)."""
        return [] if self.backend is not None else [self.checkouts.project(slot) for slot in slots]

    def measure_baseline(self, flight: ActiveRun) -> Measurement:
        experiments = [e for e in [flight.experiment, *flight.others] if e]
        return measure_baseline_under_load(experiments, self.core.config)

    def unchanged(self, slot: int | None, pending: Pending) -> bool:
        assert slot is not None
        target = self.checkouts.project(slot) / self.core.target_rel
        return sha256_file(target) == pending.target_sha256 or not self.core.plain_target

    def with_content(
        self, pending: Pending, slot: int | None, commit: str, run: Callable[[], ExperimentResult]
    ) -> ExperimentResult:
        """The re-measurement in the candidate's slot: the content at `commit` in place of the candidate's,
        then back."""
        core = self.core
        assert slot is not None
        checkouts = self.checkouts
        target = checkouts.project(slot) / core.target_rel
        repo_path = core.target_repo_path
        if sha256_file(target) != pending.target_sha256 and core.plain_target:
            return tampered_before_best("the candidate's run changed the target")
        swapped_in = core.repo.show_file(commit, repo_path)
        candidate_bytes = core.repo.show_file(pending.commit or pending.parent_commit, repo_path)
        checkouts.write_target(slot, repo_path, swapped_in)
        try:
            result = run()
        finally:
            changed = sha256_file(target) != sha256_bytes(swapped_in)
            checkouts.write_target(slot, repo_path, candidate_bytes)
        if changed and result.status == "ok":
            result.status = "tampered"
            result.error = "the best's run changed the target"
        return result

    def check_after_run(self, pending: Pending, watch: GitWatch | None) -> list[str]:
        return self.checks.after_run(pending, watch)

    # -- after a restart -----------------------------------------------------------------------------------
    def undo_planted(self, pending: Pending) -> None:
        """The user's tree was at the best: what the run planted is reported with that run."""
        state = self.core.state
        head = state.best.commit if state.best else state.base_commit
        found = self.tree.git_watch.after_run(pending.git_config, pending.refs_digest, head, pending.run_id)
        self.checks.suspect(found, "when the server restarted", None, always=True, only=pending)

    def undo_start(self, pending: Pending) -> str:
        """A slot run is saved first as `running` (its commit, under a ref, comes before its record): a record
        `starting` is dropped; the ref keeps its idea reachable, the target holds the agent's edit or the best."""
        self.core.state.drop(pending.run_id)
        self.core.save()
        return f"run {pending.run_id} never started; its commit is kept as {SESSION_REFS}{self.core.state.tag}/{pending.run_id}"

    def end_leftovers(self, pending: Pending) -> int:
        killed = sum(
            kill_marked_processes(str(self.checkouts.project(slot))) for slot in self._own_slots(pending)
        )
        if self.backend is not None:
            killed += self.backend.stop_jobs(pending.run_id)
        return killed
