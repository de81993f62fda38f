"""Review 22: the target's code against the number across runs: what one run can leave that a later run (a repeat,
the re-measurement after a keep) reads, what wedges the next runs, and how the number is read. Real runs under
the real keeper (the view and Landlock where the machine has them). Each test here failed before its fix (or is
a strict xfail naming the fix)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest

from mcp_autoresearch.lifecycle.experiment import Experiment
from mcp_autoresearch.sandbox.policy import probe_isolation

from .conftest import git, make_repo
from .helpers.needs import require
from .test_confinement import _experiment as confinement_experiment
from .test_noise import project as noisy_project
from .test_noise import try_values

pytestmark = pytest.mark.anyio

ISOLATION = probe_isolation("auto")


def _experiment(root: Path, run_id: str, command: str = "python3 t.py", **config) -> Experiment:
    return confinement_experiment(root, command, run_id, **config)


# The kernel's keyrings are not in any namespace a run gets: root's user keyring (@u) is one for every process
# of uid 0 (the server's, its runs', the host's), and the session keyring (@s) is the server's, inherited. A key is
# no file and no process: it outlives the run that added it. (x86_64 and aarch64 numbers: add_key, keyctl.)
KEYRING_CALLS = {"x86_64": (248, 250), "aarch64": (217, 219)}
KEY_NAME = b"autoresearch-review22"
LEAVES_AND_READS_A_KEY = f"""
import ctypes, os, platform
libc = ctypes.CDLL(None, use_errno=True)
add_key, keyctl = {KEYRING_CALLS!r}[platform.machine()]
for ring in (-3, -4):  # the session keyring, the user keyring
    key = libc.syscall(keyctl, 10, ring, b"user", {KEY_NAME!r}, 0)  # KEYCTL_SEARCH
    if key > 0:
        value = ctypes.create_string_buffer(64)
        size = libc.syscall(keyctl, 11, key, value, 64)  # KEYCTL_READ
        print("READ", ring, value.raw[:max(size, 0)].decode())
    made = libc.syscall(add_key, b"user", {KEY_NAME!r}, b"best-answer=0.001", 17, ring)
    print("ADD", ring, made if made > 0 else os.strerror(ctypes.get_errno()))
