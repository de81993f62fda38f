"""Go modules: the metric is the size of the built binary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...names import SERVER_BIN
from .base import Detection, find_files, read_small, rel

NAME = "go"
BINARY = f"{SERVER_BIN}/app"


def _main_files(root: Path, limit: int = 20) -> list[str]:
    """main.go, then the files with `package main` and `func main(` (bounded)."""
    found = ["main.go"] if (root / "main.go").is_file() else []
    for path in find_files(root, ".", (".go",)):
        text = read_small(path)
        if "package main" in text and "func main(" in text:
            found.append(rel(root, path))
            if len(found) >= limit:
                break
    return found


GOCACHE_COST = (
    "each run builds with an empty Go build cache of its own (GOCACHE): with Go 1.20 or later it compiles the "
    "standard library packages it uses on every run (37 s for a net/http program on 2 busy cores, BENCHMARKS.md). "
    'To keep the cache across runs, set persistent = ["~/.cache/go-build"]: a channel from one run to the next '
    "(a run could plant a compiled package that later builds link)"
)


def detect(root: Path) -> Detection | None:
    if not (root / "go.mod").is_file():
        return None
    settings = {
        # GOCACHE is private to each run (caches.py); the module cache is read, never written
        "writable": [SERVER_BIN],
        "metric_name": "binary_kb",
        "metric_measure": f"size_kb:{BINARY}",
        "metric_direction": "lower_is_better",
        "readonly_files": ["go.mod"] + (["go.sum"] if (root / "go.sum").is_file() else []),
    }
    detection = Detection(
        NAME,
        60,
        ["go.mod"],
        settings,
        f"size of the built binary {BINARY} in KB",
        target_candidates=_main_files(root),
        no_target="no tracked file with 'package main' and func main() found; set target_file",
        with_target=_build_command,
    )
    detection.warn_about("persistent", GOCACHE_COST)
    return detection


def _build_command(target: str | None) -> dict[str, Any]:
    """The package built is the chosen main file's."""
    package = "./" + Path(target).parent.as_posix() if target and "/" in target else "."
    return {"run_command": f"go build -o {BINARY} {package}"}
