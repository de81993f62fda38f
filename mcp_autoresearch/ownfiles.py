"""The server's own files (session state, JSONL, results.tsv): written only by the server.

Their fingerprints are taken after each write of the server's; anything else that wrote them (a run, or the
agent's shell between two calls) is undone from what the server knows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from .journal import RESULTS_TSV, Journal
from .state import state_fingerprint

log = logging.getLogger("mcp_autoresearch")


class OwnFiles:
    def __init__(
        self,
        root: Path,
        tag: str,
        journal: Journal,
        jsonl_rel: str,
        save: Callable[[], None],
        recovered: list[str],
    ) -> None:
        self.root = root
        self.tag = tag
        self.journal = journal
        self.jsonl_rel = jsonl_rel  # as configured, for messages
        self._save = save  # writes the state again from memory
        self._recovered = recovered  # the session's report of what was repaired
        self._journal_prints = journal.fingerprints()
        self._state_print = state_fingerprint(root, tag)

    def journal_written(self) -> None:
        """The server appended to the journal: its new fingerprints are the expected ones."""
        self._journal_prints = self.journal.fingerprints()

    def state_written(self) -> None:
        self._state_print = state_fingerprint(self.root, self.tag)

    def guard(self) -> None:
        """Before every step that writes: undo outside writes to the server's files, and say so."""
        changed = self.restore()
        if changed:
            self._recovered.append("restored files written outside the server: " + ", ".join(changed))

    def restore(self) -> list[str]:
        """Undo outside writes to the server's files; returns the files that had been written."""
        changed: list[str] = []
        tsv_before, jsonl_before = self._journal_prints
        tsv_now, jsonl_now = self.journal.fingerprints()
        if jsonl_before is not None and jsonl_now != jsonl_before:
            changed.append(self.jsonl_rel)
            self._restore_jsonl(jsonl_before[0])
        if tsv_before is not None and tsv_now != tsv_before:
            changed.append(RESULTS_TSV)
            self.journal.reconcile_tsv()
        if self._state_print is not None and state_fingerprint(self.root, self.tag) != self._state_print:
            changed.append(f".autoresearch/sessions/{self.tag}.json")
            self._save()
        if changed:
            log.warning("restored files written outside the server: %s", ", ".join(changed))
        self.journal_written()
        return changed

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
