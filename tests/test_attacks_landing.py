"""Attacks on landing the results (`finish`, `clean`) and on what they show: forged commit and blob objects,
branch and file names holding terminal sequences. Landing never goes around a user's commit, never hides
unlanded kept commits, never lands forged content, and every name is shown escaped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import GIT_ENV, git, run_cli

pytestmark = pytest.mark.anyio


# What a terminal would act on: C0 but tab and newline, DEL, C1, and the bidirectional controls.
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


# Branch names git accepts (bytes from 0x80 up are allowed), as a fetch from someone else's remote brings them:
# a C1 CSI "clear the screen" in UTF-8, a right-to-left override, and a byte that is not UTF-8 at all.
HOSTILE_BRANCHES = [b"x\xc2\x9b2J", b"z\xe2\x80\xaeabc", b"y\xff"]


async def test_branch_names_are_shown_escaped_by_finish(ml_project: Path, agent_for) -> None:
    root = ml_project
    for name in HOSTILE_BRANCHES:
        subprocess.run([b"git", b"branch", name], cwd=root, check=True, env={**os.environ, **GIT_ENV})
    # A branch of the user's whose commit subject holds a window-title sequence: landing on it is refused
    # (diverged), and the refusal names its commits.
    git(root, "checkout", "-q", "-b", "other")
    git(root, "commit", "-q", "--allow-empty", "-m", "\x1b]0;all tests passed\x07")
    git(root, "checkout", "-q", "main")
    async with agent_for(root, {"isolation": "off"}) as agent:
        await agent.ok("start_session", tag="names")
        await agent.experiment("baseline")
        await agent.edit("LR = 0.5", "LR = 0.2")
        assert (await agent.experiment("lower LR"))[1]["decision"] == "keep"
    project = ["--project", str(root)]
    for args in (("finish",), ("finish", "--land", "other"), ("finish", "--land", "main")):
        done = subprocess.run(
            [sys.executable, "-m", "mcp_autoresearch", *args, *project], capture_output=True, env=os.environ
        )
        out = done.stdout.decode("utf-8", "replace") + done.stderr.decode("utf-8", "replace")
        assert done.returncode == (0 if args[-1] != "other" else 2), (args, out)
        found = UNSAFE.search(out)
        assert found is None, f"{' '.join(args)} printed {found.group()!r}: {out!r}"
        if args == ("finish",):
            assert "can fast-forward:" in out and "\\x9b2J" in out and "y\\xff" in out, out
        if args[-1] == "other":
            assert "has diverged" in out and "\\x1b]0;all tests passed" in out, out
    assert git(root, "rev-parse", "main") == git(root, "rev-parse", "autoresearch/names")


RUN_PLANTS_NAMES = r"""
import os, subprocess
evil = "\x1b]0;owned\x07\u202e\x9b2J"
open(evil + ".txt", "w").write("x")  # an untracked file of the run's, at the project's top
os.makedirs("out", exist_ok=True)
open(os.path.join("out", evil), "w").write("x")
open("prepare.py", "a").write("# " + evil + "\n")  # a tracked file changed: tampering, named
subprocess.run(["git", "update-ref", "refs/heads/" + "x\u202eabc", "HEAD"])  # a branch, named as moved
print("METRIC " + "a" * 100000 + "=1")
print("METRIC ok" + evil + "=2")
print(evil * 3)
"""


async def test_names_a_run_plants_are_shown_escaped_by_every_command(ml_project: Path, agent_for) -> None:
    """An unconfined run creates files and a branch whose names hold terminal sequences, changes a tracked file
    and prints them: its tampering is named in the answer, and every CLI command shows those names escaped."""
    root = ml_project
    async with agent_for(root, {"isolation": "off"}) as agent:
        await agent.ok("start_session", tag="plant")
        await agent.experiment("baseline")
        await agent.edit("LR = 0.5", "LR = 0.4\n" + RUN_PLANTS_NAMES)
        run, decision = await agent.experiment("plants names")
        assert decision["decision"] != "keep", (run, decision)
        await agent.ok("read_target")  # an answer after: the session goes on
    project = ["--project", str(root)]
    commands = [
        ("finish",),
        ("status",),
        ("dashboard", "--once"),
        *[("results", "--format", f) for f in ("table", "tsv", "json", "karpathy")],
        ("clean", "--tag", "plant"),
    ]
    for args in commands:
        done = subprocess.run(
            [sys.executable, "-m", "mcp_autoresearch", *args, *project], capture_output=True, env=os.environ
        )
        out = done.stdout.decode("utf-8", "replace") + done.stderr.decode("utf-8", "replace")
        assert "Traceback" not in out, (args, out)
        found = UNSAFE.search(out)
        assert found is None, f"{' '.join(args)} printed {found.group()!r}: {out!r}"
    # results.tsv is the server's; run.log is the run's own output, raw as a build log is (not checked).
    found = UNSAFE.search((root / "results.tsv").read_text())
    assert found is None, f"results.tsv holds {found.group()!r}"


RUN_FORGES_BASE = r"""
import os, re, subprocess, zlib
def rev(name):
    return subprocess.run(["git", "rev-parse", name], capture_output=True, text=True).stdout.strip()
