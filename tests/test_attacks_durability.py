"""Second hostile review (hostile2b): the JSONL's durability at a restart, the faster stat-based checks, the
refs read in-process, and budgets; through the real MCP client on real git and real runs."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import git, make_repo

pytestmark = pytest.mark.anyio

# Two knobs; lower is better (A + B).
KNOBS_PY = """\
A = 5

# spacer between the two knobs

B = 5
print(f"val_bpb: {A + B:.6f}")
"""

CONFIG = {"target_file": "train.py", "run_command": "python train.py"}


@pytest.fixture
def knobs(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "knobs", {"train.py": KNOBS_PY, "prepare.py": "# fixed\n"})


def jsonl(root: Path) -> Path:
    return root / ".autoresearch" / "autoresearch.jsonl"


def done_rows(root: Path) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in jsonl(root).read_text().splitlines()]
    return [e["details"] for e in events if e["action"] == "experiment_done"]


@pytest.mark.parametrize("where", ["refs/tags/autoresearch/h", "refs/notes/autoresearch/h"])
async def test_head_on_a_ref_named_like_the_session_branch_is_not_taken_for_it(
    knobs: Path, agent_for: Any, where: str
) -> None:
    """The agent's shell points HEAD at a tag (or any ref outside refs/heads/) named like the session branch,
    at the branch's commit. The in-process ref reader shortened any ref to its name after `refs/<kind>/`, so
    HEAD read as on the session branch: the edit was applied and the run started, the server wrote its commit on the real branch while
    HEAD and the work tree stayed on the tag, and the run was blamed for moving the branch. It must be refused
    before it starts, naming where HEAD is."""
    root = knobs
    async with agent_for(root, CONFIG) as agent:
        await agent.ok("start_session", tag="h")
        await agent.experiment("baseline")
        branch_before = git(root, "rev-parse", "refs/heads/autoresearch/h").strip()
        git(root, "update-ref", where, branch_before)
        git(root, "symbolic-ref", "HEAD", where)
        edits = [{"old_text": "A = 5", "new_text": "A = 3"}]
        for message in (
            await agent.refused("apply_edit", edits=edits),
            await agent.refused("run_experiment", description="HEAD on a look-alike ref"),
        ):
            assert where in message and "git checkout autoresearch/h" in message, message
        assert git(root, "rev-parse", "refs/heads/autoresearch/h").strip() == branch_before
        assert [row["run_id"] for row in done_rows(root)] == ["r1"]


# The run's extra code: appends a forged row to the session's JSONL, again and again, until the test says stop.
SPAM_JSONL = """
import os
while not os.path.exists({stop!r}):
    _fd = os.open({jsonl!r}, os.O_WRONLY | os.O_APPEND)
    os.write(_fd, {row!r})
    os.close(_fd)
