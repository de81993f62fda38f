"""Decisions: keep or discard a finished run, from the server's own measurement, and log it.

A decision is written into the session state before it is applied (git, journal), and applying it is
idempotent, so a server killed midway finishes it on the next start.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass, replace
from typing import Protocol

from ..errors import SessionError
from ..measure.keep_rule import Verdict, decide, improvement
from ..measure.sequential import kept_runs, resolve_keep_rule
from ..measure.standing import best_values, is_baseline_best
from ..measure.stats import noise_of
from ..models import DecisionResult
from ..phases import advance, in_flight, unsaved
from ..records.diskspace import AFTER_DISK_FULL
from ..records.evidence import Evidence
from ..records.rows import Row
from ..records.state import Best, DecisionRecord, Pending, RunOutcome
from ..session.context import SessionCore, normal_run_id
from ..statuses import UNFINISHED
from .branching import after_decision, becomes_best, built_on_the_best, made_best, reference, reference_values
from .in_flight import STOPPED
from .running import Runs
from .steering import steer

# The state a decision changes (restored when applying it fails midway, so a retry applies it once).
_DECIDED = (
    "best",
    "baseline_value",
    "baseline_commit",
    "baseline_values",
    "keep_rule",
    "noise_ss",
    "noise_df",
    "next_parent",
    "next_parent_commit",
    "next_combined",
)


@dataclass(frozen=True)
class Judged:
    """What the keep rule saw for a decided run: the best's runs it was judged against, the estimated
    improvement with its interval and probability (sequential rule)."""

    best_values: list[float]
    estimate: float | None
    interval: tuple[float, float] | None
    probability: float | None


class DecisionPlacement(Protocol):
    """What deciding a run changes with its placement (the user's tree: `TreeDecisions`; slots:
    `SlotDecisions`). Every method is called with the session's lock held."""

    def guard(self) -> None:
        """The server's own files are as it left them before anything is decided."""

    def select(self, run_id: str | None) -> Pending:
        """The run to decide (`run_id`, or the one waiting first); a clear error when there is none."""

    def reconsider(self, pending: Pending, discard: bool) -> DecisionResult | DecisionRecord | None:
        """Before the keep rule: an answer that replaces the decision (the run starts again), a decision
        already reached (why it is discarded), or None (the keep rule decides)."""

    def writes_ahead(self, decision: str, pending: Pending) -> bool:
        """Whether applying this decision moves the branch (then it is saved before it is applied)."""

    def apply(self, pending: Pending, decision: str, commit: str) -> str:
        """The decision in git and the target (idempotent); returns a note for the next step."""

    def decided(self, pending: Pending, note: str) -> str:
        """After the decision is logged: what follows it; returns the next step."""


