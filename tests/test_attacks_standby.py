"""The standby command process of a spare (`sandbox/standby.py`, `view.View`) attacked as a run, or an honest
run with unusual needs, would: the request it is handed, the paths it shows again, the hidden ones."""

from __future__ import annotations

import ast
import os
import re
import shutil
import stat
import sys
import tempfile
from pathlib import Path

import pytest

from mcp_autoresearch.sandbox.launcher import Launcher, LauncherError

from .helpers.needs import require
from .test_launcher import ISOLATION, VIEW, _prepared_like, _run_spec

require(
    ISOLATION.namespaces,
    "CI must run the private view",
    f"namespaces are unavailable here: {ISOLATION.reason}",
)


def _env_of(size: int) -> dict[str, str]:
    """The test's environment with `size` more bytes, in variables under the kernel's limit for one (128 kB)."""
    return {**os.environ, "BIG1": "x" * (size // 2), "BIG2": "y" * (size - size // 2)}


def test_the_largest_request_the_launcher_takes_runs_in_the_standby_process(
    launcher: Launcher, tmp_path: Path
) -> None:
    """An honest run whose environment is as large as the launcher takes (it falls back to a keeper started
    directly beyond) runs in a spare's standby process as it would without one: its request to the standby
    process, a little larger than the launcher's, once did not fit in one message ("the standby command process
    is gone (Message too long)", exit 125)."""
    spec = {**VIEW, "write": [str(tmp_path / "w")]}
    script = 'echo "pid $$ $((${#BIG1} + ${#BIG2}))"'
    taken, refused = 100_000, 300_000
    while refused - taken > 16:  # the launcher's own limit on a request (its channel's buffer)
        size = (taken + refused) // 2
        try:
            _run_spec(launcher, tmp_path, script, spec, _env_of(size))
            taken = size
        except LauncherError:
            refused = size
    spares = _prepared_like(launcher, tmp_path, spec)
    keeper, code, output = _run_spec(launcher, tmp_path, script, spec, _env_of(taken))
    assert keeper in spares
    assert (code, output) == (0, f"pid 1 {taken}\n"), (code, output)


def test_a_standby_made_for_a_run_stage_hides_the_target_from_the_evaluation(
    launcher: Launcher, tmp_path: Path
) -> None:
    """The evaluation stage hides the target (a file) that the run stage shows: a spare made for the run stage
    serves the evaluation with the target hidden, whether the target lies in a writable folder or in the
    working directory, and a spare made for the evaluation shows it again to the next run."""
    (tmp_path / "w" / "target.py").write_text("SECRET-W")
    (tmp_path / "target.py").write_text("SECRET-CWD")
    spec = {**VIEW, "write": [str(tmp_path / "w")]}
    hidden = {**spec, "hide": [str(tmp_path / "w" / "target.py"), str(tmp_path / "target.py")]}
    read = "cat w/target.py target.py; echo; echo x >> w/target.py && echo wrote"
    spares = _prepared_like(launcher, tmp_path, spec)
    keeper, code, output = _run_spec(launcher, tmp_path, read, hidden)
    assert keeper in spares
    assert "SECRET" not in output, output
    assert (tmp_path / "w" / "target.py").read_text() == "SECRET-W"
    spares = _prepared_like(launcher, tmp_path, hidden)
    keeper, code, output = _run_spec(launcher, tmp_path, "cat w/target.py target.py", spec)
    assert keeper in spares and output == "SECRET-WSECRET-CWD", output


def test_a_hidden_folder_made_anew_after_the_standby_is_still_hidden(launcher: Launcher) -> None:
    """The standby process hid the folder when it was made: a user who makes the hidden data anew since (removes
    the folder and writes a new one, or moves a new one in its place) must find the new one hidden from the next
    run as well (the old folder's cover does not stay on the new one). The project lies outside /tmp, where the
    view shows the working directory as it is, not a copy taken with the request."""
    project = Path(tempfile.mkdtemp(prefix="standby-hidden-", dir=Path.home()))
    try:
        (project / "w").mkdir()
        data = project / "data"
        data.mkdir()
        (data / "secret").write_text("old")
        spec = {**VIEW, "write": [str(project / "w")], "hide": [str(data)]}
        for replace in ("remove", "move"):
            spares = _prepared_like(launcher, project, spec)
            if replace == "remove":
                shutil.rmtree(data)
            else:
                data.rename(project / "data.old")
            data.mkdir()
            (data / "secret").write_text(f"new, after {replace}")
            keeper, code, output = _run_spec(launcher, project, "cat data/secret; ls -A data | wc -l", spec)
            assert keeper in spares
            assert "new" not in output and output.splitlines()[-1] == "0", (replace, output)
            shutil.rmtree(project / "data.old", ignore_errors=True)
    finally:
        shutil.rmtree(project)


def _change(project: Path, data: Path, change: str) -> None:
    """The hidden data changed after the standby process hid it, as `change` says (the new data is SECRET)."""
    if change == "made anew":
        shutil.rmtree(data)
        data.mkdir()
    elif change == "moved behind a link":
        data.rename(data.parent / "data.old")
        data.symlink_to("data.old")
    elif change == "its folder moved behind a link":
        (project / "in").rename(project / "in.old")
        (project / "in").symlink_to("in.old")
    else:  # "made after the standby"
        data.mkdir()
    (data / "secret").write_text("SECRET")


@pytest.mark.parametrize(
    "change", ["made anew", "moved behind a link", "its folder moved behind a link", "made after the standby"]
)
@pytest.mark.parametrize("place", ["/tmp", "home"])
def test_hidden_data_changed_after_the_standby_is_hidden_wherever_the_project_lies(
    launcher: Launcher, tmp_path: Path, place: str, change: str
) -> None:
    """The request's hidden folders are judged outside the view (`view.directories`, by the keeper) and the view
    made ahead is kept when they are the folders it hid. A project under /tmp (its folders shown again through
    copies taken with the request) or under $HOME whose hidden data was made anew, moved behind a link, reached
    through a folder moved behind a link, or made only after the standby process, shows none of it to the next
    run, and the second hidden folder (the server's runs) stays hidden too."""
    project = tmp_path if place == "/tmp" else Path(tempfile.mkdtemp(prefix="standby-", dir=Path.home()))
    try:
        (project / "w").mkdir(exist_ok=True)
        data, runs = project / "in" / "data", project / ".autoresearch" / "runs"
        runs.mkdir(parents=True)
        (runs / "log").write_text("SECRET-LOG")
        (project / "in").mkdir()
        if change != "made after the standby":
            data.mkdir()
            (data / "secret").write_text("old")
        spec = {**VIEW, "write": [str(project / "w")], "hide": [str(data), str(runs)]}
        spares = _prepared_like(launcher, project, spec)
        _change(project, data, change)
        read = "; ".join(
            f"cat {path} 2>&1; echo"
            for path in (
                "in/data/secret",
                "in/data.old/secret",
                "in.old/data/secret",
                ".autoresearch/runs/log",
            )
        )
        keeper, code, output = _run_spec(launcher, project, f"{read}; ls -A in/data .autoresearch/runs", spec)
        assert keeper in spares
        assert code == 0 and "SECRET" not in output, output
    finally:
        if place != "/tmp":
            shutil.rmtree(project)


def test_a_block_device_added_after_the_standby_is_hidden(launcher: Launcher, tmp_path: Path) -> None:
    """The view hides every block device (a root run owns root's disks); one that appears after the standby
    process was made (a disk plugged in, a loop device set up), or is made anew at the name of one it hid, is
    hidden from the next run as well."""
    require(os.geteuid() == 0, "CI runs as root", "making a device node needs root")
    spec = {**VIEW, "write": [str(tmp_path / "w")]}
    node = Path(f"/dev/autoresearch-test-disk-{os.getpid()}")
    try:
        for _ in ("added", "made anew"):
            spares = _prepared_like(launcher, tmp_path, spec)
            node.unlink(missing_ok=True)
            os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(7, 0))  # loop0's numbers
            keeper, code, output = _run_spec(
                launcher, tmp_path, f"test -b {node} && echo shown || echo hidden", spec
            )
            assert keeper in spares
            assert (code, output) == (0, "hidden\n"), output
    finally:
        node.unlink(missing_ok=True)


def test_a_writable_file_replaced_after_the_standby_is_the_one_written(
    launcher: Launcher, tmp_path: Path
) -> None:
    """A writable path that is a file, replaced since the spare was made (a new file moved over it): the run
    writes the new file, not the old one (still open somewhere), and nothing beside it."""
    log = tmp_path / "w" / "log.txt"
    log.write_text("old\n")
    spec = {**VIEW, "write": [str(log)]}
    spares = _prepared_like(launcher, tmp_path, spec)
    old = open(log, "rb")  # noqa: SIM115 (kept open: the old file stays reachable)
    try:
        (tmp_path / "w" / "new.txt").write_text("new\n")
        os.rename(tmp_path / "w" / "new.txt", log)
        keeper, code, output = _run_spec(
            launcher, tmp_path, "echo run >> w/log.txt; echo x > w/other.txt || echo refused", spec
        )
        assert keeper in spares
        assert log.read_text() == "new\nrun\n", output
        assert old.read() == b"old\n"
        assert not (tmp_path / "w" / "other.txt").exists() and "refused" in output, output
    finally:
        old.close()


def test_a_writable_link_pointed_elsewhere_after_the_standby_writes_only_its_new_target(
    launcher: Launcher, tmp_path: Path
) -> None:
    """A writable folder given through a link, the link pointed to another folder since the spare was made: the
    run writes in the new target only (not in the old one, which the spare's ruleset and view were made for)."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    link = tmp_path / "w" / "out"
    link.symlink_to(tmp_path / "a")
    spec = {**VIEW, "write": [str(link)]}
    spares = _prepared_like(launcher, tmp_path, spec)
    link.unlink()
    link.symlink_to(tmp_path / "b")
    keeper, code, output = _run_spec(
        launcher, tmp_path, f"echo x > w/out/x; echo y > {tmp_path / 'a'}/y || echo refused", spec
    )
    assert keeper in spares
    assert (tmp_path / "b" / "x").read_text() == "x\n", output
    assert not (tmp_path / "a" / "y").exists() and "refused" in output, output


def test_arguments_and_environment_that_are_no_utf8_reach_the_command_in_the_standby(
    launcher: Launcher, tmp_path: Path
) -> None:
    """Bytes that are no UTF-8 in an argument or a variable (a file name in Latin-1, as the system hands them
    to Python) reach the command run by a standby process unchanged."""
    spec = {**VIEW, "write": [str(tmp_path / "w")]}
    spares = _prepared_like(launcher, tmp_path, spec)
    env = {**os.environ, "ODD": os.fsdecode(b"caf\xe9")}
    script = os.fsdecode(b'printf "%s|%s" "$ODD" "na\xefve" | od -An -tx1 | tr -d " \\n"')
    keeper, code, output = _run_spec(launcher, tmp_path, script, spec, env)
    assert keeper in spares
    assert (code, output) == (0, (b"caf\xe9|na\xefve").hex()), output


def test_a_hidden_folder_removed_after_the_standby_does_not_fail_the_run(launcher: Launcher) -> None:
    """The hidden data removed since the standby process hid it (and not made again): the next run starts as
    usual (the cover went with the folder: nothing is left to take away)."""
    project = Path(tempfile.mkdtemp(prefix="standby-removed-", dir=Path.home()))
    try:
        (project / "w").mkdir()
        (project / "data").mkdir()
        spec = {**VIEW, "write": [str(project / "w")], "hide": [str(project / "data")]}
        spares = _prepared_like(launcher, project, spec)
        shutil.rmtree(project / "data")
        keeper, code, output = _run_spec(launcher, project, "echo started", spec)
        assert keeper in spares
        assert (code, output) == (0, "started\n"), output
    finally:
        shutil.rmtree(project)


# A run's code hunting for the view's spent copy of every mount (`View.let_go`: a writable copy, held by the
# keeper in a message it never reads) or any other descriptor that reaches outside its writable paths: its own
# descriptors, every process it can name (pidfd_getfd of each descriptor), the messages waiting on any socket
# it gets, a copy of the mounts or the namespace of its own; then a write through each to a file outside.
_HUNT = r"""
import ctypes, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
target = sys.argv[1].lstrip("/")
got, tried = [], 0
own = [int(fd) for fd in os.listdir("/proc/self/fd")]
got += [fd for fd in own if fd > 2 and os.path.exists(f"/proc/self/fd/{fd}")]
for pid in range(1, 1 << 15):
    if pid == os.getpid():
        continue
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        continue
    for fd in range(256):
        copy = libc.syscall(438, pidfd, fd, 0)
        if copy >= 0:
            got.append(copy)
for fd in list(got):
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        continue
    try:
        while True:
            data, fds, _, _ = socket.recv_fds(sock, 64, 16, socket.MSG_DONTWAIT)
            got += fds
            if not data and not fds:
                break
    except OSError:
        pass
for path in ("/proc/self/ns/mnt", "/proc/1/ns/mnt"):
    try:
        ns = os.open(path, os.O_RDONLY)
        tried += 1
        if libc.setns(ns, 0x00020000) == 0:
            got.append(os.open("/", os.O_RDONLY | os.O_DIRECTORY))
    except OSError:
        pass
clone = libc.syscall(428, -100, b"/", 1 | 0x8000)  # open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)
if clone >= 0:
    got.append(clone)
wrote = 0
for fd in got:
    try:
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, dir_fd=fd))
        wrote += 1
    except OSError:
        pass
