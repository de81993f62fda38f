"""The loop program handed to an agent (the MCP prompt `loop`), in the spirit of karpathy's program.md."""

from __future__ import annotations

import re

from ..setup.project import ProjectInfo

PROGRAM = """\
You are running an autonomous research loop on this project through the autoresearch MCP tools.
The server enforces the rules; this text tells you how to work well within them.

## Goal
Improve `{metric}` ({direction}) by changing only `{target}`. Each experiment runs `{run}`
(hard limit {timeout:g} s; aim for about {budget:g} s). The metric is measured by the server: {source}.
Where the value comes from: {provenance}.

## Setup (once)
1. `detect_project` — check target, command, metric and read-only files ({readonly}).
2. `start_session` — creates the branch autoresearch/<tag>, results.tsv and the JSONL log (or resumes).
3. Baseline: `run_experiment(description="baseline", decide=true)` on the unmodified target.

## The loop (repeat forever)
1. Think of one idea. Check the briefing and `query_results` so you do not repeat a failed idea.
2. `read_target` (note its sha256), then make, run and decide the change in one call:
   `run_experiment(description="<what changed>", edits=[{{"old_text": ..., "new_text": ...}}],
   expected_sha256=..., decide=true)` (exact replacements, or the whole `content`; only `{target}` can be
   changed; a failed edit runs nothing). If the status is `running`, call
   `wait_experiment(run_id=..., decide=true)` until it is not.
3. The decision is in `decided`: the server keeps the change only if `{metric}` improved (or stayed equal
   with simpler code) and otherwise reverts the target to the best kept version. Keep rule: {keep_rule}.
   On a noisy metric one run decides nothing: the server runs a promising change again (and re-measures the
   best) until the evidence is clear, and shows the estimate, its interval and the probability.
4. `log_result(run_id=..., notes="hypothesis: ...; result: ...; learned: ...")`.

The same in steps, to look between them: `apply_edit` (with `expected_sha256`), then
`run_experiment(description=...)` (`wait_experiment(run_id=...)` while it is `running`), then
`commit_or_reset(run_id=...)`.

## The research tree
Every measured run is a node; the next candidate starts from its parent (after a keep, the kept run).
- Go deeper after a keep: the kept node is your new parent; build on what just worked.
- Branch when stuck: after {stall_after} experiments without a keep, next_step proposes nodes with the exact
  call (`branch_from(run_id=...)`): a near-miss worth a variant, an earlier node of the best lineage to try a
  different idea from, a kept node nobody explored. A candidate is judged against its parent.
- Combine two nodes that improved different things: `combine(run_a=..., run_b=...)` merges their changes into
  one candidate, measured like any other.
- Budgets: {budgets}. Past them no new run starts (next_step says so); a run already started still counts.

## Rules
- One file: only `{target}`. Read-only files and everything else stay as they are, also during the run.
- Simpler wins: an equal result with less code is an improvement. Deleting code that does not help is the
  best kind of change. Weigh small gains against added complexity.
- Crashes: the decision logs them and puts the target back to the best kept version. If it was a
  trivial mistake (typo, missing import), get the failed version back as its next_step says, fix it and run
  again. If the idea itself is broken, let it go and move on. A timeout counts as a failure.
- An idea measured once is not measured again: running the same content returns the earlier result. Ask for
  `rerun=true` only with a reason. Near-misses (discarded within the noise) are listed: combine them.
- NEVER STOP. Do not ask whether to continue; the person may be asleep. Keep running experiments until you
  are interrupted. When you run out of ideas, think harder: combine near-misses, try the opposite, simplify,
  revisit assumptions in the code.
"""

SLOTS = """
## Slots: {slots} experiments at once ({where})
`run_experiment` returns at once: the candidate runs in a slot of its own, and the target holds the best again,
ready for your next idea. Keep every slot busy: edit and start ideas until all {slots} are in use, then
`wait_experiment()` (no run_id) returns the first run to finish; decide it with `commit_or_reset(run_id=...)`
and start the next. The baseline runs in every slot at once. A candidate is judged against the best at the
time of its decision: when another run was kept meanwhile, its change is merged onto the new best and runs
again (decision `rerun`: wait for it like any run), or is discarded as stale if it no longer applies. Prefer
independent ideas in flight at the same time (different parts of the file), so they merge.
"""


def loop_prompt(info: ProjectInfo, briefing: str | None, focus: str | None) -> str:
    direction = "lower is better" if info.metric_direction == "lower_is_better" else "higher is better"
    text = PROGRAM.format(
        metric=info.metric_name or "the metric",
        direction=direction,
        target=info.target_file or "the target file",
        run=info.run_command or "the configured command",
        timeout=info.timeout,
        budget=info.time_budget,
        source=info.metric_source,
        provenance=info.provenance.line(),
        readonly=", ".join(info.readonly_files) or "none configured",
        keep_rule=info.keep_rule or "greedy",
        stall_after=info.stall_after,
        budgets=budgets_line(info.max_experiments, info.max_hours),
    )
    if info.slots > 1 or info.backend == "ray":
        text += SLOTS.format(slots=info.slots, where="on Ray" if info.backend == "ray" else "on this machine")
    if not info.ready:
        text += f"\nNOTE: the project is not ready yet: {info.message}\n"
    word = _focus_word(focus)
    if word:
        text += f"\n## Focus\nConcentrate your ideas on: {word}.\n"
    if briefing:
        text += "\n## Where the session stands\n\n" + briefing
    else:
        text += "\nNo session yet: start with the setup above.\n"
    return text


def budgets_line(max_experiments: int | None, max_hours: float | None) -> str:
    """The session's budgets as configured, in a few words."""
    parts = [f"{max_experiments} experiments"] if max_experiments is not None else []
    parts += [f"{max_hours:g} hours from the session's start"] if max_hours is not None else []
    return " and ".join(parts) if parts else "none set (query_results shows them when set)"


def _focus_word(focus: str | None) -> str | None:
    """One word (clients split prompt arguments on spaces); anything else is reduced to its first word."""
    if not focus:
        return None
    word = re.split(r"\s+", focus.strip())[0] if focus.strip() else ""
    word = re.sub(r"[^\w.\-/]", "", word)[:40]
    return word or None
