"""What deciding a run in the user's tree changes (the `DecisionPlacement` of single runs): a keep leaves the
branch on the candidate (and the holdout measures it), a discard moves it back and restores the target."""

from __future__ import annotations

from ..errors import RuleViolation
from ..models import DecisionResult
from ..names import SESSION_REFS
from ..records.atomic import atomic_write, read_regular, unused_path
from ..records.state import DecisionRecord, Pending, server_dir
from ..session.context import SessionCore
from .branching import keep_reachable, made_best
from .decisions import decided_next_step
from .holdout_stage import run_holdout
from .running import Runs


class TreeDecisions:
    """The decision's side in the user's tree: at most one run, on the session branch."""

    def __init__(self, core: SessionCore, runs: Runs) -> None:
        self.core = core
        self.runs = runs

    def guard(self) -> None:
        if not self.runs.flights:
            self.core.own.guard()

    def select(self, run_id: str | None) -> Pending:
        pending = self.core.state.pending
        if pending is None:
            raise RuleViolation("no run waits for a decision; call run_experiment first")
        if run_id is not None and run_id != pending.run_id:
            raise RuleViolation(f"run {run_id} is not the pending run; the pending run is {pending.run_id}")
        return pending

    def reconsider(self, pending: Pending, discard: bool) -> DecisionResult | DecisionRecord | None:
        """A run in the user's tree is built on the best: the keep rule decides."""
        return None

    def writes_ahead(self, decision: str, pending: Pending) -> bool:
        """A discard, or a keep that does not become the best, moves the branch back; a keep of the new best only
        syncs the index (decided again, it comes out the same)."""
        record = pending.decision or DecisionRecord()
        return not made_best(record) and pending.commit not in (None, pending.parent_commit)

    def apply(self, pending: Pending, decision: str, commit: str) -> str:
        """Every node stays reachable under refs/autoresearch/<tag>/<run>; the session branch ends on the best.
        A new best leaves the branch on the candidate; a kept node that is not the best leaves its target in the
        work tree (the next parent); a discard puts the parent's target back."""
        core = self.core
        if commit == pending.parent_commit:
            return ""
        record = pending.decision or DecisionRecord()
        path = core.target_repo_path
        if made_best(record):
            keep_reachable(core, pending)
            core.repo.sync_index([path], plain=core.plain_target)
            return ""
        core.repo.set_ref(f"{SESSION_REFS}{core.state.tag}/{pending.run_id}", commit)
        best = core.state.best.commit if core.state.best else pending.parent_commit
        note = ""
        if decision != "keep":  # restore what the candidate changed (the target only: checked before the run)
            note = self._keep_changed_since_run(pending, commit)
            core.repo.restore_paths(pending.parent_commit, [path], plain=core.plain_target)
        if core.repo.resolve_branch(core.state.branch) != best:
            core.repo.move_branch(core.state.branch, best, f"autoresearch: {decision} {pending.run_id}")
        if best != pending.parent_commit or decision == "keep":
            core.repo.unstage(
                [path], plain=core.plain_target
            )  # the index follows the branch; the work tree holds the next parent
        return note

    def _keep_changed_since_run(self, pending: Pending, commit: str) -> str:
        """The target as a person left it after the run ended (no tool writes it while a run waits for its
        decision), kept aside before the discard puts the parent's back; a note saying where, or ""."""
        core = self.core
        repo, path, target = core.repo, core.target_repo_path, core.root / core.target_rel
        try:
            current = read_regular(target)
        except OSError:
            return ""  # deleted or not a file: nothing to keep (the restore writes the parent's)
        known = (commit, pending.parent_commit)
        if core.plain_target:
            same = current in (repo.show_file(c, path) for c in known)
        else:  # compared in git's form: a checkout's converted bytes are not a change
            same = repo.blob_id(path, current) in (repo.blob_at(c, path) for c in known)
        if same:
            return ""
        aside = unused_path(
            server_dir(core.root, "edits"), f"{core.state.tag}-{pending.run_id}-{target.name}"
        )
        atomic_write(aside, current)
        return (
            f"{core.target_rel} was changed after run {pending.run_id} ended (by hand?): what it held is kept in "
            f"{aside.relative_to(core.root)}, since the discard put the parent's version back. "
        )

    def decided(self, pending: Pending, note: str) -> str:
        core = self.core
        self.runs.forget(pending.run_id)
        decision = pending.decision or DecisionRecord()
        if (
            made_best(decision) and core.config.holdout_command
        ):  # after the keep of a new best: it cannot change it
            best = core.state.best.value if core.state.best else None
            run_holdout(
                core.config,
                core.root,
                core.state.tag,
                core.isolation,
                pending.run_id,
                best,
                pending.is_baseline,
                self.runs.side_stage,
            )
        if decision.decision != "keep":  # a change kept aside before the revert: said first
            return note + decided_next_step(
                core,
                pending,
                "build on it: edit the target and run",
                "try another idea: edit the target and run",
            )
        return decided_next_step(
            core,
            pending,
            "build on it: edit the target and run",
            "try another idea: edit the target and run",
            note,
        )
