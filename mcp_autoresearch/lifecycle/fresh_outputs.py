"""Fresh outputs for every run: before a run, what the project's output directories hold is moved aside.

The outputs are the `writable` entries inside the project (`dist`, `build`, `target`, ...). Before each run,
everything in them is renamed (never copied, never deleted) into `.autoresearch/outputs/<tag>/<folder>/<entry>/`,
so every run starts from empty output directories that no earlier run chose: a link, a FIFO, a file with a
future timestamp, a stale bundle left by one run cannot reach the next. The output directory itself stays
where it is (in a confined run it is a mount point and a Landlock rule).

The folder says whose the files were:
- `run-<run_id>`: exactly what that run left (the server recorded the output after the run, and nothing has
  changed since). Only the newest `KEEP_RUNS` of these are kept (the previous run's); older ones are deleted,
  as files the server saw a run create.
- `found-before-<run_id>`: anything else found before that run: the user's build from before the session, or
  files written between runs (by the user, or changed since a run left them). Never deleted by the server.

What a run left is known across the server's restarts: after each run, the server writes a digest of what each
output holds (`.autoresearch/outputs/.left-<tag>/<run>.json`, in its own directory, which runs cannot write), so the
first run of a new server does not keep the previous server's last outputs as `found-before-*` (a `target/` of
gigabytes per restart).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import threading
from pathlib import Path

from ..errors import SessionError
from ..measure.output_checks import (
    Snapshot,
    leads_through_proc,
    link_on_the_way,
    snapshot,
    unsafe_output,
    walk_output,
)
from ..names import OUTPUTS_DIR, STATE_DIR
from ..records.atomic import open_own
from ..records.state import server_dir
from ..sandbox.run_tmpdirs import give_tree_rights_back
from ..setup.config import Config
from ..setup.stage_config import hidden_paths
from .named_paths import named_outside, unsafe_named
from .output_marks import clear_marks

KEEP_RUNS = 1  # the previous run's outputs: a `target/` of gigabytes is not kept many times over
# `.autoresearch/outputs/.left-<tag>/<run>.json`: {output entry: [run, digest of what the run left there]} (no tag
# begins with a dot: never a session's folder).
LEFT_PREFIX = ".left-"

_lock = threading.Lock()
# The output directory (its real path) -> the run that last wrote it here and what it left (see `record`).
_left: dict[str, tuple[str, Snapshot]] = {}
# Per output: the run measured last, and what the output held then (for the holdout).
_measured: dict[str, tuple[str, Snapshot]] = {}


class OutputsError(Exception):
    """The outputs could not be made fresh: the message names the path and says what to do."""


def output_entries(root: Path, entries: list[str]) -> list[str]:
    """The `writable` entries inside the project (however they are spelt: `dist`, `/home/me/web/dist`,
    `~/web/dist`), relative to it, normalized, outermost only (an entry beneath another one is moved aside with
    it)."""
    top = os.path.normpath(root)
    inside = []
    for entry in entries:
        relative = os.path.relpath(os.path.normpath(os.path.join(top, os.path.expanduser(entry))), top)
        if relative != os.pardir and not relative.startswith(os.pardir + os.sep):
            inside.append(relative)
    return [e for e in inside if not any(o != e and e.startswith(o.rstrip("/") + "/") for o in inside)]


def output_holding(root: Path, entries: list[str], relative: str) -> str | None:
    """The output (a `writable` entry inside the project, see `output_entries`) that holds the path `relative`
    below it, if any: what a measured file's other hard-linked names may lie in."""
    path = os.path.normpath(relative)
    return next((e for e in output_entries(root, entries) if path.startswith(e.rstrip("/") + "/")), None)


def make_fresh(root: Path, entries: list[str], tag: str | None, run_id: str) -> list[str]:
    """Move what each output holds aside (see the module's docstring) before run `run_id` (a name unique to
    this run and repeat). An output behind a symbolic link (below a slot's shared input, say) is left alone:
    nothing is moved through a link, and a measurement or an evaluation refuses an output reached through one.
    Returns where the files went (project-relative folders). Raises `OutputsError` when one cannot be moved."""
    moved: list[str] = []
    chosen: dict[str, str] = {}  # folder -> its name in this call (the outputs of one run share it)
    for entry in output_entries(root, entries):
        path = root / entry
        via = link_on_the_way(root, entry)
        if via is not None and via != entry:
            continue  # behind a link (a slot's shared input): not this tree's output; never moved through it
        if not os.path.lexists(path):
            continue
        if via is None and path.is_dir():
            give_owner_rights(path)  # a run may take them away: the next one could write nothing
            names = sorted(os.listdir(path))
            if not names:
                clear_marks(path)
                continue
            aside = _aside(root, tag, _folder(root, tag, entry, run_id), Path(entry).parts, chosen)
            pairs = [(path / name, aside / name) for name in names]
        else:  # a link or a file where the output directory belongs: the entry itself goes
            aside = _aside(root, tag, f"found-before-{run_id}", Path(entry).parent.parts, chosen)
            pairs = [(path, aside / path.name)]
        for source, destination in pairs:
            try:
                _rename(source, destination)
            except OSError as exc:
                raise OutputsError(
                    f"'{source.relative_to(root)}' could not be moved aside into {aside} ({exc.strerror}): every "
                    f"run starts from an empty '{entry}'; move its files away yourself, then run again"
                ) from None
        if via is None and path.is_dir():
            clear_marks(path)  # after `_folder` compared the output with what the last run left
        moved.append(str(aside.relative_to(root)))
    _prune(root, tag)
    return moved


