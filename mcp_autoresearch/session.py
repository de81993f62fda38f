"""The loop's state machine: start, read, edit, run, decide, log, resume.

Every rule the agent could break is checked here, in code, before and after each step:
only the target changes; read-only files keep their hashes; the number logged is the one measured;
a change is kept only if it improved; every experiment is logged; the user's files are never lost.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import stat
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .config import Config
from .errors import RuleViolation, SessionError
from .experiment import RUN_LOG, Experiment, ExperimentResult
from .files import atomic_write, copy_regular, own_dir
from .gitguard import GitWatch
from .guard import changed_fingerprints, fingerprint_files, resolve_target_path, sha256_bytes, sha256_file
from .journal import Journal, Row, one_line
from .models import (
    BestInfo,
    DecisionResult,
    EditResult,
    NotesResult,
    QueryResult,
    ResultRow,
    RunResult,
    StartResult,
    TargetView,
)
from .project import Project
from .repo import Repo
from .rules import decide, improvement, improvement_pct, nonblank_lines
from .runner import kill_marked_processes
from .state import (
    STATE_DIR,
    Best,
    Pending,
    SessionState,
    current_tag,
    load_state,
    save_state,
    state_dir,
    state_fingerprint,
)

log = logging.getLogger("mcp_autoresearch")

# Settings that define what is measured and what may change; a session keeps them for its whole life.
RULE_KEYS = (
    "target_file",
    "run_command",
    "metric_name",
    "metric_parse",
    "metric_regex",
    "metric_measure",
    "metric_direction",
    "readonly_files",
    "checks_command",
    "timeout",
    "max_experiments",
    "repeats",
    "min_delta",
    "memory_regex",
    "jsonl_path",
)
TAG_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
RESULTS_TSV = "results.tsv"
DEFAULT_WAIT_S = 30.0
MAX_WAIT_S = 50.0
MAX_DESCRIPTION = 500
MAX_NOTES = 4000
MAX_EDIT_BYTES = 4 * 1024 * 1024
MAX_VIEW_CHARS = 100_000
MAX_DIFF_CHARS = 4000


def default_tag() -> str:
    """Lower-cased month and day, like the original: nov26."""
    return datetime.now().strftime("%b%d").lower()


@dataclass
class ActiveRun:
    """A run executing in a background thread of this process."""

    run_id: str
    started: float
    experiment: Experiment | None = None
    done: threading.Event = field(default_factory=threading.Event)
    progress: tuple[float, float, str] | None = None  # elapsed, limit, last line of output
    thread: threading.Thread | None = None

    def record_progress(self, elapsed: float, limit: float, line: str) -> None:
        self.progress = (elapsed, limit, line)


class Session:
    def __init__(
        self, root: Path, project: Project, repo: Repo, state: SessionState, journal: Journal
    ) -> None:
        self.root = root
        self.project = project
        self.config = project.config
        self.repo = repo
        self.state = state
        self.journal = journal
        self.target_rel: str = state.target_file
        self.target_repo_path = repo.repo_path(self.target_rel)
        self._plain_target = repo.is_plain_file(self.target_repo_path)
        self.lock = threading.RLock()
        self.active: ActiveRun | None = None
        self.resumed = False
        self.recovered: list[str] = []
        self._journal_prints: tuple[Any, Any] = journal.fingerprints()
        self.git_watch = GitWatch(repo, root, state.branch, state.tag)
        self._git_notes: list[str] = []  # what a restart found changed in git's files before git ran again
        self._state_print = state_fingerprint(root, state.tag)

    # ======================================================================================================
    # opening
    # ======================================================================================================
    @classmethod
    def open(cls, root: Path, project: Project, repo: Repo, tag: str | None) -> Session:
        config = project.config
        assert config.target_file and config.metric_name
        if tag is not None:
            tag = tag.strip().lower()
            if not TAG_RE.match(tag):
                raise RuleViolation(
                    f"tag {tag!r} is not usable as a branch name part: use lower-case letters, digits, '.', '_' "
                    "or '-', at most 64 characters"
                )
        else:
            current = current_tag(root)
            branch = repo.current_branch()
            if current and branch == f"autoresearch/{current}" and load_state(root, current):
                tag = current
            else:
                tag = default_tag()
        branch = f"autoresearch/{tag}"
        state = load_state(root, tag)
        repo.ensure_identity()
        for own in (RESULTS_TSV, RUN_LOG):
            if (root / own).exists() and repo.is_tracked(repo.repo_path(own)):
                raise SessionError(
                    f"{own} is tracked by git in this project, but the server writes it on every experiment; "
                    f"untrack it (git rm --cached {own} && git commit) first"
                )
        target_repo = repo.repo_path(config.target_file)
        if not repo.is_tracked(target_repo):
            raise SessionError(
                f"the target {config.target_file} is not tracked by git; commit it first "
                f"(git add {config.target_file} && git commit), so every experiment can be kept or discarded"
            )
        jsonl = root / config.jsonl_path
        journal = Journal(root / RESULTS_TSV, jsonl, tag)
        if state is not None and repo.branch_exists(branch):
            session = cls._resume(root, project, repo, state, journal)
        else:
            if repo.branch_exists(branch):
                raise SessionError(
                    f"branch {branch} already exists but holds no session of this server; pass another tag "
                    f"(start_session(tag='{tag}b')) or delete that branch"
                )
            session = cls._create(root, project, repo, tag, branch, journal)
        return session

    @classmethod
    def _create(
        cls, root: Path, project: Project, repo: Repo, tag: str, branch: str, journal: Journal
    ) -> Session:
        config = project.config
        assert config.target_file and config.metric_name
        dirty = [repo.project_path(p) for p in repo.changed_tracked_files()]
        if dirty:
            raise SessionError(
                "tracked files have uncommitted changes: "
                + ", ".join(dirty[:20])
                + (f" (+{len(dirty) - 20} more)" if len(dirty) > 20 else "")
                + ". Commit or stash them first, so no work of yours can be lost."
            )
        moved = _archive_results(root, tag)
        repo.create_branch(branch)
        repo.add_excludes(_exclude_patterns(repo, config.jsonl_path))
        state = SessionState(
            tag=tag,
            branch=branch,
            base_commit=repo.head_commit(),
            created_at=datetime.now().isoformat(timespec="seconds"),
            target_file=config.target_file,
            metric_name=config.metric_name,
            metric_direction=config.metric_direction,
            readonly_hashes=fingerprint_files(root, list(config.readonly_files)),
            rules=_rules_of(config),
            hidden_paths=repo.hidden_tracked_files(),
        )
        state_dir(root).mkdir(parents=True, exist_ok=True)
        journal.load()
        save_state(root, state)
        journal.log_session_start(
            {
                "branch": branch,
                "base_commit": state.base_commit,
                "target_file": config.target_file,
                "metric": config.metric_name,
                "direction": config.metric_direction,
                "run_command": config.run_command,
            }
        )
        session = cls(root, project, repo, state, journal)
        session.recovered += [f"kept the previous {line}" for line in moved]
        return session

    @classmethod
    def _resume(
        cls, root: Path, project: Project, repo: Repo, state: SessionState, journal: Journal
    ) -> Session:
        config = project.config
        now = _rules_of(config)
        changed = [key for key in RULE_KEYS if state.rules.get(key, now[key]) != now[key]]
        if config.target_file != state.target_file:
            changed.insert(0, "target_file")
        if changed:
            # Untracked files (CLAUDE.md, AGENTS.md) can be edited by anyone between two server lives; the
            # rules a session measures by must not change with them.
            details = "; ".join(f"{key}: {state.rules.get(key)!r} -> {now.get(key)!r}" for key in changed[:5])
            raise SessionError(
                f"the configuration changed since session '{state.tag}' started ({details}). A session's "
                "measurement cannot change midway: restore the configuration, or start a new session with "
                "another tag to use the new one"
            )
        session = cls(root, project, repo, state, journal)
        pending = state.pending
        if pending is not None and pending.phase == "running" and pending.commit:
            # A run was in flight: what it planted in git's files is undone before git runs again.
            session._git_notes = session.git_watch.after_run(
                pending.git_config, pending.refs_digest, pending.commit, pending.run_id
            )
        if repo.current_branch() != state.branch:
            dirty = [p for p in repo.changed_tracked_files()]
            if dirty:
                raise SessionError(
                    f"cannot switch to {state.branch}: tracked files have uncommitted changes "
                    f"({', '.join(dirty[:10])}); commit or stash them first"
                )
            repo.checkout_branch(state.branch)
        repo.add_excludes(_exclude_patterns(repo, config.jsonl_path))
        journal.load()
        session._journal_prints = journal.fingerprints()
        session.resumed = True
        session._recover()
        return session

    def _recover(self) -> None:
        """Bring state, git and the logs back into agreement after the server died at any moment."""
        pending = self.state.pending
        if pending is None:
            return
        if pending.phase == "starting":
            head = self.repo.head_commit()
            if (
                head != pending.parent
                and self.repo.is_ancestor(pending.parent, head)
                and self.repo.commit_message(head).startswith("experiment:")
            ):
                # The candidate was committed but never ran: undo the commit, keep the edit in the work tree.
                self.repo.move_branch(
                    self.state.branch, pending.parent, f"autoresearch: undo {pending.run_id}"
                )
                self.repo.unstage([self.target_repo_path])
            self.state.pending = None
            self._save()
            self.recovered.append(f"run {pending.run_id} never started; its edit is back in the working tree")
        elif pending.phase == "running":
            killed = kill_marked_processes(str(self.root))
            tampered = self._verify_after_run(pending)
            error = "the server stopped during this run"
            if killed:
                error += f" ({killed} leftover processes killed)"
            pending.result = _crash_result(error, tampered)
            pending.phase = "finished"
            self._save()
            self._decide_locked(pending.run_id, discard=True)
            self.recovered.append(
                f"run {pending.run_id} was in flight when the server stopped: logged as a crash"
            )
        elif pending.phase == "deciding":
            self._finish_decision(pending)
            self.recovered.append(f"the decision on run {pending.run_id} was completed")
        if self.journal.reconcile_tsv():
            self.recovered.append("results.tsv was rebuilt from the JSONL log")

    def describe(self, resumed: bool) -> StartResult:
        state = self.state
        pending = state.pending
        if pending and pending.phase == "running":
            next_step = f"run {pending.run_id} is in flight: call wait_experiment(run_id='{pending.run_id}')"
        elif pending:
            next_step = f"run {pending.run_id} waits for its decision: call commit_or_reset(run_id='{pending.run_id}')"
        elif state.best is None:
            next_step = (
                "run the unmodified baseline first: run_experiment(description='baseline'), "
                "then commit_or_reset"
            )
        else:
            next_step = "edit the target (read_target, apply_edit), then run_experiment"
        briefing = None
        if resumed:
            from .briefing import build_briefing

            briefing = build_briefing(self)
        return StartResult(
            tag=state.tag,
            branch=state.branch,
            base_commit=state.base_commit,
            resumed=resumed,
            results_tsv=str(self.journal.tsv_path),
            log_path=str(self.journal.jsonl_path),
            target_file=state.target_file,
            metric_name=state.metric_name,
            metric_direction=state.metric_direction,
            best_value=state.best.value if state.best else None,
            baseline_value=state.baseline_value,
            experiments=len(self.journal),
            pending_run=pending.run_id if pending else None,
            recovered=self.recovered,
            briefing=briefing,
            next_step=next_step,
        )

    # ======================================================================================================
    # guards
    # ======================================================================================================
    def _expected_head(self) -> str:
        pending = self.state.pending
        if pending is not None and pending.commit is not None:
            return pending.commit
        return self.state.best.commit if self.state.best else self.state.base_commit

    def _check_head(self) -> None:
        branch = self.repo.current_branch()
        if branch != self.state.branch:
            raise SessionError(
                f"HEAD is on {branch or 'a detached commit'}, not on the session branch {self.state.branch}; "
                f"check it out again (git checkout {self.state.branch}) to continue this session"
            )
        head, expected = self.repo.head_commit(), self._expected_head()
        if head != expected:
            raise SessionError(
                f"the session branch moved to {head[:7]} outside the loop (the loop's head is {expected[:7]}); "
                f"only the server commits here. Undo it (git reset --soft {expected[:7]}) or start a new session"
            )

    def _check_no_pending(self) -> None:
        pending = self.state.pending
        if pending is None:
            return
        if pending.phase in ("running", "starting"):
            raise SessionError(
                f"run {pending.run_id} is in flight; call wait_experiment(run_id='{pending.run_id}') until it "
                "finishes, then commit_or_reset"
            )
        raise RuleViolation(
            f"decide run {pending.run_id} first: call commit_or_reset(run_id='{pending.run_id}') "
            "(the server decides keep or discard from its own measurement)"
        )

    def _check_readonly(self) -> None:
        changed = changed_fingerprints(self.root, self.state.readonly_hashes)
        if changed:
            raise RuleViolation(
                "read-only files changed since the session started: "
                + ", ".join(changed)
                + ". Restore them (git checkout -- "
                + " ".join(changed)
                + "); only "
                + self.target_rel
                + " may be edited"
            )

    def _target_path(self, requested: str | None = None, must_exist: bool = False) -> Path:
        path = resolve_target_path(self.root, self.target_rel, requested)
        if must_exist and not path.is_symlink() and not path.exists():
            raise RuleViolation(
                f"the target {self.target_rel} was deleted; restore it (git checkout -- {self.target_rel}) "
                "or write it with apply_edit(content=...)"
            )
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise RuleViolation(
                f"the target {self.target_rel} is no longer a regular file (a symlink or directory replaced it); "
                f"restore it (git checkout -- {self.target_rel})"
            )
        parent = path.parent
        if parent.resolve() != parent:
            raise RuleViolation(f"a directory on the path to {self.target_rel} is a symlink; restore it")
        return path

    # ======================================================================================================
    # read and edit the target
    # ======================================================================================================
    def read_target(self, start_line: int | None, end_line: int | None) -> TargetView:
        path = self._target_path()
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise RuleViolation(
                f"the target {self.target_rel} was deleted; restore it (git checkout -- {self.target_rel})"
            ) from None
        text = data.decode("utf-8", errors="replace")
        lines = text.splitlines(keepends=True)
        total = len(lines)
        start = 1 if start_line is None else start_line
        end = total if end_line is None else end_line
        if start < 1 or (total and start > total) or end < start - 1:
            raise RuleViolation(f"line range {start}-{end} is outside the file (1-{total})")
        end = min(end, total)
        content = "".join(lines[start - 1 : end])
        truncated = False
        if len(content) > MAX_VIEW_CHARS:
            cut = content[:MAX_VIEW_CHARS]
            end = start + cut.count("\n") - 1
            content = "".join(lines[start - 1 : end])
            truncated = True
        return TargetView(
            path=self.target_rel,
            content=content,
            sha256=sha256_bytes(data),
            total_lines=total,
            start_line=start,
            end_line=end,
            truncated=truncated,
        )

    def apply_edit(
        self,
        edits: list[dict[str, str]] | None,
        content: str | None,
        path: str | None,
        expected_sha256: str | None,
    ) -> EditResult:
        with self.lock:
            target = self._target_path(path)
            self._check_no_pending()
            self._check_head()  # never write into another branch's work tree
            if (edits is None) == (content is None):
                raise RuleViolation(
                    "give exactly one of edits (a list of {old_text, new_text}) or content (the whole new file)"
                )
            try:
                before_bytes = target.read_bytes()
            except FileNotFoundError:
                before_bytes = b""
            before_sha = sha256_bytes(before_bytes)
            if expected_sha256 is not None and expected_sha256.strip().lower() != before_sha:
                raise RuleViolation(
                    f"the target changed since you read it (sha256 is {before_sha[:12]}…, you expected "
                    f"{expected_sha256[:12]}…); call read_target again and redo the edit"
                )
            try:
                before = before_bytes.decode("utf-8")
            except UnicodeDecodeError:
                raise RuleViolation(f"{self.target_rel} is not UTF-8 text; edits need a text file") from None
            if content is not None:
                after = content
            else:
                assert edits is not None
                if not edits:
                    raise RuleViolation("edits is empty; give at least one {old_text, new_text}")
                after = before
                for number, edit in enumerate(edits, start=1):
                    old, new = edit.get("old_text", ""), edit.get("new_text", "")
                    if not old:
                        raise RuleViolation(
                            f"edit {number}: old_text is empty; quote the exact text to replace"
                        )
                    count = after.count(old)
                    if count != 1:
                        where = "does not occur" if count == 0 else f"occurs {count} times"
                        raise RuleViolation(
                            f"edit {number}: old_text {where} in {self.target_rel}; it must occur exactly once "
                            "(quote more surrounding text, or read_target to see the current content)"
                        )
                    after = after.replace(old, new, 1)
            data = after.encode("utf-8")
            if len(data) > MAX_EDIT_BYTES:
                raise RuleViolation(f"the new content is {len(data)} bytes; the limit is {MAX_EDIT_BYTES}")
            if "\x00" in after:
                raise RuleViolation("the new content contains NUL bytes; only text can be written")
            atomic_write(target, data)  # replaces a symlink swapped in, never follows it
            diff_lines = list(
                difflib.unified_diff(
                    before.splitlines(),
                    after.splitlines(),
                    f"a/{self.target_rel}",
                    f"b/{self.target_rel}",
                    lineterm="",
                )
            )
            added = sum(1 for line in diff_lines if line.startswith("+") and not line.startswith("+++"))
            removed = sum(1 for line in diff_lines if line.startswith("-") and not line.startswith("---"))
            diff = "\n".join(diff_lines)
            if len(diff) > MAX_DIFF_CHARS:
                diff = diff[:MAX_DIFF_CHARS] + f"\n… (diff cut at {MAX_DIFF_CHARS} characters)"
            return EditResult(
                path=self.target_rel,
                sha256_before=before_sha,
                sha256_after=sha256_bytes(data),
                diff=diff,
                lines_added=added,
                lines_removed=removed,
            )

    # ======================================================================================================
    # run
    # ======================================================================================================
    def start_run(self, description: str) -> str:
        """Check every rule, commit the candidate, and start it in the background. Returns the run id."""
        with self.lock:
            self._guard_own_files()
            description = one_line(description or "", MAX_DESCRIPTION)
            if not description:
                raise RuleViolation("description is empty; say in a few words what this experiment changes")
            self._check_no_pending()
            self._check_head()
            if self.config.max_experiments is not None and len(self.journal) >= self.config.max_experiments:
                raise RuleViolation(
                    f"max_experiments ({self.config.max_experiments}) reached: the session is complete. "
                    "Raise max_experiments in the configuration to continue."
                )
            self._target_path(must_exist=True)
            self._check_readonly()
            changed = [self.repo.project_path(p) for p in self.repo.changed_tracked_files()]
            others = [p for p in changed if p != self.target_rel]
            if others:
                raise RuleViolation(
                    "files other than the target differ from the session head: "
                    + ", ".join(others[:20])
                    + f". Only {self.target_rel} may change; restore them (git checkout -- "
                    + " ".join(others[:20])
                    + ")"
                )
            parent = self.repo.head_commit()
            target_bytes = self._target_path().read_bytes()
            if self._plain_target:
                # Compared with the head's content, not the index: after a decision the index may still lag.
                target_changed = target_bytes != self.repo.show_file(parent, self.target_repo_path)
            else:  # git converts this file on its way in: only git can say whether it changed
                target_changed = self.target_rel in changed
            is_baseline = self.state.best is None
            if is_baseline and target_changed:
                raise RuleViolation(
                    f"the first run of a session must be the unmodified baseline, but {self.target_rel} was edited; "
                    f"restore it (git checkout -- {self.target_rel}) and run the baseline, then experiment"
                )
            if not is_baseline and not target_changed:
                raise RuleViolation(
                    f"{self.target_rel} is unchanged since the best kept commit; edit it (apply_edit) first"
                )
            self.state.run_counter += 1
            run_id = f"r{self.state.run_counter}"
            pending = Pending(
                run_id=run_id,
                description=description,
                parent=parent,
                is_baseline=is_baseline,
                nonblank_lines=nonblank_lines(target_bytes.decode("utf-8", errors="replace")),
                target_sha256=sha256_bytes(target_bytes),
                started_at=datetime.now().isoformat(timespec="seconds"),
            )
            self.state.pending = pending
            self._save()
            message = f"experiment: {description}"
            if is_baseline:
                commit = parent
            elif self._plain_target:
                commit = self.repo.commit_file(
                    self.state.branch, self.target_repo_path, target_bytes, message, parent
                )
            else:  # filters or end-of-line conversion apply: let git make the blob
                commit = self.repo.commit_with_git(self.state.branch, self.target_repo_path, message)
            pending.commit = commit
            pending.phase = "running"
            pending.git_config, pending.refs_digest = self.git_watch.before_run()
            self._save()
            self.journal.log_experiment_start(run_id, commit, description)
            _drop_stale_bytecode(self._target_path())
            self._journal_prints = self.journal.fingerprints()
            log_dir = state_dir(self.root) / "runs" / self.state.tag
            active = ActiveRun(run_id=run_id, started=time.monotonic())
            active.experiment = Experiment(
                self.config, self.root, run_id, log_dir, self.state.tag, active.record_progress
            )
            active.thread = threading.Thread(
                target=self._execute, args=(active, pending), name=f"run-{run_id}", daemon=True
            )
            self.active = active
            active.thread.start()
            return run_id

    def _execute(self, active: ActiveRun, pending: Pending) -> None:
        """The background half of a run. Whatever happens here, the run ends finished and recorded."""
        try:
            try:
                assert active.experiment is not None
                result_dict = asdict(active.experiment.run())
            except Exception as exc:  # a bug or an OS failure: still a logged crash, never a lost experiment
                log.exception("run %s failed inside the server", pending.run_id)
                result_dict = _crash_result(f"internal error while running: {type(exc).__name__}: {exc}", [])
            with self.lock:
                try:
                    tampered = self._verify_after_run(pending)
                except Exception as exc:
                    log.exception("verifying run %s failed", pending.run_id)
                    tampered = [f"(the check itself failed: {type(exc).__name__}: {exc})"]
                if tampered and result_dict["status"] != "cancelled":
                    result_dict["status"] = "tampered"
                    result_dict["error"] = (
                        "the run changed files it must not: "
                        + ", ".join(tampered)
                        + " (tracked ones restored from git; what they held is kept in"
                        + f" .autoresearch/tampered/{pending.run_id}/)"
                    )
                pending.result = result_dict
                pending.phase = "finished"
                self._save()
        finally:
            with self.lock:
                self.active = None
            active.done.set()

    def _verify_after_run(self, pending: Pending) -> list[str]:
        """What the run changed that it must not: tracked files, read-only files, the server's own logs.
        Each is restored (tracked files from the commit that ran; logs from the JSONL)."""
        commit = pending.commit or pending.parent
        tampered, self._git_notes = self._git_notes, []
        try:
            # First, before git runs again: configuration, attributes and refs as the run found them.
            tampered += self.git_watch.after_run(
                pending.git_config, pending.refs_digest, commit, pending.run_id
            )
            if self.repo.current_branch() != self.state.branch:
                tampered.append(f"HEAD (switched to {self.repo.current_branch() or 'a detached commit'})")
                self.repo.checkout_branch(self.state.branch)
            if self.repo.head_commit() != commit:
                tampered.append("the session branch (moved by the run)")
                self.repo.move_branch(
                    self.state.branch, commit, f"autoresearch: undo {pending.run_id}'s move"
                )
            hidden = [p for p in self.repo.hidden_tracked_files() if p not in self.state.hidden_paths]
            if hidden:  # flags that blind git status to these files: cleared, so status sees them again
                tampered.append("index flags hiding " + ", ".join(map(self.repo.project_path, hidden)))
                self.repo.reveal(hidden)
            changed = self.repo.changed_tracked_files()
            target_same = sha256_file(self.root / self.target_rel) == pending.target_sha256
            if self.target_repo_path in changed and pending.target_sha256 and target_same:
                changed.remove(self.target_repo_path)  # only the index lags behind the committed target
            elif self.target_repo_path not in changed and pending.target_sha256 and not target_same:
                changed.append(self.target_repo_path)  # compared by content, whatever git status says
            if changed:
                tampered += [self.repo.project_path(p) for p in changed]
                tampered += self._restore_with_copies(pending.run_id, commit, changed)
        except SessionError as exc:
            tampered.append(f"git state ({exc})")
        readonly = changed_fingerprints(self.root, self.state.readonly_hashes)
        for rel in readonly:
            if rel not in tampered:
                tampered.append(rel)
        if readonly:
            try:
                tracked = [
                    self.repo.repo_path(r) for r in readonly if self.repo.is_tracked(self.repo.repo_path(r))
                ]
                tampered += self._restore_with_copies(pending.run_id, commit, tracked)
            except SessionError:
                pass
        tampered += self._restore_own_files()
        return tampered

    def _restore_with_copies(self, run_id: str, commit: str, repo_paths: list[str]) -> list[str]:
        """Restore tracked paths to `commit`, each only once a copy of what it holds is kept. A path whose copy
        fails is left as it is and named (the returned notes): nothing of the user's is thrown away."""
        failed = self._keep_copies(run_id, [self.repo.project_path(p) for p in repo_paths])
        self.repo.restore_paths(commit, [p for p in repo_paths if self.repo.project_path(p) not in failed])
        return [
            f"{rel} (NOT restored: no copy of it could be kept in .autoresearch/tampered/{run_id}/; look at it, "
            f"then git checkout -- {rel})"
            for rel in failed
        ]

    def _keep_copies(self, run_id: str, paths: list[str]) -> list[str]:
        """Before restoring files a run changed, keep what they held: during a long run the change may be the
        user's own edit, and nothing of the user's is ever thrown away. Returns the paths whose copy failed.
        Only regular files hold content; the copies go only into real directories of the server's."""
        failed: list[str] = []
        for rel in paths:
            source = self.root / rel
            try:
                if not stat.S_ISREG(source.lstat().st_mode):
                    continue  # a symlink, a FIFO or a directory: no bytes of the user's to keep
            except FileNotFoundError:
                continue
            except OSError:
                failed.append(rel)
                continue
            try:
                directory = own_dir(self.root, STATE_DIR, "tampered", run_id, *Path(rel).parent.parts)
                copy_regular(source, directory / source.name)
            except (OSError, SessionError) as exc:
                log.warning("could not keep a copy of %s before restoring it: %s", rel, exc)
                failed.append(rel)
        return failed

    def _save(self) -> None:
        save_state(self.root, self.state)
        self._state_print = state_fingerprint(self.root, self.state.tag)

    def _restore_own_files(self) -> list[str]:
        """The server's own files (state, JSONL, results.tsv) are written only by the server. Anything else that
        wrote them (a run, or the agent's shell between two calls) is undone from what the server knows."""
        changed: list[str] = []
        tsv_before, jsonl_before = self._journal_prints
        tsv_now, jsonl_now = self.journal.fingerprints()
        if jsonl_before is not None and jsonl_now != jsonl_before:
            changed.append(self.config.jsonl_path)
            self._restore_jsonl(jsonl_before[0])
        if tsv_before is not None and tsv_now != tsv_before:
            changed.append(RESULTS_TSV)
            self.journal.reconcile_tsv()
        if (
            self._state_print is not None
            and state_fingerprint(self.root, self.state.tag) != self._state_print
        ):
            changed.append(f".autoresearch/sessions/{self.state.tag}.json")
            self._save()
        if changed:
            log.warning("restored files written outside the server: %s", ", ".join(changed))
        self._journal_prints = self.journal.fingerprints()
        return changed

    def _guard_own_files(self) -> None:
        """Before every step that writes: undo outside writes to the server's files, and say so."""
        changed = self._restore_own_files()
        if changed:
            self.recovered.append("restored files written outside the server: " + ", ".join(changed))

    def _restore_jsonl(self, size: int) -> None:
        """The JSONL only ever grows: cut what a run appended; if it was rewritten, rewrite this session's rows."""
        path = self.journal.jsonl_path
        try:
            if path.exists() and path.stat().st_size > size:
                with path.open("rb+") as handle:
                    handle.truncate(size)
            self.journal.load()
        except OSError:
            pass

    def view(self, run_id: str | None) -> RunResult:
        """The current knowledge of a run: in flight, finished and waiting for a decision, or already logged."""
        with self.lock:
            pending = self.state.pending
            if run_id is not None:
                run_id = normal_run_id(run_id)
            if pending is not None and (run_id is None or run_id == pending.run_id):
                return self._pending_view(pending)
            if run_id is None:
                raise SessionError("no run is in flight or waiting for a decision; call run_experiment")
            row = self.journal.get(run_id)
            if row is None:
                raise RuleViolation(f"no run with id {run_id!r} in session '{self.state.tag}'")
            return RunResult(
                run_id=row.run_id,
                status=row.run_status if row.run_status in _RUN_STATUSES else "ok",
                metric_name=row.metric,
                value=row.value,
                best_value=row.prev,
                delta=row.delta,
                would_keep=row.status == "keep",
                duration_s=row.duration_s,
                memory_gb=row.memory_gb,
                commit=row.commit,
                error=row.error,
                next_step=f"already decided: {row.status}. Edit the target and run the next experiment.",
            )

    def _pending_view(self, pending: Pending) -> RunResult:
        best = self.state.best.value if self.state.best else None
        metric = self.state.metric_name
        if pending.phase in ("starting", "running") or pending.result is None:
            active = self.active
            elapsed = time.monotonic() - active.started if active else None
            tail_line = active.progress[2] if active and active.progress else None
            return RunResult(
                run_id=pending.run_id,
                status="running",
                metric_name=metric,
                best_value=best,
                commit=pending.commit,
                elapsed_s=round(elapsed, 1) if elapsed is not None else None,
                log_tail=tail_line,
                next_step=f"still running: call wait_experiment(run_id='{pending.run_id}')",
            )
        result = pending.result
        verdict = self._verdict(pending, discard=False)
        status = result["status"]
        if status == "ok":
            next_step = (
                f"call commit_or_reset(run_id='{pending.run_id}'): it will "
                f"{'keep' if verdict.decision == 'keep' else 'discard'} this ({verdict.reason})"
            )
        else:
            next_step = (
                f"call commit_or_reset(run_id='{pending.run_id}') to log this {status}; "
                "fix a trivial mistake and retry, or move on to another idea"
            )
        return RunResult(
            run_id=pending.run_id,
            status=status,
            metric_name=metric,
            value=result.get("value"),
            best_value=best,
            delta=verdict.delta,
            would_keep=verdict.decision == "keep",
            duration_s=result.get("duration_s"),
            memory_gb=result.get("memory_gb"),
            exit_code=result.get("exit_code"),
            commit=pending.commit,
            log_path=result.get("log_path"),
            log_tail=result.get("log_tail"),
            error=result.get("error"),
            values=result.get("values") if len(result.get("values") or []) > 1 else None,
            spread=result.get("spread"),
            next_step=next_step,
        )

    def cancel_run(self, reason: str) -> None:
        active = self.active
        if active is not None and active.experiment is not None:
            active.experiment.cancel(reason)

    # ======================================================================================================
    # decide
    # ======================================================================================================
    def _verdict(self, pending: Pending, discard: bool):
        result = pending.result or {}
        best = self.state.best
        return decide(
            run_status=result.get("status", "crash"),
            value=result.get("value"),
            best=best.value if best else None,
            direction=self.state.metric_direction,
            min_delta=self.config.min_delta,
            is_baseline=pending.is_baseline,
            lines=pending.nonblank_lines,
            best_lines=best.nonblank_lines if best else None,
            discard_requested=discard,
            error=result.get("error"),
        )

    def commit_or_reset(self, run_id: str | None, discard: bool = False) -> DecisionResult:
        with self.lock:
            if run_id is not None:
                run_id = normal_run_id(run_id)
                row = self.journal.get(run_id)
                if row is not None:  # already decided (a retried call): answer the same again
                    return DecisionResult(
                        run_id=run_id,
                        decision=row.status,
                        reason="already decided",
                        value=row.value,  # type: ignore[arg-type]
                        prev=row.prev,
                        delta=row.delta,
                        commit=row.commit,
                        branch_head=self.repo.head_commit(),
                        next_step="edit the target and run the next experiment",
                    )
            return self._decide_locked(run_id, discard)

    def _decide_locked(self, run_id: str | None, discard: bool) -> DecisionResult:
        if self.active is None:
            self._guard_own_files()
        pending = self.state.pending
        if pending is None:
            raise RuleViolation("no run waits for a decision; call run_experiment first")
        if run_id is not None and run_id != pending.run_id:
            raise RuleViolation(f"run {run_id} is not the pending run; the pending run is {pending.run_id}")
        if pending.phase in ("starting", "running"):
            raise SessionError(
                f"run {pending.run_id} is still running; call wait_experiment(run_id='{pending.run_id}') first"
            )
        if pending.phase == "finished":
            # Deciding touches the session branch, the index and the target: only where the session left them.
            self._check_head()
            verdict = self._verdict(pending, discard)
            pending.decision = {
                "decision": verdict.decision,
                "reason": verdict.reason,
                "delta": verdict.delta,
                "prev": self.state.best.value if self.state.best else None,
            }
            pending.phase = "deciding"
            self._save()
        return self._finish_decision(pending)

    def _finish_decision(self, pending: Pending) -> DecisionResult:
        """Apply a recorded decision. Idempotent: a restart in the middle simply runs it again."""
        decision = pending.decision or {}
        verdict = decision.get("decision", "crash")
        result = pending.result or {}
        commit = pending.commit or pending.parent
        if verdict == "keep":
            value = result["value"]
            if pending.is_baseline:
                self.state.baseline_value = value
                self.state.baseline_commit = commit
            if commit != pending.parent:
                self.repo.sync_index([self.target_repo_path])
            self.state.best = Best(
                value=value,
                commit=commit,
                run_id=pending.run_id,
                description=pending.description,
                nonblank_lines=pending.nonblank_lines,
            )
        elif commit != pending.parent:
            # Keep the idea reachable, then restore what the candidate changed (the target only: checked before
            # the run) and move the branch back. Both steps are idempotent, so a restart may repeat them.
            self.repo.set_ref(f"refs/autoresearch/{self.state.tag}/{pending.run_id}", commit)
            self.repo.restore_paths(pending.parent, [self.target_repo_path])
            if self.repo.resolve_branch(self.state.branch) != pending.parent:
                self.repo.move_branch(
                    self.state.branch, pending.parent, f"autoresearch: discard {pending.run_id}"
                )
        row = Row(
            run_id=pending.run_id,
            commit=commit,
            metric=self.state.metric_name,
            value=result.get("value"),
            status=verdict,
            run_status=result.get("status", "crash"),
            description=pending.description,
            prev=decision.get("prev"),
            delta=decision.get("delta"),
            memory_gb=result.get("memory_gb"),
            duration_s=result.get("duration_s"),
            error=result.get("error"),
            tag=self.state.tag,
            timestamp="",
        )
        self.journal.log_experiment_done(row)
        self.state.pending = None
        self._save()
        self._journal_prints = self.journal.fingerprints()
        if verdict == "keep":
            next_step = "kept. Build on it: edit the target and run the next experiment"
        elif pending.is_baseline:
            next_step = (
                "the baseline did not produce a value; fix the project or configuration, then run it again"
            )
        else:
            next_step = "reverted to the best kept commit. Try another idea: edit the target and run"
        return DecisionResult(
            run_id=pending.run_id,
            decision=verdict,
            reason=decision.get("reason", ""),
            value=result.get("value"),
            prev=decision.get("prev"),
            delta=decision.get("delta"),
            commit=commit,
            branch_head=self.repo.head_commit(),
            next_step=next_step,
        )

    # ======================================================================================================
    # notes and queries
    # ======================================================================================================
    def log_notes(self, run_id: str, notes: str) -> NotesResult:
        with self.lock:
            self._guard_own_files()
            run_id = normal_run_id(run_id)
            notes = (notes or "").strip()
            if not notes:
                raise RuleViolation("notes are empty; write the hypothesis and what the result taught you")
            if len(notes) > MAX_NOTES:
                raise RuleViolation(f"notes are {len(notes)} characters; keep them under {MAX_NOTES}")
            row = self.journal.get(run_id)
            if row is None:
                pending = self.state.pending
                hint = (
                    f"; run {run_id} is not decided yet: call commit_or_reset first"
                    if pending and pending.run_id == run_id
                    else ""
                )
                raise RuleViolation(f"no logged experiment {run_id!r} in session '{self.state.tag}'{hint}")
            all_notes = self.journal.add_notes(run_id, notes)
            self._journal_prints = self.journal.fingerprints()
            return NotesResult(run_id=run_id, status=row.status, notes=all_notes)

    def query(self, status: str | None, limit: int, order: str) -> QueryResult:
        with self.lock:
            journal = self.journal
            direction = self.state.metric_direction
            wanted = status.strip().lower() if status else None
            if wanted is not None and wanted not in {"keep", "discard", "crash", *_RUN_STATUSES}:
                raise RuleViolation(
                    f"status must be one of {', '.join(sorted({'keep', 'discard', 'crash', *_RUN_STATUSES}))}"
                )
            limit = max(1, min(limit, 500))
            if order == "best":
                chosen = journal.best_indices(limit, direction == "lower_is_better", wanted)
            elif order == "recent":
                if wanted is None:
                    chosen = list(range(len(journal) - 1, max(-1, len(journal) - 1 - limit), -1))
                else:
                    chosen = list(reversed(journal.indices(wanted)[-limit:]))
            else:
                raise RuleViolation("order must be 'recent' or 'best'")
            best = self.state.best
            baseline = self.state.baseline_value
            gain = improvement(best.value, baseline, direction) if best and baseline is not None else None
            pct = improvement_pct(gain, baseline) if gain is not None and baseline is not None else None
            total = len(journal)
            return QueryResult(
                tag=self.state.tag,
                metric_name=self.state.metric_name,
                direction=direction,
                total=total,
                counts={k: journal.counts.get(k, 0) for k in ("keep", "discard", "crash")},
                baseline=baseline,
                best=BestInfo(
                    value=best.value, commit=best.commit[:7], description=best.description, run_id=best.run_id
                )
                if best
                else None,
                improvement=gain,
                improvement_pct=round(pct, 4) if pct is not None else None,
                experiments_since_last_keep=total - 1 - journal.last_keep_index if total else 0,
                rows=[_row_model(r) for r in journal.rows_at(chosen)],
            )

    # ======================================================================================================
    def shutdown(self, join_s: float = 10.0) -> None:
        active = self.active
        if active is None:
            return
        if active.experiment is not None:
            active.experiment.cancel("the server was stopped")
        if active.thread is not None:
            active.thread.join(join_s)
        with self.lock:
            pending = self.state.pending
            if pending is not None and pending.phase == "finished" and pending.run_id == active.run_id:
                if pending.result and pending.result.get("status") == "cancelled":
                    pending.result["error"] = "the server was stopped during this run"
                self._decide_locked(pending.run_id, discard=True)


