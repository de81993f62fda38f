"""A run's private TMPDIR: named for the process that made it, removed after the run whatever the run left in it,
and removed by the next server when the one that made it was killed first (`sandbox/run_tmpdirs.py`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mcp_autoresearch.sandbox import run_tmpdirs
from mcp_autoresearch.sandbox.process_run import ProcessRun
from mcp_autoresearch.session.workspace import Workspace

from .helpers.needs import require

USER = 12345
NEEDS_ROOT = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv"
)


def _namespace() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


def _started(pid: int | str) -> int:
    with open(f"/proc/{pid}/stat", "rb") as handle:
        return int(handle.read().rsplit(b")", 1)[1].split()[19])


def _gone_process() -> tuple[int, int]:
    """The pid and start time of a process that ended (and was reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    started = _started(child.pid)
    child.communicate(b"")
    return child.pid, started


def _dead_servers_folder(base: Path, suffix: str = "x1y2z3") -> Path:
    pid, started = _gone_process()
    folder = base / f"{run_tmpdirs.PREFIX}{_namespace()}-{pid}-{started}-{suffix}"
    folder.mkdir(mode=0o700)
    return folder


def test_a_runs_tmpdir_is_named_for_its_process_and_removed_after_the_run(tmp_path: Path) -> None:
    """ProcessRun's TMPDIR carries its process's PID namespace, pid and start time, and is gone after the run
    (what the run wrote in it, a link out of it included)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("mine")
    run = ProcessRun(
        command=f'echo "$TMPDIR"; mkdir "$TMPDIR/d"; echo x > "$TMPDIR/d/f"; ln -s {outside} "$TMPDIR/l"',
        cwd=tmp_path,
        timeout_s=60,
        log_path=tmp_path / "run.log",
    )
    result = run.run()
    assert result.status == "exited" and result.exit_code == 0, (tmp_path / "run.log").read_text()
    tmpdir = Path((tmp_path / "run.log").read_text().splitlines()[0])
    assert tmpdir.name.startswith(f"{run_tmpdirs.PREFIX}{_namespace()}-{os.getpid()}-{_started('self')}-")
    assert not tmpdir.exists()
    assert (outside / "keep").read_text() == "mine"


def test_the_sweep_removes_only_the_folders_of_this_users_processes_that_are_gone(tmp_path: Path) -> None:
    """Removed: a folder whose process is gone, and one whose pid another process took since (its start time
    differs). Kept: a live process's (this one's), another PID namespace's, an older name's, a link named as a
    gone process's folder (and what it points to), a file so named; nothing outside is touched."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("mine")
    base = tmp_path / "tmp"
    base.mkdir()
    gone = _dead_servers_folder(base)
    (gone / "a" / "b").mkdir(parents=True)
    (gone / "a" / "b" / "f").write_text("x")
    (gone / "out").symlink_to(outside)
    (gone / "a" / "b").chmod(0o500)
    reused = base / f"{run_tmpdirs.PREFIX}{_namespace()}-{os.getpid()}-{_started('self') + 1}-aaaaaa"
    reused.mkdir()
    live = Path(run_tmpdirs.make())  # in the system's temporary directory, named for this process
    try:
        live_here = base / live.name
        live_here.mkdir()
        other_namespace = base / f"{run_tmpdirs.PREFIX}{_namespace() + 1}-{os.getpid() + 1}-1-bbbbbb"
        other_namespace.mkdir()
        older = base / f"{run_tmpdirs.PREFIX}k3j2h1g0"
        older.mkdir()
        pid, started = _gone_process()
        link = base / f"{run_tmpdirs.PREFIX}{_namespace()}-{pid}-{started}-cccccc"
        link.symlink_to(outside)
        pid, started = _gone_process()
        a_file = base / f"{run_tmpdirs.PREFIX}{_namespace()}-{pid}-{started}-dddddd"
        a_file.write_text("not a folder")

        removed = run_tmpdirs.sweep(str(base))

        assert sorted(removed) == sorted([str(gone), str(reused)])
        assert not gone.exists() and not reused.exists()
        for kept in (live_here, other_namespace, older, link, a_file):
            assert os.path.lexists(kept), kept
        assert (outside / "keep").read_text() == "mine" and os.readlink(link) == str(outside)
        assert live.is_dir()  # the system's temporary directory was not swept (another base was given)
    finally:
        os.rmdir(live)


