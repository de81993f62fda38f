"""When the person is done: `finish` (a summary, and landing the kept commits on a branch they name) and `clean`
(removing a finished session's refs and files). For the person at the terminal only: no tool of the agent's
lands or removes anything.

What this module never does: move any branch other than the one the user named (the session's own branch is
only ever deleted by `clean`, on request), `git clean`, touch untracked files, or act while a server holds the
project (the flock on `.autoresearch/server.lock`) or on a tree with uncommitted changes to tracked files.
Every git call carries repo.py's safe options and environment (no hooks, no signing prompts, no background gc, no
replace objects, grafts or commit-graph files). Landing and cleaning refuse while `shallow` or an alternates
file exists: git's history or objects would not be this repository's own (grafts are ignored, and named).
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, SessionError
from ..lifecycle.fresh_outputs import LEFT_PREFIX, OUTPUTS_DIR, remove_tree
from ..measure.provenance import metric_provenance
from ..measure.standing import standing
from ..names import RUN_LOGS, SESSION_BRANCHES, SESSION_REFS, SLOT_INDEXES
from ..readers.report import SessionFiles, open_session_files
from ..records.rows import Row
from ..records.state import current_tag, load_state, state_dir, state_path
from ..terminal_text import printable, shell_word
from ..vcs.checkouts import session_slots
from ..vcs.history import check_changed_files, is_verified_ancestor
from ..vcs.readonly import checked_out_branch
from ..vcs.repo import Repo
from ..vcs.unfinished import branch_in_operation
from .landing_checks import (
    check_branch_name,
    check_clean_tree,
    check_history,
    checked_out_elsewhere,
    git,
    history_note,
    project_lock,
    tree_of,
)

NO_COMMIT = "0" * 40
# Session tags as start_session accepts them (so a tag can never name a path outside the state directory).
TAG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


# ==========================================================================================================
# the summary
# ==========================================================================================================
@dataclass
class Kept:
    commit: str
    description: str
    run_id: str | None
    value: float | None
    status: str = "keep"  # a commit on the best's lineage may be a node the session discarded, then built on


@dataclass
class Summary:
    files: SessionFiles
    kept: list[Kept]  # the session's commits from its base to its best, oldest first (discarded nodes too)
    fast_forwardable: list[str]  # the user's branches that `--land` can fast-forward

    @property
    def best(self) -> str | None:
        best = self.files.state.best
        return best.commit if best is not None else None


def summarize(project: str, tag: str | None) -> Summary:
    files = open_session_files(project, tag)
    state = files.state
    repo = Repo(files.root)
    kept: list[Kept] = []
    branches: list[str] = []
    if state.best is not None and state.best.commit != state.base_commit:
        # The log may hold short commit ids: match on the first 7 characters. A discarded node that a later best
        # was built on (branch_from) is on the best's history too: named as the discard it was, never as kept.
        rows = files.journal.rows
        by_commit: dict[str, Row] = {r.commit[:7]: r for r in rows if r.status != "keep"}
        by_commit.update({r.commit[:7]: r for r in rows if r.status == "keep"})
        listing = git(
            repo.top,
            "log",
            "--reverse",
            "--first-parent",
            "--format=%H %s",
            f"{state.base_commit}..{state.best.commit}",
        )
        for line in listing.splitlines():
            commit, _, subject = line.partition(" ")
            row = by_commit.get(commit[:7])
            description = row.description if row else printable(subject.removeprefix("experiment: "))
            kept.append(
                Kept(
                    commit,
                    description,
                    row.run_id if row else None,
                    row.value if row else None,
                    row.status if row else "keep",
                )
            )
        merged = git(
            repo.top, "for-each-ref", "--merged", state.best.commit, "--format=%(refname:short)", "refs/heads"
        )
        branches = [
            b
            for b in merged.split()
            if not b.startswith(SESSION_BRANCHES) and repo.resolve_branch(b) != state.best.commit
        ]
    return Summary(files, kept, branches)


def persons_branch(root: Path, started: str | None) -> str | None:
    """The branch a session started from, followed back through earlier sessions' branches (a session started
    while another one's branch was checked out, as after a crashed baseline): the person's own, where the
    earlier sessions' records say so; the branch itself otherwise."""
    for _ in range(50):  # a chain of sessions, never a loop
        tag = started.removeprefix(SESSION_BRANCHES) if started else ""
        if not started or not started.startswith(SESSION_BRANCHES) or not re.fullmatch(r"[\w.-]+", tag):
            return started
        earlier = load_state(root, tag) if state_path(root, tag).exists() else None
        if earlier is None or not earlier.started_from:
            return started
        started = earlier.started_from
    return started


