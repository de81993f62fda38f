"""The SDK's server as this project serves it: tool schemas every client reads (no `$ref`), lone surrogates
refused by name, a prompt asked for wrongly answered with what the prompts take, stdio on pipes from the event
loop (`stdio_pipes.py`), and SIGTERM ending the session as the end of its input does (the runs in flight ended
and logged before the server leaves)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp.types import Tool as MCPTool
from mcp_types import INVALID_PARAMS
from pydantic import ValidationError

from .schemas import self_contained
from .stdio_pipes import stdio_streams
from .surrogates import ScreenedReadStream, lone_surrogate_problem


class PortableServer(MCPServer):
    """Publishes self-contained tool schemas: pydantic's `$defs`/`$ref` (nested models such as `edits` and
    query_results' rows) are inlined, because some clients cannot resolve them and then list no tools at all
    (see schemas.py)."""

    # Set when the session ends (the end of input, or SIGTERM) before its calls are cancelled: a run whose call
    # is cancelled then was not given up by the client; the lifespan's end stops it and logs it as interrupted.
    leaving: threading.Event
    interrupt: Callable[[], None]  # cancels what runs inside a call (Workspace.interrupt)

    async def list_tools(self) -> list[MCPTool]:
        return [
            tool.model_copy(
                update={
                    "input_schema": self_contained(tool.input_schema),
                    "output_schema": self_contained(tool.output_schema) if tool.output_schema else None,
                }
            )
            for tool in await super().list_tools()
        ]

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        """Every tool refuses an argument holding a lone surrogate, naming it, before anything else reads it
        (it would fail later, unnamed: in a file write, a log line, or the reply)."""
        if problem := lone_surrogate_problem(arguments):
            raise ToolError(problem)
        return await super().call_tool(name, arguments, context)

    async def get_prompt(
        self, name: str, arguments: dict[str, Any] | None = None, context: Any = None
    ) -> Any:
        """An unknown prompt, an unknown argument or one too long is answered with what was wrong and what the
        prompts take: the SDK answered 'Internal server error' and logged a traceback."""
        try:
            return await super().get_prompt(name, arguments, context)
        except MCPError:
            raise
        except ValueError as exc:
            raise MCPError(INVALID_PARAMS, self._prompt_refusal(name, exc)) from None

    def _prompt_refusal(self, name: str, exc: ValueError) -> str:
        prompts = self._prompt_manager.list_prompts()
        takes = "; ".join(
            f"'{prompt.name}' ("
            + (
                ", ".join(
                    f"{arg.name}{'' if arg.required else ', optional'}: {arg.description}"
                    for arg in prompt.arguments or []
                )
                or "no arguments"
            )
            + ")"
            for prompt in prompts
        )
        if self._prompt_manager.get_prompt(name) is None:
            return f"no prompt is named {name[:100]!r}: the prompts are {takes}"
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, ValidationError):
            cause = cause.__cause__
        wrong = (
            "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in cause.errors()[:5])
            if isinstance(cause, ValidationError)
            else str(exc)
        )
        return f"prompt {name!r} was not given what it takes ({wrong}): the prompts are {takes}"

    def _leave(self) -> None:
        """The session ends (the end of input, or SIGTERM), before its calls are cancelled."""
        self.leaving.set()
        self.interrupt()  # a stage inside a call (the holdout) would hold the call, and the end, until it ends

    async def run_stdio_async(self) -> None:
        """The SDK's stdio transport, where a request holding a lone surrogate gets an answer instead of
        being dropped, and a reply holding one is still sent (see surrogates.py). SIGTERM (how a client ends a
        server that did not leave after its input ended) and SIGINT end the session as the end of input does: the
        runs in flight are ended and logged before the server leaves (a second SIGTERM kills it at once)."""
        async with stdio_streams() as (read_stream, write_stream), anyio.create_task_group() as tasks:
            tasks.start_soon(_end_on_sigterm, tasks.cancel_scope, self._leave)
            lowlevel = self._lowlevel_server  # what the SDK's own run_stdio_async serves
            await lowlevel.run(
                ScreenedReadStream(read_stream, write_stream, at_end=self._leave),
                write_stream,
                lowlevel.create_initialization_options(),
            )
            tasks.cancel_scope.cancel()


async def _end_on_sigterm(serving: anyio.CancelScope, leave: Callable[[], None]) -> None:
    """SIGTERM, and SIGINT (Ctrl-C) alike: otherwise Python's own SIGINT cancelled the serving task without
    `leave`, and a call waiting in a thread for its run (`wait_s`) held the server until that run ended."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            leave()  # first: the calls cancelled next leave their runs to the lifespan's end
            serving.cancel()  # the lifespan's end (shielded) ends and logs the runs in flight
            return
