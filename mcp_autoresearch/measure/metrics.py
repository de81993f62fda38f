"""Reading numbers out of a run: the metric, the memory figure, and secondary `METRIC name=value` lines.

The whole log is searched, not a tail: a verbose run may print its metric early. Searches go backwards in
line-aligned chunks, so the common case (metric near the end) reads little, and the last match wins.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..records.atomic import open_regular
from .output_checks import Snapshot
from .output_size import Measure, OutputError, measure_output

FLOAT = rb"[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|(?i:nan|inf(?:inity)?))"
_FIRST_FLOAT = re.compile(FLOAT.decode(), re.IGNORECASE)
# A separator and a digit after a number: a decimal comma (`0,5` under a German locale) or a thousands separator
# (`1,250`; `1 250` with a no-break or narrow no-break space, as French and Russian locales print it; `1'250` or
# `1’250`, Swiss); the number before it is never read as the value (it was: `0`, `1`).
SEPARATOR = rb"(?:,|'|\xe2\x80[\x99\xaf\x89]|\xc2\xa0)"
# A terminal control sequence (CSI: a colour `ESC [ 32 m`, `ESC [ K` erasing the line), which a terminal does not
# show: a number's groups coloured one by one (rich's highlighter colours `1` and `250` of `1,250`) read as one.
CSI = rb"\x1b\[[0-?]*[ -/]*[@-~]"
COMMA = rb"(?:" + CSI + rb")*" + SEPARATOR + rb"(?:" + CSI + rb")*\d"
# The secondary figures and the memory figure: a number in a locale's format is left out (not read as `0`).
_WHOLE = rb"(?![\d.]|" + COMMA + rb")"
_METRIC_LINE = re.compile(
    rb"^[ \t]*METRIC[ \t]+([A-Za-z_][\w.\-]*)[ \t]*=[ \t]*(" + FLOAT + rb")" + _WHOLE, re.M
)
_VRAM = re.compile(rb"^[ \t]*peak_vram_mb[ \t]*:[ \t]*(" + FLOAT + rb")" + _WHOLE, re.M)
CHUNK = 4 << 20
MAX_SECONDARY = 50


class MetricError(Exception):
    """No usable value: the message says why."""


def to_float(text: str | bytes) -> float:
    value = float(text.decode() if isinstance(text, bytes) else text)
    return value


# Where a built-in form may start: a line's start, or after a carriage return (a progress bar such as tqdm's
# with leave=False ends with one, and the next print lands on its line: a terminal shows only what follows it);
# and what may stand between its words: blanks and terminal control sequences (CSI: colours `ESC [ 32 m`, the
# bar's `ESC [ K` erasing its line), which a terminal does not show either.
START = rb"(?:^|\r)"
BLANK = rb"(?:[ \t]|" + CSI + rb")*"


def builtin_patterns(metric_name: str) -> list[re.Pattern[bytes]]:
    """`<name>: <float>` as karpathy's train.py prints it, and `METRIC <name>=<float>` (see START, BLANK)."""
    name = re.escape(metric_name.encode())
    value = rb"(" + FLOAT + rb")"
    # not a unit's (`0.5s`), a separator's, or a progress bar's named as the metric (tqdm's `score:  50%|###`)
    named = START + BLANK + name + BLANK + rb":" + BLANK + value + rb"(?![\w.]|" + COMMA + rb"|%\|)"
    metric = START + BLANK + rb"METRIC[ \t]+" + name + BLANK + rb"=" + BLANK + value + rb"(?!" + COMMA + rb")"
    return [re.compile(named, re.M), re.compile(metric, re.M)]


def comma_patterns(metric_name: str) -> list[re.Pattern[bytes]]:
    """Both built-in forms with a number in a locale's format (`0,5`, `1,250`, `1 250`), which they do not
    read."""
    name = re.escape(metric_name.encode())
    number = rb"([-+]?\d[\d.]*" + COMMA + rb"+)"
    return [
        re.compile(START + BLANK + name + BLANK + rb":" + BLANK + number, re.M),
        re.compile(START + BLANK + rb"METRIC[ \t]+" + name + BLANK + rb"=" + BLANK + number, re.M),
    ]


def user_pattern(regex: str) -> re.Pattern[bytes]:
    return re.compile(regex.encode("utf-8"), re.M)


