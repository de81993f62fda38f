"""Tool schemas that every MCP client can read, and argument types that arrive as the client meant them.

Seen with real clients: the TypeScript SDK 1.22.0 (and clients built on it) lists no tools when an output
schema holds a `$ref` into `$defs`; Gemini's function declarations have no `anyOf`, Cursor has rejected
nullable unions, Codex keeps neither `default` nor `minimum`. So tools publish self-contained schemas, and an
optional argument is published as its plain type with its default written in its description.

The SDK JSON-decodes string arguments before validation unless the parameter's type is exactly `str`: text
parameters are typed `str` here (an omitted or null value still arrives as None), so a file's content that is
itself JSON (`{"lr": 0.1}`, `null`) stays text.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, Field, WithJsonSchema, WrapValidator

DEFS = "#/$defs/"

# A default that type checkers accept for a parameter typed `str` (the SDK needs that type, see above): the
# function receives None when the client leaves the argument out.
UNSET: Any = None


def _none_passes(value: Any, handler: Any) -> Any:
    """An explicit null is accepted as "not given", as an omitted argument is."""
    return None if value is None else handler(value)


def _no_null_default(schema: dict[str, Any]) -> None:
    """`"default": null` contradicts a plain type; the default is written in the description instead."""
    if "default" in schema and schema["default"] is None:
        del schema["default"]


NO_NULL_DEFAULT = Field(json_schema_extra=_no_null_default)

# Optional arguments, published as plain JSON types.
OptionalText = Annotated[
    str, WrapValidator(_none_passes), WithJsonSchema({"type": "string"}), NO_NULL_DEFAULT
]


def at_most(max_chars: int) -> Any:
    """Metadata for an optional text argument of at most `max_chars` characters (published as `maxLength`):
    the engine echoes some arguments in its messages, and no answer should repeat megabytes back."""

    def check(value: Any, handler: Any) -> Any:
        text = None if value is None else handler(value)
        if text is not None and len(text) > max_chars:
            raise ValueError(f"at most {max_chars} characters are accepted here; this is {len(text)}")
        return text

    return WrapValidator(check), WithJsonSchema({"type": "string", "maxLength": max_chars}), NO_NULL_DEFAULT


def _null_is_false(value: Any, handler: Any) -> Any:
    """An explicit null for a flag is "not given": false, its default."""
    return False if value is None else handler(value)


# A flag that defaults to false, published as a plain boolean (null accepted as not given).
OptionalFlag = Annotated[bool, WrapValidator(_null_is_false), WithJsonSchema({"type": "boolean"})]


def _a_number(value: Any, handler: Any) -> Any:
    """A number, never a boolean nor NaN or infinity: pydantic reads `true` as 1 (start_session(max_experiments=
    true) set a budget of one experiment, which the agent can never raise again), and JSON-RPC over stdio
    carries `NaN` and `Infinity`."""
    if isinstance(value, bool):
        raise ValueError(f"{str(value).lower()} is a boolean, not a number: give a number, or leave it out")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number: give a finite number, or leave it out")
    return handler(value)


OptionalInt = Annotated[
    Annotated[int, WrapValidator(_a_number)] | None, WithJsonSchema({"type": "integer"}), NO_NULL_DEFAULT
]
OptionalNumber = Annotated[
    Annotated[float, WrapValidator(_a_number)] | None, WithJsonSchema({"type": "number"}), NO_NULL_DEFAULT
]


# Bounds on arguments the engine echoes in its messages, so no answer repeats megabytes back to the agent.
MAX_RUN_ID_CHARS = 100
RunIdText = Annotated[str, *at_most(MAX_RUN_ID_CHARS)]
ShaText = Annotated[str, *at_most(200)]


class EditOp(BaseModel):
    old_text: str = Field(description="Exact text to replace; must occur exactly once in the target.")
    new_text: str = Field(description="Replacement text (may be empty to delete).")


# `edits`, published as a plain array of inline objects (no $ref, no null).
EditList = Annotated[
    list[EditOp] | None,
    WithJsonSchema({"type": "array", "maxItems": 200, "items": EditOp.model_json_schema()}),
    NO_NULL_DEFAULT,
]

# How a group of tools is registered on the server (`server.create_server`'s `tool`).
Register = Callable[..., Callable[[Callable[..., Any]], Callable[..., Any]]]


def self_contained(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with every local `$ref` replaced by a copy of its definition, and no `$defs` left."""
    defs = schema.get("$defs", {})

    def inline(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [inline(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str):
            name = ref.removeprefix(DEFS)
            if not ref.startswith(DEFS) or name not in defs:
                raise ValueError(f"cannot inline {ref}: only local #/$defs/ references are supported")
            if name in seen:
                raise ValueError(f"cannot inline {ref}: the type is recursive")
            siblings = {key: value for key, value in node.items() if key != "$ref"}
            return inline({**defs[name], **siblings}, (*seen, name))
        return {key: inline(value, seen) for key, value in node.items() if key != "$defs"}

    return inline(schema, ())
