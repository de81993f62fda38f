"""Reading numbers out of a run: the metric, the memory figure, and secondary `METRIC name=value` lines.

The whole log is searched, not a tail: a verbose run may print its metric early. Searches go backwards in
line-aligned chunks, so the common case (metric near the end) reads little, and the last match wins.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .files import open_regular

FLOAT = rb"[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|(?i:nan|inf(?:inity)?))"
_FIRST_FLOAT = re.compile(FLOAT.decode(), re.IGNORECASE)
_METRIC_LINE = re.compile(rb"^[ \t]*METRIC[ \t]+([A-Za-z_][\w.\-]*)[ \t]*=[ \t]*(" + FLOAT + rb")", re.M)
_VRAM = re.compile(rb"^[ \t]*peak_vram_mb[ \t]*:[ \t]*(" + FLOAT + rb")", re.M)
CHUNK = 4 << 20
MAX_SECONDARY = 50


class MetricError(Exception):
    """No usable value: the message says why."""


def to_float(text: str | bytes) -> float:
    value = float(text.decode() if isinstance(text, bytes) else text)
    return value


def builtin_patterns(metric_name: str) -> list[re.Pattern[bytes]]:
    """`<name>: <float>` as karpathy's train.py prints it, and `METRIC <name>=<float>`."""
    name = re.escape(metric_name.encode())
    return [
        re.compile(rb"^[ \t]*" + name + rb"[ \t]*:[ \t]*(" + FLOAT + rb")(?![\w.])", re.M),
        re.compile(rb"^[ \t]*METRIC[ \t]+" + name + rb"[ \t]*=[ \t]*(" + FLOAT + rb")", re.M),
    ]


def user_pattern(regex: str) -> re.Pattern[bytes]:
    return re.compile(regex.encode("utf-8"), re.M)


def last_match(
    path: Path, patterns: list[re.Pattern[bytes]], literal: bytes | None = None, whole_lines: bool = False
) -> bytes | None:
    """Group 1 of the last match of any pattern in the file (the match closest to the end wins). Reads
    backwards in chunks of at most CHUNK bytes, so memory stays bounded whatever the log's size. `literal`,
    a string every match contains, lets chunks without it skip the regex (a substring search is far faster).
    `whole_lines`: a last line without its newline is left out."""
    try:
        handle = os.fdopen(open_regular(path), "rb")  # a FIFO left at the log's path must not block
    except OSError:
        return None
    with handle:
        end = handle.seek(0, os.SEEK_END)
        if whole_lines:
            end = _complete_end(handle, end)
        while end > 0:
            start = max(0, end - CHUNK)
            handle.seek(start)
            window = handle.read(end - start)
            head = 0
            if start > 0:
                # Drop the partial first line (the next window back ends where it starts); a line longer
                # than a chunk is split instead.
                cut = window.find(b"\n")
                if 0 <= cut < len(window) - 1:
                    head = cut + 1
            best: tuple[int, bytes] | None = None
            if literal is not None and window.find(literal, head) < 0:
                patterns_here: list[re.Pattern[bytes]] = []
            else:
                patterns_here = patterns
            for pattern in patterns_here:
                for match in pattern.finditer(window, head):
                    if best is None or match.start() >= best[0]:
                        best = (match.start(), match.group(1))
            if best is not None:
                return best[1]
            end = start + head
    return None


def _complete_end(handle: BinaryIO, end: int) -> int:
    """Where the file's last complete line ends (0 when it has none)."""
    while end > 0:
        start = max(0, end - CHUNK)
        handle.seek(start)
        cut = handle.read(end - start).rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0


def read_metric_from_log(path: Path, metric_name: str, metric_regex: str | None, whole_lines: bool = False) -> float:
    """The metric's last match in the log (`whole_lines`: only in lines that end with a newline)."""
    if metric_regex:
        found = last_match(path, [user_pattern(metric_regex)], None, whole_lines)
    else:  # both built-in forms contain the metric's name
        found = last_match(path, builtin_patterns(metric_name), metric_name.encode(), whole_lines)
    if found is None:
        how = (
            f"metric_regex {metric_regex!r}"
            if metric_regex
            else (f"'{metric_name}: <number>' or 'METRIC {metric_name}=<number>'")
        )
        raise MetricError(f"no line matching {how} in the output")
    try:
        value = to_float(found.strip())
    except ValueError:
        raise MetricError(f"matched {found[:80]!r}, which is not a number") from None
    return check_finite(value)


def check_finite(value: float) -> float:
    if math.isnan(value) or math.isinf(value):
        raise MetricError(f"the metric is {value} (not a finite number)")
    return value


def first_float(text: str) -> float:
    match = _FIRST_FLOAT.search(text)
    if not match:
        raise MetricError(
            "metric_parse printed no number" + (f": {text.strip()[:120]!r}" if text.strip() else "")
        )
    return check_finite(float(match.group(0)))


