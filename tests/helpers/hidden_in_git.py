"""Hidden data that git may still hold (reviews 37 and 38): a scorer that compares the candidate's answer with the
line "answer <x>" of a hidden key, a project's configuration for it, a candidate that reads every object of every
repository it can reach, and the steps that take a key out of a repository's history without pruning it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..conftest import git

GITIGNORE = "out/\n.autoresearch/\nrun.log\nresults.tsv\n"

# The scorer compares the candidate's answer with the line "answer <x>" of the hidden key (wherever it is).
KEY_SCORER = """\
import sys
key_path = sys.argv[2] if len(sys.argv) > 2 else "key.txt"
key = [float(line.split()[1]) for line in open(key_path) if line.startswith("answer ")][0]
answer = float(open(sys.argv[1]).read().split()[0])
print(f"score: {abs(answer - key):.6f}")
"""


def key_files() -> dict[str, str]:
    """A project whose scorer reads the hidden `key.txt`, the key committed with it."""
    return {
        "objective.py": "X = 5\nprint(X)\n",
        "scorer.py": KEY_SCORER,
        "autoresearch.toml": key_config("key.txt"),
        "key.txt": "answer 3.14159\n",
        ".gitignore": GITIGNORE,
    }


def key_config(hidden: str, key_arg: str = "") -> str:
    return f"""\
target_file = "objective.py"
run_command = "python3 objective.py > out/answer.txt"
eval_command = "python3 scorer.py out/answer.txt {key_arg}"
metric_name = "score"
metric_direction = "lower"
readonly_files = ["scorer.py"]
writable = ["out"]
hidden = ["{hidden}"]
keep_rule = "greedy"
timeout = 60
"""


# The candidate decompresses every loose object of every .git below the project (read-only to it, not hidden),
# and answers the "answer <x>" it finds in a blob.
READ_OBJECTS = """\
import os, subprocess, zlib
ANSWER = 5.0
for top, _, names in os.walk("."):
    if "/objects" not in top or ".git" not in top:
        continue
    for name in names:
        try:
            data = zlib.decompress(open(os.path.join(top, name), "rb").read())
        except Exception:
            continue
        body = data.split(b"\\0", 1)[-1]
        if data.startswith(b"blob ") and body.startswith(b"answer "):
            try:
                ANSWER = float(body.split()[1])
            except ValueError:  # a line of code that starts so
                pass
for where in (".", "data"):  # git itself reads packs and alternate stores too
    found = subprocess.run(["git", "-C", where, "cat-file", "--batch-all-objects", "--batch"],
                           capture_output=True).stdout
    for line in found.splitlines():
        if line.startswith(b"answer "):
            try:
                ANSWER = float(line.split()[1])
            except ValueError:  # a line of code that starts so (the scorer's)
                pass
print(ANSWER)
"""


def forget_commit(root: Path, name: str) -> None:
    """`name` untracked and ignored, the commit that held it amended, the reflog expired: as the refusal says,
    without the prune (its blob stays a loose object)."""
    git(root, "rm", "-q", "--cached", name)
    (root / ".gitignore").write_text((root / ".gitignore").read_text() + f"{name}\n")
    git(root, "add", ".gitignore")
    git(root, "commit", "-q", "--amend", "-m", "initial, without the key")
    git(root, "reflog", "expire", "--expire=now", "--all")
    assert not git(root, "rev-list", "--all", "--reflog", "--", name).strip()


async def start(agent) -> str | None:
    """start_session: its refusal's text, or None when the session was accepted."""
    result = await agent.client.call_tool("start_session", {})
    return result.content[0].text if result.is_error else None


async def candidate_reads_objects(agent, true_key: float) -> tuple[dict, dict]:
    _, base = await agent.experiment("baseline")
    assert base["decision"] == "keep" and base["value"] == pytest.approx(5 - true_key, abs=1e-5), base
    await agent.ok("apply_edit", content=READ_OBJECTS)
    return await agent.experiment("answers whatever key .git holds")


async def never_read(agent_for, root: Path, name: str | None, true_key: float = 3.14159) -> None:
    """The session (refused, naming `name`, or started; None: it must start): its candidate, which reads every
    object it can reach, never finds the key."""
    async with agent_for(root) as agent:
        refusal = await start(agent)
        if refusal is not None:
            assert name is not None and name in refusal, refusal
            return
        run, decision = await candidate_reads_objects(agent, true_key)
    assert run["status"] == "ok", run  # a candidate that crashed read nothing, and proves nothing
    assert run["value"] != pytest.approx(0.0, abs=1e-9), (
        f"the candidate read the hidden key from git: score {run['value']}, {decision['decision']}"
    )
