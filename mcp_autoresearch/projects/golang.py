"""Go modules: the metric is the size of the built binary."""

from __future__ import annotations

from pathlib import Path

from .base import Detection, find_files, first_existing, read_small, rel

NAME = "go"
BINARY = ".autoresearch/bin/app"


def _main_file(root: Path) -> str | None:
    found = first_existing(root, ["main.go"])
    if found:
        return found
    for path in find_files(root, ".", (".go",)):
        text = read_small(path)
        if "package main" in text and "func main(" in text:
            return rel(root, path)
    return None


def detect(root: Path) -> Detection | None:
    if not (root / "go.mod").is_file():
        return None
    target = _main_file(root)
    package = "./" + str(Path(target).parent.as_posix()) if target and "/" in target else "."
    settings = {
        "run_command": f"go build -o {BINARY} {package}",
        "writable": [".autoresearch/bin", "~/.cache/go-build", "~/go/pkg/mod"],
        "metric_name": "binary_kb",
        "metric_measure": f"size_kb:{BINARY}",
        "metric_direction": "lower_is_better",
        "readonly_files": ["go.mod"] + (["go.sum"] if (root / "go.sum").is_file() else []),
    }
    warnings = []
    if target:
        settings["target_file"] = target
    else:
        warnings.append("no 'package main' with func main() found; set target_file")
    return Detection(NAME, 60, ["go.mod"], settings, f"size of the built binary {BINARY} in KB", warnings)
