"""The settings a session freezes stay frozen across server lives, also those added to the server after the
session began (its record does not name them): the first value a resume sees is the one it keeps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .test_eval_stage import project

pytestmark = pytest.mark.anyio


def forget_rule(root: Path, tag: str, key: str) -> None:
    """The session's files as an earlier version of the server wrote them, before `key` existed."""
    for name in (f"{tag}.own.json", f"{tag}.json"):
        path = root / ".autoresearch" / "sessions" / name
        data = json.loads(path.read_text())
        state = data.get("state", data)
        del state["rules"][key]
        path.write_text(json.dumps(data))


async def test_a_setting_the_session_predates_is_frozen_at_its_first_resume(
    tmp_path: Path, agent_for: Any
) -> None:
    root = project(tmp_path)
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="old")
        await agent.experiment("baseline")
    forget_rule(root, "old", "log_limit_mb")
    async with agent_for(root, {"log_limit_mb": 1}) as agent:
        await agent.ok("start_session", tag="old")  # the first value seen: adopted
    async with agent_for(root, {"log_limit_mb": 2}) as agent:
        refusal = await agent.refused("start_session", tag="old")
        assert "the configuration changed since session 'old' started (log_limit_mb: 1" in refusal, refusal