def give_owner_rights(path: Path, below: Path | None = None) -> None:
    """Owner read, write and search on the directory `path` (opened without following a link), where a run took
    any of them away: the run may change the rights of its own output directory, and one left unwritable makes
    every later run fail to write its output. Nothing else of the mode changes. `below`: a folder holding `path`
    that runs may write: no component beneath it is followed either (a run may replace one by a link)."""
    try:
        fd = _open_below(path, below)
    except OSError:
        return
    try:
        found = os.fstat(fd)
        if found.st_uid == os.geteuid() and stat.S_IMODE(found.st_mode) & stat.S_IRWXU != stat.S_IRWXU:
            os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(found.st_mode) | stat.S_IRWXU)
    except OSError:
        pass
    finally:
        os.close(fd)


def give_rights_back(root: Path, entries: list[str]) -> None:
    """Before a run: its owner's rights on each folder a run may write (`writable` and `persistent` entries,
    inside the project or not; their tops, not what is beneath: an output inside is emptied anyway). A folder
    outside the project is never moved aside: one a run left without its rights would fail every later run."""
    top = os.path.normpath(root)
    paths = [os.path.normpath(os.path.join(top, os.path.expanduser(entry))) for entry in entries]
    for path in paths:
        above = [other for other in paths if path.startswith(other.rstrip(os.sep) + os.sep)]
        give_owner_rights(Path(path), Path(min(above, key=len)) if above else None)


def _open_below(path: Path, below: Path | None) -> int:
    """`path` opened as a directory (O_PATH), no link followed at its last component, nor at any beneath `below`."""
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
    if below is None:
        return os.open(path, flags)
    fd = os.open(below, flags)
    try:
        for part in path.relative_to(below).parts:
            child = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = child
    except OSError:
        os.close(fd)
        raise
    return fd


def _rename(source: Path, destination: Path) -> None:
    """Move `source` aside; a directory the run left without its owner's write right (which moving a directory
    to another folder needs, for its `..`) gets it back first."""
    try:
        os.rename(source, destination)
    except PermissionError:
        give_owner_rights(source)
        os.rename(source, destination)


def _aside(root: Path, tag: str | None, folder: str, parts: tuple[str, ...], chosen: dict[str, str]) -> Path:
    """A folder of the server's for one output's files: new for this call (a suffix where an earlier call
    took the name), shared by the outputs of this call."""
    try:
        return _make_aside(root, tag or "untagged", folder, parts, chosen)
    except SessionError as exc:
        raise OutputsError(f"the outputs of earlier runs cannot be moved aside: {exc}") from None


def _make_aside(root: Path, tag: str, folder: str, parts: tuple[str, ...], chosen: dict[str, str]) -> Path:
    top = server_dir(root, OUTPUTS_DIR, tag)
    if folder not in chosen:
        name, count = folder, 1
        while os.path.lexists(top / name):
            count += 1
            name = f"{folder}.{count}"
        chosen[folder] = name
    return server_dir(root, OUTPUTS_DIR, tag, chosen[folder], *parts)


def _folder(root: Path, tag: str | None, entry: str, run_id: str) -> str:
    """`run-<id>` when the output holds exactly what the server's last run here left (this server's, or the one
    before its restart), else `found-before-`."""
    path = root / entry
    with _lock:
        left = _left.pop(os.path.realpath(path), None)
    if left is not None:
        return f"run-{left[0]}" if snapshot(path) == left[1] else f"found-before-{run_id}"
    written = _written_left(root, tag).get(entry)
    if written is not None and _digest(snapshot(path)) == written[1]:
        return f"run-{written[0]}"
    return f"found-before-{run_id}"


