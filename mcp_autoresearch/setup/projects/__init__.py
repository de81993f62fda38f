"""The registry of project types. Adding a type is one module here and one line in `PROJECT_TYPES`."""

from __future__ import annotations

from pathlib import Path

from ...vcs.readonly import tracked_and_ignored
from . import c_cpp, flutter, golang, java, ml, node, python_package, rust
from .base import Detection, ProjectType, choose_target

PROJECT_TYPES: list[ProjectType] = [ml, flutter, java, rust, golang, c_cpp, node, python_package]
# Whether runs may use the network, per type (README, "Network"). ML: a training script may fetch a kernel, a
# tokenizer or data from a hub on its first run. Java, Flutter: Gradle, Maven and pub resolve dependencies
# during a build. Node, Rust, Go, Python: builds, tests and benchmarks use dependencies installed beforehand
# (`npm install`, `cargo fetch`, `go mod download`, `uv sync`), and a measurement should not depend on the network.
# C/C++: CMake and make build from the project's sources and the system's libraries (FetchContent is warned about).
NETWORK = {
    "ml": "on",
    "java": "on",
    "flutter": "on",
    "node": "off",
    "rust": "off",
    "go": "off",
    "python": "off",
    "c": "off",
}


def detect_all(root: Path, configured_target: str | None = None) -> list[Detection]:
    """Every type that matches, strongest evidence first, each with its target settled by one rule; what depends
    on the target (the package built) follows the user's `configured_target` where there is one."""
    found = [d for d in (kind.detect(root) for kind in PROJECT_TYPES) if d is not None]
    if found:
        git_files = tracked_and_ignored(root)
        for detection in found:
            choose_target(root, detection, git_files, configured_target)
            detection.settings.setdefault("network", NETWORK.get(detection.project_type, "on"))
    return sorted(found, key=lambda d: -d.score)


__all__ = ["Detection", "PROJECT_TYPES", "detect_all"]