links = lambda fds: sorted({os.readlink(f"/proc/self/fd/{fd}") for fd in fds})
print("wrote", wrote, "got", links(got), "stdio", links([0, 1, 2]))
"""


def _hunt(launcher: Launcher, tmp_path: Path, spec: dict[str, object]) -> tuple[int, str]:
    """Run `_HUNT` with `spec`: (its keeper's pid, its output), once it wrote nothing outside."""
    outside = tmp_path / "outside"
    (tmp_path / "hunt.py").write_text(_HUNT)
    keeper, code, output = _run_spec(
        launcher, tmp_path, f"{os.path.realpath(sys.executable)} -I hunt.py {outside}", spec
    )
    assert code == 0, output
    assert not outside.exists(), output
    return keeper, output


def test_a_run_reaches_no_copy_of_the_mounts_and_no_descriptor_of_its_keeper(
    launcher: Launcher, tmp_path: Path
) -> None:
    """The spent copy of every mount waits on the keeper's end of the channel; the run's end closed at its
    `exec`, the keeper is outside the run's PID namespace (and Landlock's domain), the run cannot clone the
    mounts or enter another namespace (sealed): nothing it can name writes outside its writable paths, with
    output directories (the listener sent first on the channel) or without."""
    (tmp_path / "w").mkdir(exist_ok=True)
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"  # outside the working directory: no output dir
    elsewhere.mkdir()
    try:
        for write in (tmp_path / "w", elsewhere):
            spec = {**VIEW, "write": [str(write)]}
            spares = _prepared_like(launcher, tmp_path, spec)
            keeper, output = _hunt(launcher, tmp_path, spec)
            assert keeper in spares
            # what it got: its shell's standard files (its parent in the run), nothing else
            found = re.fullmatch(r"wrote (\d+) got (\[.*\]) stdio (\[.*\])\n", output)
            assert found is not None, output
            wrote, got, stdio = found.groups()
            assert wrote == "0" and set(ast.literal_eval(got)) <= set(ast.literal_eval(stdio)), (
                write,
                output,
            )
    finally:
        shutil.rmtree(elsewhere)


def test_a_run_in_a_standby_process_is_the_oom_killers_first_choice(
    launcher: Launcher, tmp_path: Path
) -> None:
    """The OOM score of review 18 (`test_attacks_review18.py`) in a spare's standby process too, the path of
    nearly every run: set before its view closed /proc/self to writes, inherited by the command."""
    require(ISOLATION.confined and ISOLATION.namespaces, "CI confines runs", "runs are not confined here")
    spec = {**VIEW, "write": [str(tmp_path / "w")]}
    spares = _prepared_like(launcher, tmp_path, spec)
    keeper, code, output = _run_spec(launcher, tmp_path, "cat /proc/self/oom_score_adj", spec)
    assert keeper in spares
    assert (code, output) == (0, "1000\n"), (code, output)
