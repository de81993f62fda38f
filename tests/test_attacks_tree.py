"""Attacks on the research tree (issue 23): branch_from and combine with odd run ids, a run that forges the
session's node refs so that a later branch_from restores content the server never measured, and the tree's
other promises, through the real MCP client on real git and real runs."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from .conftest import git, make_repo

pytestmark = pytest.mark.anyio

# Two knobs on lines far apart; lower is better (A + B).
TREE_PY = """\
A = 5

# spacer between the two knobs

B = 5
print(f"val_bpb: {A + B:.6f}")
"""

CONFIG = {"target_file": "train.py", "run_command": "python train.py"}


@pytest.fixture
def knobs(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "knobs", {"train.py": TREE_PY, "prepare.py": "# fixed\n"})


async def step(agent: Any, old: str, new: str, description: str) -> dict[str, Any]:
    await agent.edit(old, new)
    _run, decision = await agent.experiment(description)
    return decision


def done_rows(root: Path) -> dict[str, dict[str, Any]]:
    lines = (root / ".autoresearch" / "autoresearch.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    return {e["details"]["run_id"]: e["details"] for e in events if e["action"] == "experiment_done"}


# The run's extra code: a commit whose train.py is better than any measured (A = 0) and whose prepare.py (the
# evaluation) is the run's own, written as the session's node ref of the baseline r1.
FORGE_NODE_REF = textwrap.dedent(
    """
    import os, subprocess
    def _g(*args, data=None, env=None):
        return subprocess.run(["git", *args], input=data, capture_output=True, check=True,
                              env=env).stdout.decode().strip()
    _env = dict(os.environ, GIT_INDEX_FILE=os.path.abspath(".forge-index"), GIT_AUTHOR_NAME="x",
                GIT_AUTHOR_EMAIL="x@x", GIT_COMMITTER_NAME="x", GIT_COMMITTER_EMAIL="x@x")
    _root = _g("rev-list", "--max-parents=0", "HEAD")
    _g("read-tree", _root, env=_env)
    _forged = "A = 0\\n\\n# spacer between the two knobs\\n\\nB = 5\\n" + 'print(f"val_bpb: {A + B:.6f}")\\n'
    for _name, _text in (("train.py", _forged), ("prepare.py", "# forged evaluation\\n")):
        _blob = _g("hash-object", "-w", "--stdin", data=_text.encode())
        _g("update-index", "--add", "--cacheinfo", f"100644,{_blob},{_name}", env=_env)
    _commit = _g("commit-tree", _g("write-tree", env=_env), "-p", _root, "-m", "forged", env=_env)
    os.unlink(".forge-index")
    _ref = os.path.join(_g("rev-parse", "--git-common-dir"), "refs", "autoresearch", "tr", "r1")
    os.makedirs(os.path.dirname(_ref), exist_ok=True)
    open(_ref, "w").write(_commit + "\\n")
    """
)


async def test_a_forged_node_ref_never_brings_unmeasured_content_or_other_files_into_a_lineage(
    knobs: Path, agent_for: Any
) -> None:
    root = knobs
    async with agent_for(root, {**CONFIG, "isolation": "off"}) as agent:
        await agent.ok("start_session", tag="tr")
        _run, base = await agent.experiment("baseline")  # r1: 10
        assert base["value"] == 10
        baseline_target = (root / "train.py").read_text()
        await step(agent, "A = 5", "A = 3", "A to 3")  # r2: 8, the best
        # r3: a discarded run (B = 9: 12) whose code writes refs/autoresearch/tr/r1 to a forged commit.
        await agent.edit("B = 5", "B = 9")
        await agent.edit('print(f"val_bpb', FORGE_NODE_REF.strip() + '\nprint(f"val_bpb')
        run, decision = await agent.experiment("forges the baseline's node ref")
        assert decision["decision"] != "keep", (run, decision)

        branched = await agent.ok("branch_from", run_id="r1")
        # The baseline's content comes back, as measured: never the forged A = 0.
        assert (root / "train.py").read_text() == baseline_target
        assert (root / "prepare.py").read_text() == "# fixed\n"
        assert branched["value"] == 10
        r4 = await step(agent, "B = 5", "B = 4", "B to 4 on the baseline")  # 9: beats r1, not the best (8)
        assert r4["parent"] == "r1"
        # Whatever the lineage of r4, only the target differs from the user's commit along it.
        changed = git(root, "diff", "--name-only", "main", r4["commit"]).split()
        assert changed == ["train.py"], changed
        assert "forged" not in git(root, "log", "--format=%s", r4["commit"])


@pytest.mark.parametrize(
    "run_id",
    ["../r1", "refs/heads/main", "HEAD", "main", "r0", "-1", "r1\x00", "r1 r2", "r" + "9" * 5000, "", " "],
)
async def test_branch_from_an_odd_run_id_is_refused_clearly_and_changes_nothing(
    knobs: Path, agent_for: Any, run_id: str
) -> None:
    root = knobs
    async with agent_for(root, CONFIG) as agent:
        await agent.ok("start_session", tag="odd")
        await agent.experiment("baseline")
        await step(agent, "A = 5", "A = 3", "A to 3")
        before = (root / "train.py").read_text(), git(root, "rev-parse", "autoresearch/odd")
        state = (root / ".autoresearch").joinpath("state.json")
        state_before = state.read_bytes() if state.exists() else b""
        message = await agent.refused("branch_from", run_id=run_id)
        assert "Traceback" not in message and len(message) < 2000, message
        assert "query_results" in message or "run" in message, message
        assert (root / "train.py").read_text() == before[0]
        assert git(root, "rev-parse", "autoresearch/odd") == before[1]
        if state_before:
            assert state.read_bytes() == state_before
        refused = await agent.refused("combine", run_a="r2", run_b=run_id)
        assert "Traceback" not in refused and len(refused) < 2000, refused
