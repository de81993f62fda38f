"""The research tree: which node a candidate starts from and is judged against, and whether a kept node
becomes the best; `branch_from` and `combine` put a node's target (or two nodes' merge) into the work tree.

A node is a measured run (its logged row). Without `branch_from` or `combine` every candidate starts from the
best and nothing differs from the greedy loop. A candidate whose parent is another node is judged against that
parent with the session's keep rule; kept, it is a node, and it becomes the best only when it is also better
than the best under the same rule. Every node's commit stays reachable under refs/autoresearch/<tag>/<run>.
"""

from __future__ import annotations

import statistics

from ..errors import RuleViolation, SessionError
from ..measure.keep_rule import decide, nonblank_lines
from ..measure.sequential import kept_runs
from ..measure.standing import best_values, noise_beside
from ..measure.stats import sequential_test
from ..models import BranchResult
from ..names import SESSION_REFS
from ..records.atomic import atomic_write, read_regular
from ..records.state import Best, DecisionRecord, Pending, RunOutcome, server_dir
from ..session.context import SessionCore, logged_run_id
from ..setup.single_file import sha256_bytes
from ..vcs.checkouts import merge_file


def node_ref(core: SessionCore, run_id: str) -> str:
    return f"{SESSION_REFS}{core.state.tag}/{run_id}"


def built_on_the_best(core: SessionCore, pending: Pending) -> bool:
    """The candidate's parent is the best now (then it is judged against the best, as in the greedy loop)."""
    best = core.state.best
    return best is None or pending.is_baseline or pending.parent_commit == best.commit


def reference(core: SessionCore, pending: Pending) -> Best | None:
    """The node a candidate is judged against: its parent. The best when it was built on the best (with slots, a
    candidate built on an older best is merged onto the new one first, as before the tree), or when its parent
    has no value (a crash branched from to fix it: the bar is the best's)."""
    if pending.built_on_best or built_on_the_best(core, pending) or pending.parent_run is None:
        return core.state.best
    return node_as_best(core, pending.parent_run, pending.parent_commit) or core.state.best


def reference_values(core: SessionCore, pending: Pending) -> list[float]:
    """The runs of the node a candidate is judged against (the best's as the state holds them)."""
    ref = reference(core, pending)
    if ref is None:
        return []
    return best_values(core.state) if ref is core.state.best else list(ref.values) or [ref.value]


def remeasured_commit(core: SessionCore, pending: Pending) -> str:
    """The commit whose content is re-measured beside a candidate: its parent's (built on the best, the best it
    was built on, even when a slot's best moved on since), or the best's when the parent has no value (a crash
    branched from to fix it: the bar is the best's)."""
    ref = reference(core, pending)
    if pending.built_on_best or ref is None:
        return pending.parent_commit
    return ref.commit


def node_as_best(core: SessionCore, run_id: str, commit: str) -> Best | None:
    """A logged node as a reference: its value and runs as logged (None when it has no value)."""
    row = core.journal.get(run_id)
    if row is None or row.value is None or row.status == "crash":
        return None
    seen = row.evidence
    values = list(seen.values) + list(seen.remeasured)
    if row.status == "keep":
        values = kept_runs(list(seen.values), list(seen.remeasured), seen.regression, seen.keep_rule)
    value = statistics.median(values) if seen.remeasured and seen.keep_rule == "sequential" else row.value
    try:
        lines = nonblank_lines(core.repo.show_file(commit, core.target_repo_path).decode("utf-8", "replace"))
    except (SessionError, KeyError, ValueError):
        lines = 0
    return Best(
        value=value,
        commit=commit,
        run_id=run_id,
        description=row.description,
        nonblank_lines=lines,
        values=values or [value],
    )


