"""What an agent reads of a tool's result: compact JSON text beside the complete structured content."""

from __future__ import annotations

from typing import Any

from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel
from pydantic_core import to_json


def tool_result(result: Any) -> Any:
    """The text an agent reads is compact JSON without null fields (it costs context on every call), and a
    decision made in the same call (`decided`) says only what the run's own fields do not; the structured
    content stays complete and is validated against the tool's output schema by the SDK."""
    if isinstance(result, BaseModel):
        structured = result.model_dump(mode="json")
        if not isinstance(structured.get("decided"), dict):
            text = result.model_dump_json(exclude_none=True)
        else:
            # As model_dump_json writes it: inf and NaN as null (json.dumps wrote them as Infinity, not JSON)
            text = to_json(_without_repeats(structured), inf_nan_mode="null").decode()
        return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=structured)
    return result


# The run's fields a decision repeats under another name.
_SAME_AS = {"prev": "best_value"}


def _without_repeats(run: dict[str, Any]) -> dict[str, Any]:
    """A run's result for the agent's text: no null field, and its decision without what the run says already
    (the same value under the same name, or the run's name for it)."""
    top = {key: _no_nulls(value) for key, value in run.items() if value is not None and key != "decided"}
    decided = {
        key: value
        for key, value in run["decided"].items()
        if value is not None and top.get(_SAME_AS.get(key, key)) != value
    }
    return {**top, "decided": decided}


def _no_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: item for key, item in value.items() if item is not None}
    return value