def last_match(
    path: Path,
    patterns: list[re.Pattern[bytes]],
    literal: bytes | None = None,
    whole_lines: bool = False,
    start_at: int = 0,
) -> bytes | None:
    """Group 1 of the last match of any pattern in the file (`last_match_at`)."""
    found = last_match_at(path, patterns, literal, whole_lines, start_at)
    return found[1] if found is not None else None


def last_match_at(
    path: Path,
    patterns: list[re.Pattern[bytes]],
    literal: bytes | None = None,
    whole_lines: bool = False,
    start_at: int = 0,
) -> tuple[int, bytes] | None:
    """(where it ends in the file, group 1) of the last match of any pattern in the file (the match closest to
    the end wins). Reads
    backwards in chunks of at most CHUNK bytes, so memory stays bounded whatever the log's size. `literal`,
    a string every match contains, lets chunks without it skip the regex (a substring search is far faster).
    `whole_lines`: a last line without its newline is left out. `start_at`: only the file from this offset (the
    start of a line) is searched."""
    try:
        handle = os.fdopen(open_regular(path), "rb")  # a FIFO left at the log's path must not block
    except OSError:
        return None
    with handle:
        end = handle.seek(0, os.SEEK_END)
        if whole_lines:
            end = _complete_end(handle, end)
        while end > start_at:
            start = max(start_at, end - CHUNK)
            handle.seek(start)
            window = handle.read(end - start)
            head = 0
            if start > start_at:
                # Drop the partial first line (the next window back ends where it starts); a line longer
                # than a chunk is split instead.
                cut = window.find(b"\n")
                if 0 <= cut < len(window) - 1:
                    head = cut + 1
            best: tuple[int, int, bytes] | None = None
            if literal is not None and window.find(literal, head) < 0:
                patterns_here: list[re.Pattern[bytes]] = []
            else:
                patterns_here = patterns
            for pattern in patterns_here:
                for match in pattern.finditer(window, head):
                    if best is None or match.start() >= best[0]:
                        best = (match.start(), start + match.end(), match.group(1))
            if best is not None:
                return best[1], best[2]
            end = start + head
    return None


def _form_again(path: Path, end: int, metric_name: str, whole_lines: bool) -> str | None:
    """The metric's form where it appears after a built-in form's match anywhere in the rest of the log, not only
    at a line's start (`score: 0.0001 x` + `score: 0.9`, or `score: 0.0001`, a line, then `x` + `score: 0.9`: a
    candidate's output without its last newline, then the scorer's line, which no longer starts a line and was not
    read), or None. Whatever stands before it: the candidate wrote those bytes (`val_` of `val_loss: 2.3` too)."""
    name = re.escape(metric_name.encode())
    again = re.compile(
        rb"("
        + name
        + BLANK
        + rb":"
        + BLANK
        + FLOAT
        + rb"(?![\w.]|%\|)|METRIC[ \t]+"
        + name
        + BLANK
        + rb"="
        + BLANK
        + FLOAT
        + rb")"
    )
    found = last_match(path, [again], metric_name.encode(), whole_lines, end)
    return found[:60].decode("utf-8", "replace") if found is not None else None


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


