"""Rust crates: the metric is the size of the release binary (or the build time for a library)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from .base import Detection, first_existing, wall_time_settings

NAME = "rust"
BUILD_MIN_DELTA_S = 0.5  # a release build takes seconds to minutes; differences under 0.5 s are noise


def detect(root: Path) -> Detection | None:
    manifest = root / "Cargo.toml"
    if not manifest.is_file():
        return None
    warnings = []
    try:
        name = tomllib.loads(manifest.read_text(encoding="utf-8")).get("package", {}).get("name")
    except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError):
        name = None
        warnings.append("Cargo.toml could not be parsed; using defaults")
    target = first_existing(root, ["src/main.rs", "src/lib.rs"])
    settings = {
        "run_command": "cargo build --release --quiet",
        "writable": ["target"],  # ~/.cargo (the registry, installed binaries) is read, never written
        "metric_direction": "lower_is_better",
        "readonly_files": ["Cargo.toml"] + (["Cargo.lock"] if (root / "Cargo.lock").is_file() else []),
    }
    if target == "src/main.rs" and name:
        settings.update(metric_name="binary_kb", metric_measure=f"size_kb:target/release/{name}")
        source = f"size of target/release/{name} in KB (measured by the server)"
    else:
        # A wall time, set up as every wall-time metric is (runs per experiment, min_delta).
        settings.update(metric_name="build_time_s", **wall_time_settings(BUILD_MIN_DELTA_S))
        source = "wall time of the release build in seconds (measured by the server)"
    return Detection(
        NAME,
        60,
        ["Cargo.toml"],
        settings,
        source,
        warnings,
        target_candidates=["src/main.rs", "src/lib.rs"],
        no_target="no usable src/main.rs or src/lib.rs; set target_file",
    )