git_dir = subprocess.run(["git", "rev-parse", "--git-common-dir"], capture_output=True, text=True).stdout.strip()
base, users = rev("main~1"), rev("other")  # not the base itself: git checks the ids of the objects it is named
body = subprocess.run(["git", "cat-file", "commit", base], capture_output=True).stdout
tree, _, rest = body.partition(b"\n")
forged = tree + b"\nparent " + users.encode() + b"\n" + rest  # the base's parent now says: my parent is yours
# and is dated later than yours, so that git's walk (which stops at commits older than the one it looks for)
# goes through it
forged = re.sub(rb"(\ncommitter [^\n]*> )\d+", rb"\g<1>4102444800", forged)
path = os.path.join(git_dir, "objects", base[:2], base[2:])
os.chmod(path, 0o644)
with open(path, "wb") as out:
    out.write(zlib.compress(b"commit %d\0" % len(forged) + forged))
"""


async def test_a_forged_commit_object_cannot_make_finish_land_around_a_users_commit(
    ml_project: Path, agent_for
) -> None:
    """An unconfined run rewrites the loose object of the session's base commit so that it names the user's
    commit on `other` as its parent (git reads objects without checking their ids against their content): the
    session's best then looks like a descendant of that commit, and `finish --land other` would fast-forward
    `other` onto a tree that lacks the user's change. Landing must see the forgery and refuse."""
    root = ml_project
    (root / "README.md").write_text("a second commit, so that the base has a parent\n")
    git(root, "commit", "-q", "-am", "second")
    git(root, "checkout", "-q", "-b", "other")
    (root / "users_work.py").write_text("the user's commit\n")
    git(root, "add", "users_work.py")
    # Older than the base (a branch of earlier work): git's walk reaches it only through the forged commit.
    old = {**os.environ, **GIT_ENV, "GIT_COMMITTER_DATE": "2020-01-01T00:00:00Z"}
    subprocess.run(["git", "commit", "-q", "-m", "the user's work"], cwd=root, env=old, check=True)
    users = git(root, "rev-parse", "other").strip()
    git(root, "checkout", "-q", "main")
    async with agent_for(root, {"isolation": "off"}) as agent:
        await agent.ok("start_session", tag="forge")
        await agent.experiment("baseline")
        await agent.edit("LR = 0.5", "LR = 0.4\n" + RUN_FORGES_BASE)
        await agent.experiment("forges the base")
        await agent.edit("LR = 0.4", "LR = 0.2")
        await agent.experiment("lower LR")
    done = run_cli("finish", "--project", str(root), "--land", "other")
    assert git(root, "rev-parse", "other").strip() == users, done.stdout + done.stderr
    assert done.returncode != 0, done.stdout
    assert "does not match its id" in done.stdout + done.stderr, done.stdout + done.stderr


