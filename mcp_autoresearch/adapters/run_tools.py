"""The run's MCP tools: run_experiment and wait_experiment (thin: the engine starts, waits for and decides a run),
with progress notifications while a run goes on."""

from __future__ import annotations

import threading
import time
from typing import Annotated, NamedTuple

import anyio
import anyio.lowlevel
from mcp.server.mcpserver import Context
from pydantic import Field

from ..errors import RuleViolation
from ..lifecycle.candidates import AlreadyMeasured
from ..models import EditResult, RunResult
from ..session.session import DEFAULT_WAIT_S, MAX_WAIT_S, Session, clamp_wait
from ..session.workspace import Workspace
from .schemas import UNSET, EditList, OptionalFlag, OptionalNumber, OptionalText, Register, RunIdText, ShaText

PROGRESS_EVERY_S = 2.0
QUICK_WAIT_S = 0.25  # run_experiment's own trip to a worker thread waits this long for its run to finish
WAIT_HELP = (
    f"Seconds to wait for the result before returning status 'running' (default {DEFAULT_WAIT_S:g}, "
    f"max {MAX_WAIT_S:g}; keep it under your client's request timeout)."
)
WaitSeconds = Annotated[OptionalNumber, Field(description=WAIT_HELP, ge=0)]


class Started(NamedTuple):
    """run_experiment's trip to a worker thread: the run started (or measured before), its result when it
    finished within `QUICK_WAIT_S` (else None), and by when the call must answer."""

    session: Session
    edit: EditResult | None
    started: str | AlreadyMeasured
    result: RunResult | None
    deadline: float


def run_tools(tool: Register, workspace: Workspace, leaving: threading.Event) -> None:
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
        wait_s: WaitSeconds = None,
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
        wait_s: WaitSeconds = None,
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
