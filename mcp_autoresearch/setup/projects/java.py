"""Java and Kotlin builds (Maven or Gradle): the metric is the build's wall time."""

from __future__ import annotations

import re
from pathlib import Path

from .base import Detection, find_files, read_small, rel, wall_time_settings

NAME = "java"
MIN_DELTA_S = 1.0  # a clean build takes seconds to minutes; differences under a second are noise
_MAIN = re.compile(r"public\s+static\s+void\s+main\s*\(|^\s*fun\s+main\s*\(", re.MULTILINE)


def _entry_points(root: Path, limit: int = 20) -> list[str]:
    """Files under src/main with a `main` (bounded)."""
    found = []
    for path in find_files(root, "src/main", (".java", ".kt")):
        if _MAIN.search(read_small(path)):
            found.append(rel(root, path))
            if len(found) >= limit:
                break
    return found


def _class_name(path: str) -> str:
    """`src/main/java/demo/App.java` -> `demo.App`."""
    return path.removeprefix("src/main/java/").removesuffix(".java").replace("/", ".")


def detect(root: Path) -> Detection | None:
    build_files = [
        name for name in ("pom.xml", "build.gradle", "build.gradle.kts") if (root / name).is_file()
    ]
    if not build_files:
        return None
    # Repeats of an incremental build would time a no-op. Gradle reruns every task (--rerun-tasks); Maven has no
    # such switch, and `clean` deletes target/ itself, which a confined run may not: one run, and the margin.
    maven = "pom.xml" in build_files
    if maven:
        run = "mvn -q package -DskipTests"
    else:
        run = ("./gradlew" if (root / "gradlew").is_file() else "gradle") + " build -x test -q --rerun-tasks"
    settings = {
        "run_command": run,
        # ~/.m2 is read, never written (its plugins run in every build); Gradle's home is private to each run,
        # its dependency cache read through GRADLE_RO_DEP_CACHE (caches.py)
        "writable": ["target"] if maven else ["build", ".gradle", ".kotlin"],
        "metric_name": "build_time_s",
        **wall_time_settings(MIN_DELTA_S),
        "metric_direction": "lower_is_better",
        "readonly_files": build_files,
    }
    if maven:
        settings["repeats"] = 1
    entry_points = _entry_points(root)
    detection = Detection(
        project_type=NAME,
        score=70,
        evidence=build_files,
        settings=settings,
        metric_source="wall time of the build in seconds (measured by the server)",
        target_candidates=entry_points,
        no_target="no tracked entry point (main) found under src/main; set target_file",
    )
    built = "target/classes" if maven else "build/classes/java/main"
    main = next((_class_name(path) for path in entry_points if path.startswith("src/main/java/")), None)
    detection.warn_about(
        "run_command",
        f"the metric is the build's wall time (the original tool's for Java): an edit of one source file seldom "
        f"moves a build by {MIN_DELTA_S:g} s; to time what the program does instead, set run_command to build "
        f"and run it (e.g. '{run} && java -cp {built} {main or '<main class>'}') and keep metric_measure = \"wall_time_s\"",
    )
    return detection