RUN_FORGES_USERS_COMMIT = r"""
import os, re, subprocess, zlib
def rev(name):
    return subprocess.run(["git", "rev-parse", name], capture_output=True, text=True).stdout.strip()
git_dir = subprocess.run(["git", "rev-parse", "--git-common-dir"], capture_output=True, text=True).stdout.strip()
users, best = rev("other~1"), rev("HEAD")  # the tip of other is named by clean (git checks it): its parent is not
body = subprocess.run(["git", "cat-file", "commit", users], capture_output=True).stdout
tree, _, rest = body.partition(b"\n")
forged = tree + b"\nparent " + best.encode() + b"\n" + rest  # the user's commit now descends from the best
forged = re.sub(rb"(\ncommitter [^\n]*> )\d+", rb"\g<1>4102444800", forged)
path = os.path.join(git_dir, "objects", users[:2], users[2:])
os.chmod(path, 0o644)
with open(path, "wb") as out:
    out.write(zlib.compress(b"commit %d\0" % len(forged) + forged))
"""


async def test_a_forged_commit_object_cannot_hide_unlanded_kept_commits_from_clean(
    ml_project: Path, agent_for
) -> None:
    """The last run rewrites a user's commit on `other` to name the session's best as its parent: git then
    sees the kept commits as on `other`, and clean would drop the session's branch without its warning that
    they are on no other branch. The warning must stay."""
    root = ml_project
    git(root, "checkout", "-q", "-b", "other")
    for name in ("one", "two"):
        (root / f"{name}.txt").write_text(name)
        git(root, "add", f"{name}.txt")
        git(root, "commit", "-q", "-m", f"the user's {name}")
    git(root, "checkout", "-q", "main")
    async with agent_for(root, {"isolation": "off"}) as agent:
        await agent.ok("start_session", tag="hide")
        await agent.experiment("baseline")
        await agent.edit("LR = 0.5", "LR = 0.2")
        assert (await agent.experiment("lower LR"))[1]["decision"] == "keep"
        await agent.edit("LR = 0.2", "LR = 0.9\n" + RUN_FORGES_USERS_COMMIT)
        assert (await agent.experiment("forges the user's commit"))[1]["decision"] == "discard"
    git(root, "checkout", "-q", "main")
    done = run_cli("clean", "--project", str(root), "--tag", "hide")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "kept commit(s) are on no other branch" in done.stdout, done.stdout


RUN_FORGES_KEPT_BLOB = r"""
import hashlib, os, subprocess, zlib
git_dir = subprocess.run(["git", "rev-parse", "--git-common-dir"], capture_output=True, text=True).stdout.strip()
mine = open(__file__, "rb").read()  # the content the server measures now (its commit is written already)
kept = hashlib.sha1(b"blob %d\0" % len(mine) + mine).hexdigest()  # the id that commit names
forged = b"LR = 0.2\nimport os  # never measured, never checked\nprint('val_bpb: 1.100000')\n"
path = os.path.join(git_dir, "objects", kept[:2], kept[2:])
os.chmod(path, 0o644)
with open(path, "wb") as out:
    out.write(zlib.compress(b"blob %d\0" % len(forged) + forged))
"""


async def test_a_forged_blob_of_the_kept_target_is_not_landed(ml_project: Path, agent_for) -> None:
    """A run rewrites the loose object of its own content (its commit is written before it runs) with other
    content: the kept commit then names a file that was never measured nor checked, and `finish --land` would
    put it on the user's branch (git reads a blob without checking its id: a checkout writes the forged
    file). Landing must see the forgery and refuse."""
    root = ml_project
    async with agent_for(root, {"isolation": "off"}) as agent:
        await agent.ok("start_session", tag="blob")
        await agent.experiment("baseline")
        await agent.edit("LR = 0.5", "LR = 0.2\n" + RUN_FORGES_KEPT_BLOB)
        assert (await agent.experiment("lower LR, and plants its own blob"))[1]["decision"] == "keep"
        measured = (root / "train.py").read_bytes()
    git(root, "checkout", "-q", "main")
    done = run_cli("finish", "--project", str(root), "--land", "landed")
    landed = subprocess.run(["git", "show", "landed:train.py"], cwd=root, capture_output=True).stdout
    assert landed in (b"", measured), (done.stdout, done.stderr, landed)
    assert done.returncode != 0 and "does not match its id" in done.stderr, done.stderr
