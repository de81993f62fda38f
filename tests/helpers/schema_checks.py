"""The MCP client's check of each tool's output schema, done once per distinct schema in a test process.

`mcp.ClientSession` checks a tool's output schema against the JSON Schema metaschema the first time each client
calls that tool (`_output_schema_validator`), before it compiles a validator and checks every result against it.
That check costs about 50 ms for run_experiment's schema and 0.24 s for all eleven of the server's; the suite opens
about 400 clients over the same eleven schemas, so a quarter of the test workers' own CPU went to checking them
again (py-spy on a worker, BENCHMARKS.md "The suite's CPU, once more"). Here a schema already found valid in this
process is not checked again: every client still compiles its validator and checks every result, and an invalid
schema is still refused each time."""

from __future__ import annotations

import json
from typing import Any

from jsonschema.validators import validator_for


def check_each_schema_once() -> None:
    validator = validator_for({})  # the draft the client uses for a schema without "$schema"
    check = validator.check_schema
    valid: set[str] = set()

    def check_schema(schema: Any, *args: Any, **kwargs: Any) -> None:
        key = json.dumps(schema, sort_keys=True, default=repr)
        if key in valid:
            return
        check(schema, *args, **kwargs)  # raises SchemaError on an invalid schema, which is never remembered
        valid.add(key)

    validator.check_schema = staticmethod(check_schema)  # type: ignore[method-assign]
