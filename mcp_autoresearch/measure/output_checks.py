"""Whether a run's output may be measured or evaluated: the one check that every consumer of an output calls.

An output is a file, or a directory and everything below it. It is refused (a reason naming the path) when it
holds anything but regular files and directories (a symbolic link, a FIFO, a socket, a device), a file that is
also linked from outside the output (a hard link: the bytes measured are someone else's), a timestamp in the
future (a build tool such as `make` would skip the next build and leave a stale output), or a file this run did
not write: one whose inode changed last before the run started and that was not there in the state the run
started from (`snapshot`). The change time (ctime) is used, not the modification time: a run can set the
latter to anything, but not the former (writing, `touch`, renaming and linking a file all set it to now).
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

# The run's start is read from the wall clock, file times from the filesystem's (coarse, maybe 1-2 s) clock.
FS_CLOCK_SLACK_NS = 2_000_000_000
# How far in the future a timestamp may be before it is refused (a file server's clock a little ahead).
CLOCK_SKEW_NS = 5_000_000_000

Snapshot = frozenset[tuple[int, int, int]]  # (device, inode, ctime ns) of every entry of an output


def snapshot(path: Path) -> Snapshot:
    """What an output holds before a run (its entries' identities and change times), never following a link.
    An output that cannot be read to its bottom gets an entry no later snapshot has: it never matches one."""
    found: set[tuple[int, int, int]] = set()
    entries, problem = walk_output(path)
    for _relative, st in entries:
        found.add((st.st_dev, st.st_ino, st.st_ctime_ns))
    if problem:
        found.add((-1, -1, time.time_ns()))
    return frozenset(found)


def walk_output(path: Path) -> tuple[list[tuple[str, os.stat_result]], str | None]:
    """Every entry of the output with its lstat, the output itself first ('.'); links are not followed. The walk
    keeps its own stack (a run may nest directories deeper than Python's recursion limit): the second item
    says which directory could not be read, when one could not (too deep for a path, no permission), as
    `<relative path>' cannot be read (<why>)` (the caller puts the output's name and a quote before it)."""
    try:
        top = os.lstat(path)
    except OSError:
        return [], None
    found = [(".", top)]
    if not stat.S_ISDIR(top.st_mode):
        return found, None
    pending = [""]
    while pending:
        relative = pending.pop()
        directory = os.path.join(path, relative) if relative else str(path)
        try:
            with os.scandir(directory) as listing:
                children = [(entry.name, entry.stat(follow_symlinks=False)) for entry in listing]
        except OSError as exc:
            return found, f"{_shorten(relative)}' cannot be read ({exc.strerror})"
        for name, st in sorted(children):
            child = os.path.join(relative, name) if relative else name
            found.append((child, st))
            if stat.S_ISDIR(st.st_mode):
                pending.append(child)
    return found, None


def _shorten(relative: str, most: int = 120) -> str:
    return relative if len(relative) <= most else f"{relative[: most // 2]}...{relative[-most // 2 :]}"


def _kind(mode: int) -> str | None:
    """What an entry is when it may not be in an output (None for a regular file or a directory)."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    return None


def unsafe_output(
    path: Path,
    started_at: float,
    fresh: Snapshot = frozenset(),
    label: str | None = None,
    now: float | None = None,
    scope: Path | None = None,
) -> str | None:
    """Why the output at `path` may not be measured or handed to an evaluation (None when it may): see the
    module's docstring. `started_at`: the run's start (wall clock); `fresh`: the output's `snapshot` taken
    just before the run (what was there then is not refused for its age); `label`: how messages name the
    output (default: its name); `scope`: the output directory holding `path` that was emptied before the run
    (its `writable` entry): a hard link whose other names all lie there is the run's own (cargo links
    `target/release/<name>` to `target/release/deps/<name>-<hash>`). A missing output is not refused here (the
    caller says it is missing)."""
    name = label or path.name
    started_ns = int(started_at * 1e9) - FS_CLOCK_SLACK_NS
    future_ns = int((time.time() if now is None else now) * 1e9) + CLOCK_SKEW_NS
    links: dict[tuple[int, int], tuple[int, list[str]]] = {}  # a file's links: how many, those inside
    entries, unreadable = walk_output(path)
    if unreadable:
        return (
            f"'{name}/{unreadable}, so the output cannot be checked: every file of an output is, before use"
        )
    for relative, st in entries:
        shown = name if relative == "." else f"{name}/{relative}"
        kind = _kind(st.st_mode)
        if kind:
            target = f" to {os.readlink(path / relative)!r}" if stat.S_ISLNK(st.st_mode) else ""
            return f"'{shown}' is {kind}{target}: an output may hold only regular files and directories"
        if max(st.st_mtime_ns, st.st_ctime_ns) > future_ns:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.st_mtime_ns / 1e9))
            return f"'{shown}' has a timestamp in the future ({when}): a build tool would skip the next build"
        if stat.S_ISDIR(st.st_mode):
            continue
        if st.st_ctime_ns < started_ns and (st.st_dev, st.st_ino, st.st_ctime_ns) not in fresh:
            when = time.strftime("%H:%M:%S", time.localtime(st.st_ctime_ns / 1e9))
            return (
                f"'{shown}' was not written by this run (it last changed at {when}, before the run started)"
            )
        if st.st_nlink > 1:
            links.setdefault((st.st_dev, st.st_ino), (st.st_nlink, []))[1].append(shown)
    elsewhere = _names_in_scope(scope, path, links) if scope is not None and links else {}
    for key, (nlink, names) in links.items():
        if len(names) + elsewhere.get(key, 0) < nlink:
            return (
                f"'{names[0]}' is a hard link to a file outside '{name}' ({nlink} links, {len(names)} inside): "
                "its bytes are not the output's own"
            )
    return None


def _names_in_scope(
    scope: Path, path: Path, links: dict[tuple[int, int], tuple[int, list[str]]]
) -> dict[tuple[int, int], int]:
    """How many names each hard-linked file of the output has in `scope` outside the output itself."""
    inside = os.path.relpath(path, scope)
    found: dict[tuple[int, int], int] = {}
    entries, _unreadable = walk_output(scope)  # a part that cannot be read holds no name counted
    for relative, st in entries:
        key = (st.st_dev, st.st_ino)
        if key in links and relative != inside and not relative.startswith(inside + os.sep):
            found[key] = found.get(key, 0) + 1
    return found


def link_on_the_way(root: Path, relative: str) -> str | None:
    """The first component of `relative` below `root` that is a symbolic link (None when there is none): an
    output reached through a link is elsewhere than its name says."""
    current = root
    for part in Path(relative).parts:
        current = current / part
        if current.is_symlink():
            return str(current.relative_to(root))
    return None


# Where a path leads differently for each process that reads it (`/proc/self/cwd`, `/dev/fd/3`, ...).
PROCESS_OWN = "/proc"
MAX_LINKS = 40  # as the kernel's own bound: a longer chain (a loop) is refused, not followed


def leads_through_proc(link: str) -> bool:
    """Whether the symbolic link `link` is resolved through /proc (each link on its way followed as the kernel
    would): where it leads then depends on the process that opens it (`/proc/self/cwd/...` is the server's working
    directory to the server and the project to an evaluation started there), so no check made by the server
    says what another process reads through it. A chain too long to follow counts as such a link."""
    resolved, pending, followed = "/", os.path.abspath(link).split(os.sep), 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            resolved = os.path.dirname(resolved)
            continue
        candidate = os.path.join(resolved, part)
        if candidate == PROCESS_OWN or candidate.startswith(PROCESS_OWN + os.sep):
            return True
        try:
            target = os.readlink(candidate)
        except OSError:  # not a link (or missing): the path goes on from there
            resolved = candidate
            continue
        followed += 1
        if followed > MAX_LINKS:
            return True
        pending = target.split(os.sep) + pending
        resolved = "/" if target.startswith(os.sep) else resolved
    return False