def summary_text(summary: Summary, hints: bool = True) -> str:
    state, journal = summary.files.state, summary.files.journal
    counts = {s: journal.counts.get(s, 0) for s in ("keep", "discard", "crash")}
    direction = "lower" if state.metric_direction == "lower_is_better" else "higher"
    lines = [
        f"session {state.tag}: branch {state.branch}, started from {state.base_commit[:7]}",
        f"metric:       {state.metric_name} ({direction} is better)",
        f"  source:     {metric_provenance(state.rules).line()}",
        f"experiments:  {len(journal)} (keep {counts['keep']}, discard {counts['discard']}, crash {counts['crash']})",
    ]
    best, now = state.best, standing(state)
    lines.append(f"baseline:     {now.baseline:.6g}" if now is not None else "baseline:     - (not run yet)")
    if best is not None:
        shown = now.best if now is not None else best.value
        lines.append(
            f"best:         {shown:.6g} at {best.commit[:7]} ({best.run_id}: {printable(best.description)})"
        )
    if now is not None:
        lines.append(f"improvement:  {now.text().removeprefix('improvement ')} (>0 = better)")
    if state.pending is not None:
        lines.append(
            f"note:         run {state.pending.run_id} was never decided; it is not part of the result"
        )
    if not summary.kept:
        lines.append("kept commits: none beyond the baseline; there is nothing to land")
        lines.append(
            f"to remove the session: {clean_hint(summary.files.root, state.tag, state.started_from)}"
        )
        return "\n".join(lines) + "\n"
    built_on = [item for item in summary.kept if item.status != "keep"]
    lines.append(
        f"kept commits ({len(summary.kept) - len(built_on)}, oldest first"
        + (f"; with {len(built_on)} discarded node(s) a later best was built on" if built_on else "")
        + "):"
    )
    for item in summary.kept:
        value = f"{item.value:.6f}" if item.value is not None else "-"
        note = f"  ({item.status}: a later best was built on it)" if item.status != "keep" else ""
        lines.append(f"  {item.commit[:7]}  {item.run_id or '-':>5}  {value:>12}  {item.description}{note}")
    if not hints:
        return "\n".join(lines) + "\n"
    started = persons_branch(summary.files.root, state.started_from)
    if started and (started in summary.fast_forwardable or not summary.fast_forwardable):
        target = shell_word(started)  # where the session started: the branch to land on, unless it moved
    else:
        target = shell_word(summary.fast_forwardable[0]) if summary.fast_forwardable else "BRANCH"
    if summary.fast_forwardable:
        lines.append(f"can fast-forward: {', '.join(map(printable, summary.fast_forwardable))}")
    lines += [
        "to land them:",
        f"  mcp-autoresearch finish --session {state.tag} --land {target}            # the kept commits as they are",
        f"  mcp-autoresearch finish --session {state.tag} --land {target} --squash   # as one commit",
        "then, to remove the session's branch, refs and files: "
        + clean_hint(summary.files.root, state.tag, state.started_from),
    ]
    return "\n".join(lines) + "\n"


