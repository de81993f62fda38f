"""Web projects on Node.js: the metric is the size of the build output."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .base import Detection, first_existing

NAME = "node"
OUTPUT_DIRS = ["dist", "build", "out", "public/build", ".output"]
LOCK_FILES = ["package-lock.json", "yarn.lock", "pnpm-lock.yaml", "bun.lockb", "npm-shrinkwrap.json"]
SOURCE_SUFFIXES = ("ts", "tsx", "js", "jsx", "mjs", "cjs")


def _exports_entry(exports: object) -> str | None:
    """The first file path named by an `exports` field (string, `.` entry, or condition map)."""
    if isinstance(exports, str):
        return exports
    if isinstance(exports, dict):
        for key in (".", "import", "default", "require", "module"):
            if key in exports:
                found = _exports_entry(exports[key])
                if found:
                    return found
        for value in exports.values():
            found = _exports_entry(value)
            if found:
                return found
    return None


def _target(root: Path, package: dict) -> str | None:
    for key in ("source", "main", "module"):
        value = package.get(key)
        if isinstance(value, str) and (root / value).is_file():
            return str(Path(value).as_posix()).removeprefix("./")
    entry = _exports_entry(package.get("exports"))
    if entry and (root / entry).is_file():
        return entry.removeprefix("./")
    candidates = [f"src/{stem}.{ext}" for stem in ("index", "main", "app", "App") for ext in SOURCE_SUFFIXES]
    candidates += [f"{stem}.{ext}" for stem in ("index", "main", "app") for ext in SOURCE_SUFFIXES]
    return first_existing(root, candidates)


def _output_dir(root: Path, build_script: str) -> str:
    for name in OUTPUT_DIRS:
        if (root / name).is_dir():
            return name
    match = re.search(
        r"(?:--outdir|--out-dir|--outDir|--outfile|-o|--output)[= ]+['\"]?([\w./-]+)", build_script
    )
    if match:
        out = match.group(1).removeprefix("./")
        # `--outfile dist/app.js` measures the directory it writes into.
        return str(Path(out).parent.as_posix()) if Path(out).suffix else out.rstrip("/")
    return "dist"


def detect(root: Path) -> Detection | None:
    path = root / "package.json"
    if not path.is_file():
        return None
    warnings: list[str] = []
    try:
        package = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(package, dict):
            raise ValueError("not an object")
    except (ValueError, OSError) as exc:
        package = {}
        warnings.append(f"package.json could not be read ({exc}); using defaults")
    scripts = package["scripts"] if isinstance(package.get("scripts"), dict) else {}
    build = scripts.get("build") if isinstance(scripts.get("build"), str) else None
    if build is None:
        warnings.append("package.json has no 'build' script; set run_command to what builds the bundle")
    out_dir = _output_dir(root, build or "")
    settings = {
        "run_command": "npm run build",
        "writable": [out_dir, "node_modules/.cache", "~/.npm"],
        "metric_name": "bundle_kb",
        "metric_measure": f"size_kb:{out_dir}",
        "metric_direction": "lower_is_better",
        "readonly_files": ["package.json"] + [name for name in LOCK_FILES if (root / name).is_file()],
    }
    target = _target(root, package)
    if target:
        settings["target_file"] = target
    else:
        warnings.append(
            "no main source file found (source/main/module/exports, src/index.*); set target_file"
        )
    return Detection(
        project_type=NAME,
        score=50,
        evidence=["package.json"],
        settings=settings,
        metric_source=f"total size of the build output directory '{out_dir}/' in KB (measured by the server)",
        warnings=warnings,
    )
