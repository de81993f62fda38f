"""The MCP adapter: tools, prompt and resources mapped onto the engine (`session.Workspace`).

Nothing here decides anything: it validates arguments (through the signatures), calls the engine, turns
engine refusals into `ToolError`s the agent reads, and turns a long run into progress notifications.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, TypeVar

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field, WithJsonSchema

from .. import __version__
from ..errors import AutoresearchError
from ..models import DecisionResult, EditResult, NotesResult, QueryResult, StartResult, TargetView
from ..records.atomic import REFUSED_ERRNOS
from ..records.diskspace import no_room
from ..session.queries import MAX_NOTES, MAX_RUN_NOTES, MAX_RUN_NOTES_CHARS
from ..session.workspace import Workspace
from ..setup.project import ProjectInfo
from ..statuses import FILTERS
from ..terminal_text import printable
from .portable_server import PortableServer
from .resources import prompt_and_resources
from .result_text import tool_result
from .run_tools import run_tools
from .schemas import (
    MAX_RUN_ID_CHARS,
    UNSET,
    EditList,
    OptionalFlag,
    OptionalInt,
    OptionalNumber,
    OptionalText,
    Register,
    RunIdText,
    ShaText,
    at_most,
)
from .tree_tools import tree_tools

log = logging.getLogger("mcp_autoresearch")

INSTRUCTIONS = """\
autoresearch runs an experiment loop on this project with its rules enforced by the server.
Setup: detect_project, then start_session, then run the unmodified baseline (run_experiment + commit_or_reset).
Loop forever: read_target -> apply_edit (only the target file can change) -> run_experiment (the server commits
the candidate, runs it, and measures the metric itself) -> commit_or_reset (the server keeps it only if the metric
improved, else reverts) -> log_result (your hypothesis and what you learned). query_results shows the table.
If run_experiment returns status 'running', poll with wait_experiment. One call per experiment does the same:
run_experiment(description, edits=[...], decide=true) makes the edit, runs it and decides it (the decision in
`decided`). The prompt 'loop' has the full program.
"""

T = TypeVar("T")
TagText = Annotated[str, *at_most(200)]  # the engine's own rule (at most 64 characters) explains itself below
# query_results' filter, published as an enum of the statuses a logged row can have.
StatusFilter = Annotated[OptionalText, WithJsonSchema({"type": "string", "enum": list(FILTERS)})]


def _engine_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Engine refusals become ToolErrors with their message; anything unexpected is logged, and the agent gets
    one line instead of a hidden error."""

    def convert(exc: Exception) -> ToolError:
        if isinstance(exc, AutoresearchError):
            return ToolError(str(exc))
        if no_room(exc):  # not a bug: the user's disk is full
            return ToolError(
                f"the disk holding the project is full ({exc}): free space, then call {fn.__name__} again"
            )
        if refused_write(exc):  # not a bug: a file's permissions or flags were changed under the server
            assert isinstance(exc, OSError)
            return ToolError(
                f"the file system refused to change {printable(str(exc.filename2 or exc.filename))} "
                f"({exc.strerror}): a file or "
                "folder of the project (or of .git, .autoresearch) was made read-only or immutable (chmod, "
                "chattr +i: a run with isolation off can); a person must give it back its permissions "
                f"(chmod u+w, chattr -i), then call {fn.__name__} again"
            )
        log.exception("unexpected error in %s", fn.__name__)
        return ToolError(f"internal error ({type(exc).__name__}: {exc}); the server log has the details")

    if _is_async(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return tool_result(await fn(*args, **kwargs))  # type: ignore[misc]
            except ToolError:
                raise
            except Exception as exc:
                raise convert(exc) from None

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return tool_result(fn(*args, **kwargs))
        except ToolError:
            raise
        except Exception as exc:
            raise convert(exc) from None

    return wrapper


def refused_write(exc: BaseException) -> bool:
    """A file operation refused by permissions, flags or a read-only mount (not a bug of the server's)."""
    return isinstance(exc, OSError) and exc.filename is not None and exc.errno in REFUSED_ERRNOS


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn)


