"""Views and queries of a session: a run (in flight, waiting for its decision, or logged), the results table,
and the agent's notes. Nothing here changes git or a measurement; notes are the only thing written.
"""

from __future__ import annotations

from typing import Any

from ..errors import RuleViolation, SessionError
from ..lifecycle.branching import reference, reference_values
from ..lifecycle.decisions import Decider, rerun
from ..lifecycle.running import Runs
from ..measure.holdout import holdout_summary
from ..measure.provenance import metric_provenance
from ..measure.sequential import keep_rule_summary
from ..measure.standing import best_values, session_noise, standing
from ..models import BestInfo, DecisionResult, NotesResult, QueryResult, ResultRow, RunResult, StartResult
from ..phases import in_flight
from ..readers.briefing import journal_briefing, near_misses
from ..records.budget import BudgetUse, budget_use
from ..records.diskspace import AFTER_DISK_FULL
from ..records.rows import Row
from ..records.state import Pending
from ..records.tree import journal_tree, stall_after_of
from ..records.tree_view import TreeView, tree_view
from ..sandbox.caches import describe as describe_caches
from ..statuses import DECISIONS, FILTERS, UNFINISHED
from .context import SessionCore, logged_run_id, normal_run_id

MAX_NOTES = 4000  # characters of one log_result call's notes
MAX_RUN_NOTES = 10  # notes one experiment can hold
MAX_RUN_NOTES_CHARS = 12_000  # characters of all the notes of one experiment
ROW_NOTES_CHARS = 1000  # characters of notes a row of query_results shows
NOTES_LIMITS = (
    f"limits: {MAX_NOTES} characters per log_result call, {MAX_RUN_NOTES} notes and {MAX_RUN_NOTES_CHARS} "
    "characters per experiment"
)


