"""Flutter apps: the metric is the size of the release APK."""

from __future__ import annotations

from pathlib import Path

from .base import Detection

NAME = "flutter"
APK = "build/app/outputs/flutter-apk/app-release.apk"


def detect(root: Path) -> Detection | None:
    if not (root / "pubspec.yaml").is_file():
        return None
    return Detection(
        project_type=NAME,
        score=80,
        evidence=["pubspec.yaml"],
        settings={
            "run_command": "flutter build apk --release",
            "writable": ["build", ".dart_tool", "android/.gradle"],  # ~/.pub-cache is read, never written
            "metric_name": "apk_mb",
            "metric_measure": f"size_mb:{APK}",
            "metric_direction": "lower_is_better",
            "readonly_files": ["pubspec.yaml"]
            + (["pubspec.lock"] if (root / "pubspec.lock").is_file() else []),
        },
        metric_source=f"size of {APK} in MB (measured by the server)",
        target_candidates=["lib/main.dart"],
        no_target="no usable lib/main.dart; set target_file",
    )
