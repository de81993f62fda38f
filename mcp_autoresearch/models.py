"""Typed results of the loop's operations. The MCP tools return these as structured output; the CLI prints them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from .measure.provenance import MetricProvenance
from .records.tree_view import TreeView
from .statuses import Decision, RunState, RunStatus

PARENT = "The run this candidate started from (its parent node); null for the baseline."
BECAME_BEST = "True: this run became the session's best."
PROVENANCE = "Where the metric's value comes from: evaluation, server, or self-reported (with the fix)."


class StartResult(BaseModel):
    tag: str
    branch: str
    base_commit: str
    resumed: bool
    results_tsv: str = Field(description="Path of results.tsv (one row per experiment).")
    log_path: str = Field(description="Path of the JSONL log.")
    target_file: str
    metric_name: str
    metric_direction: str
    provenance: MetricProvenance | None = Field(None, description=PROVENANCE)
    best_value: float | None = Field(None, description="Best kept value so far (when resumed).")
    baseline_value: float | None = None
    experiments: int = Field(0, description="Experiments logged in this session.")
    pending_run: str | None = Field(None, description="A run that is in flight or waits for its decision.")
    isolation: str = Field(
        "",
        description="The layers that confine runs, in one line: 'namespaces + landlock (ABI n)', 'landlock "
        "(ABI n); no namespaces: <reason>', or 'none: <reason>' (after-run checks only); '; network off' when "
        "runs are cut off from the network.",
    )
    slots: str | None = Field(None, description="With slots: how many, where, and what runs in them.")
    caches: str = Field(
        "",
        description="Which tool caches each run has to itself, and which (persistent) are kept from run to run: "
        "a channel from one run to the next, not trusted.",
    )
    recovered: list[str] = Field(default_factory=list, description="What was repaired after a restart.")
    budget: str | None = Field(
        None, description="The session's budgets used and left, in one line (None: no budget is set)."
    )
    budget_changed: list[str] = Field(
        default_factory=list,
        description="Budgets (max_experiments, max_hours) this call or a changed configuration set, with the "
        "old and new values.",
    )
    briefing: str | None = Field(None, description="Summary of the session so far (when resumed).")
    next_step: str


class TargetView(BaseModel):
    path: str
    content: str
    sha256: str = Field(description="Hash of the whole file; pass it to apply_edit as expected_sha256.")
    total_lines: int
    start_line: int
    end_line: int
    truncated: bool = Field(False, description="True when the range was cut to keep the answer small.")
    line_cut: bool | None = Field(
        None,
        description="True: the range's first line alone is longer than an answer holds; content is its "
        "beginning only (quote a part of it as apply_edit's old_text to change it).",
    )


class EditResult(BaseModel):
    path: str
    sha256_before: str
    sha256_after: str
    diff: str = Field(
        description="Unified diff of the change (bounded), or a summary when the change is large."
    )
    lines_added: int
    lines_removed: int
    diff_summarized: bool | None = Field(
        None,
        description="True: too many lines changed for a diff; `diff` says which lines changed, and the counts "
        "are the changed region's old and new lines.",
    )
    kept_aside: str | None = Field(
        None,
        description="The target held content this server did not leave there (a person's hand edit?): it is "
        "kept at this path, relative to the project, before the edit replaced it.",
    )


class DecisionResult(BaseModel):
    run_id: str
    decision: Decision | Literal["rerun"] = Field(
        description="keep, discard or crash; rerun (slots): the best moved since the candidate was built, so its "
        "change was merged onto the new best and runs again"
    )
    reason: str
    value: float | None
    prev: float | None = Field(
        description="The value of the node it was judged against before this experiment: its parent (the best "
        "unless branched)."
    )
    delta: float | None
    commit: str | None = Field(
        description="The experiment's commit (kept, or saved under refs/autoresearch/)."
    )
    branch_head: str
    next_step: str
    keep_rule: str | None = Field(None, description="The rule that decided: greedy or sequential.")
    values: list[float] | None = Field(None, description="Every run of the candidate (value: their median).")
    best_values: list[float] | None = Field(None, description="The best's runs it was judged against.")
    estimate: float | None = Field(None, description="Improvement over the best (positive = better).")
    interval: list[float] | None = Field(None, description="Interval of the improvement (sequential).")
    probability: float | None = Field(None, description="P(better by more than min_delta) (sequential).")
    remeasured: list[float] | None = Field(
        None, description="The candidate's runs after the rule kept it (as many as judged it)."
    )
    regression: str | None = Field(
        None,
        description="Why those runs showed it worse than when judged: the keep is undone (sequential rule, "
        "unless none failed and they alone still beat the parent: then `value` is their median) "
        "or reported (greedy).",
    )
    parent: str | None = Field(None, description=PARENT)
    best: bool | None = Field(None, description=BECAME_BEST)


class RunResult(BaseModel):
    run_id: str
    status: RunState
    metric_name: str
    value: float | None = None
    best_value: float | None = Field(
        None, description="The value of the node it is judged against: its parent (the best unless branched)."
    )
    delta: float | None = Field(None, description="value - best_value.")
    would_keep: bool | None = Field(
        None, description="What commit_or_reset will decide (None while running)."
    )
    duration_s: float | None = None
    memory_gb: float | None = None
    exit_code: int | None = None
    commit: str | None = Field(None, description="The commit that ran.")
    log_path: str | None = Field(
        None, description="The run's output; while running, the live log (tail -f it)."
    )
    log_tail: str | None = Field(None, description="Last lines of the output (bounded, cleaned).")
    output_cut: str | None = Field(
        None,
        description="The output was longer than log_limit_mb: what its log keeps (the beginning and the end) "
        "and what it left out.",
    )
    error: str | None = None
    values: list[float] | None = Field(None, description="Every value when repeats > 1.")
    spread: float | None = Field(None, description="max - min of the repeated values.")
    elapsed_s: float | None = Field(None, description="Seconds since the run started (while running).")
    next_step: str
    keep_rule: str | None = Field(None, description="The rule that decides: greedy or sequential.")
    reason: str | None = Field(None, description="The rule's verdict, with its figures (when finished).")
    estimate: float | None = Field(None, description="Improvement over the best (positive = better).")
    interval: list[float] | None = Field(None, description="Interval of the improvement (sequential).")
    probability: float | None = Field(None, description="P(better by more than min_delta) (sequential).")
    best_values: list[float] | None = Field(None, description="The best's runs it was judged against.")
    already_measured: bool | None = Field(
        None, description="True: this content was measured before; nothing ran (see next_step)."
    )
    rerun_of: str | None = Field(None, description="The run that measured the same content before.")
    slot: int | None = Field(
        None, description="With slots: the slot it runs in (None: every slot, or no slots)."
    )
    parent: str | None = Field(None, description=PARENT)
    edit: EditResult | None = Field(
        None, description="run_experiment with edits or content: the change made before the run."
    )
    decided: DecisionResult | None = Field(
        None,
        description="decide=true: the decision, made as commit_or_reset makes it, once the run finished (None "
        "while it runs).",
    )


class BranchResult(BaseModel):
    parent: str = Field(description="The run the next candidate starts from (its parent node).")
    sha256: str = Field(
        description="Hash of the target as it is now; pass it to apply_edit as expected_sha256."
    )
    value: float | None = Field(description="The parent's logged value.")
    status: Decision = Field(description="The parent's logged decision.")
    depth: int = Field(description="The parent's depth in the tree (the baseline: 0).")
    combined: list[str] | None = Field(
        None, description="combine: the two runs merged; the next run_experiment measures the merge."
    )
    kept_aside: str | None = Field(
        None, description="Where an edit of the target not yet run was kept before it was replaced."
    )
    next_step: str


class NotesResult(BaseModel):
    run_id: str
    status: Decision
    added: str = Field(description="The note this call attached (earlier notes are not repeated).")
    notes_count: int = Field(description="Notes the experiment holds now, this one included.")
    notes_left: int = Field(description="How many more notes it can take.")
    chars_left: int = Field(description="How many more characters its notes can take in all.")


class ResultRow(BaseModel):
    run_id: str
    commit: str
    value: float | None
    status: Decision
    run_status: RunStatus
    delta: float | None
    memory_gb: float | None
    description: str
    notes: list[str] = Field(description="The agent's notes, oldest first, bounded per row (see notes_cut).")
    notes_cut: bool | None = Field(
        None, description="True: the notes were longer than a row shows; the rest is in the JSONL log."
    )
    timestamp: str
    values: list[float] | None = None
    estimate: float | None = Field(
        None, description="Improvement over the best it faced (positive = better)."
    )
    parent: str | None = Field(None, description=PARENT)
    best: bool | None = Field(None, description=BECAME_BEST)


class BestInfo(BaseModel):
    value: float
    commit: str
    description: str
    run_id: str


class QueryResult(BaseModel):
    tag: str
    metric_name: str
    direction: str
    provenance: MetricProvenance | None = Field(None, description=PROVENANCE)
    total: int
    counts: dict[str, int]
    baseline: float | None
    best: BestInfo | None
    improvement: float | None = Field(
        description="How much better the best is than the baseline (>0 = better)."
    )
    improvement_pct: float | None
    improvement_interval: list[float] | None = Field(
        None,
        description="95% interval of the improvement on a noisy metric (None: deterministic or unknown).",
    )
    experiments_since_last_keep: int
    rows: list[ResultRow]
    keep_rule: str | None = Field(None, description="greedy or sequential (decided by the baseline's noise).")
    noise_sd: float | None = Field(None, description="The metric's noise: pooled sd of repeated runs.")
    noise_df: int | None = Field(None, description="Degrees of freedom behind noise_sd.")
    best_runs: int | None = Field(None, description="Runs of the best so far (re-measured as needed).")
    near_misses: list[ResultRow] = Field(
        default_factory=list,
        description="Discarded within the noise of the best (newest first): combine them.",
    )
    holdout: str | None = Field(
        None, description="How far the kept improvements hold on the holdout (holdout_command), in one line."
    )
    budget: str | None = Field(
        None, description="The session's budgets used and left, in one line (None: no budget is set)."
    )
    experiments_left: int | None = Field(
        None,
        description="Experiments the max_experiments budget still allows (runs in flight count as used).",
    )
    hours_used: float | None = Field(None, description="Hours since the session started (with max_hours).")
    hours_left: float | None = Field(None, description="Hours the max_hours budget still allows.")
    tree: TreeView | None = Field(
        None,
        description="With view='tree': the research tree (best lineage, frontier, near-misses, dead ends, the "
        "newest nodes); rows is then empty.",
    )