class Views:
    def __init__(self, core: SessionCore, runs: Runs, decider: Decider) -> None:
        self.budget_changed: list[str] = []  # budgets the last opening or start_session changed (budget.py)
        self.core = core
        self.runs = runs
        self.decider = decider

    def view(self, run_id: str | None, already_measured: bool = False) -> RunResult:
        """The current knowledge of a run: in flight, finished and waiting for a decision, or already logged
        (`already_measured`: shown in answer to a run of the same content, which did not run)."""
        core = self.core
        with core.lock:
            if run_id is not None:
                run_id = normal_run_id(run_id)
            pending = self._in_flight(run_id)
            if pending is not None and (run_id is None or run_id == pending.run_id):
                return self.pending_view(pending)
            if run_id is None:
                raise SessionError("no run is in flight or waiting for a decision; call run_experiment")
            row = core.journal.get(run_id)
            if row is None:
                raise RuleViolation(f"no run with id {run_id!r} in session '{core.state.tag}'")
            seen = row.evidence
            next_step = f"already decided: {row.status}. Edit the target and run the next experiment."
            if row.run_status in UNFINISHED:
                again = rerun(core.state.best is None)  # no baseline kept yet: the next run is the baseline
                next_step = f"already decided: {row.status} ({row.run_status}: it never finished); {again}"
            if already_measured:
                next_step = (
                    f"this content was measured before, as {row.run_id} ({row.status}); nothing ran. Edit the "
                    "target to try another idea, or call run_experiment(rerun=true) to measure it again"
                )
            return RunResult(
                run_id=row.run_id,
                status=row.run_status,
                metric_name=row.metric,
                value=row.value,
                best_value=row.prev,
                delta=row.delta,
                would_keep=row.status == "keep",
                duration_s=row.duration_s,
                memory_gb=row.memory_gb,
                commit=row.commit,
                error=row.error,
                next_step=next_step,
                values=seen.values if len(seen.values) > 1 else None,
                keep_rule=seen.keep_rule or None,
                estimate=seen.estimate,
                interval=list(seen.interval) if seen.interval else None,
                probability=seen.probability,
                best_values=seen.best_values or None,
                already_measured=True if already_measured else None,
                rerun_of=seen.rerun_of,
                parent=row.parent,
            )

    def _in_flight(self, run_id: str | None) -> Pending | None:
        """The run asked for, else the first to finish among those waiting, else the oldest running."""
        if run_id is not None:
            return self.runs.entry(run_id)
        inflight = self.core.state.inflight
        return self.runs.first_finished() or (inflight[0] if inflight else None)

    def pending_view(self, pending: Pending) -> RunResult:
        """A run in flight, or finished and waiting for its decision (with what the decision will be)."""
        core = self.core
        parent = reference(core, pending)  # the node it is judged against: the best unless it was branched
        best = parent.value if parent else None
        metric = core.state.metric_name
        if in_flight(pending) or pending.result is None:
            handle = self.runs.handle(pending.run_id)
            progress = handle.progress() if handle is not None else None
            next_step = self.runs.placement.running_step(pending)
            return RunResult(
                run_id=pending.run_id,
                status="running",
                metric_name=metric,
                best_value=best,
                commit=pending.commit,
                elapsed_s=progress.elapsed_s if progress else None,
                log_tail=progress.last_line if progress else None,
                log_path=str(progress.log_path) if progress else None,
                next_step=next_step,
                slot=pending.slot,
                parent=pending.parent_run,
            )
        result = pending.result
        test = result.test
        verdict = self.decider.verdict(pending, discard=False)
        status = result.status
        if status == "ok":
            next_step = (
                f"call commit_or_reset(run_id='{pending.run_id}'): it will "
                f"{'keep' if verdict.decision == 'keep' else 'discard'} this ({verdict.reason})"
            )
        elif status == "disk_full":
            next_step = (
                f"the disk filled up (see error): call commit_or_reset(run_id='{pending.run_id}') to log it; "
                f"{AFTER_DISK_FULL}{rerun(pending.is_baseline)}"
            )
        elif status in UNFINISHED:
            next_step = (
                f"the run was {status} before it finished, which says nothing about the idea: call "
                f"commit_or_reset(run_id='{pending.run_id}') to log it, then {rerun(pending.is_baseline)}"
            )
        else:
            next_step = (
                f"call commit_or_reset(run_id='{pending.run_id}') to log this {status}: the target then goes "
                "back to the best kept version (its answer says how to get this version back to fix a trivial "
                "mistake), or move on to another idea"
            )
        return RunResult(
            run_id=pending.run_id,
            status=status,
            metric_name=metric,
            value=result.value,
            best_value=best,
            delta=verdict.delta,
            would_keep=verdict.decision == "keep",
            duration_s=result.duration_s,
            memory_gb=result.memory_gb,
            exit_code=result.exit_code,
            commit=pending.commit,
            log_path=result.log_path,
            log_tail=result.log_tail,
            output_cut=result.output_cut,
            error=result.error,
            values=result.values if len(result.values) > 1 else None,
            spread=result.spread,
            next_step=next_step,
            keep_rule=core.state.keep_rule,
            reason=verdict.reason,
            estimate=test.estimate if test else None,
            interval=[test.low, test.high] if test else None,
            probability=test.probability if test else None,
            best_values=(reference_values(core, pending) + result.best_values) if test else None,
            rerun_of=pending.rerun_of,
            slot=pending.slot,
            parent=pending.parent_run,
        )

    def start_result(self, resumed: bool, recovered: list[str]) -> StartResult:
        """What start_session answers: the session, what was repaired, the briefing when resumed, the next step."""
        core = self.core
        state = core.state
        pending = state.pending or self.runs.first_finished()
        if pending is None and state.inflight:
            next_step = (
                "runs are in flight: call wait_experiment() for the first to finish, then commit_or_reset"
            )
        elif pending and pending.phase == "running":
            next_step = f"run {pending.run_id} is in flight: call wait_experiment(run_id='{pending.run_id}')"
        elif pending:
            next_step = f"run {pending.run_id} waits for its decision: call commit_or_reset(run_id='{pending.run_id}')"
        elif state.best is None:  # the loop's step is one call (the `loop` prompt); three calls do the same
            next_step = (
                "run the unmodified baseline first: run_experiment(description='baseline', decide=true) "
                "(or run_experiment, then commit_or_reset)"
            )
        else:
            next_step = (
                "read_target, then make, run and decide a change in one call: run_experiment(description=..., "
                "edits=[{old_text, new_text}], decide=true) (or apply_edit, run_experiment, commit_or_reset)"
            )
        briefing = None
        if resumed:
            briefing = self.briefing()
        budget = self.budget()
        near = budget.near()
        if near is not None and pending is None and not state.inflight:
            next_step = f"{near}. {next_step}" if budget.spent() is None else near
        return StartResult(
            tag=state.tag,
            branch=state.branch,
            base_commit=state.base_commit,
            resumed=resumed,
            results_tsv=str(core.journal.tsv_path),
            log_path=str(core.journal.jsonl_path),
            target_file=state.target_file,
            metric_name=state.metric_name,
            metric_direction=state.metric_direction,
            provenance=metric_provenance(state.rules),
            best_value=state.best.value if state.best else None,
            baseline_value=state.baseline_value,
            experiments=len(core.journal),
            pending_run=pending.run_id if pending else None,
            isolation=core.isolation.describe(),
            slots=self.runs.placement.line(),
            caches=describe_caches(list(core.config.persistent)),
            recovered=recovered,
            briefing=briefing,
            budget=budget.line(),
            budget_changed=self.budget_changed,
            next_step=next_step,
        )

    def budget(self) -> BudgetUse:
        """The session's budgets: the runs in flight or waiting for their decision count as used."""
        state = self.core.state
        return budget_use(state, len(self.core.journal) + len(state.inflight))

    def briefing(self) -> str:
        """The bounded summary for a fresh agent: the journal's newest rows, the keep rule, noise, slots."""
        core = self.core
        noise = session_noise(core.state)
        text = journal_briefing(
            core.state,
            core.journal,
            keep_rule=keep_rule_summary(core.state, core.config),
            noise_sd=noise.sd if noise.df else None,
            slots=self.runs.placement.line(),
        )
        held = holdout_summary(core.root, core.state.tag, core.state.metric_direction)
        return f"{text.rstrip()}\n\n{held[0].upper()}{held[1:]}.\n" if held else text

    def log_notes(self, run_id: str, notes: str) -> NotesResult:
        """Attach the agent's notes to a logged experiment; values and statuses never change."""
        core = self.core
        with core.lock:
            core.own.guard()
            run_id = logged_run_id(core.journal, run_id)
            notes = (notes or "").strip()
            if not notes:
                raise RuleViolation("notes are empty; write the hypothesis and what the result taught you")
            if len(notes) > MAX_NOTES:
                raise RuleViolation(f"notes are {len(notes)} characters; shorten them ({NOTES_LIMITS})")
            row = core.journal.get(run_id)
            if row is None:
                waiting = [p.run_id for p in core.state.inflight]
                hint = (
                    f"; run {run_id} is not decided yet: call commit_or_reset first"
                    if run_id in waiting
                    else ""
                )
                raise RuleViolation(f"no logged experiment {run_id!r} in session '{core.state.tag}'{hint}")
            _check_room(run_id, row.notes, notes)
            all_notes = core.journal.add_notes(run_id, notes)
            core.save()  # the record seals the JSONL with the notes
            core.own.journal_written()
            return NotesResult(
                run_id=run_id,
                status=row.status,
                added=all_notes[-1],  # as stored: escaped
                notes_count=len(all_notes),
                notes_left=MAX_RUN_NOTES - len(all_notes),
                chars_left=max(0, MAX_RUN_NOTES_CHARS - sum(map(len, all_notes))),
            )

    def query(self, status: str | None, limit: int, order: str, view: str = "rows") -> QueryResult:
        """Counts, baseline, best, improvement, streak, and the rows (recent first or best first); with
        view='tree', the research tree instead of the rows."""
        core = self.core
        with core.lock:
            journal = core.journal
            direction = core.state.metric_direction
            wanted = status.strip().lower() if status else None
            if wanted is not None and wanted not in FILTERS:
                raise RuleViolation(f"status must be one of {', '.join(sorted(FILTERS))}")
            if view not in ("rows", "tree"):
                raise RuleViolation("view must be 'rows' (the results table) or 'tree' (the research tree)")
            limit = max(1, min(limit, 500))
            if view == "tree":
                chosen = []
            elif order == "best":
                chosen = journal.best_indices(limit, direction == "lower_is_better", wanted)
            elif order == "recent":
                if wanted is None:
                    chosen = list(range(len(journal) - 1, max(-1, len(journal) - 1 - limit), -1))
                else:
                    chosen = list(reversed(journal.indices(wanted)[-limit:]))
            else:
                raise RuleViolation("order must be 'recent' or 'best'")
            best, now = core.state.best, standing(core.state)
            total = len(journal)
            noise = session_noise(core.state)
            return QueryResult(
                tag=core.state.tag,
                metric_name=core.state.metric_name,
                direction=direction,
                provenance=metric_provenance(core.state.rules),
                total=total,
                counts={k: journal.counts.get(k, 0) for k in DECISIONS},
                baseline=now.baseline if now else core.state.baseline_value,
                best=BestInfo(
                    value=now.best if now else best.value,
                    commit=best.commit[:7],
                    description=best.description,
                    run_id=best.run_id,
                )
                if best
                else None,
                improvement=now.improvement if now else None,
                improvement_pct=round(now.improvement_pct, 4)
                if now and now.improvement_pct is not None
                else None,
                improvement_interval=list(now.interval) if now and now.interval else None,
                experiments_since_last_keep=total - 1 - journal.last_keep_index if total else 0,
                rows=[row_model(r) for r in journal.rows_at(chosen)],
                keep_rule=core.state.keep_rule,
                noise_sd=noise.sd if noise.df else None,
                noise_df=noise.df,
                best_runs=len(best_values(core.state)) or None,
                near_misses=[row_model(r) for r in near_misses(journal, noise.sd or 0.0)],
                holdout=holdout_summary(core.root, core.state.tag, core.state.metric_direction),
                **budget_fields(self.budget()),
                tree=self._tree(limit, noise.sd or 0.0) if view == "tree" else None,
            )

    def _tree(self, newest: int, noise_sd: float) -> TreeView:
        """The research tree, built from the journal's index; descriptions are read for the shown nodes only."""
        core = self.core
        journal = core.journal
        best = core.state.best
        tree = journal_tree(
            journal,
            best.run_id if best else None,
            core.state.metric_direction == "lower_is_better",
            stall_after_of(core.state.rules),
            noise_sd,
        )
        return tree_view(tree, newest, lambda rows: [r.description for r in journal.rows_at(rows)])