# ==========================================================================================================
# landing
# ==========================================================================================================
def land(summary: Summary, branch: str, squash: bool, message: str | None) -> str:
    """Put the kept commits on `branch` (fast-forward, or one squashed commit); returns what was done."""
    files, state = summary.files, summary.files.state
    repo = Repo(files.root)
    check_branch_name(repo, branch)
    if summary.best is None or not summary.kept:
        raise SessionError(
            f"session '{state.tag}' kept nothing beyond its baseline: there is nothing to land"
        )
    best = summary.best
    lock = project_lock(files.root, "land the session")
    try:
        check_history(repo, "land the session")
        check_clean_tree(repo, state)
        worktree = checked_out_elsewhere(repo, branch)
        if worktree:
            raise SessionError(f"{branch} is checked out in another worktree ({worktree}); land from there")
        operation = branch_in_operation(repo, branch)
        if operation:  # its tip is the operation's: moved now, the rebase could not end (or would undo it)
            raise SessionError(f"{branch} is {operation}; nothing was changed")
        old = repo.resolve_branch(branch) if repo.branch_exists(branch) else None
        if old == best or (old is not None and tree_of(repo, old) == tree_of(repo, best)):
            return f"{branch} already holds the session's result ({old[:7]}, the files of {best[:7]}): nothing to do\n"
        if old is not None and not (
            repo.is_ancestor(old, best) and is_verified_ancestor(repo.top, old, best)
        ):
            ahead = git(repo.top, "log", "--oneline", "--no-decorate", f"{best}..{old}").splitlines()
            raise SessionError(
                f"{branch} has diverged from the session: it has {len(ahead)} commit(s) the session does not "
                f"({printable('; '.join(ahead[:3]))}). Nothing was changed; combine them yourself (git merge or git rebase "
                f"of {state.branch}), or land on a new branch (--land {branch}-autoresearch)"
            )
        check_changed_files(repo.top, state.base_commit, best)  # what is landed is what was kept
        new = _squash_commit(repo, summary, old, message) if squash else best
        moved = len(git(repo.top, "rev-list", new, f"^{old or state.base_commit}").split())
        checked_out = repo.current_branch() == branch
        if checked_out:
            # The branch's files are in the work tree: git updates index and files (and refuses if an
            # untracked file would be overwritten).
            git(repo.top, "merge", "--ff-only", "--quiet", new)
        else:
            reason = (
                f"mcp-autoresearch finish: {'squash' if squash else 'fast-forward'} of session {state.tag}"
            )
            # The old value makes the update conditional: a concurrent change of the branch is not overwritten.
            git(repo.top, "update-ref", "-m", reason, f"refs/heads/{branch}", new, old or NO_COMMIT)
    finally:
        lock.release()
    how = f"as one commit {new[:7]}" if squash else f"by fast-forward ({moved} kept commit(s))"
    text = f"landed session {state.tag} on {branch} {how}: {old[:7] if old else 'new branch'} -> {new[:7]}\n"
    if not checked_out:
        text += f"the work tree is unchanged (on {repo.current_branch() or 'a detached HEAD'}); git checkout {shell_word(branch)} to continue there\n"
    return text + f"when done with the session: {clean_hint(repo.top, state.tag, state.started_from)}\n"


def clean_hint(root: Path, tag: str, started_from: str | None) -> str:
    """The command that removes session `tag`, after the checkout `clean` asks for first where the session's
    branch is checked out here (it refuses to remove the branch under the work tree)."""
    command = f"mcp-autoresearch clean --tag {tag}"
    if checked_out_branch(root) != f"{SESSION_BRANCHES}{tag}":
        return command
    return f"git checkout {way_back(root, started_from)}, then {command}"


def way_back(root: Path, started_from: str | None) -> str:
    """The branch to check out before `clean` (`persons_branch`), as a word to paste in a shell; `BRANCH` where
    the session started on a detached HEAD or that branch is gone (a checkout of it would fail)."""
    back = persons_branch(root, started_from)
    return shell_word(back) if back and Repo(root).branch_exists(back) else "BRANCH"


def _squash_commit(repo: Repo, summary: Summary, parent: str | None, message: str | None) -> str:
    """One commit with the best commit's files, on top of `parent` (the branch's tip, or the session's base)."""
    state = summary.files.state
    if message is None:
        best = state.best
        assert best is not None
        head = f"autoresearch {state.tag}: {state.metric_name} "
        now = standing(state)
        head += f"{now.baseline:.6g} -> {now.best:.6g}" if now is not None else f"{best.value:.6g}"
        body = [
            f"- {k.description}"
            + (f" ({k.value:.6g})" if k.value is not None else "")
            + (f" [{k.status}, built on]" if k.status != "keep" else "")
            for k in summary.kept
        ]
        source = metric_provenance(state.rules).source
        message = (
            head
            + f"\n\nKept experiments, each measured by mcp-autoresearch (metric source: {source}):\n"
            + "\n".join(body)
            + "\n"
        )
    tree = f"{summary.best}^{{tree}}"
    return git(
        repo.top, "commit-tree", tree, "-p", parent or state.base_commit, "-m", message, identity=True
    ).strip()


