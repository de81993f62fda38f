"""The list of block devices a spare's view hides (`namespaces._block_devices`), made once in the launcher and
inherited by every spare, attacked as a host that changes /dev while the launcher lives would: a device node
bind-mounted over another /dev name, a node in a subfolder of /dev, /dev's times put back (`touch -d`)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_autoresearch.sandbox import namespaces
from mcp_autoresearch.sandbox.launcher import Launcher

from .helpers.needs import require
from .test_launcher import ISOLATION, VIEW, _prepared_like, _run_spec, _until
from .test_private_view import AS_USER, KEEPER_MODULES, MODULES, USER

require(
    ISOLATION.namespaces,
    "CI must run the private view",
    f"namespaces are unavailable here: {ISOLATION.reason}",
)


def _settled(folder: str) -> bool:
    """Whether `folder` changed more than the view's settling time ago (its list of devices is then kept)."""
    st = os.stat(folder)
    return time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > namespaces.SETTLED_NS


@pytest.fixture
def node() -> Iterator[Path]:
    """A character node of the test's own under /dev (the null device's numbers), taken away at the end (with
    whatever is mounted on it)."""
    require(os.geteuid() == 0, "CI runs as root", "making a device node and mounting need root")
    path = Path(f"/dev/autoresearch-test-bound-{os.getpid()}")
    path.unlink(missing_ok=True)
    os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    yield path
    while subprocess.run(["umount", "-l", str(path)], capture_output=True).returncode == 0:
        continue
    path.unlink(missing_ok=True)


def test_a_block_device_bound_over_a_dev_name_after_the_launcher_started_is_hidden(
    launcher: Launcher, tmp_path: Path, node: Path
) -> None:
    """A block device bind-mounted over a /dev name that is no block device (a container's device given under
    another name) once the launcher has read /dev: the mount leaves /dev's times as they were, so the list the
    launcher read, which every spare inherits, does not hold it. The spares made again after the mount (the
    launcher watches the mount table) hide it all the same."""
    spec = {**VIEW, "write": [str(tmp_path / "w")]}
    _until(lambda: _settled("/dev"), "/dev unchanged for the settling time")
    _prepared_like(
        launcher, tmp_path, spec
    )  # the launcher read /dev (kept: settled) with the node a char one
    disk = tmp_path / "disk"
    os.mknod(disk, 0o600 | stat.S_IFBLK, os.makedev(7, 0))  # loop0's numbers
    subprocess.run(["mount", "--bind", str(disk), str(node)], check=True)
    assert stat.S_ISBLK(os.stat(node).st_mode)
    for i in range(3):  # the spare made before the mount, then spares made after it
        _, code, output = _run_spec(launcher, tmp_path, f"test -b {node} && echo shown || echo hidden", spec)
        assert (code, output) == (0, "hidden\n"), (i, output)


def test_dev_times_put_back_do_not_make_a_fresh_list_of_devices_kept() -> None:
    """/dev's modification time put back (`touch -d`, as a tool restoring times would) just after a change: the
    list read now may miss a node made within the same tick of the file system's clock, so it is not kept. The
    change time, which no one can put back, says /dev just changed."""
    require(os.geteuid() == 0, "CI runs as root", "setting /dev's times needs root")
    before = os.stat("/dev")
    while True:
        start = time.time_ns()
        os.utime("/dev", ns=(before.st_atime_ns, before.st_mtime_ns - 10 * namespaces.SETTLED_NS))
        namespaces.forget_block_devices()
        namespaces._block_devices()
        kept = namespaces._devices_seen is not None
        os.utime("/dev", ns=(before.st_atime_ns, before.st_mtime_ns))
        if time.time_ns() - start < namespaces.SETTLED_NS // 2:
            break  # else too slow under load to tell: once more
    namespaces.forget_block_devices()
    assert not kept