_RUN_STATUSES = ("ok", "crash", "timeout", "metric_error", "tampered", "checks_failed", "cancelled")


def _rules_of(config: Config) -> dict[str, Any]:
    return {key: getattr(config, key) for key in RULE_KEYS}


def _row_model(row: Row) -> ResultRow:
    return ResultRow(
        run_id=row.run_id,
        commit=row.commit[:7],
        value=row.value,
        status=row.status,
        run_status=row.run_status,
        delta=row.delta,
        memory_gb=row.memory_gb,
        description=row.description,
        notes=row.notes,
        timestamp=row.timestamp,
    )


def _crash_result(error: str, tampered: list[str]) -> dict[str, Any]:
    if tampered:
        error += "; files it changed were restored: " + ", ".join(tampered)
    return asdict(
        ExperimentResult(
            status="crash",
            value=None,
            values=[],
            spread=None,
            duration_s=0.0,
            memory_gb=None,
            exit_code=None,
            log_path="",
            log_tail="",
            error=error,
        )
    )


def normal_run_id(run_id: str) -> str:
    run_id = str(run_id).strip()
    return f"r{run_id}" if run_id.isdigit() else run_id


def clamp_wait(wait_s: float | None) -> float:
    if wait_s is None:
        return DEFAULT_WAIT_S
    return max(0.0, min(float(wait_s), MAX_WAIT_S))


