"""What every project type provides: one `detect(root)` that returns a `Detection` or None."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ...measure.metrics import Measure
from ...names import STATE_DIR

# Directories never searched for source files: dependencies, build output, VCS, virtual environments.
SKIP_DIRS = {
    ".git",
    "node_modules",
    ".venv",
    "venv",
    "env",
    "__pycache__",
    "target",
    "build",
    "dist",
    "out",
    ".gradle",
    ".dart_tool",
    ".idea",
    STATE_DIR,
    ".tox",
    ".mypy_cache",
    ".pytest_cache",
    "vendor",
}


# A wall time varies from run to run. Until a noise gate decides from the measured spread, a wall-time metric runs
# several times per experiment (the median decides) and a change must beat the best by a margin (seconds).
WALL_TIME_REPEATS = 3


def wall_time_settings(min_delta_s: float) -> dict[str, Any]:
    return {"metric_measure": "wall_time_s", "repeats": WALL_TIME_REPEATS, "min_delta": min_delta_s}


@dataclass
class Detection:
    """What a project type found: how sure it is (`score`), why (`evidence`), and the settings it suggests."""

    project_type: str
    score: int
    evidence: list[str]
    settings: dict[str, Any]
    metric_source: str
    warnings: list[str] = field(default_factory=list)
    # Warnings about one detected setting: reported only when detection's value is the one in use.
    setting_warnings: dict[str, list[str]] = field(default_factory=dict)
    # Possible targets, best first; the registry keeps the first that is a tracked source file (`choose_target`).
    target_candidates: list[str] = field(default_factory=list)
    # The warning when none of them is: where the type looked, and that target_file can be set.
    no_target: str = "no source file to optimise found; set target_file"
    # Settings that depend on the chosen target (None when there is none), e.g. the package Go builds.
    with_target: Callable[[str | None], dict[str, Any]] | None = None

    def warn_about(self, key: str, message: str) -> None:
        self.setting_warnings.setdefault(key, []).append(message)


class ProjectType(Protocol):
    """What a project type module provides (`projects/<type>.py`)."""

    NAME: str

    def detect(self, root: Path) -> Detection | None: ...


def first_existing(root: Path, candidates: list[str]) -> str | None:
    for candidate in candidates:
        if (root / candidate).is_file():
            return candidate
    return None


def find_files(root: Path, under: str, suffixes: tuple[str, ...], limit: int = 2000) -> list[Path]:
    """Source files below `root/under`, sorted, skipping dependency and build directories; bounded."""
    base = root / under
    if not base.is_dir():
        return []
    found: list[Path] = []
    stack = [base]
    while stack and len(found) < limit:
        current = stack.pop()
        try:
            entries = sorted(current.iterdir(), reverse=True)
        except OSError:
            continue
        for entry in entries:
            if entry.is_symlink():
                continue
            if entry.is_dir():
                if entry.name not in SKIP_DIRS and not entry.name.startswith("."):
                    stack.append(entry)
            elif entry.suffix in suffixes:
                found.append(entry)
    return sorted(found)


def read_small(path: Path, limit: int = 200_000) -> str:
    try:
        with path.open("rb") as handle:
            return handle.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return ""


# One component of a path a detector puts into run_command, `writable` or a metric: no shell syntax, no `~`, no
# `.`/`..`, no hidden folder (`.git`, the server's `.autoresearch`), so it names something inside the project.
PLAIN_PART = re.compile(r"[A-Za-z0-9_@+][\w.@+-]*")


def plain_relative(path: str) -> bool:
    """Whether `path`, read from the project's own files, is a plain path inside it (`build/bench`): safe to
    name unquoted in a proposed command and as a directory a run may write."""
    return bool(path) and all(PLAIN_PART.fullmatch(part) for part in path.split("/"))


def rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def choose_target(
    root: Path,
    detection: Detection,
    git_files: tuple[set[str], set[str]] | None,
    configured: str | None = None,
) -> None:
    """Settle `target_file`: the first candidate that is a tracked source file, never ignored, never a symbolic
    link, never under a build output or dependency directory (a build output such as package.json's
    `main: dist/x.js` exists after the first build, and changes with every build). Rejected candidates that
    ranked first are explained, tied to target_file. `git_files` is None outside git: then tracking is unknown.
    The settings that depend on the target (`with_target`) follow the `configured` one where the user chose it."""
    # The build's outputs: what the metric measures, and the project's paths a run may write.
    outputs = [Measure.parse(str(detection.settings.get("metric_measure", ""))).path]
    outputs += [p for p in detection.settings.get("writable", []) if not p.startswith(("~", "/"))]
    outputs = [p.removeprefix("./").strip("/") for p in outputs]
    outputs = [p for p in outputs if p not in ("", ".")]
    rejected: list[str] = []
    for candidate in dict.fromkeys(path.removeprefix("./") for path in detection.target_candidates):
        path = root / candidate
        if not path.is_file():
            continue
        reason = _not_a_target(candidate, path, outputs, git_files)
        if reason is None:
            detection.settings["target_file"] = candidate
            break
        rejected.append(f"not a target: {candidate} {reason}")
    else:
        if not rejected:
            detection.warn_about("target_file", detection.no_target)
    if detection.with_target is not None:
        target = configured.removeprefix("./") if configured else detection.settings.get("target_file")
        detection.settings.update(detection.with_target(target))
    for note in rejected[:3]:
        detection.warn_about("target_file", note)


def _not_a_target(
    candidate: str, path: Path, outputs: list[str], git_files: tuple[set[str], set[str]] | None
) -> str | None:
    if path.is_symlink():
        return "is a symbolic link"
    parts = candidate.split("/")
    for depth, part in enumerate(parts[:-1]):
        if part in SKIP_DIRS:
            return f"is under '{'/'.join(parts[: depth + 1])}/', a build output or dependency directory"
    for output in outputs:
        if candidate == output or candidate.startswith(output + "/"):
            return f"is under '{output}/', where the build writes"
    if git_files is None:
        return None
    tracked, ignored = git_files
    prefixes = ["/".join(parts[:depth]) + "/" for depth in range(1, len(parts))]
    if candidate in ignored or any(prefix in ignored for prefix in prefixes):
        return "is ignored by git (a generated or build file)"
    if candidate not in tracked:
        return f"is not tracked by git; commit it (git add {candidate} && git commit) to make it the target"
    return None
