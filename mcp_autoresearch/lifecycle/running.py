"""The run and its verification: commit the candidate, run it in the background, and check afterwards that
it changed nothing it must not (restoring what it did, after keeping a copy).

A run always ends finished and recorded in the session state, whatever happens to it; the decision on it is
`decisions`' job. Callers wait for a run through a `RunHandle`, never through the thread.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..errors import RuleViolation, SessionError
from ..measure.keep_rule import nonblank_lines
from ..measure.sequential import measure_baseline
from ..names import RUN_LOGS
from ..phases import advance
from ..records.atomic import copy_regular, read_regular
from ..records.budget import refuse_past_budget
from ..records.diskspace import DiskSpace
from ..records.journal import Row, one_line
from ..records.state import Pending, RunOutcome, server_dir
from ..session.context import SessionCore
from ..session.editing import Editor
from ..setup.single_file import changed_fingerprints, new_files, sha256_bytes, sha256_file
from ..vcs.planted import GitWatch
from .branching import mark_parent, reference, start_point
from .experiment import Experiment, ExperimentResult
from .in_flight import ActiveRun, RunHandle, execute, measure_run, tampered_before_best

log = logging.getLogger("mcp_autoresearch")

DEFAULT_WAIT_S = 30.0  # how long a call waits for a run before answering `running`
MAX_WAIT_S = 50.0  # the longest wait: many clients give up on a call after about 60 s
MAX_DESCRIPTION = 500  # characters of an experiment's description


class Runs:
    """Starts, verifies and stops the session's runs; at most one is in flight."""

    def __init__(self, core: SessionCore, editor: Editor) -> None:
        self.core = core
        self.editor = editor
        self.active: ActiveRun | None = None
        self.git_watch = GitWatch(core.repo, core.root, core.state.branch, core.state.tag)
        self.git_notes: list[str] = []  # what a restart found changed in git's files before git ran again
        self.space = DiskSpace(core.root)  # the reserve for the server's records (shared with the slots)

    def handle(self, run_id: str | None) -> RunHandle | None:
        """The run in flight (that one, when `run_id` is given), or None when it is not in flight."""
        active = self.active
        if active is None or (run_id is not None and run_id != active.run_id):
            return None
        return RunHandle.of(active, self.core.config.timeout)

    def cancel(self, reason: str) -> None:
        active = self.active
        if active is not None:
            active.cancel(reason)

    def cancel_run(self, reason: str, run_id: str | None) -> None:
        """A client gave up waiting for the run: it is stopped (there is only one)."""
        self.cancel(reason)

    def wait_after_start(self, wait_s: float | None) -> float | None:
        """run_experiment waits for the run in the user's tree as the agent asked."""
        return wait_s

    def stop(self, reason: str, join_s: float) -> ActiveRun | None:
        """Cancel the run in flight and wait up to `join_s` for its thread; returns the run that was stopped."""
        active = self.active
        if active is None:
            return None
        active.cancel(reason)
        if active.thread is not None:
            active.thread.join(join_s)
        return active

    def start_run(self, description: str, rerun: bool = False) -> str | AlreadyMeasured:
        """Check every rule, commit the candidate, and start it in the background. Returns the run id, or the
        earlier run when this content was measured before in the session and `rerun` is not set."""
        core = self.core
        with core.lock:
            core.own.guard()
            core.check_no_pending()
            no_room = self.space.before_run([core.root], list(core.config.writable))
            if no_room:
                raise SessionError(no_room)
            parent, parent_run = start_point(core, core.repo.head_commit())  # the best, or a branched node
            started = new_run(core, self.editor, description, parent, rerun)
            if isinstance(started, AlreadyMeasured):
                return started  # no idea is measured twice unless asked
            pending, target_bytes = started
            mark_parent(core, pending, parent_run)
            run_id, description, is_baseline = pending.run_id, pending.description, pending.is_baseline
            core.state.inflight.append(pending)
            core.save()
            message = f"experiment: {description}"
            if is_baseline:
                commit = parent
            elif core.plain_target:
                commit = core.repo.commit_file(
                    core.state.branch, core.target_repo_path, target_bytes, message, parent
                )
            else:  # filters or end-of-line conversion apply: let git make the blob
                commit = core.repo.commit_with_git(core.state.branch, core.target_repo_path, message)
            pending.commit = commit
            pending.git_config, pending.refs_digest = self.git_watch.before_run()
            core.journal.log_experiment_start(run_id, commit, description, pending.parent_run)
            advance(pending, "running", core.save)  # after the append: the record seals the JSONL with it
            _drop_stale_bytecode(self.editor.target_path())
            core.own.journal_written()
            log_dir = server_dir(core.root, RUN_LOGS, core.state.tag)  # a planted symlink is replaced
            active = ActiveRun(run_id=run_id, started=time.monotonic(), log_dir=log_dir)
            active.experiment = Experiment(
                core.config,
                core.root,
                run_id,
                log_dir,
                core.state.tag,
                active.record_progress,
                core.isolation,
            )
            active.thread = threading.Thread(
                target=execute,
                args=(core, self.space, self, active, pending),
                name=f"run-{run_id}",
                daemon=True,
            )
            self.active = active
            active.thread.start()
            return run_id

    def after_restart(self) -> None:
        """A run was in flight when the server stopped: what it planted in git's files is undone before git
        runs again (what was found is reported by the check after the run)."""
        pending = self.core.state.pending
        if pending is not None and pending.phase == "running" and pending.commit:
            self.git_notes = self.git_watch.after_run(
                pending.git_config, pending.refs_digest, pending.commit, pending.run_id
            )

    # -- the run's placement (`lifecycle.Placement`): the user's tree ----------------------------------------
    def prepare(self, active: ActiveRun, pending: Pending) -> None:
        """Nothing to do: the candidate is committed on the session branch, in the user's tree."""

    def places(self, active: ActiveRun) -> list[Path]:
        return [self.core.root]

    def disk_full(self, active: ActiveRun, pending: Pending) -> None:
        """Nothing else to stop: this is the only run in flight."""

    def check_after_run(self, active: ActiveRun, pending: Pending) -> list[str]:
        return self.verify_after_run(pending)

    def record(self, active: ActiveRun, pending: Pending, outcome: RunOutcome) -> None:
        pending.result = outcome
        advance(pending, "finished", self.core.save)

    def release(self, active: ActiveRun, pending: Pending) -> None:
        with self.core.lock:
            self.active = None
        active.done.set()

    def measure(self, active: ActiveRun, pending: Pending) -> RunOutcome:
        """Run the candidate as many times as the keep rule needs: the baseline's noise runs, one run (or
        `repeats`) under the greedy rule, the sequential test's runs with the best re-measured as needed."""
        core = self.core
        experiment = active.experiment
        assert experiment is not None
        return measure_run(
            core,
            active,
            pending,
            lambda: measure_baseline(experiment, core.config),
            lambda: Experiment(
                core.config,
                core.root,
                f"{pending.run_id}-best",
                experiment.log_dir,
                core.state.tag,
                active.record_progress,
                core.isolation,
            ),
            lambda run: self._with_best_content(pending, run),
            lambda: (
                sha256_file(core.root / core.target_rel) == pending.target_sha256
                and not changed_fingerprints(core.root, core.state.readonly_hashes)
            ),
        )

    def _with_best_content(self, pending: Pending, run: Callable[[], ExperimentResult]) -> ExperimentResult:
        """Run with the best's content in place of the candidate's, then put the candidate's back. The state
        says so meanwhile: a server killed in between restores the candidate without calling it tampering.
        A run that changed the target is not covered up by the swaps: before them the candidate's change is
        left for the check after the run; the best's is kept as a copy and stops the measurement."""
        core = self.core
        best = reference(core, pending)  # the parent's content: the best's unless the candidate was branched
        assert best is not None and pending.commit is not None
        target = core.root / core.target_rel
        with core.lock:
            if sha256_file(target) != pending.target_sha256:
                return tampered_before_best("the candidate's run changed the target")
            pending.measuring_best = True
            core.save()
            core.repo.restore_paths(best.commit, [core.target_repo_path])
            _drop_stale_bytecode(target)
            best_content = sha256_file(target)
        changed = False
        try:
            result = run()
        finally:
            with core.lock:
                changed = sha256_file(target) != best_content
                if changed:
                    self.keep_copies(pending.run_id, [core.target_rel])
                core.repo.restore_paths(pending.commit, [core.target_repo_path])
                _drop_stale_bytecode(target)
                pending.measuring_best = False
                core.save()
        if changed and result.status == "ok":
            result.status = "tampered"
            result.error = (
                f"the best's run changed the target (kept in .autoresearch/tampered/{pending.run_id}/)"
            )
        return result

    def verify_after_run(self, pending: Pending) -> list[str]:
        """What the run changed that it must not: git's configuration and refs, tracked files, read-only files,
        the server's own logs. Each is restored (tracked files from the commit that ran; logs from the JSONL)."""
        core = self.core
        commit = pending.commit or pending.parent_commit
        tampered, self.git_notes = self.git_notes, []
        try:
            # First, before git runs again: configuration, attributes and refs as the run found them.
            tampered += self.git_watch.after_run(
                pending.git_config, pending.refs_digest, commit, pending.run_id
            )
            if core.repo.current_branch() != core.state.branch:
                tampered.append(f"HEAD (switched to {core.repo.current_branch() or 'a detached commit'})")
                core.repo.checkout_branch(core.state.branch)
            if core.repo.head_commit() != commit:
                tampered.append("the session branch (moved by the run)")
                core.repo.move_branch(
                    core.state.branch, commit, f"autoresearch: undo {pending.run_id}'s move"
                )
            index_same = self.git_watch.index_unchanged()  # else the run (or its git) wrote the index
            hidden = [] if index_same else core.repo.hidden_tracked_files()
            hidden = [p for p in hidden if p not in core.state.hidden_paths]
            if hidden:  # flags that blind git status to these files: cleared, so status sees them again
                tampered.append("index flags hiding " + ", ".join(map(core.repo.project_path, hidden)))
                core.repo.reveal(hidden)
            changed = core.repo.changed_tracked_files()
            target_same = sha256_file(core.root / core.target_rel) == pending.target_sha256
            if core.target_repo_path in changed and pending.target_sha256 and target_same:
                changed.remove(core.target_repo_path)  # only the index lags behind the committed target
            elif core.target_repo_path not in changed and pending.target_sha256 and not target_same:
                changed.append(core.target_repo_path)  # compared by content, whatever git status says
            if changed:
                tampered += [core.repo.project_path(p) for p in changed]
                tampered += self.restore_with_copies(pending.run_id, commit, changed)
        except SessionError as exc:
            tampered.append(f"git state ({exc})")
        readonly = changed_fingerprints(core.root, core.state.readonly_hashes)
        for rel in readonly:
            if rel not in tampered:
                tampered.append(rel)
        if readonly:
            try:
                tracked = [
                    core.repo.repo_path(r) for r in readonly if core.repo.is_tracked(core.repo.repo_path(r))
                ]
                tampered += self.restore_with_copies(pending.run_id, commit, tracked)
            except SessionError:
                pass
        planted = new_files(core.root, list(core.config.readonly_files), core.state.readonly_hashes)
        if planted:
            tampered += self.move_aside(pending.run_id, planted)
        tampered += core.own.restore()
        return tampered

    def move_aside(self, run_id: str, paths: list[str]) -> list[str]:
        """Files the run created below a read-only directory (they were not there before it: the check before
        every run refuses new ones) go to .autoresearch/tampered/<run_id>/, so the evaluator never sees them."""
        root = self.core.root
        notes = []
        for rel in paths:
            try:
                aside = server_dir(root, "tampered", run_id, *Path(rel).parent.parts) / Path(rel).name
                os.replace(root / rel, aside)
                notes.append(f"{rel} (created by the run below a read-only directory; moved aside)")
            except OSError as exc:
                notes.append(
                    f"{rel} (created by the run below a read-only directory; could not be moved: {exc})"
                )
        return notes

    def restore_with_copies(self, run_id: str, commit: str, repo_paths: list[str]) -> list[str]:
        """Restore tracked paths to `commit`, each only once a copy of what it holds is kept. A path whose copy
        fails is left as it is and named (the returned notes): nothing of the user's is thrown away."""
        repo = self.core.repo
        failed = self.keep_copies(run_id, [repo.project_path(p) for p in repo_paths])
        repo.restore_paths(commit, [p for p in repo_paths if repo.project_path(p) not in failed])
        return [
            f"{rel} (NOT restored: no copy of it could be kept in .autoresearch/tampered/{run_id}/; look at it, "
            f"then git checkout -- {rel})"
            for rel in failed
        ]

    def keep_copies(self, run_id: str, paths: list[str]) -> list[str]:
        """Before restoring files a run changed, keep what they held: during a long run the change may be the
        user's own edit, and nothing of the user's is ever thrown away. Returns the paths whose copy failed.
        Only regular files hold content; the copies go only into real directories of the server's."""
        root = self.core.root
        failed: list[str] = []
        for rel in paths:
            source = root / rel
            try:
                if not stat.S_ISREG(source.lstat().st_mode):
                    continue  # a symlink, a FIFO or a directory: no bytes of the user's to keep
            except FileNotFoundError:
                continue
            except OSError:
                failed.append(rel)
                continue
            try:
                directory = server_dir(root, "tampered", run_id, *Path(rel).parent.parts)
                copy_regular(source, directory / source.name)
            except (OSError, SessionError) as exc:
                log.warning("could not keep a copy of %s before restoring it: %s", rel, exc)
                failed.append(rel)
        return failed