def _annotations(read_only: bool, destructive: bool = False, idempotent: bool = False) -> ToolAnnotations:
    return ToolAnnotations(
        read_only_hint=read_only,
        destructive_hint=destructive,
        idempotent_hint=idempotent,
        open_world_hint=False,
    )


def create_server(workspace: Workspace) -> MCPServer:
    @asynccontextmanager
    async def lifespan(_server: MCPServer) -> AsyncIterator[Workspace]:
        try:
            yield workspace
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(workspace.shutdown)

    server = PortableServer(
        "autoresearch", version=__version__, instructions=INSTRUCTIONS, lifespan=lifespan, log_level="WARNING"
    )
    server.leaving = threading.Event()
    server.interrupt = workspace.interrupt

    def tool(
        read_only: bool, destructive: bool = False, idempotent: bool = False
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register a tool: engine errors become ToolErrors; the docstring, dedented, is the description."""

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            server.tool(
                description=inspect.cleandoc(fn.__doc__ or ""),
                annotations=_annotations(read_only, destructive, idempotent),
            )(_engine_errors(fn))
            return fn

        return register

    _session_tools(tool, workspace)
    run_tools(tool, workspace, server.leaving)
    _decision_tools(tool, workspace)
    tree_tools(tool, workspace)
    prompt_and_resources(server, workspace)
    return server


def _session_tools(tool: Register, workspace: Workspace) -> None:
    """detect_project, start_session, read_target, apply_edit."""

    @tool(read_only=True, idempotent=True)
    def detect_project() -> ProjectInfo:
        """What the server understood of the project: type, the single target file, how an experiment runs,
        which metric decides and in which direction, read-only files, and where each setting came from."""
        return workspace.detect()

    @tool(read_only=False)
    def start_session(
        tag: Annotated[
            TagText,
            Field(
                description="Session name; the branch is autoresearch/<tag>. Default: the session whose branch "
                "is checked out, else today's month and day (e.g. nov26)."
            ),
        ] = UNSET,
        max_experiments: Annotated[
            OptionalInt,
            Field(
                description="The session's experiment budget: no run starts once this many are logged or in "
                "flight. Sets or lowers the session's budget (never raises it: a person does, in the "
                "configuration); kept across restarts. Default: the budget in force stays (the configuration's, "
                "or one set before).",
                ge=1,
            ),
        ] = None,
        max_hours: Annotated[
            OptionalNumber,
            Field(
                description="The session's wall-clock budget in hours from its start: no run starts after it. "
                "Sets or lowers the session's budget (never raises it: a person does, in the configuration); "
                "kept across restarts. Default: the budget in force stays (the configuration's, or one set "
                "before).",
                gt=0,
            ),
        ] = None,
    ) -> StartResult:
        """Start or resume an experiment session on branch autoresearch/<tag>. Refuses when tracked files have
        uncommitted changes. Creates results.tsv and the JSONL log. A resumed session returns its briefing.
        Called again with max_experiments or max_hours, it lowers the session's budget."""
        budget = {"max_experiments": max_experiments, "max_hours": max_hours}
        return workspace.start_session(tag, {k: v for k, v in budget.items() if v is not None})

    @tool(read_only=True, idempotent=True)
    def read_target(
        start_line: Annotated[
            OptionalInt, Field(description="First line to return, 1-based (default: 1).", ge=1)
        ] = None,
        end_line: Annotated[
            OptionalInt, Field(description="Last line to return, inclusive (default: the last line).", ge=0)
        ] = None,
    ) -> TargetView:
        """Read the target file (the only file experiments may change), whole or a line range, with its sha256."""
        return workspace.session.read_target(start_line, end_line)

    @tool(read_only=False)
    def apply_edit(
        edits: Annotated[
            EditList,
            Field(
                description="Exact replacements, applied in order: a list of {old_text, new_text} objects "
                "(at most 200); each old_text must occur exactly once in the target. Default: none; give "
                "either edits or content.",
                max_length=200,
            ),
        ] = None,
        content: Annotated[
            OptionalText,
            Field(
                description="The whole new content of the target file, as text (JSON or YAML content is "
                "written as given). Default: none; give either edits or content."
            ),
        ] = UNSET,
        path: Annotated[
            OptionalText,
            Field(description="The target file's path (default: the target). No other file can be edited."),
        ] = UNSET,
        expected_sha256: Annotated[
            ShaText,
            Field(
                description="sha256 from read_target; the edit is refused if the file changed since "
                "(default: no check)."
            ),
        ] = UNSET,
    ) -> EditResult:
        """Change the target file: either `edits`, a list of exact replacements each given as
        {"old_text": ..., "new_text": ...}, or `content`, the whole new file. Only the configured target can be
        written; the write is atomic. Returns the diff."""
        ops = [op.model_dump() for op in edits] if edits is not None else None
        return workspace.session.apply_edit(ops, content, path, expected_sha256)


def _decision_tools(tool: Register, workspace: Workspace) -> None:
    """commit_or_reset, log_result, query_results."""

    @tool(read_only=False, destructive=True)
    def commit_or_reset(
        run_id: Annotated[
            RunIdText,
            Field(description="The run to decide (default: the run waiting for its decision)."),
        ] = UNSET,
        discard: Annotated[
            OptionalFlag,
            Field(description="Discard even if it improved (default: false). A keep can never be forced."),
        ] = False,
    ) -> DecisionResult:
        """Decide the finished run from the server's own measurement: keep (the branch advances) when the
        metric improved by more than min_delta, or is equal and the target got simpler; otherwise discard (the
        target goes back to the best kept commit; the idea stays under refs/autoresearch/). Logs the row."""
        return workspace.session.commit_or_reset(run_id, discard)

    @tool(read_only=False)
    def log_result(
        run_id: Annotated[
            str, Field(description="A decided experiment's run_id.", max_length=MAX_RUN_ID_CHARS)
        ],
        notes: Annotated[
            str,
            Field(
                description=f"Hypothesis and what the result taught you (a few lines): at most {MAX_NOTES} "
                f"characters per call, {MAX_RUN_NOTES} notes and {MAX_RUN_NOTES_CHARS} characters per experiment.",
                max_length=MAX_NOTES,
            ),
        ],
    ) -> NotesResult:
        """Attach your notes to a logged experiment (JSONL and query_results). Values and statuses cannot change.
        Answers with the note added and the room the experiment's notes have left."""
        return workspace.session.log_notes(run_id, notes)

    @tool(read_only=True, idempotent=True)
    def query_results(
        status: Annotated[
            StatusFilter,
            Field(
                description="Only rows with this status: a decision (keep, discard, crash) or how the run "
                "ended (ok, timeout, metric_error, ...). Default: every row. Not used with view='tree'."
            ),
        ] = UNSET,
        limit: Annotated[int, Field(description="Rows to return, 1-500 (default: 20).", ge=1, le=500)] = 20,
        order: Annotated[
            Literal["recent", "best"],
            Field(description="'recent' (newest first) or 'best' (best value first). Default: recent."),
        ] = "recent",
        view: Annotated[
            Literal["rows", "tree"],
            Field(
                description="'rows' (the results table) or 'tree' (the research tree: the best lineage, the "
                "frontier of kept nodes not built on yet, near-misses, dead ends, and the newest `limit` "
                "nodes). Default: rows."
            ),
        ] = "rows",
    ) -> QueryResult:
        """The session's results: counts, baseline, best, improvement, streak, and the rows (or the tree)."""
        return workspace.session.query(status, limit, order, view)
