"""The size of a run's output, measured one way wherever the run ran: the server (`metrics.measure`) and the
Ray worker (`ray_wrapper`, which ships this module) both call `measure_output`. Standard library only.

A `metric_measure` of `size_b:<path>` / `size_kb:<path>` / `size_mb:<path>` (optional ` !<glob>` items leave files out:
`size_kb:dist !*.map` is the bundle without its source maps) is the bytes of the file, or of the regular files
below the directory. With the run's start, the output must also be one this run wrote: nothing
`output_checks.unsafe_output` refuses, no link on the way to it, and changed during the run or after the
target last changed (a build that fails but exits 0 leaves the previous output: measuring it would call broken
code 'unchanged').
"""

from __future__ import annotations

import fnmatch
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

if __package__:
    from .output_checks import FS_CLOCK_SLACK_NS, Snapshot, link_on_the_way, unsafe_output, walk_output
else:  # shipped beside the Ray wrapper, imported by path
    from output_checks import (  # type: ignore[no-redef, import-not-found]
        FS_CLOCK_SLACK_NS,
        Snapshot,
        link_on_the_way,
        unsafe_output,
        walk_output,
    )


# A size measure's kind -> (its unit's name, its bytes).
SIZE_UNITS = {"size_b": ("bytes", 1), "size_kb": ("KB", 1024), "size_mb": ("MB", 1024 * 1024)}


class OutputError(Exception):
    """The output cannot be measured honestly: the message says why."""


@dataclass(frozen=True)
class Measure:
    """A parsed `metric_measure`: `wall_time_s`, or `size_b:<path>` / `size_kb:<path>` / `size_mb:<path>`
    followed by optional ` !<glob>` items naming files left out."""

    kind: str
    path: str = ""
    exclude: tuple[str, ...] = ()

    @classmethod
    def parse(cls, spec: str) -> Measure:
        kind, _, rest = spec.partition(":")
        path, *excludes = rest.split(" !")
        return cls(kind, path.strip(), tuple(glob.strip() for glob in excludes if glob.strip()))

    @property
    def is_size(self) -> bool:
        return self.kind in SIZE_UNITS

    def in_unit(self, size: int) -> float:
        """`size` bytes in this measure's unit (bytes, KB or MB; 1 KB = 1024 bytes)."""
        return size / SIZE_UNITS[self.kind][1]

    @property
    def unit(self) -> str:
        return SIZE_UNITS[self.kind][0]

    def excluded(self, relative: str) -> bool:
        name = relative.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatch(name, glob) or fnmatch.fnmatch(relative, glob) for glob in self.exclude)


@dataclass
class Output:
    """What a measured path holds: the size of its files and the newest change among them (ns)."""

    size: int = 0
    newest_ns: int = 0
    newest_path: str = ""
    files: int = 0

    def saw(self, path: str, st: os.stat_result) -> None:
        # ctime too: a build that copies a file keeping its mtime (cp -p) still changes its ctime.
        changed = max(st.st_mtime_ns, st.st_ctime_ns)
        if changed > self.newest_ns:
            self.newest_ns, self.newest_path = changed, path


def scan_output(path: Path, measure: Measure) -> Output:
    """Size and newest change of a file, or of the regular files below a directory (excluded files count for
    neither; directories count for the newest change: removing a file is writing). A symbolic link below the
    directory is not counted itself (the file it names is, when that file is inside the directory too); one that
    leads out of the directory is refused: the output it stands for would be measured as nothing."""
    out = Output()
    if path.is_symlink():
        return out
    if path.is_file():
        st = path.stat()
        out.size = st.st_size
        out.saw(path.name, st)
        return out
    if not path.is_dir():
        raise OutputError(f"'{path.name}' does not exist after the run, so its size cannot be measured")
    real_root = os.path.realpath(path)
    entries, unreadable = walk_output(path)  # its own stack: a run may nest directories deeper than recursion
    if unreadable:
        raise OutputError(f"'{path.name}/{unreadable}: its size cannot be measured honestly")
    for relative, st in entries:
        if stat.S_ISDIR(st.st_mode):
            out.saw(relative, st)
        elif stat.S_ISLNK(st.st_mode):
            resolved = os.path.realpath(os.path.join(path, relative))
            if resolved != real_root and not resolved.startswith(real_root + os.sep):
                raise OutputError(
                    f"'{path.name}/{relative}' is a symbolic link out of '{path.name}' (to {resolved}): the size "
                    f"of '{path.name}' cannot be measured honestly"
                )
        elif stat.S_ISREG(st.st_mode) and not measure.excluded(relative.replace(os.sep, "/")):
            out.size += st.st_size
            out.files += 1
            out.saw(relative.replace(os.sep, "/"), st)
    return out


