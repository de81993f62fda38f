"""The checks after a run in a slot: its slot (tracked files, by git and by content for the read-only ones;
files planted below read-only directories), the idle slots when runs are not confined, and the user's tree as
after a single run (git's files and refs, tracked and read-only files, the server's own files), each restored."""

from __future__ import annotations

from ..errors import SessionError
from ..phases import in_flight
from ..records.state import Pending
from ..session.context import SessionCore
from ..setup.single_file import changed_fingerprints, new_files
from ..vcs.checkouts import Checkouts
from ..vcs.planted import GitWatch
from .tree_checks import TreeChecks


class SlotChecks:
    def __init__(self, core: SessionCore, checkouts: Checkouts, tree: TreeChecks, slots: int) -> None:
        self.core = core
        self.checkouts = checkouts
        self.tree = tree  # the user's tree is checked as after a single run
        self.slots = slots
        self._readonly: dict[str, str | None] | None = None
        # Unconfined, what one run's check finds may be the doing of any run in flight at the time: each of them
        # is held to it too when it ends (run id -> what was found), so the run that did it is never kept.
        self._suspected: dict[str, list[str]] = {}

    def after_run(self, pending: Pending, watch: GitWatch | None) -> list[str]:
        """What the run changed that it must not: in its slot (tracked files; files below read-only
        directories), and in the user's tree, as after a single run. Caller holds the lock."""
        core = self.core
        tampered: list[str] = []
        found_during = self._suspected.pop(pending.run_id, [])
        own = range(self.slots) if pending.is_baseline else [pending.slot or 0]
        for slot in own:
            if not self.checkouts.top(slot).is_dir():
                continue
            try:
                tampered += [f"{rel} (in slot {slot})" for rel in self.checkouts.changes(slot)]
                tampered += [
                    f"{rel} (the link to the shared input replaced in slot {slot})"
                    for rel in self.checkouts.replaced_links(slot)
                ]
            except SessionError as exc:
                tampered.append(f"slot {slot} ({exc})")
            project = self.checkouts.project(slot)
            # By content, whatever the slot's index says: the read-only files the checkout holds.
            changed = changed_fingerprints(project, self._tracked_readonly())
            tampered += [
                f"{rel} (in slot {slot})" for rel in changed if f"{rel} (in slot {slot})" not in tampered
            ]
            planted = new_files(project, list(core.config.readonly_files), core.state.readonly_hashes)
            tampered += [f"{rel} (created below a read-only directory in slot {slot})" for rel in planted]
        # Unconfined, idle slots (no other run in them now) must be as their last run left them: a change there
        # is this run's doing, and is undone at once. (Confined, a run cannot write there; every slot is put
        # back before each of its runs either way.)
        others = {p.slot for p in core.state.inflight if p is not pending and in_flight(p)}
        for slot in range(self.slots) if not core.isolation.confined else []:
            if (
                slot in own
                or slot in others
                or any(p.is_baseline and p is not pending for p in core.state.inflight)
            ):
                continue
            if self.checkouts.top(slot).is_dir() and self.checkouts.index_exists(slot):
                try:
                    tampered += [f"{rel} (in another slot, {slot})" for rel in self.checkouts.restore(slot)]
                except SessionError as exc:
                    tampered.append(f"slot {slot} ({exc})")
        tampered += self._user_tree(pending, watch)
        self.suspect(tampered, f"when {pending.run_id} ended", pending)
        return tampered + found_during

    def guard_own(self) -> None:
        """Before a step that writes while runs are in flight: the server's own files are put back, and, when
        runs are not confined, what was found is held against each run in flight (one of them did it)."""
        changed = self.core.own.restore()
        if changed:
            self.core.recovered.append("restored files written outside the server: " + ", ".join(changed))
            self.suspect(changed, "between runs")

    def suspect(
        self,
        found: list[str],
        when: str,
        finished: Pending | None = None,
        always: bool = False,
        only: Pending | None = None,
    ) -> None:
        """Unconfined, a change found now may be the doing of any run in flight: each is held to it when it ends.
        (`always`: confined or not; `only`: that run alone.)"""
        if not found or (self.core.isolation.confined and not always):
            return
        for other in [only] if only is not None else self.core.state.inflight:
            if other is not finished and in_flight(other):
                self._suspected.setdefault(other.run_id, []).extend(
                    f"{note} (found {when}, while this run was in flight)" for note in found
                )

    def _tracked_readonly(self) -> dict[str, str | None]:
        """The read-only files git tracks (a slot's checkout holds exactly those), with their fingerprints."""
        if self._readonly is None:
            core = self.core
            self._readonly = {
                rel: digest
                for rel, digest in core.state.readonly_hashes.items()
                if core.repo.is_tracked(core.repo.repo_path(rel))
            }
        return self._readonly

    def _user_tree(self, pending: Pending, watch: GitWatch | None) -> list[str]:
        """The user's tree, at the best while slot runs are in flight, checked as after a single run."""
        state = self.core.state
        head = state.best.commit if state.best else state.base_commit
        return self.tree.check(pending, watch, head, ran_here=False)
