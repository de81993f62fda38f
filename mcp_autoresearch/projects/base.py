"""What every project type provides: one `detect(root)` that returns a `Detection` or None."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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
    ".autoresearch",
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

    def warn_about(self, key: str, message: str) -> None:
        self.setting_warnings.setdefault(key, []).append(message)


class ProjectType(Protocol):
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


def rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()