class Decider:
    """Decides finished runs, whatever their placement: one path from the keep rule to the logged row."""

    def __init__(self, core: SessionCore, runs: Runs, placement: DecisionPlacement) -> None:
        self.core = core
        self.runs = runs
        self.placement = placement

    def verdict(self, pending: Pending, discard: bool) -> Verdict:
        """What the rule says about a finished run, from the server's own measurement."""
        result = pending.result or RunOutcome()
        best = reference(self.core, pending)  # its parent: the best unless it was branched
        verdict = judge(
            self.core, pending, best.value if best else None, best.nonblank_lines if best else None, discard
        )
        if (
            best is not None
            and self.core.state.best is not None
            and best.run_id != self.core.state.best.run_id
        ):
            verdict = replace(verdict, reason=against_parent(verdict.reason, best.run_id))
        # A regression beside a keep: the greedy rule's, or one whose re-measured runs still beat the parent.
        if result.regression and verdict.decision == "keep":
            verdict = replace(
                verdict, reason=f"{verdict.reason}; {result.regression} (a regression, reported)"
            )
        if result.best_regression:  # the best kept earlier is slower now: reported, for the person to look at
            verdict = replace(
                verdict, reason=f"{verdict.reason}; {result.best_regression} (a regression, reported)"
            )
        return verdict

    def recover(self) -> list[str]:
        """After a restart: bring state, git and the logs back into agreement, whatever the placement. A run
        that never started is undone, decisions half applied are finished (first: git as decided), runs that
        were in flight are logged as interrupted. Returns what was repaired."""
        core = self.core
        notes = self.runs.undo_starts()
        for entry in [p for p in core.state.inflight if p.phase == "deciding"]:
            self.finish(entry)
            notes.append(f"the decision on run {entry.run_id} was completed")
        for pending in self.runs.recover():
            self.decide_locked(pending.run_id, discard=True)
            notes.append(
                f"run {pending.run_id} was in flight when the server stopped: logged as interrupted. It never "
                "finished, so it says nothing about its idea: "
                + ("run the baseline again" if pending.is_baseline else "apply its edit again to re-run it")
            )
        if core.journal.reconcile_tsv():
            notes.append("results.tsv was rebuilt from the JSONL log")
        return notes

    def shutdown(self, join_s: float) -> None:
        """The server stops: every run in flight is cancelled, and each that ended so is logged as interrupted.
        A run that ended otherwise meanwhile, or was cancelled before (a client gave up on it), waits for its
        decision as it ended."""
        stopped = {flight.run_id for flight in self.runs.stop("the server was stopped", join_s)}
        with self.core.lock:
            for entry in [p for p in self.core.state.inflight if p.run_id in stopped]:
                result = entry.result
                if entry.phase == "finished" and result is not None and result.status == "cancelled":
                    result.status, result.error = "interrupted", STOPPED
                    self.decide_locked(entry.run_id, discard=True)

    def commit_or_reset(self, run_id: str | None, discard: bool = False) -> DecisionResult:
        core = self.core
        with core.lock:
            if run_id is not None:
                run_id = normal_run_id(run_id)
                row = core.journal.get(run_id)
                # Already decided (a retried call): answer the same again. A run still in flight with its row
                # logged was decided halfway (a write refused after the row): deciding it again finishes it.
                if row is not None and not any(p.run_id == run_id for p in core.state.inflight):
                    return DecisionResult(
                        run_id=run_id,
                        decision=row.status,
                        reason="already decided",
                        value=row.value,
                        prev=row.prev,
                        delta=row.delta,
                        commit=row.commit,
                        branch_head=core.repo.head_commit(),
                        parent=row.parent,
                        best=row.best,
                        next_step=f"already decided; log_result(run_id='{run_id}', notes=...) records what it "
                        "taught you. Then edit the target and run the next experiment",
                    )
            return self.decide_locked(run_id, discard)

    def decide_locked(self, run_id: str | None, discard: bool) -> DecisionResult:
        """Decide a finished run (the caller holds the lock): record the decision, then apply it."""
        core = self.core
        self.placement.guard()
        pending = self.placement.select(run_id)
        if in_flight(pending):
            raise SessionError(
                f"run {pending.run_id} is still running; call wait_experiment(run_id='{pending.run_id}') first"
            )
        if pending.phase == "finished":
            # Deciding touches the session branch, the index and the target: only where the session left them.
            core.check_head()
            best = reference(core, pending)
            reached = self.placement.reconsider(pending, discard)
            if isinstance(reached, DecisionResult):
                return reached
            verdict = self.verdict(pending, discard)
            decision, reason = (
                (reached.decision, reached.reason)
                if reached is not None
                else (verdict.decision, verdict.reason)
            )
            pending.decision = DecisionRecord(
                decision=decision,
                reason=reason,
                delta=verdict.delta,
                prev=best.value if best else None,
                best=becomes_best(core, pending, decision),
            )
            if decision == "keep" and not pending.decision.best and core.state.best is not None:
                pending.decision.reason += (
                    f"; not better than the best ({core.state.best.run_id}): kept as a node, the best stays"
                )
            # Written ahead only when applying it moves the branch: a restart must then finish it. Otherwise,
            # decided again from `finished` after a restart, it comes out the same.
            ahead = self.placement.writes_ahead(decision, pending)
            advance(pending, "deciding", core.save if ahead else unsaved)
        return self.finish(pending)

    def finish(self, pending: Pending) -> DecisionResult:
        """Apply a recorded decision. Idempotent: a restart in the middle simply runs it again."""
        core = self.core
        decision = pending.decision or DecisionRecord()
        # Git first (idempotent); then the state, changed in memory only once nothing can fail before the save
        # that logs the decision, so a retry or a restart applies it exactly once.
        note = self.placement.apply(pending, decision.decision, pending.commit or pending.parent_commit)
        judged = self.log_decision(pending)
        core.state.drop(pending.run_id)
        core.save()
        core.own.journal_written()
        return self.answer(pending, judged, self.placement.decided(pending, note))

    def log_decision(self, pending: Pending) -> Judged:
        """The recorded decision's effect on the state, and its row in the logs; applied exactly once (the
        state is put back when logging fails, so a retry applies it again from the start)."""
        core = self.core
        result = pending.result or RunOutcome()
        judged = Judged(
            [] if pending.is_baseline else self.judged(pending, result), *self.figures(pending, result)
        )
        before = {key: copy.deepcopy(getattr(core.state, key)) for key in _DECIDED}  # all that _apply changes
        try:
            core.journal.log_experiment_done(self._apply(pending, judged))
        except BaseException:
            for key, value in before.items():
                setattr(core.state, key, value)
            raise
        return judged

    def answer(self, pending: Pending, judged: Judged, next_step: str) -> DecisionResult:
        """What commit_or_reset returns for a logged decision."""
        decision = pending.decision or DecisionRecord()
        result = pending.result or RunOutcome()
        return DecisionResult(
            run_id=pending.run_id,
            decision=decision.decision,
            reason=decision.reason,
            value=result.value,
            prev=decision.prev,
            delta=decision.delta,
            commit=pending.commit or pending.parent_commit,
            branch_head=self.core.repo.head_commit(),
            next_step=next_step,
            keep_rule=self.core.state.keep_rule,
            values=list(result.values) or None,
            best_values=judged.best_values or None,
            estimate=judged.estimate,
            interval=list(judged.interval) if judged.interval else None,
            probability=judged.probability,
            remeasured=list(result.remeasured) or None,
            regression=result.regression,
            parent=pending.parent_run,
            best=made_best(decision),
        )

    def _apply(self, pending: Pending, seen: Judged) -> Row:
        """The decision's effect on the session state (best, noise, keep rule); returns the row to log."""
        core = self.core
        decision = pending.decision or DecisionRecord()
        verdict = decision.decision
        result = pending.result or RunOutcome()
        commit = pending.commit or pending.parent_commit
        on_best = built_on_the_best(core, pending)  # judged against the best (else against another node)
        if made_best(decision):
            value = result.value
            assert value is not None  # the rule keeps only a run that produced a value
            if pending.is_baseline:
                core.state.baseline_value = value
                core.state.baseline_commit = commit
                core.state.keep_rule = resolve_keep_rule(core.config, result.values)
                core.state.baseline_values = list(result.values) or [value]
            elif on_best:
                if is_baseline_best(core.state) and seen.best_values:  # the baseline's runs stop growing here
                    core.state.baseline_values = list(seen.best_values)
                    core.state.baseline_value = statistics.median(seen.best_values)
                self._close(
                    seen.best_values
                )  # the old best's runs can no longer grow: they join the session's noise
            else:  # a node of another lineage overtook the best: the best's runs and the parent's new ones close
                self._close(best_values(core.state))
                self._close(result.best_values)
            judged, again = list(result.values), list(result.remeasured)  # the re-measured runs count too
            runs = kept_runs(judged, again, result.regression, core.state.keep_rule or "")
            # Kept on its re-measured runs alone: the judged ones, shown unlike them, close as noise.
            if runs == again and judged:
                self._close(judged)
            if result.remeasured and core.state.keep_rule == "sequential":
                value = statistics.median(runs)  # greedy keeps its judged value: the original tool's rule
            core.state.best = Best(
                value=value,
                commit=commit,
                run_id=pending.run_id,
                description=pending.description,
                nonblank_lines=pending.nonblank_lines,
                values=runs or [value],
            )
        else:
            self._close(list(result.values) + (list(result.remeasured) if verdict == "keep" else []))
            best = core.state.best
            if on_best and best is not None and result.best_values:  # the best re-measured: its runs' median
                best.values, best.value = seen.best_values, statistics.median(seen.best_values)
            elif not on_best:
                self._close(result.best_values)  # the parent's runs added for this candidate
        after_decision(core, pending, decision)
        return Row(
            run_id=pending.run_id,
            commit=commit,
            metric=core.state.metric_name,
            value=result.value,
            status=verdict,
            run_status=result.status,
            description=pending.description,
            prev=decision.prev,
            delta=decision.delta,
            memory_gb=result.memory_gb,
            duration_s=result.duration_s,
            error=result.error,
            tag=core.state.tag,
            timestamp="",
            parent=pending.parent_run,
            best=made_best(decision),
            combined=list(pending.combined),
            evidence=Evidence(
                values=list(result.values),
                best_values=seen.best_values,
                estimate=seen.estimate,
                interval=seen.interval,
                probability=seen.probability,
                keep_rule=core.state.keep_rule or "",
                target_sha256=pending.target_sha256,
                rerun_of=pending.rerun_of,
                slot=pending.slot,
                rebases=pending.rebases,
                remeasured=list(result.remeasured),
                regression=result.regression,
                best_regression=result.best_regression,
            ),
        )

    def judged(self, pending: Pending, result: RunOutcome) -> list[float]:
        """The runs of the node a candidate was judged against (its parent: the best unless branched): the
        known ones, and those its measurement added."""
        return reference_values(self.core, pending) + result.best_values

    def figures(
        self, pending: Pending, result: RunOutcome
    ) -> tuple[float | None, tuple[float, float] | None, float | None]:
        """What the rule saw: the estimated improvement, its interval and probability (sequential only)."""
        best = reference(self.core, pending)
        if result.test is not None:
            test = result.test
            return round(test.estimate, 12), (test.low, test.high), test.probability
        if pending.is_baseline or best is None or result.value is None or result.status != "ok":
            return None, None, None
        return improvement(result.value, best.value, self.core.state.metric_direction), None, None

    def _close(self, values: list[float]) -> None:
        """A group of runs that can no longer grow adds to the session's pooled noise."""
        noise = noise_of(values)
        self.core.state.noise_ss += noise.ss
        self.core.state.noise_df += noise.df


