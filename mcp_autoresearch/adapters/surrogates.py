"""Lone UTF-16 surrogates (half of a character, such as a cut emoji: `"\\ud800"`): every call gets an answer.

Also a request nested deeper than the SDK's parser accepts (it drops it unanswered too; Python's json would raise
RecursionError on it and end the server): `unreadable_refusal` finds its id at the top level and answers.

JSON may spell one (`"\\ud800"`), Python's `json` accepts it, but it is not Unicode: the SDK's JSON parser
refuses the whole message and drops it without an answer (the client then waits forever), and a Python string
holding one cannot be encoded as UTF-8 (a reply or a file write holding it fails). So:

- `ScreenedReadStream` answers a JSON-RPC request the SDK could not parse because of one, with an error that
  names the argument, instead of letting it vanish;
- `SafeWriteStream` replaces them in an outgoing message that could not be encoded (a file name or text read
  from disk with `surrogateescape`), so a reply is never lost on the way out;
- `lone_surrogate_problem` names the argument for a call that reached a tool with one (in-process clients).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import mcp_types as types
from mcp.shared.message import SessionMessage
from pydantic import BaseModel, ValidationError

log = logging.getLogger("mcp_autoresearch")

LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
INVALID_PARAMS = -32602
REPLACEMENT = "\ufffd"


def find_lone_surrogate(value: Any, path: str = "") -> tuple[str, int, str] | None:
    """The first string holding a lone surrogate: (its path, e.g. `edits[0].new_text`, the position in it,
    the surrogate as `\\udXXX`), or None."""
    if isinstance(value, BaseModel):  # a validated argument such as an edit
        value = value.model_dump()
    if isinstance(value, str):
        found = LONE_SURROGATE.search(value)
        return (path, found.start(), f"\\u{ord(found.group()):04x}") if found else None
    if isinstance(value, Mapping):
        for key, item in value.items():
            where = find_lone_surrogate(key, path) or find_lone_surrogate(
                item, f"{path}.{key}" if path else str(key)
            )
            if where:
                return where
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            if where := find_lone_surrogate(item, f"{path}[{index}]"):
                return where
    return None


def lone_surrogate_problem(arguments: Mapping[str, Any]) -> str | None:
    """What to tell the agent when an argument holds a lone surrogate (None when none does)."""
    where = find_lone_surrogate(arguments)
    if where is None:
        return None
    path, position, code = where
    return (
        f"argument '{path or '?'}' holds a lone UTF-16 surrogate ({code}) at character {position}: half of a "
        "character (a cut emoji?), which is not valid Unicode and cannot be written or logged. Nothing was "
        "done; send the call again with that text whole or without it"
    )


def replace_lone_surrogates(value: Any) -> Any:
    """`value` with every lone surrogate in its strings replaced by U+FFFD."""
    if isinstance(value, str):
        return LONE_SURROGATE.sub(REPLACEMENT, value)
    if isinstance(value, dict):
        return {replace_lone_surrogates(k): replace_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_lone_surrogates(item) for item in value]
    return value


def refusal_for(exc: Exception) -> types.JSONRPCMessage | None:
    """The answer to a request the SDK could not parse because it holds a lone surrogate (None for anything
    else, which the SDK handles as before)."""
    if not isinstance(exc, ValidationError):
        return None
    errors = exc.errors(include_url=False)
    line = errors[0].get("input") if errors and errors[0].get("type") == "json_invalid" else None
    if not isinstance(line, str):
        return None
    if not _ESCAPED_SURROGATE.search(line):
        return unreadable_refusal(line, str(errors[0].get("msg", "invalid JSON")))
    try:
        request = json.loads(line)
    except RecursionError:
        return unreadable_refusal(line, "nested too deeply")
    except ValueError:
        return None
    if (
        not isinstance(request, dict)
        or not isinstance(request.get("id"), (int, str))
        or "method" not in request
    ):
        return None  # a notification or a response: there is no one to answer
    params = request.get("params")
    params = params if isinstance(params, dict) else {}
    if request["method"] == "tools/call" and isinstance(params.get("arguments"), dict):
        problem = lone_surrogate_problem(params["arguments"])
        if problem is not None:  # a tool error the agent reads and can act on
            result = types.CallToolResult(
                content=[types.TextContent(type="text", text=problem)], is_error=True
            )
            return types.JSONRPCResponse(
                jsonrpc="2.0", id=request["id"], result=result.model_dump(by_alias=True, exclude_none=True)
            )
    where = find_lone_surrogate(params)
    message = (
        f"parameter '{where[0]}' of {replace_lone_surrogates(request['method'])} holds a lone UTF-16 surrogate "
        f"({where[2]}), which is not valid Unicode; send it again without it"
        if where
        else "the request holds a lone UTF-16 surrogate, which is not valid Unicode; send it again without it"
    )
    return types.JSONRPCError(
        jsonrpc="2.0", id=request["id"], error=types.ErrorData(code=INVALID_PARAMS, message=message)
    )


def unreadable_refusal(line: str, why: str) -> types.JSONRPCMessage | None:
    """The answer to a request the SDK could not parse for another reason (JSON nested deeper than its parser
    accepts): a JSON-RPC error naming why, when the line's top level shows a request's id (None otherwise: a
    line that is not JSON at all has no one to answer)."""
    head = top_level(line)
    if head is None or not isinstance(head.get("id"), (int, str)) or not isinstance(head.get("method"), str):
        return None
    deep = "recursion" in why or "nested" in why
    message = f"the request could not be read ({why}); nothing was done: send it again " + (
        "with its parameters nested less deeply" if deep else "as valid JSON"
    )
    return types.JSONRPCError(
        jsonrpc="2.0", id=head["id"], error=types.ErrorData(code=INVALID_PARAMS, message=message[:500])
    )


_STRUCTURE = re.compile(r'[][{}"]')
_NESTED = object()  # the value of a member that is an array or an object (skipped)
_SPACE = re.compile(r"[ \t\n\r]+")


def _after_space(line: str, at: int) -> int:
    found = _SPACE.match(line, at)
    return found.end() if found else at


def top_level(line: str, cut: bool = False) -> dict[str, Any] | None:
    """The members of the JSON object `line` whose values are not arrays or objects (those are skipped by
    counting brackets outside strings, at any depth, without recursion); None when `line` is not an object.
    `cut`: `line` is only the start of an object: the members that end before the cut (a value the cut runs
    into is left out, so a number cut short is never read as a smaller one)."""
    decoder = json.JSONDecoder()
    found: dict[str, Any] = {}
    try:
        at = _after_space(line, 0)
        if line[at : at + 1] != "{":
            return None
        at += 1
        while True:
            at = _after_space(line, at)
            if line[at : at + 1] == "}":
                return found
            if line[at : at + 1] != '"':
                return None
            key, at = json.decoder.scanstring(line, at + 1)  # type: ignore[attr-defined]
            at = _after_space(line, at)
            if line[at : at + 1] != ":":
                return None
            at = _after_space(line, at + 1)
            value: Any = _NESTED
            if line[at : at + 1] in ("[", "{"):
                at = _skip_nested(line, at)
            else:
                value, at = decoder.raw_decode(line, at)
            at = _after_space(line, at)
            if line[at : at + 1] not in (",", "}"):
                return found if cut and at == len(line) else None
            if value is not _NESTED:
                found[key] = value
            if line[at : at + 1] == ",":
                at += 1
    except (ValueError, RecursionError):
        return found if cut else None


def _skip_nested(line: str, at: int) -> int:
    """Where the array or object starting at `at` ends."""
    depth = 0
    while (found := _STRUCTURE.search(line, at)) is not None:
        char, at = found.group(), found.end()
        if char == '"':
            _, at = json.decoder.scanstring(line, at)  # type: ignore[attr-defined]
        elif char in "[{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return at
    raise ValueError("unterminated")


class ScreenedReadStream:
    """The SDK's read stream, with the requests it dropped for a lone surrogate answered (see refusal_for);
    `at_end` is called at the end of input, before the session cancels its calls."""

    def __init__(self, inner: Any, write: Any, at_end: Callable[[], None] | None = None) -> None:
        self._inner = inner
        self._write = write
        self._at_end = at_end

    def __getattr__(self, name: str) -> Any:  # last_context and the rest, as the SDK reads them
        return getattr(self._inner, name)

    async def receive(self) -> SessionMessage | Exception:
        while True:
            item = await self._inner.receive()
            answer = refusal_for(item) if isinstance(item, Exception) else None
            if answer is None:
                return item
            await self._write.send(SessionMessage(answer))

    def __aiter__(self) -> ScreenedReadStream:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            if self._at_end is not None:
                self._at_end()
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> ScreenedReadStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def wire_json(message: Any) -> str:
    """A JSON-RPC message as the wire carries it; one that cannot be encoded as UTF-8 (a lone surrogate in a
    string) with U+FFFD in its place, instead of failing the transport and every later reply."""
    try:
        return str(message.model_dump_json(by_alias=True, exclude_unset=True))
    except ValueError:  # pydantic's serialization error; it wraps the UnicodeEncodeError
        return str(_without_lone_surrogates(message).model_dump_json(by_alias=True, exclude_unset=True))


def _without_lone_surrogates(message: Any) -> Any:
    log.warning("a reply held a lone surrogate; it was sent with U+FFFD in its place")
    dumped = replace_lone_surrogates(message.model_dump(by_alias=True, exclude_unset=True))
    return types.jsonrpc_message_adapter.validate_python(dumped)


class SafeWriteStream:
    """The SDK's write stream, where a message that cannot be encoded as UTF-8 (a lone surrogate in a string)
    goes out with U+FFFD in its place, instead of failing the transport's writer and every later reply."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def send(self, item: SessionMessage, /) -> None:
        try:
            item.message.model_dump_json(by_alias=True, exclude_unset=True)
        except ValueError:  # pydantic's serialization error; it wraps the UnicodeEncodeError
            item = SessionMessage(_without_lone_surrogates(item.message), metadata=item.metadata)
        await self._inner.send(item)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> SafeWriteStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