@dataclass(frozen=True)
class Candidate:
    """The target's content about to run, once every rule before a run holds."""

    description: str
    data: bytes
    is_baseline: bool
    earlier: Row | None  # the logged run that measured this content before


def candidate(
    core: SessionCore, editor: Editor, description: str, parent: str, in_flight: int = 0
) -> Candidate:
    """Every rule a run must meet before it starts, single or in a slot: a description; the session's budgets
    (`refuse_past_budget`: the runs in flight count too); the target still a regular file; read-only files unchanged; no other tracked file
    changed; the first run the unmodified baseline, every later one a change of the target against `parent`."""
    description = one_line(description or "", MAX_DESCRIPTION)
    if not description:
        raise RuleViolation("description is empty; say in a few words what this experiment changes")
    core.check_head()
    refuse_past_budget(core.state, len(core.journal), in_flight)
    editor.target_path(must_exist=True)
    core.check_readonly()
    changed = [core.repo.project_path(p) for p in core.repo.changed_tracked_files()]
    others = [p for p in changed if p != core.target_rel]
    if others:
        raise RuleViolation(
            "files other than the target differ from the best kept commit: "
            + ", ".join(others[:20])
            + f". Only {core.target_rel} may change, and no tool of this server writes other files: "
            + "a person must restore them (git checkout -- "
            + " ".join(others[:20])
            + ")"
        )
    data = read_regular(editor.target_path())  # a FIFO there cannot block the lock
    if core.plain_target:
        # Compared with the parent's content, not the index: after a decision the index may still lag.
        target_changed = data != core.repo.show_file(parent, core.target_repo_path)
    else:  # git converts this file on its way in: only git can say whether it changed
        target_changed = core.target_rel in changed
    is_baseline = core.state.best is None
    if is_baseline and target_changed:
        raise RuleViolation(
            f"the first run of a session must be the unmodified baseline, but {core.target_rel} was "
            "edited; undo the edit with apply_edit (the baseline is the file as committed), run the "
            "baseline, then experiment"
        )
    if not is_baseline and not target_changed:
        raise RuleViolation(
            f"{core.target_rel} is unchanged since the best kept commit; edit it (apply_edit) first"
        )
    earlier = core.journal.measured(sha256_bytes(data)) if not is_baseline else None
    return Candidate(description, data, is_baseline, earlier)