def against_parent(reason: str, parent: str) -> str:
    """The rule's words for a candidate judged against its parent node, not the best (a branched candidate)."""
    return (
        reason.replace("than the best", f"than its parent {parent}")
        .replace("the best's", f"its parent {parent}'s")
        .replace("over the best", f"over its parent {parent}")
    ) + f" (judged against its parent {parent}, not the best)"


def judge(
    core: SessionCore, pending: Pending, best: float | None, best_lines: int | None, discard: bool = False
) -> Verdict:
    """The keep rule (`rules.decide`) on a finished run, from the server's own measurement, against a best of
    value `best` and `best_lines` non-blank lines (None: no best yet, or its size does not count)."""
    result = pending.result or RunOutcome()
    return decide(
        run_status=result.status,
        value=result.value,
        best=best,
        direction=core.state.metric_direction,
        min_delta=core.config.min_delta,
        is_baseline=pending.is_baseline,
        lines=pending.nonblank_lines,
        best_lines=best_lines,
        discard_requested=discard,
        error=result.error,
        test=result.test.step() if result.test is not None else None,
    )


def decided_next_step(
    core: SessionCore, pending: Pending, after_keep: str, after_other: str, kept: str = ""
) -> str:
    """What to do after a decision, for single runs and slots alike, with where to go next (`steer`: a
    near-miss, the nodes to branch from after a stall, the budget near its end)."""
    return steer(core, pending, _decided_step(core, pending, after_keep, after_other, kept))