"""


FORGED_ROW = (
    json.dumps(
        {
            "tool": "autoresearch",
            "action": "experiment_done",
            "status": "success",
            "details": {
                "run_id": "r99",
                "status": "keep",
                "value": 0.0,
                "best": True,
                "tag": "s",
                "forged": 1,
            },
        }
    )
    + "\n"
).encode()


async def test_a_run_in_flight_appending_to_the_jsonl_never_breaks_the_seal_of_a_decision_logged_meanwhile(
    knobs: Path, agent_for: Any, tmp_path: Path
) -> None:
    """Unconfined (`isolation = "off"`) with two slots: one run appends to the JSONL in a loop while the other
    run's decision is logged. The guard cuts what was appended before the decision, but a line the run appends
    between the guard and the server's own append used to sit under the server's line: the seal's size counted
    it, its sha256 did not, so no file held the sealed bytes and every later call refused ("rewritten ...
    start a new session"). The server's line must go where its seal says, whatever a run appends."""
    root = knobs
    stop = tmp_path / "stop"
    settings = {**CONFIG, "isolation": "off", "slots": 2, "slot_devices": ["0", "1"], "keep_rule": "greedy"}
    async with agent_for(root, settings) as agent:
        await agent.ok("start_session", tag="s")
        await agent.experiment("baseline")  # r1: 10
        code = SPAM_JSONL.format(stop=str(stop), jsonl=str(jsonl(root)), row=FORGED_ROW)
        await agent.edit('print(f"val_bpb', code.strip() + '\nprint(f"val_bpb')
        spammer = await agent.ok("run_experiment", description="appends to the JSONL until stopped")
        # With slots the target is back at the best once a run starts.
        await agent.edit("A = 5", "A = 3")
        await agent.experiment(
            "A to 3, decided while the other run appends"
        )  # blamed: unconfined, who wrote?
        await agent.ok("query_results")
        stop.write_text("")
        await agent.until_done(spammer["run_id"])
        await agent.ok("commit_or_reset", run_id=spammer["run_id"])
        results = await agent.ok("query_results")
        assert "r99" not in json.dumps(results), results["rows"]
    assert not any("forged" in line for line in jsonl(root).read_text().splitlines())
    assert sorted(row["run_id"] for row in done_rows(root)) == ["r1", "r2", "r3"]


@pytest.mark.parametrize("swap", ["fifo", "link", "grown", "cut-and-regrown"])
async def test_a_jsonl_swapped_while_the_server_is_down_is_restored_to_the_sealed_bytes(
    knobs: Path, agent_for: Any, tmp_path: Path, swap: str
) -> None:
    """Between two servers, the agent's shell swaps the JSONL for a FIFO (a plain open would hang the
    restart), a link to a file of forged rows outside the project, the sealed bytes followed by a forged row,
    or the sealed bytes with their last line replaced by a forged one of the same length. The restart puts
    back exactly the bytes the server wrote, writes nothing through the link, and adopts no forged row."""
    root = knobs
    async with agent_for(root, CONFIG) as agent:
        await agent.ok("start_session", tag="d")
        await agent.experiment("baseline")
        await agent.edit("A = 5", "A = 3")
        await agent.experiment("A to 3")
    sealed = jsonl(root).read_bytes()
    forged = FORGED_ROW.replace(b'"tag": "s"', b'"tag": "d"')
    outside = tmp_path / "outside.jsonl"
    outside.write_bytes(sealed + forged)
    path = jsonl(root)
    path.unlink()
    if swap == "fifo":
        os.mkfifo(path)
    elif swap == "link":
        path.symlink_to(outside)
    elif swap == "grown":
        path.write_bytes(sealed + forged)
    else:
        last = sealed.rstrip(b"\n").rpartition(b"\n")[2] + b"\n"
        path.write_bytes(sealed[: -len(last)] + forged[: len(last)].ljust(len(last), b" "))
    async with agent_for(root, CONFIG) as agent:
        resumed = await agent.ok("start_session", tag="d")
        assert resumed["best_value"] == 8 and resumed["experiments"] == 2, resumed
        assert any("autoresearch.jsonl" in note for note in resumed["recovered"]), resumed["recovered"]
        results = await agent.ok("query_results")
        assert sorted(row["run_id"] for row in results["rows"]) == ["r1", "r2"], results["rows"]
        assert "r99" not in json.dumps(results), results["rows"]
    assert not path.is_symlink() and path.read_bytes() == sealed
    assert outside.read_bytes() == sealed + forged


def hash_blob(root: Path, content: bytes, *write: str) -> str:
    return (
        subprocess.run(
            ["git", "hash-object", *write, "--stdin"],
            cwd=root,
            input=content,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .strip()
    )


def plant_pack_claiming(root: Path, claimed: str, content: bytes) -> Path:
    """A pack in .git/objects/pack whose index says it holds the object `claimed`, while it holds a blob of
    `content` (git reads packs before loose objects, and does not check the id of what it reads)."""
    real = hash_blob(root, content, "-w")
    name = subprocess.run(
        ["git", "pack-objects", ".git/objects/pack/planted"],
        cwd=root,
        input=(real + "\n").encode(),
        capture_output=True,
        check=True,
    ).stdout.decode()
    idx = root / ".git" / "objects" / "pack" / f"planted-{name.strip()}.idx"
    data = bytearray(idx.read_bytes())
    first = bytes.fromhex(claimed)[0]
    data[8 : 8 + 1024] = b"".join(struct.pack(">I", 1 if byte >= first else 0) for byte in range(256))
    data[8 + 1024 : 8 + 1024 + 20] = bytes.fromhex(claimed)
    data[-20:] = hashlib.sha1(bytes(data[:-20])).digest()
    idx.chmod(0o644)
    idx.write_bytes(data)
    loose = root / ".git" / "objects" / real[:2] / real[2:]
    loose.unlink()
    return idx


async def test_a_pack_claiming_the_next_candidates_blob_never_gives_the_kept_commit_other_content(
    knobs: Path, agent_for: Any
) -> None:
    """The agent's shell, between two calls, plants a pack whose index claims the blob id of the target it is
    about to write (it knows that content), holding other code. The server writes its candidate's objects
    in-process and checked only loose objects for a planted one; git reads packs first, so `git show`,
    checkouts and `finish --land` would take the kept commit's train.py to be the planted code, never
    measured. The run must be refused before it starts, naming the pack."""
    root = knobs
    async with agent_for(root, CONFIG) as agent:
        await agent.ok("start_session", tag="p")
        await agent.experiment("baseline")  # r1: 10
        measured = KNOBS_PY.replace("A = 5", "A = 3").encode()
        claimed = hash_blob(root, measured)
        before = git(root, "rev-parse", "autoresearch/p")
        plant_pack_claiming(root, claimed, b"A = -100\nB = 0\nprint('val_bpb: -100')\n")
        await agent.edit("A = 5", "A = 3")
        result = await agent.client.call_tool("run_experiment", {"description": "A to 3"})
        if result.is_error:
            message = result.content[0].text
            assert "pack" in message and "planted" in message, message
            assert git(root, "rev-parse", "autoresearch/p") == before
            return
        run = result.structured_content
        while run["status"] == "running":
            run = await agent.ok("wait_experiment", run_id=run["run_id"])
        await agent.ok("commit_or_reset", run_id=run["run_id"])
    assert git(root, "show", "autoresearch/p:train.py").encode() == measured


async def test_a_genuine_pack_holding_a_candidates_blob_is_used_as_it_is(knobs: Path, agent_for: Any) -> None:
    """The check of planted packs lets git's own packs be: after `git gc` packed every object, a candidate that
    writes a blob that git holds in a pack is run and logged as usual."""
    root = knobs
    async with agent_for(root, CONFIG) as agent:
        await agent.ok("start_session", tag="g")
        await agent.experiment("baseline")  # r1: 10
        await agent.edit("A = 5", "A = 3")
        await agent.experiment("A to 3")  # r2: 8
        blob = hash_blob(root, KNOBS_PY.replace("A = 5", "A = 4").encode(), "-w")
        git(root, "tag", "a-blob", blob)  # reachable: packed by gc
        git(root, "gc", "-q")
        assert not (root / ".git" / "objects" / blob[:2] / blob[2:]).exists()
        await agent.edit("A = 3", "A = 4")  # a blob git has, in a pack only
        run, decision = await agent.experiment("A to 4")
        assert run["value"] == 9 and decision["decision"] == "discard", (run, decision)
    assert git(root, "show", "autoresearch/g:train.py") == KNOBS_PY.replace("A = 5", "A = 3")


@pytest.mark.parametrize("cover", ["current removed", "current names another tag", "state unreadable"])
async def test_a_spent_budget_is_not_escaped_by_hiding_the_last_session_from_the_server(
    knobs: Path, agent_for: Any, cover: str
) -> None:
    """A budget holds across sessions: a new session is refused while the project's last session has spent
    its budget. The last session was read from `.autoresearch/current` (a plain file the agent's shell can
    delete or rewrite) and skipped when its files did not read: the agent escaped the budget by hiding it."""
    root = knobs
    async with agent_for(root, {**CONFIG, "max_experiments": 2}) as agent:
        await agent.ok("start_session", tag="a")
        await agent.experiment("baseline")
        await agent.edit("A = 5", "A = 3")
        await agent.experiment("A to 3")
        await agent.edit("A = 3", "A = 2")
        assert "max_experiments (2) reached" in await agent.refused("run_experiment", description="A to 2")
        await agent.edit("A = 2", "A = 3")  # back to the best: the project is clean for a new session
    state = root / ".autoresearch"
    if cover == "current removed":
        (state / "current").unlink()
    elif cover == "current names another tag":
        (state / "current").write_text("zz\n")
    else:
        for public in (state / "sessions").glob("a.json"):
            public.write_text("{")
        (state / "current").write_text("a\n")
    async with agent_for(root, {**CONFIG, "max_experiments": 2}) as agent:
        answer = await agent.client.call_tool("start_session", {"tag": "b"})
        if not answer.is_error:
            answer = await agent.client.call_tool("run_experiment", {"description": "a fresh budget"})
        assert answer.is_error and "session 'a' has spent its budget" in answer.content[0].text, answer


# Run by an unconfined run in its work tree: a pack that claims the id of HEAD's tree (the candidate's commit,
# which becomes the best when kept) while holding a tree whose prepare.py is other code.
PLANT_TREE = """
import hashlib, struct, subprocess

def git(*args, data=None):
    return subprocess.run(["git", *args], input=data, capture_output=True, check=True).stdout

claimed = git("rev-parse", "HEAD^{tree}").decode().strip()
forged_blob = git("hash-object", "-w", "--stdin", data=b"# forged evaluation\\n").decode().strip()
listing = git("ls-tree", claimed).decode().replace(
    git("rev-parse", "HEAD:prepare.py").decode().strip(), forged_blob
)
real = git("mktree", data=listing.encode()).decode().strip()
pack_dir = git("rev-parse", "--git-path", "objects/pack").decode().strip()
name = git("pack-objects", pack_dir + "/planted", data=(real + "\\n").encode()).decode().strip()
idx = f"{pack_dir}/planted-{name}.idx"
data = bytearray(open(idx, "rb").read())
first = bytes.fromhex(claimed)[0]
data[8 : 8 + 1024] = b"".join(struct.pack(">I", 1 if byte >= first else 0) for byte in range(256))
data[8 + 1024 : 8 + 1024 + 20] = bytes.fromhex(claimed)
data[-20:] = hashlib.sha1(bytes(data[:-20])).digest()
import os
os.chmod(idx, 0o644)
open(idx, "wb").write(data)
"""


async def test_a_run_planting_a_pack_for_its_own_tree_never_changes_what_the_best_commit_holds(
    knobs: Path, agent_for: Any, tmp_path: Path
) -> None:
    root = knobs
    plant = tmp_path / "plant.py"
    plant.write_text(PLANT_TREE)
    async with agent_for(root, {**CONFIG, "isolation": "off"}) as agent:
        await agent.ok("start_session", tag="t")
        await agent.experiment("baseline")  # r1: 10
        code = f"import subprocess, sys\nsubprocess.run([sys.executable, {str(plant)!r}], check=True)\n"
        await agent.edit("A = 5", "A = 3")
        await agent.edit('print(f"val_bpb', code + 'print(f"val_bpb')
        run, decision = await agent.experiment("A to 3, and a pack planted")
        kept = decision["decision"] == "keep"
    # The pack the run planted is out of git's reach, kept for a person to look at, and the run is tampered.
    assert not list((root / ".git" / "objects" / "pack").glob("planted-*")), (
        "the planted pack is still in git"
    )
    assert list((root / ".autoresearch" / "tampered").glob("*/git-packs/planted-*.idx")), "no copy kept"
    assert run["status"] == "tampered" and "git pack objects/pack/planted-" in run["error"], run
    assert not kept and git(root, "show", "autoresearch/t:prepare.py") == "# fixed\n", run