def test_a_block_device_in_a_subfolder_of_dev_is_hidden(launcher: Launcher, tmp_path: Path) -> None:
    """A block device made in a folder of /dev (a new one, then one deeper in it once the list holding the
    folder is kept: only that folder's times move) is hidden as one in /dev itself is."""
    require(os.geteuid() == 0, "CI runs as root", "making a device node needs root")
    spec = {**VIEW, "write": [str(tmp_path / "w")]}
    folder = Path(f"/dev/autoresearch-test-folder-{os.getpid()}")
    nodes = [folder / "disk", folder / "deeper" / "disk"]
    try:
        for node in nodes:
            if folder.exists():  # the second time: the list holding the folders kept before the node is made
                _until(
                    lambda: all(map(_settled, ("/dev", str(folder), str(nodes[1].parent)))), "/dev settled"
                )
            _prepared_like(launcher, tmp_path, spec)
            nodes[1].parent.mkdir(parents=True, exist_ok=True)
            os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(7, 0))  # loop0's numbers
            _, code, output = _run_spec(
                launcher, tmp_path, f"test -b {node} && echo shown || echo hidden", spec
            )
            assert (code, output) == (0, "hidden\n"), (node, output)
    finally:
        for node in reversed(nodes):
            node.unlink(missing_ok=True)
            if node.parent.exists():
                node.parent.rmdir()


def test_an_honest_run_works_while_dev_changes_again_and_again(launcher: Launcher, tmp_path: Path) -> None:
    """Block devices made, made anew, renamed and removed (a listed one gone before the view hides it) between
    runs, many times while the launcher lives: every run still starts, served by a spare, and sees none."""
    require(os.geteuid() == 0, "CI runs as root", "making a device node needs root")
    spec = {**VIEW, "write": [str(tmp_path / "w")]}
    base = f"/dev/autoresearch-test-churn-{os.getpid()}"
    names = [Path(f"{base}-{i}") for i in range(3)]
    script = f"for n in {base}-*; do test -b $n && echo shown $n; done; echo done"
    try:
        for round_ in range(8):
            spares = _prepared_like(launcher, tmp_path, spec)
            step = round_ % 4
            if step == 0:  # made
                for name in names[:2]:
                    os.mknod(name, 0o600 | stat.S_IFBLK, os.makedev(7, 0))
            elif step == 1:  # renamed
                os.rename(names[0], names[2])
            elif step == 2:  # made anew at a listed name
                names[1].unlink()
                os.mknod(names[1], 0o600 | stat.S_IFBLK, os.makedev(7, 1))
            else:  # every one removed
                for name in names:
                    name.unlink(missing_ok=True)
            keeper, code, output = _run_spec(launcher, tmp_path, script, spec)
            assert (code, output) == (0, "done\n"), (round_, output)
            assert keeper in spares
    finally:
        for name in names:
            name.unlink(missing_ok=True)


def test_a_device_node_outside_dev_opens_nothing_and_dev_still_works(
    launcher: Launcher, tmp_path: Path
) -> None:
    """A device node outside /dev (a disk's in a chroot's or an image's folder, an output folder's): a root run
    could read a disk around every mount through one. Every mount of the view but /dev is without devices:
    nodes in the run's working directory and in its writable folder open nothing, while /dev's work as before.
    (This machine's disks refuse root's raw reads whatever the mount: the nodes here are the null and zero
    devices', which open wherever devices are allowed.) Failed before: the run read both through the nodes."""
    require(os.geteuid() == 0, "CI runs as root", "making a device node needs root")
    writable = tmp_path / "w"
    writable.mkdir(exist_ok=True)
    nodes = [tmp_path / "zero", writable / "zero", tmp_path / "null"]
    for node in nodes:
        os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(1, 3 if node.name == "null" else 5))
    spec = {**VIEW, "write": [str(writable), "/dev/null"]}
    script = (
        f"for node in {' '.join(map(str, nodes))}; do "
        '  if head -c 1 "$node" > /dev/null 2>&1; then echo "opened $node"; else echo "refused $node"; fi; '
        "done; "
        "head -c 4 /dev/zero | od -An -tx1; echo x > /dev/null && echo null-ok"
    )
    _, code, output = _run_spec(launcher, tmp_path, script, spec)
    assert code == 0, output
    lines = output.split("\n")
    assert lines[:3] == [f"refused {node}" for node in nodes], output
    assert lines[3].split() == ["00", "00", "00", "00"] and lines[4] == "null-ok", output
    for node in nodes:  # outside the view they open: the test's premise
        with open(node, "rb") as handle:
            handle.read(1)