print("score: 1")
"""


def _remove_the_key() -> None:
    """The key a run of the test left (before the fix) is revoked in this process's keyrings (root's @u)."""
    libc = ctypes.CDLL(None, use_errno=True)
    _, keyctl = KEYRING_CALLS.get(os.uname().machine, (0, 0))
    for ring in (-3, -4):
        key = libc.syscall(keyctl, 10, ring, b"user", KEY_NAME, 0) if keyctl else -1
        if key > 0:
            libc.syscall(keyctl, 3, key)  # KEYCTL_REVOKE


def test_a_key_one_run_adds_to_a_kernel_keyring_is_not_read_by_the_next(tmp_path: Path) -> None:
    """A run added a key (its answer, its count of runs) to root's user keyring or to the server's session
    keyring, and the next run, a repeat or the re-measurement after a keep, read it: a channel from run to run
    that survives the view, Landlock and the end of every process (and a root run read the host's root keys).
    A confined run may not use the keyrings at all (a seccomp filter, as Docker's default profile does)."""
    require(ISOLATION.confined, "CI confines runs", "runs are not confined here")
    require(os.uname().machine in KEYRING_CALLS, "CI is x86_64", "no keyring numbers for this machine")
    root = make_repo(tmp_path / "p", {"t.py": LEAVES_AND_READS_A_KEY})
    try:
        first = _experiment(root, "r1").run()
        second = _experiment(root, "r2").run()
    finally:
        _remove_the_key()
    assert first.status == second.status == "ok", (first, second)
    text = Path(second.log_path).read_text()
    assert "READ" not in text and "ADD -4 Operation not permitted" in text, text


# The candidate looks for its checks' log (`<run>-checks.log`, beside its runs' logs, which a run may read without
# `hidden`): written once the runs that judge it are over, it was there for every run after them, the
# re-measurement after the keep. The runs that saw it print `late`; under the sequential rule.
TELLS_THE_RUNS_APART = """\
f=$(ls .autoresearch/runs/*/*-checks.log 2>/dev/null | grep -v '/r1-checks.log$')
if [ -n "$f" ]; then echo late; fi
"""


async def test_the_re_measurement_after_a_keep_cannot_be_told_by_the_checks_log(
    tmp_path: Path, agent_for
) -> None:
    """The checks command ran after the judged runs and before the re-measurement after a keep: its log, in the
    runs' folder, told a run that it was being re-measured, and how many runs had judged it (the runs before
    it), so a candidate could be fast for exactly as many runs as judging and re-measuring took, which README
    says it cannot learn from the server. The checks now run once every run of the measurement is over."""
    root = noisy_project(tmp_path, checks_command="true")
    (root / "evaluate.sh").write_text(TELLS_THE_RUNS_APART + (root / "evaluate.sh").read_text())
    git(root, "commit", "-qam", "the evaluator says when it sees the checks' log")
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="k")
        await agent.experiment("baseline")
        run, decision = await try_values(agent, "VALUES 0.5 0.52 0.48\n", "much better")
    assert decision["decision"] == "keep" and decision["remeasured"], decision
    logs = sorted((root / ".autoresearch" / "runs" / "k").glob("r2*.log"))
    told = [log.name for log in logs if "late" in log.read_text()]
    assert told == [], told
    assert (root / ".autoresearch" / "runs" / "k" / "r2-checks.log").exists()


# The output directory itself stays from run to run (only what it holds is moved aside): what a run may set on it,
# its extended attributes, a default ACL, its times, its mode, carried a message to the next run. Python's own
# calls; `user.*` attributes need a file system that keeps them (ext4, tmpfs since Linux 6.6).
MARKS_ITS_OUTPUT_DIRECTORY = """
import array, fcntl, os
seen = os.stat("out")
try:
    mark = os.getxattr("out", "user.answer").decode()
except OSError:
    mark = "none"
print("SEEN", mark, seen.st_mtime_ns, seen.st_atime_ns, oct(seen.st_mode))
try:
    os.setxattr("out", "user.answer", b"0.001")
    print("SET xattr")
except OSError as exc:
    print("REFUSED xattr", exc.strerror)
os.utime("out", ns=(123456789, 987654321))
os.chmod("out", 0o3751)
fd = os.open("out", os.O_RDONLY | os.O_DIRECTORY)
flags = array.array("l", [0])
try:
    fcntl.ioctl(fd, 0x80086601, flags, True)  # FS_IOC_GETFLAGS
    print("FLAGS", flags[0])
    fcntl.ioctl(fd, 0x40086602, array.array("l", [flags[0] | 0xC0]), True)  # chattr +d +A
    print("SET flags")
except OSError as exc:
    print("REFUSED flags", exc.strerror)
print("score: 1")
"""


def test_marks_one_run_leaves_on_its_output_directory_do_not_reach_the_next(tmp_path: Path) -> None:
    """A run set an extended attribute, the times, the mode and the inode flags of its output directory `out/` (which stays where
    it is, emptied), and the next run read them: a channel from run to run (a count of runs, an answer) in a
    project whose only writable entry is inside it, where README says nothing one run leaves reaches the next."""
    root = make_repo(tmp_path / "p", {"t.py": MARKS_ITS_OUTPUT_DIRECTORY})
    (root / "out").mkdir()
    (root / "out").chmod(0o755)
    first = _experiment(root, "r1", writable=["out"]).run()
    second = _experiment(root, "r2", writable=["out"]).run()
    assert first.status == second.status == "ok", (first, second)
    seen = Path(second.log_path).read_text().split("SEEN ", 1)[1].split()
    if "SET xattr" in Path(first.log_path).read_text():
        assert seen[0] != "0.001", seen
    assert seen[1] != "987654321" and seen[2] != "123456789" and seen[3] == "0o40755", seen
    first_log = Path(first.log_path).read_text()
    if "SET flags" in first_log:  # the flags the second run found are those the first run found
        assert (
            first_log.split("FLAGS ")[1].split()[0]
            == Path(second.log_path).read_text().split("FLAGS ")[1].split()[0]
        )


@pytest.mark.parametrize("line", ["score: 0,5", "METRIC score=0,5", "score: 1,250"])
def test_a_number_in_a_locales_format_is_never_read_as_its_integer_part(tmp_path: Path, line: str) -> None:
    """`printf "%.1f"` under a German locale prints `0,5`; a thousands separator prints `1,250`. The metric was
    read as `0` (or `1`), a silent wrong number that every run of the session shared (all equal, so each was
    kept as equal and simpler). Now the run ends `metric_error`, saying to print the number with a point."""
    root = make_repo(tmp_path / "p", {"t.py": f"print({line!r})\n"})
    result = _experiment(root, "r1").run()
    assert result.status == "metric_error" and "comma" in (result.error or ""), result


def test_a_secondary_figure_in_a_locales_format_is_left_out_never_read_as_its_integer_part(
    tmp_path: Path,
) -> None:
    """Review 22 left this: `METRIC extra=0,5` beside the metric was shown in the table as `extra = 0`, and
    `peak_vram_mb: 1,5` as 1 MB. A figure in a locale's format is now left out; one with a point is read."""
    lines = ["METRIC extra=0,5", "METRIC other=0.25", "peak_vram_mb: 1,5", "score: 1.0"]
    root = make_repo(tmp_path / "p", {"t.py": "".join(f"print({line!r})\n" for line in lines)})
    result = _experiment(root, "r1").run()
    assert result.status == "ok" and result.value == 1.0, result
    assert result.secondary == {"other": 0.25}, result.secondary
    assert result.memory_gb != 1 / 1024, result.memory_gb  # the sampled peak, not the misread 1 MB


PROGRESS_THEN_METRIC = {
    # tqdm with leave=False clears its bar with a carriage return and no newline: the print lands on its line
    "a progress bar": "import sys\nsys.stderr.write('50%|#####     |\\r\\x1b[K')\nsys.stderr.flush()\nprint('score: 0.4')\n",
    "a coloured label": "print('\\x1b[1;32mscore:\\x1b[0m 0.4')\n",
    "a bar then a coloured line": "print('step 9/10\\r\\x1b[32mMETRIC score=0.4\\x1b[0m')\n",
}


@pytest.mark.parametrize("case", sorted(PROGRESS_THEN_METRIC))
def test_a_metric_after_a_progress_bar_or_in_colour_is_read_as_a_terminal_shows_it(
    tmp_path: Path, case: str
) -> None:
    """Review 22 left this: an honest run whose metric line followed a progress bar's carriage return, or was
    coloured, ended `metric_error` (the line did not start with the name). What a terminal shows is read."""
    root = make_repo(tmp_path / "p", {"t.py": PROGRESS_THEN_METRIC[case]})
    result = _experiment(root, "r1").run()
    assert result.status == "ok" and result.value == 0.4, result


# The candidate reads what decides it: the session's state (the best's runs, the noise) and the logs of its own
# earlier runs (its values). With them it runs the server's own `sequential_test` (the package is readable too).
READS_WHAT_JUDGES_IT = """\
if grep -qs '"values"' .autoresearch/sessions/k.json; then echo SAW-STATE; fi
if ls .autoresearch/runs/k/r2*.log >/dev/null 2>&1 && grep -qs score .autoresearch/runs/k/r2.log; then echo SAW-LOGS; fi
"""


async def what_the_candidates_runs_saw(tmp_path: Path, agent_for, reads: str) -> tuple[list[Path], list[str]]:
    """A noisy project whose command first runs `reads` (printing `SAW-...` for what it found), a session of
    tag `k` with a candidate kept and re-measured: the candidate's run logs, and those that saw something."""
    require(ISOLATION.namespaces, "CI gives runs a private view", "namespaces are unavailable here")
    root = noisy_project(tmp_path)
    (root / "evaluate.sh").write_text(reads + (root / "evaluate.sh").read_text())
    git(root, "commit", "-qam", "the evaluator says what it reads")
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="k")
        await agent.experiment("baseline")
        await try_values(agent, "VALUES 0.5 0.52 0.48\n", "much better")
    logs = sorted((root / ".autoresearch" / "runs" / "k").glob("r2-*.log"))
    return logs, [log.name for log in logs if "SAW-" in log.read_text()]


async def test_a_run_cannot_read_the_records_that_judge_it(tmp_path: Path, agent_for) -> None:
    logs, seen = await what_the_candidates_runs_saw(tmp_path, agent_for, READS_WHAT_JUDGES_IT)
    assert logs and seen == [], seen