def becomes_best(core: SessionCore, pending: Pending, decision: str) -> bool:
    """Whether a decision makes the run the session's best: a keep of a candidate built on the best, or of one
    that is also better than the best under the same rule (its own runs against the best's, as recorded)."""
    best = core.state.best
    if decision != "keep":
        return False
    if best is None or built_on_the_best(core, pending):
        return True
    result = pending.result or RunOutcome()
    if result.value is None:
        return False
    if core.state.keep_rule == "sequential":
        mine = kept_runs(list(result.values), list(result.remeasured), result.regression, "sequential")
        step = sequential_test(
            mine or [result.value],
            best_values(core.state),
            noise=noise_beside(core.state, best_values(core.state), True),  # the best's runs once
            direction=core.state.metric_direction,
            min_delta=core.config.min_delta,
            confidence=core.config.confidence,
            max_repeats=max(core.config.max_repeats, len(mine)),
        )
        return step.action == "keep"
    verdict = decide(
        run_status="ok",
        value=result.value,
        best=best.value,
        direction=core.state.metric_direction,
        min_delta=core.config.min_delta,
        is_baseline=False,
        lines=pending.nonblank_lines,
        best_lines=best.nonblank_lines,
    )
    return verdict.decision == "keep"


def made_best(decision: DecisionRecord) -> bool:
    """A recorded decision made its run the best (a record written before the tree: every keep did)."""
    return decision.decision == "keep" and decision.best is not False


def keep_reachable(core: SessionCore, pending: Pending) -> None:
    """A new best of another lineage than the best's: the session branch leaves the old best's lineage, so both
    nodes are kept under refs/autoresearch/<tag>/ (a candidate built on the best stays on the branch)."""
    best = core.state.best
    if best is None or built_on_the_best(core, pending) or pending.commit is None:
        return
    core.repo.set_ref(node_ref(core, best.run_id), best.commit)
    core.repo.set_ref(node_ref(core, pending.run_id), pending.commit)


def start_point(core: SessionCore, head: str) -> tuple[str, str | None]:
    """The commit the next candidate in the work tree is built on, and its parent node (None: the best, named
    by `new_run`)."""
    state = core.state
    if state.next_parent is not None and state.next_parent_commit is not None:
        return state.next_parent_commit, state.next_parent
    return head, None


def mark_parent(core: SessionCore, pending: Pending, parent_run: str | None) -> None:
    """A new candidate of the work tree: its parent node when it is not the best, and a combine's two runs."""
    if parent_run is not None:
        pending.parent_run = parent_run
        pending.built_on_best = built_on_the_best(core, pending)
    pending.combined, core.state.next_combined = list(core.state.next_combined), []  # measured by this run


def after_decision(core: SessionCore, pending: Pending, decision: DecisionRecord) -> None:
    """The node the work tree's target starts from after a decision in the work tree: the kept run, else the
    run's parent (as the greedy loop has it: both are the best unless the run was branched)."""
    if pending.placement != "tree":
        return
    state = core.state
    kept = decision.decision == "keep"
    run_id, commit = (
        (pending.run_id, pending.commit or pending.parent_commit)
        if kept
        else (pending.parent_run, pending.parent_commit)
    )
    best = state.best
    on_best = run_id is None or best is None or run_id == best.run_id or commit == best.commit
    state.next_parent, state.next_parent_commit = (None, None) if on_best else (run_id, commit)
    state.next_combined = []


def node_commit(core: SessionCore, run_id: str) -> str:
    """The commit a logged run measured, as its row (sealed) names it; its ref only for a row that names none
    (the ref is a file in .git a run may rewrite: it never decides what a node holds). A clear error when the
    commit is not reachable."""
    if core.journal.index_of(run_id) is None:
        raise RuleViolation(
            f"no run {run_id!r} is logged in session '{core.state.tag}'; query_results lists the runs"
        )
    logged = core.journal.full_commit(run_id)
    for name in (logged,) if logged else (node_ref(core, run_id),):
        commit = core.repo.commit_of(name)
        if commit is not None:
            try:
                core.repo.show_file(commit, core.target_repo_path)
            except (SessionError, KeyError, ValueError):
                continue
            return commit
    raise RuleViolation(
        f"the commit of run {run_id} is no longer reachable in git (neither {node_ref(core, run_id)} nor its "
        "logged commit holds the target): it cannot be branched from"
    )