def test_as_an_ordinary_user_a_device_bound_under_dev_opens_beside_a_mount_the_host_made_without_devices(
    tmp_path: Path,
) -> None:
    """A device bind-mounted under /dev (a GPU's in a rootless container) beside a mount under /dev the host made
    without devices (/dev/shm and /dev/mqueue are, on most hosts): in a user namespace the kernel refuses to give
    devices back to the whole of /dev at once (that mount's flag is locked), and /dev alone got them. Each mount
    under /dev gets them on its own now (the locked one stays without: it was so on the host too). Here the host
    is a private mount namespace of the test's (/dev/shm a tmpfs without devices, the zero device bound over
    /dev/full), the keeper run by uid 12345. Failed before: the bound device was refused (Permission denied)."""
    require(os.geteuid() == 0, "CI runs as root", "mounting and changing user need root")
    tools = [shutil.which(name) for name in ("setpriv", "unshare")]
    require(all(tools), "CI installs util-linux", "setpriv and unshare are needed")
    run = "head -c 2 /dev/full | od -An -tx1; head -c 2 /dev/zero | od -An -tx1; cat /dev/null && echo ok"
    host = ["mount -t tmpfs -o nodev tmpfs /dev/shm", "mount --bind /dev/zero /dev/full"]
    done, output = _keeper_as_user_in_a_host_of_the_tests("view-user-devices-", host, run)
    assert done.returncode == 0, output
    assert done.stdout.split() == ["00", "00", "00", "00", "ok"], output