# ==========================================================================================================
# cleaning
# ==========================================================================================================
@dataclass
class CleanPlan:
    root: Path
    tag: str
    branch: str | None  # refs/heads/autoresearch/<tag>, when it exists
    refs: list[str]  # refs/autoresearch/<tag>/*
    paths: list[Path]  # the state file, the run logs, the slots' checkouts
    unlanded: list[str]  # kept commits that no other branch holds
    started_from: str = "BRANCH"  # the branch the session started from, for the hints

    def text(self) -> str:
        rel = [
            (p.relative_to(self.root).as_posix() if p.is_relative_to(self.root) else str(p))
            + ("/" if p.is_dir() else "")
            for p in self.paths
        ]
        lines = [f"session {self.tag}: will remove"]
        if self.branch:
            lines.append(f"  branch     {self.branch.removeprefix('refs/heads/')}")
        if self.refs:
            lines.append(f"  refs       {len(self.refs)} discarded idea(s) under {SESSION_REFS}{self.tag}/")
        lines += [f"  file       {path}" for path in rel]
        if self.unlanded:
            lines.append(
                f"warning: {len(self.unlanded)} kept commit(s) are on no other branch (best: {self.unlanded[-1][:7]}); "
                f"land them first (mcp-autoresearch finish --land {self.started_from}) or note that id to recover them"
            )
        kept = "kept: the JSONL history of every session, results.tsv and run.log, and all your files"
        found = state_dir(self.root) / OUTPUTS_DIR / self.tag
        listed = found.iterdir() if found.is_dir() and not found.is_symlink() else ()
        if any(p.name.startswith("found-before-") for p in listed):
            kept += f" (those found in the outputs before a run are in {found.relative_to(self.root)}/found-before-*)"
        lines.append(kept)
        return "\n".join(lines) + "\n"


def plan_clean(project: str, tag: str) -> CleanPlan:
    from ..setup.project import check_project_root

    root = check_project_root(project)
    if not TAG.match(tag):
        raise ConfigError(f"--tag {tag!r} is not a session tag (lower-case letters, digits, '.', '_', '-')")
    repo = Repo(root)
    branch = f"{SESSION_BRANCHES}{tag}"
    has_branch = repo.branch_exists(branch)
    refs = git(repo.top, "for-each-ref", "--format=%(refname)", f"{SESSION_REFS}{tag}/").split()
    own = (state_path(root, tag), state_dir(root) / RUN_LOGS / tag, state_dir(root) / SLOT_INDEXES / tag)
    paths = [p for p in (*own, session_slots(root, tag)) if p.exists()] + run_outputs(root, tag)
    if not (has_branch or refs or paths):
        raise SessionError(f"no session '{tag}' in {root}: nothing to clean")
    unlanded: list[str] = []
    state = load_state(root, tag) if state_path(root, tag).exists() else None
    if has_branch and state is not None:
        tip = repo.resolve_branch(branch)
        others = [
            f"^{ref}"
            for ref in git(repo.top, "for-each-ref", "--format=%(refname)", "refs/heads").split()
            if ref != f"refs/heads/{branch}"
        ]
        unlanded = git(repo.top, "rev-list", "--reverse", tip, f"^{state.base_commit}", *others).split()
        if not unlanded and not _on_a_branch_verified(repo, tip, f"refs/heads/{branch}"):
            unlanded = git(repo.top, "rev-list", "--reverse", tip, f"^{state.base_commit}").split()
        best = state.best.commit if state.best is not None else None
        if unlanded and best and any(tree_of(repo, ref[1:]) == tree_of(repo, best) for ref in others):
            unlanded = []  # landed as one squashed commit: a branch holds exactly the best files
    started = way_back(root, state.started_from if state is not None else None)
    return CleanPlan(
        root, tag, f"refs/heads/{branch}" if has_branch else None, refs, paths, unlanded, started
    )


def run_outputs(root: Path, tag: str) -> list[Path]:
    """The outputs the session's runs left, moved aside (`fresh_outputs`): `run-*` folders and the record of
    what the last run left, never the `found-before-*` folders (the user's files)."""
    folder = state_dir(root) / OUTPUTS_DIR / tag
    record = state_dir(root) / OUTPUTS_DIR / (LEFT_PREFIX + tag)
    found = [record] if record.is_dir() and not record.is_symlink() else []
    if not folder.is_dir() or folder.is_symlink():
        return found
    return found + sorted(
        p for p in folder.iterdir() if p.name.startswith("run-") and p.is_dir() and not p.is_symlink()
    )


