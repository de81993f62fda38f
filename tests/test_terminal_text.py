"""Issue 24, item 3: text from the agent never reaches a person's terminal as something it would execute.

The agent sends an OSC 52 clipboard write, a window title, erase-line and cursor-up sequences, a C1 CSI and a
right-to-left override, in a description, in notes and in an edit, through the real MCP client; every answer,
every file the server writes and every CLI output (finish, results in each format, status, the dashboard) shows
them as visible escapes, and holds no character a terminal acts on.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mcp_autoresearch.terminal_text import printable

from .conftest import git, run_cli

pytestmark = pytest.mark.anyio

OSC52 = "\x1b]52;c;ZWNobyBvd25lZA==\x07"  # writes "echo owned" to the clipboard
TITLE = "\x1b]0;all tests passed\x07"
ERASE_LINE = "\x1b[2K\r"
CURSOR_UP = "\x1b[1A"
C1_CSI = "\x9b2J"  # clear the screen, in one C1 character
RLO = "\u202e"  # right-to-left override: 'exe.txt' shown for 'txt.exe'
HOSTILE = OSC52 + TITLE + ERASE_LINE + CURSOR_UP + C1_CSI + RLO
# What a terminal would act on: C0 but tab and newline, DEL, C1, and the bidirectional controls.
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def assert_safe(text: str, where: str) -> None:
    found = UNSAFE.search(text)
    assert found is None, (
        f"{where} holds {found.group()!r}: ...{text[max(0, found.start() - 40) : found.end() + 40]!r}"
    )


def strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    return []


def test_printable_escapes_what_a_terminal_acts_on_and_keeps_the_rest() -> None:
    assert printable(HOSTILE) == (
        "\\x1b]52;c;ZWNobyBvd25lZA==\\x07\\x1b]0;all tests passed\\x07\\x1b[2K\\x0d\\x1b[1A\\x9b2J\\u202e"
    )
    assert printable("a\tb\nc") == "a\tb\\x0ac" and printable("a\tb\nc", lines=True) == "a\tb\nc"
    assert printable("héllo → 测试 ✓") == "héllo → 测试 ✓"
    assert printable(printable(HOSTILE)) == printable(HOSTILE)  # escaping twice changes nothing more


async def test_hostile_text_from_the_agent_never_reaches_a_terminal(ml_project: Path, agent_for) -> None:
    root = ml_project
    answers: list[object] = []
    async with agent_for(root, {"isolation": "off"}) as agent:
        await agent.ok("start_session", tag="esc")
        answers += await agent.experiment("baseline" + HOSTILE)
        # The target may hold anything (it is the agent's code); what is shown of it is escaped.
        comment = HOSTILE.replace("\r", "")  # a CR would end the comment's line for Python
        edit = await agent.edit("LR = 0.5", f"LR = 0.2  # {comment}\nprint({HOSTILE!r})  # and in its output")
        assert "\\x1b]52;c;" in edit["diff"]
        answers.append(edit)
        run, decision = await agent.experiment("lower LR" + HOSTILE + "txt.exe")
        assert decision["decision"] == "keep"
        answers += [run, decision]
        answers.append(await agent.ok("log_result", run_id=run["run_id"], notes="line one\n" + HOSTILE))
        answers.append(await agent.ok("query_results"))
        briefing = (await agent.client.read_resource("autoresearch://briefing")).contents[0].text
        answers.append(briefing)
        tsv_resource = (await agent.client.read_resource("autoresearch://results")).contents[0].text
        answers.append(tsv_resource)
    for answer in answers:
        for text in strings(answer):
            assert_safe(text, "an answer to the agent")
    shown = answers[-3]
    assert isinstance(shown, dict)
    assert any("\\x1b]52;c;" in row["description"] for row in shown["rows"])

    # What the server wrote: results.tsv, the JSONL (every string in it), the commit messages.
    assert_safe((root / "results.tsv").read_text(), "results.tsv")
    for line in (root / ".autoresearch" / "autoresearch.jsonl").read_text().splitlines():
        for text in strings(json.loads(line)):
            assert_safe(text, "the JSONL")
    assert_safe(git(root, "log", "--format=%B", "autoresearch/esc"), "the commit messages")

    # Every CLI output that shows the session.
    project = ["--project", str(root)]
    outputs = {
        "finish": run_cli("finish", *project),
        "status": run_cli("status", *project),
        "dashboard": run_cli("dashboard", "--once", *project),
        **{
            f"results {f}": run_cli("results", "--format", f, *project)
            for f in ("table", "tsv", "json", "karpathy")
        },
    }
    for name, done in outputs.items():
        assert done.returncode == 0, (name, done.stderr)
        assert_safe(done.stdout, name)
        assert_safe(done.stderr, name)
    assert "\\x1b]52;c;" in outputs["finish"].stdout and "\\u202etxt.exe" in outputs["finish"].stdout
    landed = run_cli("finish", *project, "--land", "main")
    assert landed.returncode == 0, landed.stderr
    assert_safe(landed.stdout, "finish --land")


async def test_text_stored_before_the_rule_is_escaped_when_shown(ml_project: Path, agent_for) -> None:
    """A JSONL written by an earlier version (or by someone else) still holds raw sequences: every reader
    escapes them again."""
    root = ml_project
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="old")
        await agent.experiment("baseline")
    jsonl = root / ".autoresearch" / "autoresearch.jsonl"
    events = [json.loads(line) for line in jsonl.read_text().splitlines()]
    for event in events:
        if event["action"] == "experiment_done":
            event["details"]["description"] = "baseline" + HOSTILE
    jsonl.write_text("".join(json.dumps(e) + "\n" for e in events))
    project = ["--project", str(root)]
    for args in (("results",), ("results", "--format", "tsv"), ("status",), ("dashboard", "--once")):
        done = run_cli(*args, *project)
        assert done.returncode == 0, (args, done.stderr)
        assert_safe(done.stdout, " ".join(args))
