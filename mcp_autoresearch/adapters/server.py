"""The MCP adapter: tools, prompt and resources mapped onto the engine (`session.Workspace`).

Nothing here decides anything: it validates arguments (through the signatures), calls the engine, turns
engine refusals into `ToolError`s the agent reads, and turns a long run into progress notifications.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, NamedTuple, TypeVar

import anyio
import anyio.lowlevel
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field, WithJsonSchema

from .. import __version__
from ..errors import AutoresearchError, RuleViolation
from ..lifecycle.candidates import AlreadyMeasured
from ..models import DecisionResult, EditResult, NotesResult, QueryResult, RunResult, StartResult, TargetView
from ..records.diskspace import no_room
from ..session.queries import MAX_NOTES, MAX_RUN_NOTES, MAX_RUN_NOTES_CHARS
from ..session.session import DEFAULT_WAIT_S, MAX_WAIT_S, Session, clamp_wait
from ..session.workspace import Workspace
from ..setup.project import ProjectInfo
from ..statuses import FILTERS
from .portable_server import PortableServer
from .resources import prompt_and_resources
from .result_text import tool_result
from .schemas import (
    NO_NULL_DEFAULT,
    UNSET,
    OptionalFlag,
    OptionalInt,
    OptionalNumber,
    OptionalText,
    at_most,
)
from .tree_tools import tree_tools

log = logging.getLogger("mcp_autoresearch")
PROGRESS_EVERY_S = 2.0
QUICK_WAIT_S = 0.25  # run_experiment's own trip to a worker thread waits this long for its run to finish


class Started(NamedTuple):
    """run_experiment's trip to a worker thread: the run started (or measured before), its result when it
    finished within `QUICK_WAIT_S` (else None), and by when the call must answer."""

    session: Session
    edit: EditResult | None
    started: str | AlreadyMeasured
    result: RunResult | None
    deadline: float


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
# Bounds on arguments the engine echoes in its messages, so no answer repeats megabytes back to the agent.
MAX_RUN_ID_CHARS = 100
RunIdText = Annotated[str, *at_most(MAX_RUN_ID_CHARS)]
TagText = Annotated[str, *at_most(200)]  # the engine's own rule (at most 64 characters) explains itself below
ShaText = Annotated[str, *at_most(200)]
WAIT_HELP = (
    f"Seconds to wait for the result before returning status 'running' (default {DEFAULT_WAIT_S:g}, "
    f"max {MAX_WAIT_S:g}; keep it under your client's request timeout)."
)


class EditOp(BaseModel):
    old_text: str = Field(description="Exact text to replace; must occur exactly once in the target.")
    new_text: str = Field(description="Replacement text (may be empty to delete).")


# `edits`, published as a plain array of inline objects (no $ref, no null).
EditList = Annotated[
    list[EditOp] | None,
    WithJsonSchema({"type": "array", "maxItems": 200, "items": EditOp.model_json_schema()}),
    NO_NULL_DEFAULT,
]
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
    _run_tools(tool, workspace, server.leaving)
    _decision_tools(tool, workspace)
    tree_tools(tool, workspace)
    prompt_and_resources(server, workspace)
    return server


Register = Callable[..., Callable[[Callable[..., Any]], Callable[..., Any]]]


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


def _run_tools(tool: Register, workspace: Workspace, leaving: threading.Event) -> None:
    """run_experiment and wait_experiment: start a run, wait for it with progress (`leaving`: set when the
    session ends, see PortableServer)."""

    def current_session() -> Session:
        return workspace.session

    async def _await_run(
        run_id: str | None,
        wait_s: float | None,
        ctx: Context,
        session: Session | None = None,
        decide: bool = False,
        deadline: float | None = None,
    ) -> RunResult:
        """The run's result within `wait_s` (or by `deadline`), with progress notifications meanwhile (with
        `decide`: decided once finished). Each trip to a worker thread waits up to the next progress report and,
        once the run finished, reads its result (and decides it) in the same trip: on a loaded machine every
        hand-over between threads waits for a CPU."""
        if (
            session is None
        ):  # the first call after a restart resumes the session (git, files): not on the loop
            session = await anyio.to_thread.run_sync(current_session)
        if deadline is None:
            deadline = time.monotonic() + clamp_wait(wait_s)
        handle = session.run_handle(run_id)
        # The run this call waits for, named once: a later lookup of "the run in flight" may find a newer one
        # (with slots a handle names no run: giving up on "any run" cancels none).
        run_id = run_id or (handle.run_id if handle is not None else None)

        def result() -> RunResult:
            assert session is not None
            return session.decided_view(run_id) if decide else session.view(run_id)

        def wait_then_view() -> RunResult | None:
            assert handle is not None
            if handle.wait(max(0.0, min(PROGRESS_EVERY_S, deadline - time.monotonic()))):
                return result()
            return None

        if handle is not None:
            try:
                # A cancel already pending (given during run_experiment's first trip, which cannot be
                # interrupted) cancels the run even when that trip used up the whole wait.
                await anyio.lowlevel.checkpoint()
                while deadline - time.monotonic() > 0:
                    finished = await anyio.to_thread.run_sync(wait_then_view, abandon_on_cancel=True)
                    if finished is not None:
                        return finished
                    progress = handle.progress()
                    await ctx.report_progress(progress.elapsed_s, progress.limit_s, progress.message)
            except anyio.get_cancelled_exc_class():
                if leaving.is_set():  # the session ends, not the client: the lifespan's end logs the run
                    raise
                session.cancel_run(
                    "the client cancelled the call waiting for this run (a request timeout?); "
                    "use a smaller wait_s and poll with wait_experiment",
                    run_id,
                )
                raise
        return await anyio.to_thread.run_sync(result)

    @tool(read_only=False, destructive=True)  # decide=true may reset the target, as commit_or_reset does
    async def run_experiment(
        description: Annotated[
            str, Field(description="What this experiment changes, in a few words.", max_length=2000)
        ],
        ctx: Context,
        wait_s: Annotated[OptionalNumber, Field(description=WAIT_HELP, ge=0)] = None,
        rerun: Annotated[
            OptionalFlag,
            Field(
                description="Measure this content again although it was measured before in this session "
                "(default false: the earlier result is returned and nothing runs)."
            ),
        ] = False,
        edits: Annotated[
            EditList,
            Field(
                description="Make this change first, as apply_edit would: exact replacements, applied in order, "
                "a list of {old_text, new_text} objects (at most 200), each old_text occurring exactly once in "
                "the target. Default: none (the target as it is); give at most one of edits or content.",
                max_length=200,
            ),
        ] = None,
        content: Annotated[
            OptionalText,
            Field(
                description="Make this the whole new content of the target first, as apply_edit would "
                "(default: none; give at most one of edits or content)."
            ),
        ] = UNSET,
        expected_sha256: Annotated[
            ShaText,
            Field(
                description="sha256 from read_target; with edits or content, the edit is refused and nothing "
                "runs if the target changed since (default: no check)."
            ),
        ] = UNSET,
        decide: Annotated[
            OptionalFlag,
            Field(
                description="Decide the run as soon as it finished, as commit_or_reset would (kept only if the "
                "rule says so), and answer with the decision in `decided` (default false: call "
                "commit_or_reset yourself). Still running when this call returns: wait_experiment(run_id, "
                "decide=true) decides it."
            ),
        ] = False,
    ) -> RunResult:
        """Run one experiment on the current target. The server checks that only the target changed, commits
        the candidate, runs the configured command under a hard timeout, and measures the metric itself (as
        many runs as the keep rule needs on a noisy metric). The first run of a session must be the unmodified
        baseline. Content measured before in the session returns the earlier result (nothing runs) unless
        rerun is true. Returns within wait_s: when the run takes longer the result has status 'running' (the
        run goes on); then call wait_experiment(run_id) until the status is no longer 'running'. Once the run
        is finished, call commit_or_reset. One call per experiment: `edits` (or `content`) makes the change
        first and `decide=true` decides the finished run, the decision in `decided`. With slots (configured by
        the user), it returns at once: the candidate runs in a slot of its own, the target holds the best again,
        and the next idea can be edited and started while it runs; wait_experiment() returns the first run to
        finish."""
        ops = [op.model_dump() for op in edits] if edits is not None else None

        def start() -> tuple[Session, EditResult | None, str | AlreadyMeasured]:
            session = current_session()  # resumes the session after a restart: not on the event loop
            if ops is None and content is None:
                if expected_sha256 is not None:
                    raise RuleViolation(
                        "expected_sha256 checks the target before an edit: give edits or content with it "
                        "(or leave it out to run the target as it is)"
                    )
                return session, None, session.start_run(description, rerun)
            return session, *session.edit_and_start_run(description, rerun, ops, content, expected_sha256)

        def start_and_wait() -> Started:
            """Start the run and, in the same trip to a worker thread, wait for it a little (`QUICK_WAIT_S`): a
            short run's result (decided, with `decide`) comes back without a second hand-over between threads."""
            session, edit, started = start()
            if isinstance(started, AlreadyMeasured):  # logged already: nothing ran, nothing to decide
                return Started(session, edit, started, session.view(started.run_id, True), 0.0)
            deadline = time.monotonic() + clamp_wait(session.start_wait(wait_s))
            handle = session.run_handle(started)
            quick = min(QUICK_WAIT_S, deadline - time.monotonic())
            if handle is not None and quick > 0 and handle.wait(quick):
                finished = session.decided_view(started) if decide else session.view(started)
                return Started(session, edit, started, finished, deadline)
            return Started(session, edit, started, None, deadline)

        # A cancel while this trip waits reaches the call in _await_run, which cancels the run. A run that finished
        # within the trip was decided as asked; the cancelled call answers nothing (wait_experiment reads it).
        begun = await anyio.to_thread.run_sync(start_and_wait)
        result = begun.result
        if result is None:
            assert isinstance(begun.started, str)
            result = await _await_run(begun.started, None, ctx, begun.session, decide, begun.deadline)
        return result.model_copy(update={"edit": begun.edit}) if begun.edit is not None else result

    @tool(read_only=False, destructive=True, idempotent=True)  # decide=true: as commit_or_reset (once)
    async def wait_experiment(
        ctx: Context,
        run_id: Annotated[
            RunIdText,
            Field(
                description="The run_id returned by run_experiment (default: with slots, whichever run in "
                "flight finishes first; else the run in flight)."
            ),
        ] = UNSET,
        wait_s: Annotated[OptionalNumber, Field(description=WAIT_HELP, ge=0)] = None,
        decide: Annotated[
            OptionalFlag,
            Field(
                description="Decide the run once it finished, as commit_or_reset would, the decision in "
                "`decided` (default false)."
            ),
        ] = False,
    ) -> RunResult:
        """Wait for a run that returned status 'running', and return its result (same shape as run_experiment).
        With slots and no run_id, returns the first run to finish (or one already waiting for its decision)."""
        return await _await_run(run_id or None, wait_s, ctx, decide=decide)


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