def read_metric_from_log(
    path: Path, metric_name: str, metric_regex: str | None, whole_lines: bool = False, kept_end: int = 0
) -> float:
    """The metric's last match in the log (`whole_lines`: only in lines that end with a newline). `kept_end`:
    where the end of the output begins in a log that left some of it out (`RunLog.end_from`): only that end is
    searched, since a value before the part left out may not be the last one printed."""
    if metric_regex:
        found = last_match(path, [user_pattern(metric_regex)], None, whole_lines, kept_end)
    else:  # both built-in forms contain the metric's name
        at = last_match_at(path, builtin_patterns(metric_name), metric_name.encode(), whole_lines, kept_end)
        found = at[1] if at is not None else None
        glued = _form_again(path, at[0], metric_name, whole_lines) if at is not None else None
        if glued is not None:
            raise MetricError(
                f"the output holds the metric again after its last value that starts a line ({glued!r}, not at a "
                "line's start): two outputs may have been glued into one line (a command whose output did not end "
                "with a newline, before the one that prints the metric), and the value read may not be the last one "
                "printed; end every output with a newline and print the metric last, alone on its line (a name "
                "that ends in the metric's, `val_loss` for `loss`, printed after it: print it before, or set "
                "metric_regex)"
            )
    if found is None:
        how = (
            f"metric_regex {metric_regex!r}"
            if metric_regex
            else (f"'{metric_name}: <number>' or 'METRIC {metric_name}=<number>'")
        )
        comma = (
            None
            if metric_regex
            else last_match(path, comma_patterns(metric_name), metric_name.encode(), whole_lines, kept_end)
        )
        if comma is not None:
            raise MetricError(
                f"the metric was printed as {comma[:40].decode('utf-8', 'replace')!r}, with a comma or a "
                "separator (a locale's decimal comma or thousands separator): print it with a decimal point and no "
                "separator "
                "(Python's print and f-strings do; printf under LC_NUMERIC=C)"
            )
        if kept_end:
            raise MetricError(
                f"no line matching {how} in the end of the output that its log kept: the log left part of the "
                "output out (log_limit_mb, or a full disk), and a value printed before that part may not be the "
                "last one; print the metric last, or raise log_limit_mb"
            )
        raise MetricError(f"no line matching {how} in the output")
    try:
        value = to_float(found.strip())
    except ValueError:
        raise MetricError(f"matched {found[:80]!r}, which is not a number") from None
    return check_finite(value)


# The largest metric magnitude the keep rule works with: its arithmetic (a difference, the median of two runs,
# a variance's squares, summed over up to 100 runs) stays finite below it, and no record or JSON text holds inf.
MAX_MAGNITUDE = 1e150


def check_finite(value: float) -> float:
    if math.isnan(value) or math.isinf(value):
        raise MetricError(f"the metric is {value} (not a finite number)")
    if abs(value) > MAX_MAGNITUDE:
        raise MetricError(
            f"the metric is {value:g}, beyond ±{MAX_MAGNITUDE:g}: the keep rule cannot compare values that large "
            "(their differences and variances overflow); print it in other units (its logarithm, say)"
        )
    return value


def first_float(text: str) -> float:
    match = _FIRST_FLOAT.search(text)
    if not match:
        raise MetricError(
            "metric_parse printed no number" + (f": {text.strip()[:120]!r}" if text.strip() else "")
        )
    return check_finite(float(match.group(0)))


def measure(
    spec: str,
    root: Path,
    duration_s: float,
    started_at: float | None = None,
    target_file: str | None = None,
    fresh: Snapshot = frozenset(),
    scope: str | None = None,
) -> float:
    """A metric the server measures itself: `wall_time_s`, `size_b:<path>`, `size_kb:<path>`, `size_mb:<path>`
    (see `Measure`).
    With `started_at` (the run's start, wall clock), a size is only taken of an output written for this run,
    holding nothing `output_checks.unsafe_output` refuses (`fresh`: the output's snapshot before the run;
    `scope`: the output directory holding it, see `measure_output`)."""
    parsed = Measure.parse(spec)
    if parsed.kind == "wall_time_s":
        return round(duration_s, 6)
    try:
        size = measure_output(root, parsed, started_at, target_file, fresh, scope)
    except OutputError as exc:
        raise MetricError(str(exc)) from None
    return parsed.in_unit(size)


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


def read_secondary(
    path: Path, metric_name: str | None, memory_regex: str | None, kept_end: int = 0
) -> Secondary:
    """`peak_vram_mb:` (or memory_regex) and every other `METRIC name=value` line (last value per name).
    `kept_end`: as for `read_metric_from_log`, both are read from there on only."""
    memory: float | None = None
    if memory_regex:
        found = last_match(path, [user_pattern(memory_regex)], start_at=kept_end)
    else:
        found = last_match(path, [_VRAM], b"peak_vram_mb", start_at=kept_end)
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
        handle.seek(kept_end)
        carry = b""
        while chunk := handle.read(CHUNK):
            data = carry + chunk
            cut = data.rfind(b"\n") + 1
            # A partial last line waits for the next chunk, unless it is too long to be a METRIC line.
            carry = data[cut:] if len(data) - cut < 4096 else b""
            _collect_metrics(data[:cut] if cut else b"", metric_name, metrics)
        _collect_metrics(carry, metric_name, metrics)
    return Secondary(memory, metrics)