def depth_of(core: SessionCore, run_id: str) -> int:
    """Baseline 0; a run's depth is its parent's plus one."""
    return max(0, len(ancestors(core, run_id)) - 1)


def ancestors(core: SessionCore, run_id: str) -> list[str]:
    """The run and its parents up to the baseline, nearest first."""
    journal = core.journal
    found: list[str] = []
    index = journal.index_of(run_id)
    while index is not None:
        found.append(journal.run_id_at(index))
        index = journal.lineage.parent_index(index)
    return found


class Brancher:
    """branch_from and combine: a node's target (or a merge of two) in the work tree, as the next parent."""

    def __init__(self, core: SessionCore) -> None:
        self.core = core

    def branch_from(self, run_id: str) -> BranchResult:
        core = self.core
        with core.lock:
            run_id = logged_run_id(core.journal, run_id)
            self._check_free()
            commit = node_commit(core, run_id)
            aside = self._put(core.repo.show_file(commit, core.target_repo_path), commit)
            self._set_parent(run_id, commit, [])
            return self._answer(run_id, [], aside)

    def combine(self, run_a: str, run_b: str) -> BranchResult:
        core = self.core
        with core.lock:
            run_a, run_b = logged_run_id(core.journal, run_a), logged_run_id(core.journal, run_b)
            if run_a == run_b:
                raise RuleViolation("combine needs two different runs")
            self._check_free()
            if not core.plain_target:
                raise RuleViolation(
                    f"git converts {core.target_rel} on its way in (filters or end-of-line conversion): combine "
                    "merges plain files only; branch_from one run and redo the other's change by hand"
                )
            commits = {r: node_commit(core, r) for r in (run_a, run_b)}
            better, other = self._ordered(run_a, run_b)
            base_run = common_ancestor(core, run_a, run_b)
            path = core.target_repo_path
            base = core.repo.show_file(node_commit(core, base_run), path) if base_run else b""
            ours = core.repo.show_file(commits[better], path)
            theirs = core.repo.show_file(commits[other], path)
            merged = merge_naming_conflicts(base, ours, theirs, better, other)
            if merged in (ours, theirs):
                same = better if merged == ours else other
                raise RuleViolation(
                    f"the merge of {run_a} and {run_b} is {same}'s target itself (one holds the other's change): "
                    f"nothing to combine; branch_from('{same}') to build on it"
                )
            aside = self._put(merged, commits[better], write=True)
            self._set_parent(better, commits[better], [run_a, run_b])
            return self._answer(better, [run_a, run_b], aside)

    # -- helpers --------------------------------------------------------------------------------------------
    def _check_free(self) -> None:
        core = self.core
        if not core.state.inflight:  # with slots, runs in flight write the log: they guard it themselves
            core.own.guard()
        core.check_no_pending()  # a run in the user's tree (in flight or waiting for its decision)
        core.check_head()

    def _ordered(self, run_a: str, run_b: str) -> tuple[str, str]:
        """The better of the two (a run without a value loses; a tie goes to run_a), then the other."""
        journal, lower = self.core.journal, self.core.state.metric_direction == "lower_is_better"
        a, b = journal.get(run_a), journal.get(run_b)
        va = a.value if a is not None and a.status != "crash" else None
        vb = b.value if b is not None and b.status != "crash" else None
        if vb is not None and (va is None or (vb < va if lower else vb > va)):
            return run_b, run_a
        return run_a, run_b

    def _put(self, content: bytes, commit: str, write: bool = False) -> str | None:
        """The new content into the work tree's target (the index stays at the session branch's head). An edit
        not yet run is kept aside first; returns where."""
        core = self.core
        target = core.root / core.target_rel
        if target.parent.resolve() != target.parent:  # a folder swapped for a link: never written through
            raise RuleViolation(
                f"a directory on the path to {core.target_rel} is a symlink; nothing changed. A person must "
                "restore the directory"
            )
        aside = None
        try:
            current = read_regular(target)
        except OSError:
            current = None
        start, _ = start_point(core, core.repo.head_commit())
        if (
            current is not None
            and current != content
            and current != core.repo.show_file(start, core.target_repo_path)
        ):
            folder, number = server_dir(core.root, "edits"), 1
            while (where := folder / f"before-branch-{number}-{target.name}").exists():
                number += 1  # never over an edit kept aside before
            atomic_write(where, current)
            aside = str(where.relative_to(core.root))
        if write:
            atomic_write(target, content)
        else:
            core.repo.restore_paths(commit, [core.target_repo_path])  # git's own form of the file (filters)
        core.repo.unstage([core.target_repo_path])
        return aside

    def _set_parent(self, run_id: str, commit: str, combined: list[str]) -> None:
        state = self.core.state
        best = state.best
        on_best = best is not None and run_id == best.run_id and not combined
        state.next_parent, state.next_parent_commit = (None, None) if on_best else (run_id, commit)
        state.next_combined = combined
        self.core.save()

    def _answer(self, parent: str, combined: list[str], aside: str | None) -> BranchResult:
        core = self.core
        row = core.journal.get(parent)
        data = read_regular(core.root / core.target_rel)
        best = core.state.best
        what = f"the merge of {combined[0]} and {combined[1]}" if combined else f"{parent}'s target"
        step = (
            f"{core.target_rel} holds {what}; its parent is {parent}. Edit it (apply_edit) and run_experiment: "
            f"the candidate is judged against {parent}"
            + (
                " and becomes the best only if it also beats the best"
                if not (best and best.run_id == parent)
                else ""
            )
        )
        if combined:
            step = f"{core.target_rel} holds {what}; run_experiment measures it (parent {parent}, the better)"
        if aside:
            step += f". Your edit not yet run was kept in {aside}"
        return BranchResult(
            parent=parent,
            sha256=sha256_bytes(data),
            value=row.value if row else None,
            status=row.status if row else "crash",
            depth=depth_of(core, parent),
            combined=combined or None,
            kept_aside=aside,
            next_step=step,
        )


