"""What deciding a run in the user's tree changes (the `DecisionPlacement` of single runs): a keep leaves the
branch on the candidate (and the holdout measures it), a discard moves it back and restores the target."""

from __future__ import annotations

from ..errors import RuleViolation
from ..models import DecisionResult
from ..names import SESSION_REFS
from ..records.state import DecisionRecord, Pending
from ..session.context import SessionCore
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
        """A discard moves the branch back; a keep only syncs the index (decided again, it comes out the same)."""
        return decision != "keep" and pending.commit not in (None, pending.parent)

    def apply(self, pending: Pending, decision: str, commit: str) -> str:
        core = self.core
        if decision == "keep" and commit != pending.parent:
            core.repo.sync_index([core.target_repo_path])
        elif decision != "keep" and commit != pending.parent:
            # Keep the idea reachable, then restore what the candidate changed (the target only: checked before
            # the run) and move the branch back.
            core.repo.set_ref(f"{SESSION_REFS}{core.state.tag}/{pending.run_id}", commit)
            core.repo.restore_paths(pending.parent, [core.target_repo_path])
            if core.repo.resolve_branch(core.state.branch) != pending.parent:
                core.repo.move_branch(
                    core.state.branch, pending.parent, f"autoresearch: discard {pending.run_id}"
                )
        return ""

    def decided(self, pending: Pending, note: str) -> str:
        core = self.core
        self.runs.forget(pending.run_id)
        decision = pending.decision or DecisionRecord()
        if decision.decision == "keep" and core.config.holdout_command:  # after the keep: it cannot change it
            best = core.state.best.value if core.state.best else None
            run_holdout(
                core.config,
                core.root,
                core.state.tag,
                core.isolation,
                pending.run_id,
                best,
                pending.is_baseline,
            )
        return decided_next_step(
            core,
            pending,
            "build on it: edit the target and run",
            "try another idea: edit the target and run",
            note,
        )