def test_as_an_ordinary_user_inside_a_bubblewrap_sandbox_the_view_builds_and_dev_works() -> None:
    """The server in a bubblewrap sandbox (as agent harnesses run one): its /dev is a tmpfs made without devices,
    the device nodes bind-mounted onto it one by one, all in a user namespace, whose flags the view may not
    change. The view still builds, /dev's nodes open, and a run still makes no device node. Failed before: the
    view refused to build ("devices in /dev: Operation not permitted"), so no run could start."""
    require(os.geteuid() == 0, "CI runs as root", "changing user needs root")
    require(shutil.which("bwrap") and shutil.which("setpriv"), "CI installs bubblewrap", "bwrap is needed")
    home = Path(tempfile.mkdtemp(prefix="view-in-bwrap-"))
    try:
        for name in KEEPER_MODULES:
            shutil.copy(MODULES / name, home / name)
        (home / "project" / "out").mkdir(parents=True)
        subprocess.run(["chown", "-R", f"{USER}:{USER}", str(home)], check=True)
        sandbox = ["bwrap", "--unshare-user", "--unshare-pid", "--bind", "/", "/", "--dev", "/dev"]
        sandbox += ["--proc", "/proc", "--tmpfs", "/tmp", "--bind", str(home), str(home), "--"]
        confine = [str(home / "confine.py"), "--landlock", "--view", "--no-network"]
        run = "head -c 2 /dev/zero | od -An -tx1; cat /dev/null && mknod out/node c 1 5 || echo no-node"
        done = subprocess.run(
            [*AS_USER[:-3], *sandbox, *AS_USER[-3:], *confine, "-w", str(home / "project" / "out")]
            + ["--", "/bin/sh", "-c", run],
            cwd=home / "project",
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": "/usr/bin:/bin"},
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output
        assert done.stdout.split() == ["00", "00", "no-node"], output
    finally:
        shutil.rmtree(home)


def test_character_devices_that_reach_a_disk_are_listed_with_the_block_devices(monkeypatch) -> None:
    """An NVMe namespace's generic node (/dev/ng0n1), a SCSI generic (/dev/sg0) or bsg node reads a disk as its
    block device does, with only the node's file rights: such character devices are hidden with the block
    devices, known by the subsystem the kernel names for their numbers (/sys/dev/char/M:m/subsystem). This
    machine has none: the test lists the memory devices' subsystem ("mem": /dev/zero, /dev/null) as one that
    reaches a disk, and checks that they are listed then, and not otherwise, while a terminal never is."""
    assert {"nvme-generic", "scsi_generic", "bsg"} <= set(namespaces.DISK_SUBSYSTEMS)
    namespaces.forget_block_devices()
    listed = namespaces._block_devices()
    assert "/dev/zero" not in listed and "/dev/null" not in listed
    monkeypatch.setattr(namespaces, "DISK_SUBSYSTEMS", ("mem",))
    namespaces.forget_block_devices()
    try:
        listed = namespaces._block_devices()
    finally:
        namespaces.forget_block_devices()
    assert "/dev/zero" in listed and "/dev/null" in listed and "/dev/tty" not in listed


def test_a_node_of_a_disk_driver_not_loaded_yet_is_listed_with_the_block_devices(tmp_path: Path) -> None:
    """A SCSI generic or MTD flash node whose driver is not loaded has no /sys entry, but opening it makes the
    kernel load the driver (char-major-21, char-major-90), which then serves it: a root run would read the disk
    through it. Such nodes are listed by their major number. Failed before: neither was listed (their /sys
    subsystem could not be read)."""
    require(os.geteuid() == 0, "CI runs as root", "making a device node needs root")
    for name, major in (("sg0", 21), ("mtd0", 90)):
        os.mknod(tmp_path / name, 0o600 | stat.S_IFCHR, os.makedev(major, 0))
    os.mknod(tmp_path / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    found: list[str] = []
    namespaces._read_folder(str(tmp_path), {}, found)
    assert sorted(found) == [str(tmp_path / "mtd0"), str(tmp_path / "sg0")]


def test_names_in_dev_that_are_not_utf8_neither_stop_the_view_nor_show_a_disk() -> None:
    """A block device and a mount under /dev whose names are not UTF-8 (any bytes but '/' may name them): the
    view hides the one and gives devices back mount by mount past the other, as for any name. Here the host is
    a private mount namespace of the test's whose /dev is a tmpfs (as a sandbox makes one) holding a loop
    device's node named 'odd\\xff' and, under a /dev/shm made without devices, a mount of that name; the keeper
    runs as uid 12345. Failed before: the keeper's traceback (UnicodeEncodeError: the names were encoded as
    UTF-8), and no run started."""
    require(os.geteuid() == 0, "CI runs as root", "mounting and changing user need root")
    tools = [shutil.which(name) for name in ("setpriv", "unshare", "mknod")]
    require(all(tools), "CI installs util-linux and coreutils", "setpriv, unshare and mknod are needed")
    odd = "\"$(printf 'odd\\377')\""
    host = [
        "mount -t tmpfs -o mode=755 tmpfs /dev",
        "mknod -m 666 /dev/null c 1 3",
        "mknod -m 666 /dev/zero c 1 5",
        "mknod -m 666 /dev/urandom c 1 9",
        "mkdir /dev/pts /dev/shm",
        "mount -t tmpfs -o nodev tmpfs /dev/shm",
        f"mkdir /dev/shm/{odd}",
        f"mount -t tmpfs -o nodev tmpfs /dev/shm/{odd}",
        f"mknod -m 644 /dev/{odd} b 7 0",
    ]
    run = "head -c 2 /dev/zero | od -An -tx1; test -b /dev/odd* && echo shown || echo hidden"
    done, output = _keeper_as_user_in_a_host_of_the_tests("view-odd-names-", host, run)
    assert done.returncode == 0, output
    assert done.stdout.split() == ["00", "00", "hidden"], output


def _keeper_as_user_in_a_host_of_the_tests(
    prefix: str, host: list[str], run: str
) -> tuple[subprocess.CompletedProcess[str], str]:
    """`run` under the keeper (a copy of its modules, run by uid 12345 with the view and Landlock) in a private
    mount namespace of the test's, made as the `host` shell steps say: (what it did, everything to show)."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        for name in KEEPER_MODULES:
            shutil.copy(MODULES / name, home / name)
        (home / "project" / "out").mkdir(parents=True)
        subprocess.run(["chown", "-R", f"{USER}:{USER}", str(home)], check=True)
        confine = [*AS_USER, str(home / "confine.py"), "--landlock", "--view", "--no-network"]
        command = " ".join([*confine, "-w", str(home / "project" / "out"), "--", "/bin/sh", "-c", f"'{run}'"])
        steps = " && ".join([*host, command])
        done = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "/bin/sh", "-c", steps],
            cwd=home / "project",
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": "/usr/bin:/bin"},
        )
        return done, steps + "\n" + done.stdout + done.stderr
    finally:
        shutil.rmtree(home)
