"""The loop's state machine: open (create or resume) a session, recover after a crash, guard every step.

Every rule the agent could break is checked, in code, before and after each step: only the target changes;
read-only files keep their hashes; the number logged is the one measured; a change is kept only if it
improved; every experiment is logged; the user's files are never lost. The steps themselves are the
session's parts: `editing` (the target), `running` (a run, whatever its placement), `decisions` (keep or
discard) and `views` (runs, results, notes); they share the session through `context.SessionCore`.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import AutoresearchError, RuleViolation, SessionError
from ..lifecycle.branching import Brancher
from ..lifecycle.candidates import AlreadyMeasured
from ..lifecycle.decisions import Decider
from ..lifecycle.in_flight import DEFAULT_WAIT_S, MAX_WAIT_S, RunHandle, clamp_wait
from ..lifecycle.running import Runs
from ..lifecycle.slot_decisions import SlotDecisions
from ..lifecycle.slot_placement import SlotPlacement
from ..lifecycle.tree_checks import TreeChecks
from ..lifecycle.tree_decisions import TreeDecisions
from ..lifecycle.tree_placement import TreePlacement
from ..measure.provenance import UNCONFINED, metric_provenance
from ..models import (
    BranchResult,
    DecisionResult,
    EditResult,
    NotesResult,
    QueryResult,
    RunResult,
    StartResult,
    TargetView,
)
from ..names import RESULTS_TSV, RUN_LOG, SESSION_BRANCHES, SESSIONS, own_journal
from ..phases import in_flight
from ..records.budget import BUDGET_KEYS, settle_budget
from ..records.current import current_session
from ..records.diskspace import no_room
from ..records.journal import Journal
from ..records.ownfiles import OwnFiles, archive_results, exclude_patterns, restore_jsonl, start_mirror
from ..records.state import (
    OwnRecord,
    PublicCopy,
    SessionState,
    load_record,
    one_call,
    save_state,
    server_dir,
    set_current_tag,
    write_public,
)
from ..sandbox.policy import probe_isolation
from ..setup.config import FROZEN_KEYS
from ..setup.project import Project, integrity_refusal
from ..setup.single_file import changed_fingerprints, fingerprint_files, new_files
from ..setup.stage_config import refuse_unhidable
from ..vcs.repo import Repo
from ..vcs.unfinished import refuse_start, refuse_switch
from .context import normal_run_id
from .editing import Editor, what_the_edit_left
from .opening import TAG_RE, check_last_budget, default_tag
from .queries import Views, waits_to_decide

__all__ = [
    "DEFAULT_WAIT_S",
    "MAX_WAIT_S",
    "RESULTS_TSV",
    "RunHandle",
    "Session",
    "clamp_wait",
    "current_session",
    "normal_run_id",
]

log = logging.getLogger("mcp_autoresearch")


class Session:
    """One session: its state (on disk and here), the guards every step passes, and the parts that do the
    steps. Opened by `Session.open`, which creates a session or resumes (and repairs) one."""

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
        self.plain_target = repo.is_plain_file(self.target_repo_path)
        self.lock = threading.RLock()
        self.public_copy = PublicCopy()
        self.resumed = False
        self.replaced_by: str | None = None  # why a call still holding it is refused: another session is open
        self.recovered: list[str] = []
        self.isolation = probe_isolation(self.config.isolation, self.config.network)
        self.own = OwnFiles(root, state.tag, journal, self.config.jsonl_path, self.save, self.recovered)
        # The session's parts, each with one concern; they see the session as a `SessionCore`.
        self.editor = Editor(self)
        tree = TreeChecks(self)  # the user's tree is checked after every run, whatever its placement
        # Where runs go and what deciding them changes: the one choice of mode, made here.
        if self.config.parallel:  # runs go to slots: checkouts of their own, several at once
            slots = SlotPlacement(self, self.editor, tree)
            self.runs = Runs(self, self.editor, slots)
            self.decider = Decider(self, self.runs, SlotDecisions(self, self.runs, slots))
        else:
            self.runs = Runs(self, self.editor, TreePlacement(self, self.editor, tree))
            self.decider = Decider(self, self.runs, TreeDecisions(self, self.runs))
        self.views = Views(self, self.runs, self.decider)
        self.brancher = Brancher(self)

    # ======================================================================================================
    # opening
    # ======================================================================================================
    @classmethod
    def open(
        cls, root: Path, project: Project, repo: Repo, tag: str | None, budget: dict[str, Any] | None = None
    ) -> Session:
        config = project.config
        assert config.target_file and config.metric_name
        isolation = probe_isolation(config.isolation, config.network)
        if config.isolation == "required" and not isolation.complete:
            raise SessionError(
                f"isolation = required needs Landlock and namespaces, but here: {isolation.missing()}; run the "
                "server on Linux 5.13+ with Landlock enabled and user namespaces allowed, or set isolation = auto "
                "to use the layers this machine has (and the after-run checks)"
            )
        refuse_unhidable(
            root,
            config,
            isolation,
            lambda path: repo.is_tracked(repo.repo_path(path)),
            lambda path: repo.commit_holding(repo.repo_path(path)),
        )
        if tag is not None:
            tag = tag.strip().lower()
            if not TAG_RE.match(tag):
                raise RuleViolation(
                    f"tag {tag!r} is not usable as a branch name part: use lower-case letters, digits, '.', '_' "
                    "or '-', at most 64 characters"
                )
        else:  # the checked-out session; else today's (created, or resumed on its branch)
            tag = current_session(root, repo) or default_tag()
        branch = f"{SESSION_BRANCHES}{tag}"
        record, notes = load_record(root, tag)  # the server's own record, never the public copy
        state = record.state if record is not None else None
        resuming = state is not None and repo.branch_exists(branch)
        # A resumed session whose earlier runs nothing confined (its rules say so) stays self-reported.
        unconfined = isolation.unconfined or bool(resuming and state and state.rules.get(UNCONFINED))
        provenance = metric_provenance(config, unconfined)
        if config.integrity == "required" and provenance.source == "self-reported":
            raise SessionError(integrity_refusal(provenance))
        if state is None:
            check_last_budget(root, tag, project.config)
        repo.ensure_identity()
        for own in (RESULTS_TSV, RUN_LOG):
            if (root / own).exists() and repo.is_tracked(repo.repo_path(own)):
                raise SessionError(
                    f"{own} is tracked by git in this project, but the server writes it on every experiment; "
                    f"a person must untrack it first (git rm --cached {own} && git commit)"
                )
        target_repo = repo.repo_path(config.target_file)
        if not repo.is_tracked(target_repo):
            raise SessionError(
                f"the target {config.target_file} is not tracked by git; a person must commit it first "
                f"(git add {config.target_file} && git commit), so every experiment can be kept or discarded"
            )
        jsonl = root / config.jsonl_path
        journal = Journal(root / RESULTS_TSV, jsonl, tag, config.results_format, config.metric_name)
        journal.mirror = server_dir(root, SESSIONS) / own_journal(tag)
        journal.provenance = provenance.source  # on every experiment's record
        if record is not None and state is not None and resuming:
            if isolation.unconfined:  # (before the resume saves the state) its runs from now on
                state.rules[UNCONFINED] = True
            session = cls._resume(root, project, repo, record, journal)
            session.recovered[:0] = notes
        else:
            if repo.branch_exists(branch):
                raise SessionError(
                    f"branch {branch} already exists but holds no session of this server; pass another tag "
                    f"(start_session(tag='{tag}b')) or delete that branch"
                )
            session = cls._create(root, project, repo, tag, branch, journal, isolation.unconfined)
        set_current_tag(root, tag)  # its branch is checked out now: it is the current session
        session.settle_budget(budget or {})
        return session

    @classmethod
    def _create(
        cls,
        root: Path,
        project: Project,
        repo: Repo,
        tag: str,
        branch: str,
        journal: Journal,
        unconfined: bool = False,
    ) -> Session:
        config = project.config
        assert config.target_file and config.metric_name
        refuse_start(repo)
        moved = archive_results(root, tag)
        started_from = repo.current_branch()
        repo.create_branch(branch)
        repo.add_excludes(exclude_patterns(repo, config.jsonl_path))
        state = SessionState(
            tag=tag,
            branch=branch,
            base_commit=repo.head_commit(),
            started_from=started_from,
            created_at=datetime.now().astimezone().isoformat(timespec="seconds"),  # with its UTC offset
            target_file=config.target_file,
            metric_name=config.metric_name,
            metric_direction=config.metric_direction,
            readonly_hashes=fingerprint_files(root, list(config.readonly_files)),
            rules={**config.frozen_rules(), **({UNCONFINED: True} if unconfined else {})},
            hidden_paths=repo.hidden_tracked_files(),
        )
        server_dir(root)
        journal.load()
        start_mirror(journal)
        journal.log_session_start(
            {
                "branch": branch,
                "base_commit": state.base_commit,
                "target_file": config.target_file,
                "metric": config.metric_name,
                "direction": config.metric_direction,
                "run_command": config.run_command,
                "provenance": journal.provenance,
            }
        )
        save_state(root, state, journal.seal())
        session = cls(root, project, repo, state, journal)
        session.recovered += [f"kept the previous {line}" for line in moved]
        return session

    @classmethod
    def _resume(
        cls, root: Path, project: Project, repo: Repo, record: OwnRecord, journal: Journal
    ) -> Session:
        config = project.config
        state = record.state
        now = config.frozen_rules()
        changed = [key for key in FROZEN_KEYS if state.rules.get(key, now[key]) != now[key]]
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
        # A key added to the server after the session began: frozen from this resume on (saved below), as if
        # the session had started with it, else every server life could choose another value.
        state.rules.update({key: now[key] for key in FROZEN_KEYS if key not in state.rules})
        session = cls(root, project, repo, state, journal)
        session.runs.after_restart()  # before git runs again: what a run in flight planted is undone
        if repo.current_branch() != state.branch:
            refuse_switch(repo, state.branch, state.tag)
            repo.checkout_branch(state.branch)
        repo.add_excludes(exclude_patterns(repo, config.jsonl_path))
        if record.jsonl_sha256:  # the JSONL as the server left it: what a run wrote is not adopted
            restored = restore_jsonl(journal, record.seal())
            session.recovered += [restored] if restored else []
        journal.load()
        if not record.jsonl_sha256:  # a session of an earlier version: its copy starts now
            start_mirror(journal)
        session.save()  # the public copy rewritten from the record, the seal from what was read
        session.own.journal_written()
        session.resumed = True
        session._recover()
        return session

    def settle_budget(self, asked: dict[str, Any]) -> None:
        """The budgets in force: start_session's arguments (`asked`), else the configuration (records/budget.py)."""
        with self.lock:
            configured = {key: getattr(self.config, key) for key in BUDGET_KEYS}
            changed = settle_budget(self.state, configured, asked)
            if changed:
                self.save()
            self.views.budget_changed = changed if self.resumed or asked else []

    def _recover(self) -> None:
        """Bring state, git and the logs back into agreement after the server died at any moment."""
        self.recovered += self.decider.recover()

    def describe(self, resumed: bool) -> StartResult:
        return self.views.start_result(resumed, self.recovered)

    # ======================================================================================================
    # guards
    # ======================================================================================================
    def _expected_head(self) -> str:
        pending = self.state.pending
        if pending is not None and pending.commit is not None:
            return pending.commit
        return self.state.best.commit if self.state.best else self.state.base_commit

    def check_head(self) -> None:
        if self.replaced_by is not None:  # start_session opened another session while this call was made
            raise SessionError(self.replaced_by)
        branch = self.repo.current_branch()
        if branch != self.state.branch:
            raise SessionError(
                f"HEAD is on {branch or 'a detached commit'}, not on the session branch {self.state.branch}; "
                f"a person must check it out again (git checkout {self.state.branch}) to continue this session"
            )
        head, expected = self.repo.head_commit(), self._expected_head()
        if head != expected:
            raise SessionError(
                f"the session branch moved to {head[:7]} outside the loop (the loop's head is {expected[:7]}); "
                f"only the server commits here. A person must undo it (git reset --soft {expected[:7]}), or "
                "start a new session: start_session(tag=...) with a new tag"
            )

    def check_no_pending(self) -> None:
        pending = self.state.pending
        if pending is None:  # with slots, runs in flight never block an edit: the target is not theirs
            return
        if in_flight(pending):
            raise SessionError(
                f"run {pending.run_id} is in flight; call wait_experiment(run_id='{pending.run_id}') until it "
                "finishes, then commit_or_reset"
            )
        raise RuleViolation(
            f"decide run {pending.run_id} first: call commit_or_reset(run_id='{pending.run_id}') "
            "(the server decides keep or discard from its own measurement)"
        )

    def check_readonly(self) -> None:
        hashes = self.state.readonly_hashes
        changed = changed_fingerprints(self.root, hashes)
        changed += new_files(self.root, list(self.config.readonly_files), hashes)
        if changed:
            raise RuleViolation(
                "read-only files changed since the session started: "
                + ", ".join(changed)
                + f". Only {self.target_rel} may be edited, and no tool of this server writes other files: "
                + "a person must restore them (git checkout -- "
                + " ".join(changed)
                + ")"
            )

    def save(self) -> None:
        copy = self.public_copy
        behind = copy.written if copy.deferred() else ""
        copy.written = save_state(self.root, self.state, self.journal.seal(), behind)
        copy.owed = bool(behind)
        self.own.state_written(public=not behind)  # a public copy left behind was not written

    def write_public(self) -> None:
        """The public copy a step's saves left behind (a failure is logged: the server's record holds it)."""
        with self.lock:
            if not self.public_copy.owed:
                return
            try:
                self.public_copy.written = write_public(self.root, self.state)
            except (OSError, SessionError) as exc:
                log.warning("could not write the public copy of the state: %s", exc)
                return
            self.public_copy.owed = False
            self.own.state_written(record=False)

    # ======================================================================================================
    # the steps, each done by the part that owns it
    # ======================================================================================================
    def read_target(self, start_line: int | None, end_line: int | None) -> TargetView:
        return self.editor.read_target(start_line, end_line)

    @one_call
    def apply_edit(
        self,
        edits: list[dict[str, str]] | None,
        content: str | None,
        path: str | None,
        expected_sha256: str | None,
    ) -> EditResult:
        return self.editor.apply_edit(edits, content, path, expected_sha256)

    @one_call
    def branch_from(self, run_id: str) -> BranchResult:
        """That run's target into the work tree; the next candidate's parent is that run."""
        return self.brancher.branch_from(run_id)

    @one_call
    def combine(self, run_a: str, run_b: str) -> BranchResult:
        """The three-way merge of two runs' targets into the work tree; the next run measures it."""
        return self.brancher.combine(run_a, run_b)

    @one_call
    def start_run(self, description: str, rerun: bool = False) -> str | AlreadyMeasured:
        return self.runs.start_run(description, rerun)

    @one_call
    def edit_and_start_run(
        self,
        description: str,
        rerun: bool,
        edits: list[dict[str, str]] | None,
        content: str | None,
        expected_sha256: str | None = None,
    ) -> tuple[EditResult, str | AlreadyMeasured]:
        """apply_edit then start_run, in one call of the agent. A refusal that no edit could change comes first
        (nothing written); when the run cannot start because of the edit, the edit stays made (as after
        apply_edit alone) and the refusal says so. All under the session's lock: another call's edit between
        them would run under this description."""
        with self.lock:
            self.runs.admit(description)
            if self.state.best is None and self.state.pending is None:
                raise RuleViolation(
                    "the first run of a session is the unmodified baseline: call "
                    "run_experiment(description='baseline', decide=true) without edits or content, then "
                    "experiment (nothing was written)"
                )
            edit = self.apply_edit(edits, content, None, expected_sha256)
            try:
                return edit, self.start_run(description, rerun)
            except AutoresearchError as exc:
                raise type(exc)(f"{exc} ({what_the_edit_left(edit)})") from None

    def start_wait(self, wait_s: float | None) -> float | None:
        """How long run_experiment waits for the run it started: with slots not at all (the agent prepares the
        next idea while this one runs), else as the agent asked."""
        return self.runs.placement.wait_after_start(wait_s)

    def run_handle(self, run_id: str | None) -> RunHandle | None:
        """The run in flight, to wait for (None when that run, or any, is not in flight). With slots and no
        run_id: a handle on whichever run finishes first (None when one already waits for its decision)."""
        run_id = normal_run_id(run_id) if run_id is not None else None
        return self.runs.handle(run_id)

    def cancel_run(self, reason: str, run_id: str | None = None) -> None:
        self.runs.cancel_run(reason, normal_run_id(run_id) if run_id is not None else None)

    @one_call
    def view(self, run_id: str | None, already_measured: bool = False) -> RunResult:
        return self.views.view(run_id, already_measured)

    @one_call
    def decided_view(self, run_id: str | None) -> RunResult:
        """A run's view with its decision made as commit_or_reset makes it (`decide=true`), once the run
        finished; while it runs, the view says how to wait for it with the decision asked again."""
        view = self.views.view(run_id)
        if view.status == "running":
            return waits_to_decide(view)
        try:
            decided = self.commit_or_reset(view.run_id)
        except AutoresearchError as exc:
            raise type(exc)(
                f"run {view.run_id} finished ({view.status}) but was not decided: {exc}"
            ) from None
        if decided.decision == "rerun":  # slots: it runs again on the new best, and is decided when it ends
            return waits_to_decide(self.views.view(view.run_id), decided)
        return view.model_copy(update={"decided": decided, "next_step": decided.next_step})

    @one_call
    def commit_or_reset(self, run_id: str | None, discard: bool = False) -> DecisionResult:
        try:
            return self._commit_or_reset(run_id, discard)
        except (OSError, SessionError) as exc:
            if not no_room(exc):
                raise
            # A full disk (filled after the run ended): the decision is owed, so it is written into the server's
            # reserve (applying a decision is idempotent); the next run waits until the reserve is back.
            self.runs.space.release()
            return self._commit_or_reset(run_id, discard)

    def _commit_or_reset(self, run_id: str | None, discard: bool) -> DecisionResult:
        return self.decider.commit_or_reset(run_id, discard)

    @one_call
    def log_notes(self, run_id: str, notes: str) -> NotesResult:
        return self.views.log_notes(run_id, notes)

    def query(self, status: str | None, limit: int, order: str, view: str = "rows") -> QueryResult:
        return self.views.query(status, limit, order, view)

    def briefing(self) -> str:
        return self.views.briefing()

    # ======================================================================================================
    def shutdown(self, join_s: float = 10.0) -> None:
        self.decider.shutdown(join_s)

    def interrupt(self) -> None:
        """The server is leaving: what runs inside a call (the holdout) is cancelled now, without a lock."""
        self.runs.interrupt("the server was stopped")