def test_a_name_with_other_digits_is_kept_and_the_sweep_goes_on(tmp_path: Path) -> None:
    """A folder named like a run's TMPDIR but with digits other than ASCII ones (a superscript two, Arabic-Indic
    digits: `str.isdigit` says yes, `int` says no, or reads them as a number), which any user can make in the
    shared temporary directory: kept, and the folders after it are still swept. Failed before: the sweep raised
    ValueError, and with it every Workspace, so no server of any user of the machine could start."""
    base = tmp_path / "tmp"
    base.mkdir()
    pid, started = _gone_process()
    odd = [
        base / f"{run_tmpdirs.PREFIX}\u00b2-{pid}-{started}-eeeeee",
        base / f"{run_tmpdirs.PREFIX}{_namespace()}-\u0661\u0662-{started}-ffffff",
    ]
    for folder in odd:
        folder.mkdir()
    gone = _dead_servers_folder(base)

    assert run_tmpdirs.sweep(str(base)) == [str(gone)]
    assert all(folder.is_dir() for folder in odd) and not gone.exists()


def test_a_new_workspace_removes_the_folders_a_killed_server_left(ml_project: Path) -> None:
    """A server killed during a run leaves the run's TMPDIR in the system's temporary directory: the next server
    of the project (its Workspace) removes it, and leaves a live process's alone."""
    left = _dead_servers_folder(Path(tempfile.gettempdir()), "lefttt")
    (left / "f").write_text("x")
    live = Path(run_tmpdirs.make())
    try:
        Workspace(ml_project)
        assert not left.exists()
        assert live.is_dir()
    finally:
        os.rmdir(live)
        shutil.rmtree(left, ignore_errors=True)


REMOVE_AS_USER = """
import os, sys
sys.path.insert(0, sys.argv[1])
import run_tmpdirs
top, outside = sys.argv[2], sys.argv[3]
os.makedirs(f"{top}/locked/deeper")
open(f"{top}/locked/deeper/f", "w").write("x")
os.makedirs(f"{top}/hidden")
open(f"{top}/hidden/g", "w").write("y")
os.symlink(outside, f"{top}/link")
os.chmod(f"{top}/locked/deeper", 0o500)
os.chmod(f"{top}/locked", 0o500)
os.chmod(f"{top}/hidden", 0)
os.chmod(top, 0o500)
run_tmpdirs.remove(top)
print("LEFT" if os.path.lexists(top) else "GONE")
print("OUTSIDE", oct(os.stat(outside).st_mode & 0o777))
"""


