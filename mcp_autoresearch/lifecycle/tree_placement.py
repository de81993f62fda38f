"""Runs in the user's tree (the `RunPlacement` of single runs): one at a time, its candidate committed on the
session branch after a write-ahead `starting` record (a restart undoes that commit, never the edit), measured
where the agent edits, checked afterwards by `tree_checks`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import SessionError
from ..measure.sequential import Measurement, measure_baseline
from ..records.diskspace import DiskSpace
from ..records.state import Pending
from ..sandbox.processes import kill_marked_processes
from ..session.context import SessionCore
from ..session.editing import Editor
from ..setup.single_file import changed_fingerprints, sha256_file
from ..vcs.planted import GitWatch
from .experiment import Experiment, ExperimentResult
from .in_flight import ActiveRun, tampered_before_best
from .tree_checks import TreeChecks


class TreePlacement:
    """Where a single run runs: the user's tree, on the session branch."""

    concurrent = False

    def __init__(self, core: SessionCore, editor: Editor, checks: TreeChecks) -> None:
        self.core = core
        self.editor = editor
        self.checks = checks

    # -- starting ------------------------------------------------------------------------------------------
    def admit(self, space: DiskSpace) -> None:
        core = self.core
        core.own.guard()
        core.check_no_pending()
        no_room = space.before_run([core.root], list(core.config.writable))
        if no_room:
            raise SessionError(no_room)

    def parent(self) -> str:
        """The session branch's head: the best (a branched node is the next parent instead: `start_point`).
        Taken from the state, not read from git: the checks before a run (`candidate`) refuse any other head."""
        best = self.core.state.best
        return best.commit if best is not None else self.core.state.base_commit

    def place(self, pending: Pending, content: bytes) -> list[int]:
        """The record first, saved as `starting`; then the candidate commit on the session branch. A server
        killed in between finds the record and undoes the commit (`undo_start`)."""
        core = self.core
        core.state.inflight.append(pending)
        core.save()
        message = f"experiment: {pending.description}"
        if pending.is_baseline:
            pending.commit = pending.parent_commit
        else:  # on its parent: the best, or the node it was branched from (filters or not: git makes that blob)
            pending.commit = core.repo.commit_file(
                core.state.branch,
                core.target_repo_path,
                content,
                message,
                pending.parent_commit,
                plain=core.plain_target,
            )
        return []

    def new_watch(self) -> GitWatch:
        return self.checks.git_watch  # one run at a time: one snapshot

    def experiment(
        self, slot: int | None, name: str, log_dir: Path, progress: Callable[[float, float, str], None] | None
    ) -> Experiment:
        core = self.core
        return Experiment(core.config, core.root, name, log_dir, core.state.tag, progress, core.isolation)

    def started(self, pending: Pending) -> None:
        _drop_stale_bytecode(self.editor.target_path())

    def wait_after_start(self, wait_s: float | None) -> float | None:
        """run_experiment waits for the run in the user's tree as the agent asked."""
        return wait_s

    def running_step(self, pending: Pending) -> str:
        return f"still running: call wait_experiment(run_id='{pending.run_id}')"

    def line(self) -> str | None:
        return None

    # -- the run in flight ---------------------------------------------------------------------------------
    def prepare(self, flight: ActiveRun, pending: Pending) -> None:
        """Nothing to do: the candidate is committed on the session branch, in the user's tree."""

    def places(self, slots: list[int]) -> list[Path]:
        return [self.core.root]

    def measure_baseline(self, flight: ActiveRun) -> Measurement:
        assert flight.experiment is not None
        return measure_baseline(flight.experiment, self.core.config)

    def unchanged(self, slot: int | None, pending: Pending) -> bool:
        core = self.core
        return sha256_file(core.root / core.target_rel) == pending.target_sha256 and not changed_fingerprints(
            core.root, core.state.readonly_hashes
        )

    def with_content(
        self, pending: Pending, slot: int | None, commit: str, run: Callable[[], ExperimentResult]
    ) -> ExperimentResult:
        """Run with the content at `commit` in place of the candidate's, then put the candidate's back. The state
        says so meanwhile: a server killed in between restores the candidate without calling it tampering.
        A run that changed the target is not covered up by the swaps: before them the candidate's change is
        left for the check after the run; the swapped-in run's is kept as a copy and stops the measurement."""
        core = self.core
        assert pending.commit is not None
        target = core.root / core.target_rel
        with core.lock:
            if sha256_file(target) != pending.target_sha256:
                return tampered_before_best("the candidate's run changed the target")
            pending.measuring_best = True
            core.save()
            core.repo.restore_paths(commit, [core.target_repo_path])
            _drop_stale_bytecode(target)
            swapped_in = sha256_file(target)
        changed = False
        try:
            result = run()
        finally:
            with core.lock:
                changed = sha256_file(target) != swapped_in
                if changed:
                    self.checks.keep_copies(pending.run_id, [core.target_rel])
                core.repo.restore_paths(pending.commit, [core.target_repo_path])
                _drop_stale_bytecode(target)
                pending.measuring_best = False
                core.save()
        if changed and result.status == "ok":
            result.status = "tampered"
            result.error = (
                f"the best's run changed the target (kept in .autoresearch/tampered/{pending.run_id}/)"
            )
        return result

    def check_after_run(self, pending: Pending, watch: GitWatch | None) -> list[str]:
        return self.checks.verify_after_run(pending, watch)

    # -- after a restart -----------------------------------------------------------------------------------
    def undo_planted(self, pending: Pending) -> None:
        """Found now, reported by the check after the run (`TreeChecks.git_notes`)."""
        if pending.commit:
            checks = self.checks
            checks.git_notes = checks.git_watch.after_run(
                pending.git_config, pending.refs_digest, pending.commit, pending.run_id
            )

    def undo_start(self, pending: Pending) -> str:
        """The record was saved before the commit: a commit there, if any, is undone; the edit stays."""
        core = self.core
        head = core.repo.head_commit()
        before = core.state.best.commit if core.state.best else pending.parent_commit  # HEAD at the start
        if (
            head not in (before, pending.parent_commit)
            and core.repo.is_ancestor(pending.parent_commit, head)
            and core.repo.commit_message(head).startswith("experiment:")
        ):
            # The candidate was committed but never ran: undo the commit (the branch goes back to the best, where
            # it was), keep the edit in the work tree.
            core.repo.move_branch(core.state.branch, before, f"autoresearch: undo {pending.run_id}")
            core.repo.unstage([core.target_repo_path])
        core.state.drop(pending.run_id)
        core.save()
        return f"run {pending.run_id} never started; its edit is back in the working tree"

    def end_leftovers(self, pending: Pending) -> int:
        core = self.core
        killed = kill_marked_processes(str(core.root))
        if pending.measuring_best and pending.commit:  # the best's content was in place for a re-measure
            core.repo.restore_paths(pending.commit, [core.target_repo_path])
        return killed


def _drop_stale_bytecode(target: Path) -> None:
    """Python trusts a cached .pyc when the source's size and mtime (in whole seconds) match; two edits of the
    same length within one second would run the old code. Remove the target's own cache entry before a run."""
    if target.suffix != ".py":
        return
    for cached in (target.parent / "__pycache__").glob(f"{target.stem}.*.pyc"):
        try:
            cached.unlink()
        except OSError:
            pass
