"""The research tree's MCP tools: branch_from and combine (thin: the engine is `lifecycle/branching.py`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ..models import BranchResult
from ..session.workspace import Workspace
from .schemas import Register, at_most

RunText = Annotated[str, *at_most(100)]


def tree_tools(tool: Register, workspace: Workspace) -> None:
    """branch_from, combine."""

    @tool(read_only=False)
    def branch_from(
        run_id: Annotated[
            RunText,
            Field(description="A logged run (kept, discarded or crashed) whose target to start from."),
        ],
    ) -> BranchResult:
        """Put that run's target into the working tree and make that run the parent of the next candidate. The
        next run is judged against its parent with the session's keep rule: better, it is kept as a node; it
        becomes the best (the session branch moves) only if it is also better than the best. Refused while a
        run is in flight or waits for its decision in the working tree."""
        return workspace.session.branch_from(run_id)

    @tool(read_only=False)
    def combine(
        run_a: Annotated[RunText, Field(description="A logged run.")],
        run_b: Annotated[RunText, Field(description="Another logged run.")],
    ) -> BranchResult:
        """Three-way merge of two runs' targets (base: their nearest common ancestor's target) into the working
        tree; its parent is the better of the two. The next run_experiment measures it like any candidate, and
        its row lists both runs in `combined`. A conflict is an error naming the lines; nothing changes."""
        return workspace.session.combine(run_a, run_b)