def measure_output(
    root: Path,
    measure: Measure,
    started_at: float | None,
    target_file: str | None,
    fresh: Snapshot = frozenset(),
    scope: str | None = None,
) -> int:
    """The bytes of the output `measure` names below `root` (see the module's docstring); `started_at`: the run's
    start (wall clock), None to measure whatever is there; `fresh`: the output's snapshot before the run;
    `scope`: the output directory (relative to `root`, emptied before the run) that holds it, where the other
    names of a hard-linked file may lie (`output_checks.unsafe_output`). Raises OutputError."""
    target = (root / measure.path).resolve()
    if root.resolve() not in target.parents and target != root.resolve():
        raise OutputError(f"'{measure.path}' is outside the project")
    if started_at is not None:
        _check_safe(root, measure.path, started_at, fresh, scope)
    output = scan_output(target, measure)
    if started_at is not None:
        if target.is_dir() and not output.files:
            raise OutputError(
                f"{measure.path.rstrip('/')}/ was not written by this run: it holds no file that is measured (every "
                "run starts from an empty output directory). The build probably failed without a non-zero exit "
                "code; look at the log"
            )
        _check_written(output, measure, root, started_at, target_file)
    return output.size


def _check_safe(
    root: Path, relative: str, started_at: float, fresh: Snapshot, scope: str | None = None
) -> None:
    """The measured output holds only what this run wrote, as regular files and directories (see
    `output_checks`), and is reached through no symbolic link."""
    via = link_on_the_way(root, relative)
    if via is not None:
        raise OutputError(f"'{via}' is a symbolic link: the output '{relative}' is not measured through it")
    problem = unsafe_output(
        root / relative, started_at, fresh, os.path.normpath(relative), scope=root / scope if scope else None
    )
    if problem:
        raise OutputError(f"{problem}; the output is not measured")


def _check_written(
    output: Output, spec: Measure, root: Path, started_at: float, target_file: str | None
) -> None:
    """The output must have changed during this run, or after the target last changed (an incremental build may
    rightly leave an up-to-date output alone: a baseline, a repeat). Same clock, same granularity."""
    started_ns = int(started_at * 1e9)
    target_ns = None
    if target_file:
        try:
            st = (root / target_file).stat()
            target_ns = max(st.st_mtime_ns, st.st_ctime_ns)
        except OSError:
            target_ns = None
    # The target's time is on the filesystem's clock, like the output's: compared exactly. The run's start is
    # on the wall clock: only used (with slack) without a target, or when the target's time is in the future.
    if target_ns is not None and target_ns <= started_ns:
        since = target_ns
    else:
        since, target_ns = started_ns - FS_CLOCK_SLACK_NS, None
    if output.newest_ns >= since:
        return
    stamp = time.strftime("%H:%M:%S", time.localtime(output.newest_ns / 1e9))
    newest = (
        f"{spec.path.rstrip('/')}/{output.newest_path}" if output.newest_path not in ("", ".") else spec.path
    )
    older = f"than the target {target_file}" if target_ns is not None else "than the run"
    raise OutputError(
        f"{spec.path.rstrip('/')}/ was not written by this run: its newest file ({newest}, {stamp}) is older "
        f"{older}. The build probably failed without a non-zero exit code; look at the log. A build that "
        f"skips writing an unchanged output needs run_command to remove it first (rm -rf {spec.path} && ...)"
    )