@dataclass(frozen=True)
class Measure:
    """A parsed `metric_measure`: `wall_time_s`, or `size_kb:<path>` / `size_mb:<path>` followed by optional
    ` !<glob>` items naming files left out (`size_kb:dist !*.map`: the bundle without its source maps)."""

    kind: str
    path: str = ""
    exclude: tuple[str, ...] = ()

    @classmethod
    def parse(cls, spec: str) -> Measure:
        kind, _, rest = spec.partition(":")
        path, *excludes = rest.split(" !")
        return cls(kind, path.strip(), tuple(glob.strip() for glob in excludes if glob.strip()))

    def excluded(self, relative: str) -> bool:
        name = relative.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatch(name, glob) or fnmatch.fnmatch(relative, glob) for glob in self.exclude)


@dataclass
class Output:
    """What a measured path holds: the size of its files and the newest change among them (ns)."""

    size: int = 0
    newest_ns: int = 0
    newest_path: str = ""

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
        raise MetricError(f"'{path.name}' does not exist after the run, so its size cannot be measured")
    real_root = os.path.realpath(path)
    for dirpath, dirs, files in os.walk(path):
        try:
            out.saw(os.path.relpath(dirpath, path), os.stat(dirpath))
        except OSError:
            pass
        for name in [*files, *dirs]:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                resolved = os.path.realpath(full)
                if resolved != real_root and not resolved.startswith(real_root + os.sep):
                    shown = os.path.relpath(full, path)
                    raise MetricError(
                        f"'{path.name}/{shown}' is a symbolic link out of '{path.name}' (to {resolved}): the size "
                        f"of '{path.name}' cannot be measured honestly"
                    )
        for name in files:
            full = os.path.join(dirpath, name)
            relative = os.path.relpath(full, path).replace(os.sep, "/")
            if measure.excluded(relative):
                continue
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out.size += st.st_size
                out.saw(relative, st)
    return out


# A run-start time from the wall clock against file times from the filesystem's (coarse, maybe 1-2 s) clock.
FS_CLOCK_SLACK_NS = 2_000_000_000


def _check_written(
    output: Output, spec: Measure, root: Path, started_at: float, target_file: str | None
) -> None:
    """A build that fails but exits 0 leaves the previous output: measuring it would call broken code
    'unchanged'. The output must have changed during this run, or after the target last changed (an incremental
    build may rightly leave an up-to-date output alone: a baseline, a repeat). Same clock, same granularity."""
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
    raise MetricError(
        f"{spec.path.rstrip('/')}/ was not written by this run: its newest file ({newest}, {stamp}) is older "
        f"{older}. The build probably failed without a non-zero exit code; look at the log. A build that "
        f"skips writing an unchanged output needs run_command to remove it first (rm -rf {spec.path} && ...)"
    )


def measure(
    spec: str, root: Path, duration_s: float, started_at: float | None = None, target_file: str | None = None
) -> float:
    """A metric the server measures itself: `wall_time_s`, `size_kb:<path>`, `size_mb:<path>` (see `Measure`).
    With `started_at` (the run's start, wall clock), a size is only taken of an output written for this run."""
    parsed = Measure.parse(spec)
    if parsed.kind == "wall_time_s":
        return round(duration_s, 6)
    target = (root / parsed.path).resolve()
    if root.resolve() not in target.parents and target != root.resolve():
        raise MetricError(f"'{parsed.path}' is outside the project")
    output = scan_output(target, parsed)
    if started_at is not None:
        _check_written(output, parsed, root, started_at, target_file)
    size = output.size
    return size / 1024 if parsed.kind == "size_kb" else size / (1024 * 1024)


def _collect_metrics(data: bytes, metric_name: str | None, metrics: dict[str, float]) -> None:
    if b"METRIC" not in data:
        return
    for match in _METRIC_LINE.finditer(data):
        name = match.group(1).decode("ascii", "replace")
        if name == metric_name or (name not in metrics and len(metrics) >= MAX_SECONDARY):
            continue
        try:
            value = float(match.group(2))
        except ValueError:
            continue
        if math.isfinite(value):
            metrics[name] = value


@dataclass
class Secondary:
    memory_mb: float | None
    metrics: dict[str, float]


def read_secondary(path: Path, metric_name: str | None, memory_regex: str | None) -> Secondary:
    """`peak_vram_mb:` (or memory_regex) and every other `METRIC name=value` line (last value per name)."""
    memory: float | None = None
    if memory_regex:
        found = last_match(path, [user_pattern(memory_regex)])
    else:
        found = last_match(path, [_VRAM], b"peak_vram_mb")
    if found is not None:
        try:
            memory = float(found)
            if not math.isfinite(memory):
                memory = None
        except ValueError:
            memory = None
    metrics: dict[str, float] = {}
    try:
        handle = os.fdopen(open_regular(path), "rb")  # a FIFO left at the log's path must not block
    except OSError:
        return Secondary(memory, metrics)
    with handle:
        carry = b""
        while chunk := handle.read(CHUNK):
            data = carry + chunk
            cut = data.rfind(b"\n") + 1
            # A partial last line waits for the next chunk, unless it is too long to be a METRIC line.
            carry = data[cut:] if len(data) - cut < 4096 else b""
            _collect_metrics(data[:cut] if cut else b"", metric_name, metrics)
        _collect_metrics(carry, metric_name, metrics)
    return Secondary(memory, metrics)