def new_run(
    core: SessionCore, editor: Editor, description: str, parent: str, rerun: bool, in_flight: int = 0
) -> tuple[Pending, bytes] | AlreadyMeasured:
    """A run about to start, whatever its placement: every rule before a run (`candidate`), no twin of a run
    in flight, no content measured before unless `rerun`; then its id and its record (not yet in the state).
    Returns the record and the candidate's content, or the earlier run that measured this content."""
    found = candidate(core, editor, description, parent, in_flight)
    content_sha = sha256_bytes(found.data)
    twin = next(
        (p for p in core.state.inflight if p.target_sha256 == content_sha and not p.is_baseline), None
    )
    if twin is not None and not found.is_baseline:
        raise RuleViolation(
            f"this content is already in flight as {twin.run_id}; edit the target to try another idea"
        )
    if found.earlier is not None and not rerun:
        return AlreadyMeasured(found.earlier.run_id)
    core.state.run_counter += 1
    pending = Pending(
        run_id=f"r{core.state.run_counter}",
        description=found.description,
        parent_commit=parent,
        parent_run=parent_node(core, parent),
        is_baseline=found.is_baseline,
        nonblank_lines=nonblank_lines(found.data.decode("utf-8", errors="replace")),
        target_sha256=content_sha,
        started_at=datetime.now().isoformat(timespec="seconds"),
        rerun_of=found.earlier.run_id if found.earlier is not None else None,
    )
    return pending, found.data


def parent_node(core: SessionCore, commit: str) -> str | None:
    """The run id of the node a candidate built on `commit` starts from: the best, as the greedy loop has it
    (None: the baseline)."""
    best = core.state.best
    return best.run_id if best is not None and best.commit == commit else None


@dataclass(frozen=True)
class AlreadyMeasured:
    """run_experiment on content measured before in this session: nothing ran; the earlier run answers."""

    run_id: str


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
