"""The checks of the user's tree after a run: git's files and refs, the session branch, tracked and read-only files,
files planted below read-only directories, the server's own files. Whatever a run changed is restored, after a
copy of it is kept in `.autoresearch/tampered/<run_id>/` (nothing of the user's is ever thrown away). A single run
is checked here; a slot run is checked in its slot (`slot_checks`) and then here, with the same helpers."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from ..errors import SessionError
from ..records.atomic import copy_regular, unused_path
from ..records.state import Pending, server_dir
from ..session.context import SessionCore
from ..setup.single_file import changed_fingerprints, new_files, sha256_file
from ..vcs.planted import GitWatch
from ..vcs.unfinished import switch_problem

log = logging.getLogger("mcp_autoresearch")


class TreeChecks:
    """What a run changed in the user's tree that it must not, each restored (a copy kept)."""

    def __init__(self, core: SessionCore) -> None:
        self.core = core
        self.git_watch = GitWatch(core.repo, core.root, core.state.branch, core.state.tag)
        self.git_notes: list[str] = []  # what a restart found changed in git's files before git ran again

    def verify_after_run(self, pending: Pending, watch: GitWatch | None = None) -> list[str]:
        """After a single run: what it changed that it must not, each restored to the commit that ran (the
        server's logs from the JSONL). `watch`: git's files as the run found them (None after a restart: the
        digests in its record; what the restart found is reported first)."""
        found, self.git_notes = self.git_notes, []
        return self.check(pending, watch, pending.commit or pending.parent_commit, True, found)

    def check(
        self,
        pending: Pending,
        watch: GitWatch | None,
        head: str,
        ran_here: bool,
        found: list[str] | None = None,
    ) -> list[str]:
        """What a run changed in the user's tree that it must not: git's configuration and refs, the session
        branch (at `head`), tracked files, read-only files, the server's own logs; each restored. `ran_here`:
        the run ran in this tree, so the target holds its candidate (else, with slots, the agent's next edit)."""
        core = self.core
        watch = watch or self.git_watch
        by = "the run" if ran_here else "a run"
        tampered = list(found or [])
        try:
            # First, before git runs again: configuration, attributes and refs as the run found them.
            tampered += watch.after_run(pending.git_config, pending.refs_digest, head, pending.run_id)
            if core.repo.current_branch() != core.state.branch:
                problem = switch_problem(core.repo, core.state.branch)
                if problem is None:
                    tampered.append(f"HEAD (switched to {core.repo.current_branch() or 'a detached commit'})")
                    core.repo.checkout_branch(core.state.branch)
                else:  # a person's commits on a detached HEAD, or their rebase: never left behind
                    tampered.append(f"HEAD (left as it is: {problem})")
            moved = core.repo.resolve_branch(core.state.branch)
            if moved != head:
                # A person's commit there is put back too: named, so it is never only in the reflog.
                tampered.append(
                    f"the session branch (moved by {by} to {moved[:12]}, put back: "
                    f"`git branch NAME {moved[:12]}` keeps what it held)"
                )
                undo = f"{pending.run_id}'s move" if ran_here else f"a move during {pending.run_id}"
                core.repo.move_branch(core.state.branch, head, f"autoresearch: undo {undo}")
            index_same = watch.index_unchanged()  # else the run (or its git) wrote the index
            hidden = [] if index_same else core.repo.hidden_tracked_files()
            hidden = [p for p in hidden if p not in core.state.hidden_paths]
            if hidden:  # flags that blind git status to these files: cleared, so status sees them again
                tampered.append("index flags hiding " + ", ".join(map(core.repo.project_path, hidden)))
                core.repo.reveal(hidden)
            changed = self._changed_tracked(pending, ran_here)
            if changed:
                tampered += [core.repo.project_path(p) for p in changed]
                tampered += self.restore_with_copies(pending.run_id, head, changed)
        except SessionError as exc:
            tampered.append(f"git state ({exc})")
        readonly = changed_fingerprints(core.root, core.state.readonly_hashes)
        tampered += [rel for rel in readonly if rel not in tampered]
        if readonly:
            try:
                tracked = [
                    core.repo.repo_path(r) for r in readonly if core.repo.is_tracked(core.repo.repo_path(r))
                ]
                tampered += self.restore_with_copies(pending.run_id, head, tracked)
            except SessionError:
                pass
        planted = new_files(core.root, list(core.config.readonly_files), core.state.readonly_hashes)
        if planted:
            tampered += self.move_aside(pending.run_id, planted)
        tampered += core.own.restore()
        return tampered

    def _changed_tracked(self, pending: Pending, ran_here: bool) -> list[str]:
        """Tracked files changed (repository paths). The target is the run's candidate when it ran here,
        compared by content whatever git status says; else it holds the agent's edit, which is no run's doing."""
        core = self.core
        changed = core.repo.changed_tracked_files()
        if not ran_here:
            return [p for p in changed if p != core.target_repo_path]
        target_same = sha256_file(core.root / core.target_rel) == pending.target_sha256
        if core.target_repo_path in changed and pending.target_sha256 and target_same:
            changed.remove(core.target_repo_path)  # only the index lags behind the committed target
        elif core.target_repo_path not in changed and pending.target_sha256 and not target_same:
            changed.append(core.target_repo_path)  # compared by content, whatever git status says
        return changed

    def move_aside(self, run_id: str, paths: list[str]) -> list[str]:
        """Files the run created below a read-only directory (they were not there before it: the check before
        every run refuses new ones) go to .autoresearch/tampered/<run_id>/, so the evaluator never sees them."""
        root = self.core.root
        notes = []
        for rel in paths:
            try:
                aside = unused_path(
                    server_dir(root, "tampered", run_id, *Path(rel).parent.parts), Path(rel).name
                )
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
                copy_regular(source, unused_path(directory, source.name))
            except (OSError, SessionError) as exc:
                log.warning("could not keep a copy of %s before restoring it: %s", rel, exc)
                failed.append(rel)
        return failed