def record(root: Path, entries: list[str], run_id: str, tag: str | None) -> None:
    """After run `run_id`: what its outputs hold, so the next `make_fresh` knows them for the run's (in memory,
    and on disk for a server that restarts)."""
    digests: dict[str, list[str]] = {}
    for entry in output_entries(root, entries):
        path = root / entry
        if path.is_dir() and not path.is_symlink():
            left = snapshot(path)
            with _lock:
                _left[os.path.realpath(path)] = (run_id, left)
            digests[entry] = [run_id, _digest(left)]
    if digests:
        _write_left(root, tag, run_id, digests)


def _digest(held: Snapshot) -> str:
    return hashlib.sha256(repr(sorted(held)).encode()).hexdigest()


def _write_left(root: Path, tag: str | None, run_id: str, digests: dict[str, list[str]]) -> None:
    """A new file per run (created, never renamed over: no flush of its data on this path), then the older
    ones removed. Losing it (a kill, a full disk) only costs a `found-before-*` copy: nothing is raised."""
    try:
        top = server_dir(root, OUTPUTS_DIR, LEFT_PREFIX + (tag or "untagged"))
        name = f"{run_id}.json"
        fd = open_own(top / name, os.O_WRONLY | os.O_TRUNC)  # never a link, never a FIFO's wait
        with os.fdopen(fd, "w") as file:
            json.dump(digests, file)
        for entry in os.scandir(top):
            if entry.name != name:
                os.unlink(entry.path)
    except (OSError, SessionError):
        return


def _written_left(root: Path, tag: str | None) -> dict[str, tuple[str, str]]:
    """What the last run of an earlier server left in each output, as `_write_left` wrote it ({} if unknown)."""
    top = root / STATE_DIR / OUTPUTS_DIR / (LEFT_PREFIX + (tag or "untagged"))
    try:
        names = [e for e in os.scandir(top) if e.is_file(follow_symlinks=False)]
        if len(names) != 1:
            return {}  # none, or a kill between writing one and removing the other: not known for sure
        with open(names[0].path, "rb") as file:
            written = json.loads(file.read(1 << 20))
    except (OSError, ValueError):
        return {}
    if not isinstance(written, dict):
        return {}
    return {
        entry: (pair[0], pair[1])
        for entry, pair in written.items()
        if isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
    }


def record_measured(
    root: Path, entries: list[str], run: str, writes: list[str] | None = None, command: str = ""
) -> None:
    """What the outputs hold when run `run` (a run id, with its repeat: r4 or r4-2) is measured: the holdout
    later checks that it measures the same (checks_command, often the target's own tests, may write there); and
    what `command` (the holdout's) names beneath `writes`, those never moved aside (`unmoved_entries`,
    `named_outside`)."""
    held = [os.path.realpath(root / entry) for entry in output_entries(root, entries)]
    held += [str(path) for path in named_outside(root, writes or [], command)]
    for path in held:
        with _lock:
            _measured[path] = (run, snapshot(Path(path)))


def changed_since_measured(
    root: Path, entries: list[str], run_id: str, writes: list[str] | None = None, command: str = ""
) -> str | None:
    """Why the outputs (and what `command` names beneath `writes`, as `record_measured` took them) are no
    longer what run `run_id` was measured on (a reason naming the output), or None (also when nothing was
    recorded for it: after a restart of the server)."""
    held = [(os.path.realpath(root / entry), entry) for entry in output_entries(root, entries)]
    held += [(str(path), str(path)) for path in named_outside(root, writes or [], command)]
    for path, entry in held:
        with _lock:
            run, measured = _measured.get(path, ("", frozenset()))
        if (run == run_id or run.startswith(run_id + "-")) and snapshot(Path(path)) != measured:
            return (
                f"the output '{entry}' changed after the run was measured (checks_command wrote there), so the "
                "holdout would not measure what the run left"
            )
    return None


def unsafe_outputs(
    root: Path,
    entries: list[str],
    started_at: float,
    hidden: tuple[str, ...] | list[str] = (),
    caches: tuple[str, ...] | list[str] = (),
    command: str = "",
    before: Snapshot = frozenset(),
) -> str | None:
    """Why the outputs of the run that started at `started_at` may not be handed on (to an evaluation stage),
    or None: `output_checks.unsafe_output` of each output inside the project, which `make_fresh` emptied before
    the run (so nothing there may be older than the run), and none reached through a symbolic link; and, with
    `hidden` data, no symbolic link to it in an entry outside the project or in a cache (`link_into_hidden`);
    and what `command` (the evaluation's) names beneath an entry never moved aside (outside the project, or a
    cache: `unmoved_entries`) checked as an output, none of its files as it was before the run (`before`, from
    `snapshot_named`)."""
    if hidden:
        problem = link_into_hidden(root, [*entries, *caches], hidden)
        if problem:
            return problem
    problem = unsafe_named(root, unmoved_entries(root, entries, list(caches)), command, before)
    if problem:
        return problem
    for entry in output_entries(root, entries):
        via = link_on_the_way(root, entry)
        if via is not None:
            return f"'{via}' is a symbolic link: the output '{entry}' is not handed on through it"
        problem = unsafe_output(root / entry, started_at, frozenset(), entry)
        if problem:
            return problem
    return None


