"""Loaded by Python at start in a process whose PYTHONPATH names this folder (tests/test_attacks_review23.py):
in the server (`mcp_autoresearch serve`, `finish`, `clean`), one function is wrapped so that the process kills
itself with SIGKILL right before or right after a call of it, once the test created the file `AR_KILL_ARMED`
names (and the call's arguments hold `AR_KILL_MATCH`). A kill -9 at an exact step, with no sleep and no git
trace: as a crash leaves things, every write before it on disk, nothing after it."""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

SPEC = os.environ.get("AR_KILL_AT", "")  # module:Attribute.path:before|after
ARMED = os.environ.get("AR_KILL_ARMED", "")
MATCH = os.environ.get("AR_KILL_MATCH", "")


def _armed(args: tuple[object, ...], kwargs: dict[str, object]) -> bool:
    return bool(ARMED) and os.path.exists(ARMED) and MATCH in repr((args, kwargs))


def _die() -> None:
    os.unlink(ARMED)  # once: the restarted server, or a rerun, goes through the same step unharmed
    os.kill(os.getpid(), signal.SIGKILL)


def _wrap(function: Callable[..., Any]) -> Callable[..., Any]:
    when = SPEC.rsplit(":", 1)[1]

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        armed = _armed(args, kwargs)
        if armed and when == "before":
            _die()
        result = function(*args, **kwargs)
        if armed and when == "after":
            _die()
        return result

    return wrapper


def _install() -> None:
    module_name, path, _when = SPEC.split(":")
    owner: Any = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    setattr(owner, name, _wrap(getattr(owner, name)))


if SPEC and "mcp_autoresearch" in " ".join(getattr(sys, "orig_argv", [])):
    _install()
