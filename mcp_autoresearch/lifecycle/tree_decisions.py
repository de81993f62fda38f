"""What deciding a run in the user's tree changes (the `DecisionPlacement` of single runs): a keep leaves the
branch on the candidate, a discard moves it back and restores the target; after a restart the one run in
flight is undone, logged as interrupted, or its decision finished."""

from __future__ import annotations

from ..errors import RuleViolation
from ..models import DecisionResult
from ..names import SESSION_REFS
from ..records.state import DecisionRecord, Pending
from ..session.context import SessionCore
from .decisions import Decider, decided_next_step
from .holdout_stage import run_holdout
from .in_flight import STOPPED
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

    def recover(self, decider: Decider) -> list[str]:
        """The run in the user's tree: one that never started is undone (its edit stays), one that was running
        is logged as interrupted, a decision half applied is finished. Returns what was done."""
        core = self.core
        pending = core.state.pending
        if pending is None:
            return []
        if pending.phase == "starting":
            head = core.repo.head_commit()
            if (
                head != pending.parent
                and core.repo.is_ancestor(pending.parent, head)
                and core.repo.commit_message(head).startswith("experiment:")
            ):
                # The candidate was committed but never ran: undo the commit, keep the edit in the work tree.
                core.repo.move_branch(
                    core.state.branch, pending.parent, f"autoresearch: undo {pending.run_id}"
                )
                core.repo.unstage([core.target_repo_path])
            core.state.drop(pending.run_id)
            core.save()
            return [f"run {pending.run_id} never started; its edit is back in the working tree"]
        if pending.phase == "running":
            self.runs.recover()  # its leftovers ended, checked, marked interrupted
            decider.decide_locked(pending.run_id, discard=True)
            return [
                f"run {pending.run_id} was in flight when the server stopped: logged as interrupted. It never "
                "finished, so it says nothing about its idea: "
                + ("run the baseline again" if pending.is_baseline else "apply its edit again to re-run it")
            ]
        if pending.phase == "deciding":
            decider.finish(pending)
            return [f"the decision on run {pending.run_id} was completed"]
        return []

    def shutdown(self, decider: Decider, join_s: float) -> None:
        """The run in flight is cancelled and, once it ended, logged as interrupted."""
        stopped = self.runs.stop("the server was stopped", join_s)
        if not stopped:
            return
        with self.core.lock:
            pending = self.core.state.pending
            if pending is not None and pending.phase == "finished" and pending.run_id == stopped[0].run_id:
                if pending.result and pending.result.status == "cancelled":
                    pending.result.status = "interrupted"
                    pending.result.error = STOPPED
                decider.decide_locked(pending.run_id, discard=True)
