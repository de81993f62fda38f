"""Java and Kotlin builds (Maven or Gradle): the metric is the build's wall time."""

from __future__ import annotations

import re
from pathlib import Path

from .base import Detection, find_files, read_small, rel

NAME = "java"
_MAIN = re.compile(r"public\s+static\s+void\s+main\s*\(|^\s*fun\s+main\s*\(", re.MULTILINE)


def _entry_point(root: Path) -> str | None:
    for path in find_files(root, "src/main", (".java", ".kt")):
        if _MAIN.search(read_small(path)):
            return rel(root, path)
    return None


def detect(root: Path) -> Detection | None:
    build_files = [
        name for name in ("pom.xml", "build.gradle", "build.gradle.kts") if (root / name).is_file()
    ]
    if not build_files:
        return None
    if "pom.xml" in build_files:
        run = "mvn -q package -DskipTests"
    elif (root / "gradlew").is_file():
        run = "./gradlew build -x test -q"
    else:
        run = "gradle build -x test -q"
    settings = {
        "run_command": run,
        "writable": ["target", "~/.m2"] if "pom.xml" in build_files else ["build", ".gradle", ".kotlin", "~/.gradle"],
        "metric_name": "build_time_s",
        "metric_measure": "wall_time_s",
        "metric_direction": "lower_is_better",
        "readonly_files": build_files,
    }
    warnings = []
    target = _entry_point(root)
    if target:
        settings["target_file"] = target
    else:
        warnings.append("no entry point (main) found under src/main; set target_file")
    return Detection(
        project_type=NAME,
        score=70,
        evidence=build_files,
        settings=settings,
        metric_source="wall time of the build in seconds (measured by the server)",
        warnings=warnings,
    )
