"""Decisions with slots: one finished run at a time, against the best at the time of its decision.

A candidate built on the current best is decided as a single run is. One built on an older best (another run
was kept meanwhile) is stale: if it did not beat the best it was built on, it is discarded; if it did, its change
is merged onto the new best (a three-way merge of the target) and the merged candidate runs again, in a free
slot, under the same run id; a change that no longer applies is discarded as stale. Each step is logged.

As with single runs, a decision is written into the state before it is applied, and applying it is idempotent.
"""

from __future__ import annotations

from ..errors import RuleViolation, SessionError
from ..measure.keep_rule import nonblank_lines
from ..models import DecisionResult
from ..names import SESSION_REFS
from ..records.atomic import atomic_write, read_regular, unused_path
from ..records.state import Best, DecisionRecord, Pending, RunOutcome, server_dir
from ..session.context import SessionCore
from ..setup.single_file import sha256_bytes
from ..vcs.checkouts import merge_target
from .branching import keep_reachable, made_best
from .decisions import decided_next_step, judge
from .running import Runs
from .slot_placement import SlotPlacement

MAX_REBASES = 2  # a candidate merged onto a newer best this many times and still stale is discarded


class SlotDecisions:
    """The decision's side with slots (the `DecisionPlacement` of slot runs): several runs, any order."""

    def __init__(self, core: SessionCore, runs: Runs, slots: SlotPlacement) -> None:
        self.core = core
        self.runs = runs
        self.slots = slots

    def guard(self) -> None:
        self.slots.checks.guard_own()  # also while runs are in flight: nothing is appended to a forged log

    def select(self, run_id: str | None) -> Pending:
        core = self.core
        if run_id is not None:
            found = self.runs.entry(run_id)
            if found is None:
                raise RuleViolation(
                    f"run {run_id} is neither in flight nor logged in session '{core.state.tag}'"
                )
            return found
        pending = self.runs.first_finished()
        if pending is None:
            running = [p.run_id for p in core.state.inflight]
            if running:
                raise SessionError(
                    f"no run has finished yet ({', '.join(running)} in flight); call wait_experiment() first"
                )
            raise RuleViolation("no run waits for a decision; call run_experiment first")
        return pending

    def reconsider(self, pending: Pending, discard: bool) -> DecisionResult | DecisionRecord | None:
        """A candidate built on an older best is stale: merged onto the best and started again (the answer),
        or discarded (why), judged against the best it was built on."""
        best = self.core.state.best
        stale = best is not None and not pending.is_baseline and pending.parent_commit != best.commit
        if not stale or not pending.built_on_best:  # a branched candidate is judged against its parent
            return None
        if pending.result is not None:
            pending.result.best_values = []  # runs of the best it was built on, not of today's best
            pending.result.best_regression = None
        if not discard:
            rebased = self._rebase(pending)
            if rebased is not None:
                return rebased
        return pending.decision  # _rebase wrote why it was discarded as stale

    def writes_ahead(self, decision: str, pending: Pending) -> bool:
        """A new best moves the branch; a discard, or a kept node that is not the best, changes nothing in git
        (every candidate's commit is under refs/autoresearch/ from its start)."""
        record = pending.decision or DecisionRecord()
        return made_best(record) and pending.commit not in (None, pending.parent_commit)

    def apply(self, pending: Pending, decision: str, commit: str) -> str:
        if made_best(pending.decision or DecisionRecord()) and commit != pending.parent_commit:
            keep_reachable(self.core, pending)
            if self.core.state.next_parent is not None:  # the work tree is on another node: it stays there
                self._move_branch_only(pending, commit)
                return ""
            return self._advance(pending, commit)
        return ""

    def _move_branch_only(self, pending: Pending, commit: str) -> None:
        """The branch moves to the new best; the work tree keeps the node it was branched to (the index
        follows the branch)."""
        repo = self.core.repo
        if repo.resolve_branch(self.core.state.branch) != commit:
            repo.move_branch(self.core.state.branch, commit, f"autoresearch: keep {pending.run_id}")
        repo.unstage([self.core.target_repo_path])

    def decided(self, pending: Pending, note: str) -> str:
        self.runs.forget(pending.run_id)
        free = self.slots.slots - len(self.core.state.inflight)
        then = (
            f"{free} slot{'s' if free != 1 else ''} free: edit the next idea and run_experiment"
            if free
            else "every slot is busy: wait_experiment() for the next run to finish"
        )
        return decided_next_step(self.core, pending, then, then, note)

    def _rebase(self, pending: Pending) -> DecisionResult | None:
        """A stale candidate: discarded (the decision is left in `pending.decision`), or merged onto the best and
        started again (the answer is returned)."""
        best = self.core.state.best
        assert best is not None
        own = judge(self.core, pending, pending.parent_value, None)  # against the best it was built on
        if own.decision != "keep":
            pending.decision = DecisionRecord(
                decision=own.decision, reason=f"{own.reason} (against the best it was built on)"
            )
            return None
        merged, why = self._merged(pending, best)
        slot = self.slots.free_slot()
        if why is None and slot is None:
            why = "stale: no slot is free to run it again"
        if why is not None or merged is None or slot is None:
            pending.decision = DecisionRecord(decision="discard", reason=why or "stale")
            return None
        value, built_on = (pending.result or RunOutcome()).value, pending.parent_value
        commit = self._run_again(pending, merged, best, slot)
        return DecisionResult(
            run_id=pending.run_id,
            decision="rerun",
            reason=(
                f"it beat the best it was built on ({value} vs {built_on}), but {best.run_id} "
                "was kept since: its change was merged onto the new best and runs again"
            ),
            value=value,
            prev=best.value,
            delta=None,
            commit=commit,
            branch_head=self.core.repo.head_commit(),
            next_step=(
                f"{pending.run_id} runs again in slot {slot} on the new best; call wait_experiment() for the "
                "first run to finish, or edit the next idea and run_experiment"
            ),
            keep_rule=self.core.state.keep_rule,
            parent=pending.parent_run,
        )

    def _merged(self, pending: Pending, best: Best) -> tuple[bytes | None, str | None]:
        """The candidate's change merged onto the best, and why it may not run again (None: it may)."""
        core = self.core
        repo, path = core.repo, core.target_repo_path
        base = repo.show_file(pending.parent_commit, path)
        ours = repo.show_file(best.commit, path)
        theirs = repo.show_file(pending.commit or pending.parent_commit, path)
        merged = merge_target(base, ours, theirs)
        if pending.rebases >= MAX_REBASES:
            return merged, f"stale: the best moved again after {pending.rebases} re-runs"
        if merged is None:
            return None, f"stale: its change conflicts with the best kept since it was built ({best.run_id})"
        if merged == ours:
            return merged, f"stale: its change is already in the best ({best.run_id})"
        # As run_experiment: content in flight or already measured is never started again here (a rebase is no
        # second draw of the noise for content the session has decided on, nor a twin of a run in flight).
        merged_sha = sha256_bytes(merged)
        twin = next(
            (
                p
                for p in core.state.inflight
                if p is not pending and not p.is_baseline and p.target_sha256 == merged_sha
            ),
            None,
        )
        if twin is not None:
            return merged, f"stale: merged onto the new best it is the content of {twin.run_id}, in flight"
        earlier = core.journal.measured(merged_sha)
        if earlier is not None:
            return (
                merged,
                f"stale: merged onto the new best it is the content {earlier.run_id} already measured",
            )
        return merged, None

    def _run_again(self, pending: Pending, merged: bytes, best: Best, slot: int) -> str:
        """Commit the merged candidate on the best, log it, and start it again in `slot`; returns its commit. A
        failure puts the run back as it ran."""
        core = self.core
        repo = core.repo
        old_commit = pending.commit
        commit = repo.write_commit(
            core.target_repo_path,
            merged,
            f"experiment: {pending.description} (on {best.run_id})",
            best.commit,
            plain=core.plain_target,
        )
        # Logged before anything changes: a failure here (or in the restart) leaves the candidate as it ran, never
        # its old result standing for a merged commit that no run measured (a later keep would move the branch
        # there).
        core.journal.log_event(
            "experiment_rebased",
            {
                "run_id": pending.run_id,
                "from_commit": old_commit,
                "commit": commit,
                "onto": best.run_id,
                "value_before": (pending.result or RunOutcome()).value,
                "slot": slot,
            },
        )
        before = pending.model_copy(deep=True)
        ref = f"{SESSION_REFS}{core.state.tag}/{pending.run_id}"
        try:
            repo.set_ref(ref, commit)
            pending.parent_commit, pending.parent_value, pending.commit = best.commit, best.value, commit
            pending.parent_run = best.run_id
            pending.target_sha256 = sha256_bytes(merged)
            pending.nonblank_lines = nonblank_lines(merged.decode("utf-8", errors="replace"))
            pending.rebases += 1
            self.runs.restart(pending, slot)
        except BaseException:
            self.runs.flights.pop(pending.run_id, None)
            for name in type(before).model_fields:
                setattr(pending, name, getattr(before, name))
            if old_commit is not None:
                repo.set_ref(ref, old_commit)
            core.save()
            raise
        core.own.journal_written()
        return commit

    def _advance(self, pending: Pending, commit: str) -> str:
        """The branch moves to the kept candidate (a child of the best), and the target in the user's tree
        follows: an edit of the agent's not yet run is merged onto it (or kept aside when it conflicts)."""
        core = self.core
        repo, path = core.repo, core.target_repo_path
        target = core.root / core.target_rel
        best = core.state.best  # the best before this keep (the parent, unless the candidate was branched)
        before = best.commit if best is not None else pending.parent_commit
        old_best = repo.show_file(before, path)
        new_best = repo.show_file(commit, path)
        try:
            current = read_regular(target)
        except OSError:
            current = old_best
        if repo.resolve_branch(core.state.branch) != commit:  # else moved before a restart: the rest again
            repo.move_branch(core.state.branch, commit, f"autoresearch: keep {pending.run_id}")
        if current in (old_best, new_best):
            repo.restore_paths(commit, [path])
            return ""
        merged: bytes | None = None
        if core.plain_target:
            merged = merge_target(old_best, new_best, current)
        else:
            # git converts this file on its way in: compared in git's form, merged only where that form is the
            # bytes themselves, else kept aside; never overwritten unseen.
            clean = repo.blob_id(path, current)
            if clean in (repo.blob_at(c, path) for c in (before, commit)):
                repo.restore_paths(commit, [path])
                return ""
            if clean == repo.blob_id(path, current, filters=False):
                merged = merge_target(old_best, new_best, current)
        if merged is not None:
            atomic_write(target, merged)
            repo.sync_index([path])
            return "; your edit not yet run was merged onto it"
        aside = unused_path(
            server_dir(core.root, "edits"), f"{core.state.tag}-{pending.run_id}-{target.name}"
        )
        atomic_write(aside, current)
        repo.restore_paths(commit, [path])
        return (
            f"; your edit not yet run conflicted with it and was kept in {aside.relative_to(core.root)}: the "
            "target now holds the new best, so redo that edit on it"
        )