def common_ancestor(core: SessionCore, run_a: str, run_b: str) -> str | None:
    """The nearest node both runs descend from (a run counts as its own descendant)."""
    mine = set(ancestors(core, run_a))
    return next((r for r in ancestors(core, run_b) if r in mine), None)


def merge_naming_conflicts(base: bytes, ours: bytes, theirs: bytes, ours_run: str, theirs_run: str) -> bytes:
    """Three-way merge of the target (`git merge-file`); a conflict is a clear error naming the lines."""
    done = merge_file(base, ours, theirs)
    if done.returncode == 0:
        return done.stdout
    if done.returncode < 0 or done.returncode > 127:
        raise SessionError(f"git merge-file failed: {done.stderr.decode('utf-8', 'replace').strip()}")
    ranges = conflict_lines(done.stdout)
    raise RuleViolation(
        f"{ours_run} and {theirs_run} change the same lines of the target: "
        + ", ".join(f"lines {a}-{b}" if a != b else f"line {a}" for a, b in ranges[:10])
        + f" of {ours_run}'s target conflict with {theirs_run}'s change. Nothing changed; branch_from('{ours_run}') "
        f"and make {theirs_run}'s change by hand"
    )


def conflict_lines(merged: bytes) -> list[tuple[int, int]]:
    """The line ranges (1-based, in the `ours` side's numbering) that `git merge-file` marked as conflicts."""
    ranges: list[tuple[int, int]] = []
    line, start, side = 0, 0, "out"
    for text in merged.splitlines():
        if text.startswith(b"<<<<<<<"):
            side, start = "ours", line + 1
        elif text.startswith(b"|||||||") and side == "ours":
            side = "base"
        elif text.startswith(b"=======") and side in ("ours", "base"):
            side = "theirs"
        elif text.startswith(b">>>>>>>") and side == "theirs":
            ranges.append((start, max(start, line)))
            side = "out"
        elif side in ("out", "ours"):
            line += 1
    return ranges
