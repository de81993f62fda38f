"""The journal's index of the research tree: each row's parent node and whether its decision made it the best.

Compact (an array of row indices and a byte per row), so a tree of 100,000 rows costs a few hundred KB. Rows
written before the research tree name neither: their parent is the run that was best when they were logged
(the last kept row before them), and a kept row was the best.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import Any

NO_PARENT = -1  # the baseline
UNLOGGED_PARENT = -2  # a parent that is not a row of this session (its run id is kept apart)


class Unnamed:
    """A row written before rows named their parent node."""


UNNAMED = Unnamed()


class Lineage:
    """Each row's parent node (a row index) and best flag, by row index."""

    def __init__(self) -> None:
        self._parents = array("q")  # row index of each row's parent; NO_PARENT or UNLOGGED_PARENT
        self._unlogged: dict[int, str] = {}  # a parent that is not a row of this session, by row
        self._best = bytearray()  # 1: the row's decision made it the session's best

    def add(
        self,
        index: int,
        parent: str | None | Unnamed,
        best: bool,
        last_keep: int,
        index_of: Callable[[str], int | None],
    ) -> None:
        """Index row `index` (rows are added in order). An UNNAMED parent is the last kept row before it."""
        if isinstance(parent, Unnamed):
            self._parents.append(last_keep if last_keep >= 0 else NO_PARENT)
        elif parent is None:
            self._parents.append(NO_PARENT)
        else:
            found = index_of(parent)
            if found is None or found >= index:
                self._parents.append(UNLOGGED_PARENT)
                self._unlogged[index] = parent
            else:
                self._parents.append(found)
        self._best.append(1 if best else 0)

    def parent_index(self, index: int) -> int | None:
        """The row index of row `index`'s parent (None: the baseline, or a parent that is not logged)."""
        parent = self._parents[index]
        return parent if parent >= 0 else None

    def unlogged_parent(self, index: int) -> str | None:
        """The run id of a parent that is not a row of this session."""
        return self._unlogged.get(index)

    def best_at(self, index: int) -> bool:
        return bool(self._best[index])


def tree_keys(details: dict[str, Any], kept: bool) -> tuple[str | None | Unnamed, bool]:
    """A logged row's parent node and whether it became best, from its JSONL details; for a row written before
    the research tree, the parent is UNNAMED (the index knows it) and a kept row was the best."""
    parent = details.get("parent", UNNAMED)
    if not isinstance(parent, str | Unnamed):
        parent = None if parent is None else UNNAMED
    best = details.get("best")
    return parent, best if isinstance(best, bool) else kept