def budget_fields(use: BudgetUse) -> dict[str, Any]:
    """query_results' budget fields: the line, and what is used and left of each budget that is set."""
    return {
        "budget": use.line(),
        "experiments_left": use.experiments_left,
        "hours_used": round(use.hours, 4) if use.max_hours is not None else None,
        "hours_left": round(use.hours_left, 4) if use.hours_left is not None else None,
    }


def _check_room(run_id: str, held: list[str], notes: str) -> None:
    """An experiment's notes are bounded in number and size, so every answer that shows them stays small."""
    if len(held) >= MAX_RUN_NOTES:
        raise RuleViolation(
            f"run {run_id} already holds {len(held)} notes, the most one experiment can hold ({NOTES_LIMITS}); "
            "write what you learned next into the notes of your next experiment"
        )
    room = MAX_RUN_NOTES_CHARS - sum(map(len, held))
    if len(notes) > room:
        raise RuleViolation(
            f"these notes are {len(notes)} characters, and run {run_id} has room for {max(0, room)} more "
            f"({NOTES_LIMITS}); shorten them, or write them into the notes of your next experiment"
        )


def bounded_notes(notes: list[str], budget: int = ROW_NOTES_CHARS) -> tuple[list[str], bool]:
    """The notes, oldest first, up to `budget` characters in all (the last one shown cut with '…'), and whether
    anything was left out."""
    shown: list[str] = []
    for note in notes:
        room = budget - sum(map(len, shown))
        if room <= 1:
            break
        shown.append(note if len(note) <= room else note[: room - 1] + "…")
    return shown, shown != notes


def row_model(row: Row) -> ResultRow:
    notes, cut = bounded_notes(row.notes)
    return ResultRow(
        run_id=row.run_id,
        commit=row.commit[:7],
        value=row.value,
        status=row.status,
        run_status=row.run_status,
        delta=row.delta,
        memory_gb=row.memory_gb,
        description=row.description,
        notes=notes,
        notes_cut=cut or None,
        timestamp=row.timestamp,
        values=row.evidence.values if len(row.evidence.values) > 1 else None,
        estimate=row.evidence.estimate,
        parent=row.parent,
        best=row.best,
    )


def waits_to_decide(view: RunResult, decided: DecisionResult | None = None) -> RunResult:
    """A running run's view for decide=true (`decided`: the rerun it runs for): how to wait for it with the
    decision asked again."""
    again = (
        "runs again on the new best (its change merged onto it)"
        if decided is not None
        else "is still running"
    )
    if view.status != "running":  # the rerun ended already
        again = "ran again on the new best"
    step = f"{view.run_id} {again}: call wait_experiment(run_id='{view.run_id}', decide=true) to decide it"
    return view.model_copy(update={"decided": decided, "next_step": step})