def _drop_stale_bytecode(target: Path) -> None:
    """Python trusts a cached .pyc when the source's size and mtime (in whole seconds) match; two edits of the
    same length within one second would run the old code. Remove the target's own cache entry before a run."""
    if target.suffix != ".py":
        return
    for cached in (target.parent / "__pycache__").glob(f"{target.stem}.*.pyc"):
        try:
            cached.unlink()
        except OSError:
            pass


def _archive_results(root: Path, new_tag: str) -> list[str]:
    """A new session starts a fresh results.tsv and run.log; what was there (a previous session's, or the
    original tool's) is moved beside the session state, never deleted. Returns what was moved."""
    moved = []
    old = current_tag(root) or "previous"
    if old == new_tag:
        old = f"{old}-old"
    for name, archived in ((RESULTS_TSV, f"results-{old}.tsv"), (RUN_LOG, f"run-{old}.log")):
        source = root / name
        if not source.exists() and not source.is_symlink():
            continue
        archive = state_dir(root) / archived
        archive.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, archive)
        moved.append(f"{name} -> .autoresearch/{archived}")
    return moved


def _exclude_patterns(repo: Repo, jsonl_path: str) -> list[str]:
    def anchored(rel: str) -> str:
        return "/" + repo.repo_path(rel)

    patterns = [anchored(".autoresearch") + "/", anchored(RESULTS_TSV), anchored(RUN_LOG)]
    if not jsonl_path.startswith(".autoresearch/"):
        patterns.append(anchored(jsonl_path))
    return patterns
