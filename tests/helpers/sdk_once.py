"""Work the MCP SDK repeats for every client and every server, done once per test process when its inputs are
the same. The suite opens about 400 clients on about 400 servers in its workers, all over the same eleven tools;
these two repeats took a third of the workers' own CPU (py-spy on a worker, BENCHMARKS.md "The suite's CPU, once
more"). Nothing the server or the client decides is skipped: every call is validated and every result checked."""

from __future__ import annotations

import inspect
import json
from typing import Any

from jsonschema.validators import validator_for
from mcp.server.mcpserver.tools.base import Tool

BUILD_WITHOUT_CACHE = Tool.from_function  # the SDK's own (what the cache must build alike)


def check_each_schema_once() -> None:
    """`mcp.ClientSession` checks a tool's output schema against the JSON Schema metaschema the first time each
    client calls that tool (`_output_schema_validator`), before it compiles a validator for the results: about
    50 ms for run_experiment's schema, 0.24 s for all eleven. A schema found valid in this process is not checked
    again; every client still compiles its validator and checks every result, and an invalid schema is refused
    each time."""
    validator = validator_for({})  # the draft the client uses for a schema without "$schema"
    check = validator.check_schema
    valid: dict[str, Any] = {}  # the schemas found valid, by their JSON text

    def check_schema(schema: Any, *args: Any, **kwargs: Any) -> None:
        if args or kwargs:  # a format checker of the caller's: not the client's check
            return check(schema, *args, **kwargs)
        key = json.dumps(schema, sort_keys=True, default=repr)
        # Equal, not only the same text: a tuple, a non-string key or an object prints as a list, a string or its
        # repr, as a valid schema may (a client reads JSON from a server, which never holds them).
        if key in valid and valid[key] == schema:
            return
        check(schema)  # raises SchemaError on an invalid schema, which is never remembered
        valid[key] = json.loads(key)

    validator.check_schema = staticmethod(check_schema)  # type: ignore[method-assign]


def build_each_tool_once() -> None:
    """The SDK builds a tool's argument model and schemas with pydantic when a server registers it (about 5 ms a
    tool, 0.1 s a server). The tests' servers register functions of the same code, defaults and options, so the
    tool built for the first is reused by the next with the next server's own function: what the tool runs, and
    everything that depends on its server, is that server's. The key holds what the SDK builds from: the
    function's signature as the SDK reads it (annotations evaluated, `__wrapped__` and `__signature__` followed),
    whether the registered function is async, and the options. (The product's tools' annotations name module
    constants only; tests/test_attacks_review34.py checks each tool against the SDK's own build.)"""
    build = Tool.from_function
    built: dict[tuple[object, ...], Tool] = {}

    def from_function(fn: Any, **options: Any) -> Tool:
        # The tool's own function (the server wraps it to turn errors into ToolErrors).
        inner = inspect.unwrap(fn)
        key = (
            inner.__code__,
            repr(inner.__defaults__),
            repr(inner.__kwdefaults__),
            repr(inspect.signature(fn, eval_str=True)),
            inspect.iscoroutinefunction(fn),
            *sorted((name, repr(value)) for name, value in options.items()),
        )
        if (tool := built.get(key)) is None:
            tool = built[key] = build(fn, **options)
        return tool.model_copy(update={"fn": fn})

    Tool.from_function = staticmethod(from_function)  # type: ignore[method-assign, assignment]
