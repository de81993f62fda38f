"""The registry of project types. Adding a type is one module here and one line in `PROJECT_TYPES`."""

from __future__ import annotations

from pathlib import Path

from ..gitfiles import tracked_and_ignored
from . import flutter, golang, java, ml, node, python_package, rust
from .base import Detection, choose_target

PROJECT_TYPES = [ml, flutter, java, rust, golang, node, python_package]


def detect_all(root: Path) -> list[Detection]:
    """Every type that matches, strongest evidence first, each with its target settled by one rule."""
    found = [d for d in (kind.detect(root) for kind in PROJECT_TYPES) if d is not None]
    if found:
        git_files = tracked_and_ignored(root)
        for detection in found:
            choose_target(root, detection, git_files)
    return sorted(found, key=lambda d: -d.score)


__all__ = ["Detection", "PROJECT_TYPES", "detect_all"]
