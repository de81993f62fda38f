"""What a test module needs from the machine: skipped locally when missing, saying so, and an error under CI
(`CI` set), where `.ci/run` installs it and a missing tool must fail, never pass unseen."""

from __future__ import annotations

import os

import pytest


def require(available: object, ci_message: str, skip_reason: str) -> None:
    """At a test module's top: go on when `available`, else fail under CI and skip the module elsewhere."""
    if available:
        return
    if os.environ.get("CI"):
        raise RuntimeError(ci_message)
    pytest.skip(skip_reason, allow_module_level=True)
