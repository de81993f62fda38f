"""The MCP prompt (`loop`) and resources (results, briefing, config, plot) of the server."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Annotated, TypeVar

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError
from pydantic import Field

from ..errors import AutoresearchError
from ..session.workspace import Workspace
from .prompts import loop_prompt

MAX_FOCUS_CHARS = 200
T = TypeVar("T")


def _said(read: Callable[[], T]) -> Callable[[], T]:
    """A resource whose engine refusal (no session yet, an unreadable record) reaches the client as its message:
    the SDK replaces any other exception with 'Error reading resource' and logs a traceback."""

    @functools.wraps(read)
    def wrapper() -> T:
        try:
            return read()
        except AutoresearchError as exc:
            raise ResourceError(str(exc)) from None

    return wrapper


def prompt_and_resources(server: MCPServer, workspace: Workspace) -> None:
    """The `loop` prompt and the results, briefing and config resources (and the plot, when it can be drawn)."""

    @server.prompt(
        name="loop", description="The autonomous experiment loop: setup, rules, and the current briefing."
    )
    def loop(
        focus: Annotated[
            str | None,
            Field(
                description="Optional: one word naming an area to concentrate the ideas on (e.g. optimizer).",
                max_length=MAX_FOCUS_CHARS,
            ),
        ] = None,
    ) -> str:
        try:
            info = workspace.detect()
        except AutoresearchError as exc:
            return (
                f"The autoresearch server cannot run the loop yet: {exc}\n"
                "Ask the user to fix this (the configuration is read again on every call), then call "
                "detect_project to check, and follow the `loop` prompt again."
            )
        return loop_prompt(info, workspace.briefing(), focus)

    @server.resource(
        "autoresearch://results",
        name="results",
        mime_type="text/tab-separated-values",
        description="results.tsv of the current session.",
    )
    @_said
    def results_resource() -> str:
        session = workspace.session
        return session.journal.tsv_text()

    @server.resource(
        "autoresearch://briefing",
        name="briefing",
        mime_type="text/markdown",
        description="Summary of the session for a fresh agent.",
    )
    @_said
    def briefing_resource() -> str:
        return workspace.session.briefing()

    @server.resource(
        "autoresearch://config",
        name="config",
        mime_type="application/json",
        description="The effective configuration and where each value came from.",
    )
    @_said
    def config_resource() -> str:
        project = workspace.load()
        return json.dumps(
            {**project.config.model_dump(mode="json"), "config_source": project.info.config_source}, indent=2
        )

    _add_plot_resource(server, workspace)


def _add_plot_resource(server: MCPServer, workspace: Workspace) -> None:
    from ..readers.plot import plotting_available, render_png

    if not plotting_available():
        return

    @server.resource(
        "autoresearch://progress.png",
        name="progress.png",
        mime_type="image/png",
        description="Progress plot: discarded grey, kept green, running best.",
    )
    @_said
    def progress_png() -> bytes:
        session = workspace.session
        return render_png(session.journal.rows, session.state.metric_name, session.state.metric_direction)