def _decided_step(core: SessionCore, pending: Pending, after_keep: str, after_other: str, kept: str) -> str:
    """The step itself: a reverted change says what the target holds now and where the failed version is, so
    an agent never patches a file that lost its change."""
    decision = pending.decision or DecisionRecord()
    result = pending.result or RunOutcome()
    notes = f"log_result(run_id='{pending.run_id}', notes='hypothesis: ...; result: ...; learned: ...')"
    if result.status == "disk_full":
        return f"logged as disk_full: {AFTER_DISK_FULL}{rerun(pending.is_baseline)}"
    if result.status in UNFINISHED:
        return f"logged as {result.status}: it never finished, which says nothing about the idea; " + rerun(
            pending.is_baseline
        )
    if pending.is_baseline and decision.decision != "keep":
        fix = "fix the project or configuration, then " if decision.decision == "crash" else ""
        return f"the baseline was not kept ({decision.reason}); {fix}run it again: run_experiment(description='baseline', decide=true)"
    if decision.decision == "keep":
        return f"kept{kept}. Record what it taught you: {notes}; then {after_keep}"
    reverted = reverted_note(core, pending)
    if decision.decision == "crash":
        # What went wrong ("exit code 1"), never "a crash (crash)"; another status names itself.
        why = result.error if result.status == "crash" and result.error else result.status
        return (
            f"logged as a crash ({why}); {reverted}. Record what happened: {notes}; then, to fix a "
            f"trivial mistake, put that version back, fix it and run again, or {after_other}"
        )
    return f"discarded; {reverted}. Record what it taught you: {notes}; then {after_other}"


def reverted_note(core: SessionCore, pending: Pending) -> str:
    """What the target holds after a change that was not kept, and how to get that change back."""
    best, path = core.state.best, core.target_rel
    holds = (
        f"the best kept ({best.run_id} at {best.commit[:7]})" if best is not None else "the committed version"
    )
    if (
        best is not None
        and pending.parent_run
        and pending.parent_commit != best.commit
        and pending.slot is None
    ):
        holds = (
            f"its parent ({pending.parent_run} at {pending.parent_commit[:7]}), the next candidate's parent"
        )
    if pending.slot is not None:
        where = f"this run's change never was in {path} (it ran in slot {pending.slot}); {path} holds {holds} or your next edit"
    else:
        where = f"{path} was reverted to {holds}: it no longer holds this run's change"
    commit = pending.commit
    if not commit or commit == pending.parent_commit:
        return where
    return (
        f"{where}. That version is commit {commit[:7]} (kept as refs/autoresearch/{core.state.tag}/{pending.run_id}): "
        f"`git show {commit[:7]}:{core.target_repo_path}` prints it, and apply_edit(content=...) with it puts it back"
    )


def rerun(is_baseline: bool) -> str:
    """How to run an unfinished run again."""
    if is_baseline:
        return "run the baseline again: run_experiment(description='baseline', decide=true)"
    return "to re-run it, make the same edit again: run_experiment(description=..., edits=[...], decide=true)"
