"""A target whose lines end with CRLF (a file from Windows): an edit quoted with plain newlines, as an agent
retypes read_target's lines, matches it, and the file keeps CRLF on every line, the new ones included."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import TRAIN_PY, make_repo

pytestmark = pytest.mark.anyio


def crlf_project(tmp_path: Path) -> Path:
    return make_repo(
        tmp_path / "proj",
        {"train.py": TRAIN_PY.replace("\n", "\r\n"), "prepare.py": "# fixed evaluation\r\nSEED = 1\r\n"},
    )


async def test_an_edit_with_plain_newlines_applies_to_a_crlf_target(tmp_path: Path, agent_for) -> None:
    root = crlf_project(tmp_path)
    async with agent_for(root) as agent:
        await agent.ok("start_session")
        shown = await agent.ok("read_target", start_line=1, end_line=2)
        assert shown["content"] == "LR = 0.5\r\nWIDTH = 4\r\n"  # what the agent is shown: the file as it is
        edited = await agent.ok(
            "apply_edit",
            edits=[
                {"old_text": "LR = 0.5\nWIDTH = 4\n", "new_text": "LR = 0.3\nWIDTH = 4\n"},
                {"old_text": "WIDTH = 4", "new_text": "WIDTH = 4\nDEPTH = 2"},  # a line added
            ],
        )
        assert edited["lines_added"] == 2 and edited["lines_removed"] == 1
    data = (root / "train.py").read_bytes()
    assert data.startswith(b"LR = 0.3\r\nWIDTH = 4\r\nDEPTH = 2\r\nprint(")
    assert data.count(b"\n") == data.count(b"\r\n")  # one line ending throughout


async def test_a_file_with_mixed_line_endings_takes_the_edit_as_given(tmp_path: Path, agent_for) -> None:
    root = make_repo(tmp_path / "proj", {"train.py": "A = 1\r\nB = 2\n" + TRAIN_PY, "prepare.py": "\n"})
    async with agent_for(root) as agent:
        await agent.ok("start_session")
        refusal = await agent.refused(
            "apply_edit", edits=[{"old_text": "A = 1\nB = 2\n", "new_text": "A = 3\n"}]
        )
        assert "old_text does not occur in train.py" in refusal
        await agent.ok("apply_edit", edits=[{"old_text": "A = 1\r\nB = 2\n", "new_text": "A = 3\n"}])
    assert (root / "train.py").read_bytes().startswith(b"A = 3\nLR = 0.5\n")
