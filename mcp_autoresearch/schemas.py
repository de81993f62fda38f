"""Tool schemas that every MCP client can read.

Seen with real clients: the TypeScript SDK 1.22.0 (and clients built on it) lists no tools when an output
schema holds a `$ref` into `$defs`; Gemini CLI 0.15 failed the same way, and older Codex read a `$ref`
argument as a string. So tools publish self-contained schemas.
"""

from __future__ import annotations

from typing import Any

DEFS = "#/$defs/"


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