def _on_a_branch_verified(repo: Repo, tip: str, session_ref: str) -> bool:
    """Whether one of the user's branches that git says holds `tip` really does (`is_verified_ancestor`: a
    forged commit object could make git see the session's commits on a branch that lacks them)."""
    listed = git(
        repo.top, "for-each-ref", "--contains", tip, "--format=%(refname) %(objectname)", "refs/heads"
    )
    holding = [line.split(" ")[1] for line in listed.splitlines() if line.split(" ")[0] != session_ref]
    if not holding:
        return True  # no branch holds it: the rev-list was empty for the base's sake (nothing kept)
    for branch_tip in dict.fromkeys(holding):
        try:
            if branch_tip == tip or is_verified_ancestor(repo.top, tip, branch_tip):
                return True
        except SessionError:
            continue  # a forged object on that branch's way: it does not count
    return False


def check_clean(plan: CleanPlan) -> None:
    """Refuse while the session's branch is checked out (its files are the work tree) or a server holds it."""
    project_lock(plan.root, "clean a session").release()
    _refuse_checked_out(plan)


def _refuse_checked_out(plan: CleanPlan) -> None:
    if plan.branch:
        repo = Repo(plan.root)
        short = plan.branch.removeprefix("refs/heads/")
        elsewhere = checked_out_elsewhere(repo, short)
        where = "in this worktree" if repo.current_branch() == short else elsewhere and f"in {elsewhere}"
        operation = branch_in_operation(repo, short)
        if operation:
            raise SessionError(f"{short} is {operation}; nothing was removed")
        if where:
            land = (  # only where kept commits are on no other branch: else finish says there is nothing to land
                f", and land the result before if you want it (mcp-autoresearch finish --land {plan.started_from})"
                if plan.unlanded
                else ""
            )
            raise SessionError(
                f"{short} is checked out {where}; switch to your branch first (git checkout {plan.started_from})"
                + land
            )


def clean(plan: CleanPlan) -> str:
    repo = Repo(plan.root)
    lock = project_lock(plan.root, "clean a session")
    try:
        check_history(repo, "clean the session")
        _refuse_checked_out(plan)
        if plan.branch:
            short = plan.branch.removeprefix("refs/heads/")
            git(repo.top, "update-ref", "-d", plan.branch, repo.resolve_branch(short))
        for ref in plan.refs:
            git(repo.top, "update-ref", "-d", ref)
        for path in plan.paths:
            if path.is_dir() and not path.is_symlink():
                remove_tree(
                    str(path)
                )  # a run may have nested directories deeper than Python's recursion limit
                if os.path.lexists(path):
                    raise SessionError(
                        f"{path} could not be removed completely: remove what is left yourself"
                    )
            else:
                path.unlink(missing_ok=True)
        if current_tag(plan.root) == plan.tag:
            (state_dir(plan.root) / "current").unlink(missing_ok=True)
    finally:
        lock.release()
    text = f"removed session {plan.tag}\n"
    if plan.unlanded:
        text += f"its best kept commit was {plan.unlanded[-1]} (git branch NAME {plan.unlanded[-1][:12]} recovers it)\n"
    return text


# ==========================================================================================================
# the commands
# ==========================================================================================================
def run(args: argparse.Namespace) -> int:
    import sys

    if args.command == "finish":
        if args.squash and not args.land:
            raise ConfigError("--squash needs --land BRANCH")
        summary = summarize(args.project, args.session)
        sys.stdout.write(history_note(summary.files.root))
        sys.stdout.write(summary_text(summary, hints=not args.land))
        if args.land:
            sys.stdout.write(land(summary, args.land, args.squash, args.message))
        return 0
    plan = plan_clean(args.project, args.tag)
    check_clean(plan)  # before the list: "will remove" and then a refusal reads as if something went
    sys.stdout.write(history_note(plan.root))
    sys.stdout.write(plan.text())
    sys.stdout.flush()
    if not args.yes:
        sys.stdout.write("nothing was removed: run again with --yes to remove these\n")
        return 0
    sys.stdout.write(clean(plan))
    return 0
