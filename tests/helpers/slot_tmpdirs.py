"""Two slots at once, where the server's TMPDIR is not /tmp: slot A's candidate keeps a secret in its private
TMPDIR and holds it there until slot B's candidate has looked beside its own TMPDIR for the other runs' and read
what they hold (reviews 37 and 38). The two meet through files in a folder outside the project that both may
write (`sync`), not through sleeps: each waits for the other's mark, the wait bounded only so that a broken
run cannot hang the test."""

from __future__ import annotations

from pathlib import Path

SLOT_EVALUATE = """\
import runpy
ns = runpy.run_path("params.py")
print(f"score: {abs(ns['X'] - 3) + abs(ns['Y'] - 5):.6f}")
"""
SECRET = "slot A's own SECRET"

_WAIT_FOR = """\
def wait_for(path):
    import os, time
    deadline = time.monotonic() + 120  # only a broken run waits that long
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
"""


def slot_config(sync: Path) -> dict[str, object]:
    return {
        "target_file": "params.py",
        "run_command": "python3 evaluate.py",
        "metric_name": "score",
        "readonly_files": ["evaluate.py"],
        "keep_rule": "greedy",
        "slots": 2,
        "slot_devices": [],
        "writable": [str(sync)],
    }


def _keeps_a_secret(sync: Path) -> str:
    return (
        _WAIT_FOR
        + "import os\n"
        + f'open(os.path.join(os.environ["TMPDIR"], "secret.txt"), "w").write("{SECRET}\\n")\n'
        + f"open({str(sync / 'a-ready')!r}, 'w').close()\n"
        + f"wait_for({str(sync / 'b-looked')!r})\n"
        + "X = 3\n\nY = 0\n"
    )


def _reads_the_others(sync: Path) -> str:
    return (
        _WAIT_FOR
        + "import glob, os\n"
        + f"wait_for({str(sync / 'a-ready')!r})\n"
        + 'mine = os.environ["TMPDIR"]\n'
        + "for top in {os.path.dirname(mine), os.path.dirname(os.path.realpath(mine))}:\n"
        + '    for path in glob.glob(os.path.join(top, "autoresearch-run-*", "*")):\n'
        + "        if not os.path.realpath(path).startswith(os.path.realpath(mine)):\n"
        + "            try:\n"
        + '                print("FOUND", path, open(path).read().strip())\n'
        + "            except OSError as exc:\n"
        + '                print("DENIED", path, exc.strerror)\n'
        + f"open({str(sync / 'b-looked')!r}, 'w').close()\n"
        + "X = 0\n\nY = 5\n"
    )


async def slot_b_reads_slot_a(agent_for, root: Path, sync: Path) -> str:
    """The output of slot B's run, while slot A's run held its secret (the project `root` holds `params.py` and
    `evaluate.py`: SLOT_EVALUATE)."""
    sync.mkdir(exist_ok=True)
    async with agent_for(root, slot_config(sync)) as agent:
        started = await agent.ok("start_session", tag="tmp")
        assert "namespaces" in started["isolation"], started["isolation"]
        await agent.ok("run_experiment", description="baseline")
        base = await agent.until_done()
        assert base["status"] == "ok", base
        assert (await agent.ok("commit_or_reset"))["decision"] == "keep"
        await agent.ok("apply_edit", content=_keeps_a_secret(sync))
        first = await agent.ok("run_experiment", description="keeps a secret in its TMPDIR", wait_s=0)
        await agent.ok("apply_edit", content=_reads_the_others(sync))
        second = await agent.ok("run_experiment", description="reads the other slot's TMPDIR", wait_s=0)
        one = await agent.until_done(first["run_id"])
        done = await agent.until_done(second["run_id"])
    assert one["status"] == "ok" and done["status"] == "ok", (one, done)
    return Path(done["log_path"]).read_text()
