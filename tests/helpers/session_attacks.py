"""Shared by the attack tests whose run appends its attack to an honest edit (`run_attack`), in a session
with its baseline kept, confined and unconfined (`session`); what was kept, and whether the attack was
blocked.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HONEST = "LR = 0.2"  # the honest value of this edit: abs(0.2 - 0.1) + 1 = 1.1


HONEST_1_4 = pytest.approx(1.4)  # the baseline's honest value


HONEST_1_1 = pytest.approx(1.1)


def attack(code: str) -> str:
    """The target's new first line: an honest change of LR, then the attack (run as part of train.py)."""
    return HONEST + "\n" + code.strip() + "\n"


async def run_attack(agent, code: str, description: str = "attack") -> tuple[dict, dict]:
    await agent.edit("LR = 0.5", attack(code))
    return await agent.experiment(description)


async def plant_for_the_next_run(agent, code: str, what: str) -> dict:
    """A session (tag "evil") with its baseline kept, then a run whose attack `code` leaves something for the next
    run (r3, the ids are sequential); that run's result."""
    await agent.ok("start_session", tag="evil")
    _, base = await agent.experiment("baseline")
    assert base["decision"] == "keep"
    return (await run_attack(agent, code, what))[0]


def kept_values(root: Path) -> list[float]:
    """The kept values in results.tsv, in either of its layouts (value in column 3, or karpathy's in 2)."""
    header, *rows = (root / "results.tsv").read_text().splitlines()
    column = 2 if header.split("\t")[1] == "metric" else 1
    return [float(row.split("\t")[column]) for row in rows if row.split("\t")[3] == "keep"]


@pytest.fixture(name="session", params=["off", "auto"])
async def baseline_session(ml_project: Path, agent_for, request: pytest.FixtureRequest):
    """A session with its baseline kept; yields (agent, root, confined)."""
    async with agent_for(ml_project, {"isolation": request.param}) as agent:
        started = await agent.ok("start_session", tag="evil")
        await agent.experiment("baseline")
        yield agent, ml_project, "landlock" in started["isolation"]


def blocked(run: dict, confined: bool, *named: str) -> bool:
    """Unconfined, the server caught the attack after the run and names what it undid; confined, the run's
    own writes were refused, so it failed (or did nothing)."""
    if confined:
        return run["status"] in ("crash", "ok", "tampered")
    return run["status"] == "tampered" and all(name in run["error"] for name in named)


async def baseline_then_content(
    agent, content: str, description: str, tag: str | None = None
) -> tuple[dict, dict]:
    """A session started (`tag`), its baseline kept, then the target replaced by `content` and run: (the run,
    its decision)."""
    await agent.ok("start_session", **({"tag": tag} if tag else {}))
    _, base = await agent.experiment("baseline")
    assert base["decision"] == "keep", base
    await agent.ok("apply_edit", content=content)
    return await agent.experiment(description)