def unsafe_for_stage(
    root: Path, config: Config, started_at: float, command: str | None, before: Snapshot = frozenset()
) -> str | None:
    """`unsafe_outputs` of a session's outputs and caches, for the evaluation stage (or the holdout) `command`."""
    entries, caches = list(config.writable), list(config.persistent)
    return unsafe_outputs(root, entries, started_at, hidden_paths(config), caches, command or "", before)


def unmoved_entries(root: Path, writable: list[str], persistent: list[str]) -> list[str]:
    """What a run may write that is never moved aside before it (`make_fresh` empties only the `writable` entries
    inside the project): a `writable` entry outside the project (a scratch folder) and every `persistent` cache,
    wherever it is (kept from run to run). What an earlier run left there is still there."""
    return [entry for entry in writable if not output_entries(root, [entry])] + list(persistent)


def link_into_hidden(root: Path, entries: list[str], hidden: tuple[str, ...] | list[str]) -> str | None:
    """The first symbolic link in an entry a run may write outside the project's outputs (a scratch folder, a
    cache: neither moved aside nor checked as the outputs are) that leads to, into or above a `hidden` path, as a
    reason (None when there is none). A run cannot read hidden data, but it can name it: the evaluation, which
    reads it, would take the hidden file (the answers) for the run's output. A folder the server cannot list
    (the evaluation may still pass through it) is refused too."""
    top = os.path.normpath(root)
    covered = {os.path.realpath(path) for path in hidden} | {os.path.normpath(path) for path in hidden}
    for entry in entries:
        path = os.path.normpath(os.path.join(top, os.path.expanduser(entry)))
        found, unreadable = walk_output(Path(path))
        if unreadable:
            return f"'{path}/{unreadable}, so it cannot be checked for links to hidden data"
        for name, st in found:
            if not stat.S_ISLNK(st.st_mode):
                continue
            link = os.path.join(path, name)
            if leads_through_proc(link):
                return (
                    f"'{link}' is a symbolic link through /proc: it leads elsewhere for each process (the "
                    "evaluation could read hidden data through it)"
                )
            leads = os.path.realpath(link)
            if any(_overlaps(leads, data) for data in covered):
                return (
                    f"'{link}' is a symbolic link to {leads}, hidden data: the evaluation would read it as the "
                    "run's output"
                )
    return None


def _overlaps(one: str, other: str) -> bool:
    return (
        one == other
        or one.startswith(other.rstrip(os.sep) + os.sep)
        or other.startswith(one.rstrip(os.sep) + os.sep)
    )


def _prune(root: Path, tag: str | None) -> None:
    """Keep the newest KEEP_RUNS `run-*` folders; delete the others (links inside are removed, not followed)."""
    top = root / STATE_DIR / OUTPUTS_DIR / (tag or "untagged")
    try:
        runs = [
            entry
            for entry in os.scandir(top)
            if entry.name.startswith("run-") and entry.is_dir(follow_symlinks=False)
        ]
    except OSError:
        return
    runs.sort(key=lambda entry: entry.stat(follow_symlinks=False).st_mtime_ns, reverse=True)
    for old in runs[KEEP_RUNS:]:
        remove_tree(old.path)


def remove_tree(top: str) -> None:
    """`shutil.rmtree(top, ignore_errors=True)` with a stack of its own: a run may nest directories deeper than
    Python's recursion limit. Links are removed, never followed. A directory left without its owner's rights
    (a run's, or a tool's: Go's module cache is read-only) gets them back, then the rest goes; what cannot be
    removed even so stays."""
    _remove_tree(top)
    if os.path.lexists(top) and not os.path.islink(top):
        give_tree_rights_back(top)
        _remove_tree(top)


def _remove_tree(top: str) -> None:
    pending = [(top, False)]
    while pending:
        path, emptied = pending.pop()
        if emptied:
            with contextlib.suppress(OSError):
                os.rmdir(path)
            continue
        pending.append((path, True))
        try:
            with os.scandir(path) as listing:
                entries = list(listing)
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                pending.append((entry.path, False))
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