def _remove_as_user(script: str, expected: list[str]) -> None:
    """Run `script` (given run_tmpdirs' folder, a folder `top` to make and remove, and a folder `outside` of the
    same user's, mode 0500) as uid USER, with the system's python; its output must be `expected`."""
    shared = Path(tempfile.mkdtemp(prefix="tmpdirs-as-user-"))
    try:
        shared.chmod(0o755)
        for module in ("run_tmpdirs.py", "namespaces.py", "landlock.py"):  # the mount table's reader
            shutil.copy(Path(run_tmpdirs.__file__).parent / module, shared / module)
        outside = shared / "outside"
        outside.mkdir(mode=0o500)
        os.chown(outside, USER, USER)
        os.chmod(outside, 0o500)
        work = shared / "work"
        work.mkdir()
        os.chown(work, USER, USER)
        top = work / "top"
        python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
        done = subprocess.run(
            [
                "setpriv",
                f"--reuid={USER}",
                f"--regid={USER}",
                "--clear-groups",
                python,
                "-I",
                "-c",
                script,
                str(shared),
                str(top),
                str(outside),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == expected, done.stdout + done.stderr
    finally:
        subprocess.run(["chmod", "-R", "u+rwx", str(shared)], check=False)
        subprocess.run(["rm", "-rf", "--", str(shared)], check=False)


@NEEDS_ROOT
def test_a_tmpdir_the_run_made_unwritable_is_removed_without_following_its_links(tmp_path: Path) -> None:
    """As an ordinary user (whose rights on a folder its mode decides): a run that took the write and search
    rights off its folders, and its TMPDIR's own, leaves nothing; a link in it to a folder of the same user is
    not followed (that folder keeps its mode). Failed before: the folders and their files were left."""
    _remove_as_user(REMOVE_AS_USER, ["GONE", "OUTSIDE", "0o500"])


REMOVE_DEEP_AS_USER = """
import os, resource, sys
sys.path.insert(0, sys.argv[1])
import run_tmpdirs
top, outside = sys.argv[2], sys.argv[3]
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))  # a usual limit: fewer descriptors than the depth
os.mkdir(top)
fd, locked = os.open(top, os.O_RDONLY), []
for depth in range(3000):
    os.mkdir("d", dir_fd=fd)
    os.symlink(outside, "link", dir_fd=fd)
    child = os.open("d", os.O_RDONLY, dir_fd=fd)
    if depth % 700 == 0:
        locked.append(fd)
    else:
        os.close(fd)
    fd = child
os.close(fd)
for fd in reversed(locked):
    os.chmod(f"/proc/self/fd/{fd}", 0o500)
    os.close(fd)
run_tmpdirs.remove(top)
print("LEFT" if os.path.lexists(top) else "GONE")
print("OUTSIDE", oct(os.stat(outside).st_mode & 0o777))
"""


@NEEDS_ROOT
def test_a_tmpdir_deeper_than_a_process_can_walk_with_unwritable_folders_deep_down_is_removed() -> None:
    """A run's TMPDIR 3000 folders deep (each with a link out), some of them made unwritable, the deepest ones
    below the depth Python's recursion and 1024 descriptors reach: their rights are given back walking the tree
    with one descriptor at a time, then `rm -rf` removes it all; the links are not followed. Failed before: the
    tree was left (the walk that gives the rights back stopped at the recursion limit)."""
    _remove_as_user(REMOVE_DEEP_AS_USER, ["GONE", "OUTSIDE", "0o500"])


SWEEP_IN_A_PID_NAMESPACE = """
import os, sys
sys.path.insert(0, sys.argv[1])
import run_tmpdirs
folder = run_tmpdirs.make()  # a live server's run TMPDIR
swept = run_tmpdirs.sweep()  # another Workspace of the same sandbox (a second server, the CLI)
print("KEPT" if os.path.isdir(folder) else "REMOVED", folder in swept)
if os.path.isdir(folder):
    os.rmdir(folder)
"""


@NEEDS_ROOT
def test_in_a_pid_namespace_without_its_own_proc_a_live_servers_tmpdir_is_kept() -> None:
    """A server in a PID namespace that still sees the host's /proc (`unshare -p`, `bwrap --unshare-pid` without
    `--proc`): its pids are not /proc's, so its own pid there is another process, whose start time differs. Its
    live run's TMPDIR is kept by the sweep of any Workspace in the sandbox. Failed before: it was removed (the
    process named in it looked gone, its pid reused)."""
    require(shutil.which("unshare"), "CI installs util-linux (unshare)", "unshare is needed")
    shared = Path(tempfile.mkdtemp(prefix="tmpdirs-pidns-"))
    try:
        for module in ("run_tmpdirs.py", "namespaces.py", "landlock.py"):  # the mount table's reader
            shutil.copy(Path(run_tmpdirs.__file__).parent / module, shared / module)
        python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
        done = subprocess.run(
            ["unshare", "--pid", "--fork", python, "-I", "-c", SWEEP_IN_A_PID_NAMESPACE, str(shared)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["KEPT", "False"], done.stdout + done.stderr
    finally:
        shutil.rmtree(shared)


@NEEDS_ROOT
def test_a_tmpdir_with_a_mount_in_it_is_left_and_nothing_is_removed_through_the_mount(tmp_path: Path) -> None:
    """A run with the right to mount (root, unconfined) binds a folder of the user's into its TMPDIR and ends
    (or its server is killed): removing the TMPDIR would remove the folder's files through the mount. It is
    left as it is, after the run and by the sweep. Failed before: the user's file was removed."""
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "work.txt").write_text("the user's")
    after_run = Path(run_tmpdirs.make())
    base = tmp_path / "tmp"
    base.mkdir()
    swept = _dead_servers_folder(base)
    mounted = []
    try:
        for folder in (after_run, swept):
            (folder / "bound").mkdir()
            subprocess.run(["mount", "--bind", str(precious), str(folder / "bound")], check=True)
            mounted.append(folder / "bound")
        run_tmpdirs.remove(str(after_run))
        assert run_tmpdirs.sweep(str(base)) == []  # nothing removed, nothing said removed
        assert (precious / "work.txt").read_text() == "the user's"
        assert (after_run / "bound" / "work.txt").exists() and (swept / "bound" / "work.txt").exists()
    finally:
        for point in mounted:
            subprocess.run(["umount", str(point)], check=False)
        shutil.rmtree(after_run, ignore_errors=True)


REMOVE_BENEATH_A_NAME_NOT_UTF8_DECODED = """
import os, subprocess, sys, tempfile
sys.path.insert(0, sys.argv[1])
import run_tmpdirs
folder = run_tmpdirs.make()  # in $TMPDIR, whose name the ASCII file system encoding reads with escapes
bound = os.path.join(folder, "bound")
os.mkdir(bound)
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", bound], check=True)
with open(os.path.join(bound, "work.txt"), "w") as handle:
    handle.write("the user's")
run_tmpdirs.remove(folder)
print(sys.getfilesystemencoding(), "KEPT" if os.path.exists(os.path.join(bound, "work.txt")) else "REMOVED")
subprocess.run(["umount", bound], check=True)
"""


@NEEDS_ROOT
def test_a_mount_in_a_tmpdir_under_a_name_the_locale_cannot_spell_is_still_seen(tmp_path: Path) -> None:
    """A server whose file system encoding is not UTF-8 (the C locale with UTF-8 mode off) reads a $TMPDIR
    named in UTF-8 with escaped bytes; the mount table's points must be read the same way, or a mount in a run's
    TMPDIR there is not seen and its files are removed through it. Failed before: REMOVED (the mount table was
    read as UTF-8)."""
    require(shutil.which("unshare"), "CI installs util-linux (unshare)", "unshare is needed")
    for module in ("run_tmpdirs.py", "namespaces.py", "landlock.py"):  # the mount table's reader
        shutil.copy(Path(run_tmpdirs.__file__).parent / module, tmp_path / module)
    base = tmp_path / "t\u00e9mp"
    base.mkdir()
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TMPDIR": str(base)}
    # LC_ALL set: the C locale is not coerced to UTF-8, and -X utf8=0 keeps UTF-8 mode off.
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", python, "-I", "-X", "utf8=0"]
        + ["-c", REMOVE_BENEATH_A_NAME_NOT_UTF8_DECODED, str(tmp_path)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ascii", "KEPT"], done.stdout + done.stderr


def test_a_temporary_directory_gone_since_the_server_started_fails_the_start_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temporary directory the server chose when it started ($TMPDIR, /tmp) removed, full or read-only since:
    no run's TMPDIR can be made. The run fails to start, its log says why and what to do, and its log's
    descriptor is closed. Failed before: an OSError out of the run ("internal error while running:
    FileNotFoundError"), and one descriptor leaked a run."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "gone"))
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        result = ProcessRun(
            command="echo ran", cwd=tmp_path, timeout_s=60, log_path=tmp_path / "run.log"
        ).run()
        log = (tmp_path / "run.log").read_text()
        assert result.status == "failed_to_start" and "ran" not in log, log
        assert f"could not make the run's temporary directory in {tmp_path / 'gone'}" in log, log
        assert result.error is not None and "TMPDIR" in result.error, result.error
    assert len(os.listdir("/proc/self/fd")) <= fds  # (another test's objects may be collected meanwhile)
