"""Web projects on Node.js: the metric is the size of the build output."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .base import Detection, plain_relative

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


def _targets(package: dict[str, Any]) -> list[str]:
    """package.json's `source`, `main`, `module`, `exports`, then the usual entry files. `main` often names the
    build output (dist/x.js): the registry keeps only a tracked source file."""
    named = [package.get(key) for key in ("source", "main", "module")]
    named.append(_exports_entry(package.get("exports")))
    candidates = [Path(value).as_posix() for value in named if isinstance(value, str) and value.strip()]
    candidates += [f"src/{stem}.{ext}" for stem in ("index", "main", "app", "App") for ext in SOURCE_SUFFIXES]
    candidates += [f"{stem}.{ext}" for stem in ("index", "main", "app") for ext in SOURCE_SUFFIXES]
    return candidates


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
        out = str(Path(out).parent.as_posix()) if Path(out).suffix else out.rstrip("/")
        if plain_relative(out):  # never a place outside the project (`--outdir=/home/me`, `../x`) as writable
            return out
    return "dist"


# package.json fields that name files the build writes (bundlers such as microbundle write what they name).
OUTPUT_FIELDS = ("main", "module", "types", "typings", "unpkg", "umd:main", "browser", "exports")


def _named_outputs(package: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, relative path) for every file an output field names."""
    found = []
    for key in OUTPUT_FIELDS:
        value = package.get(key)
        values = _all_paths(value) if key == "exports" else [value] if isinstance(value, str) else []
        for item in values:
            path = Path(item.strip()).as_posix().removeprefix("./")
            if path and not path.startswith(("/", "../")) and "*" not in path:
                found.append((key, path))
    return found


def _all_paths(exports: object) -> list[str]:
    if isinstance(exports, str):
        return [exports]
    if isinstance(exports, dict):
        return [path for value in exports.values() for path in _all_paths(value)]
    return []


def foresee_outputs(root: Path, package: dict[str, Any], writable: list[str]) -> tuple[list[str], list[str]]:
    """Outputs the build writes outside the writable paths, foreseen from package.json: a directory holding no
    tracked file is added to `writable` (returned); a file at the project root, or in a directory of sources, is
    warned about (a confined run cannot create it). A tracked file named there is a source, not an output."""
    from ...vcs.readonly import tracked_and_ignored

    known = tracked_and_ignored(root)
    tracked = known[0] if known else set()
    added: list[str] = []
    warnings: list[str] = []
    for key, path in _named_outputs(package):
        inside = [w for w in [*writable, *added] if path == w or path.startswith(w.rstrip("/") + "/")]
        if inside or path in tracked:
            continue
        top = path.split("/", 1)[0]
        if "/" in path and not any(t == top or t.startswith(top + "/") for t in tracked):
            added.append(top)  # a directory of build outputs only, e.g. `lib/`
            continue
        where = "at the project root" if "/" not in path else f"in '{top}/', which holds tracked sources"
        warnings.append(
            f"package.json's '{key}' names {path}, which the build writes {where}, outside the writable "
            f"'{writable[0]}/': a confined run cannot create it, and the build fails there. Point '{key}' into "
            f"'{writable[0]}/' (e.g. {writable[0]}/{Path(path).name}), so that the build writes it there"
        )
    return added, warnings


def _read_package(path: Path, warnings: list[str]) -> dict[str, Any]:
    try:
        package = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(package, dict):
            raise ValueError("not an object")
    except (ValueError, OSError) as exc:
        warnings.append(f"{path.name} could not be read ({exc}); using defaults")
        return {}
    return package


def _workspaces(root: Path, package: dict[str, Any]) -> list[str]:
    """The workspace packages `workspaces` names (npm's list, or yarn's `packages`): directories holding a
    package.json, project-relative, sorted (bounded)."""
    listed = package.get("workspaces")
    patterns = listed.get("packages") if isinstance(listed, dict) else listed
    found: set[str] = set()
    real_root = root.resolve()
    for pattern in patterns if isinstance(patterns, list) else []:
        if not isinstance(pattern, str) or pattern.startswith(("/", "!")) or ".." in pattern:
            continue
        # `**/**` matches what `**` does, but each one more walks the tree again beneath every match (a handful
        # made detection take hours); a pattern with `**` twice or more apart is not followed.
        pattern = re.sub(r"\*\*(?:/\*\*)+", "**", pattern.removeprefix("./").rstrip("/"))
        if not pattern or "\x00" in pattern or pattern.count("**") > 1:
            continue
        try:
            paths = sorted(root.glob(pattern))[:200]
        except (ValueError, OSError):
            continue
        for path in paths:
            where = path.relative_to(root).as_posix()
            # Put into run_command, `writable` and the metric: a plain path, inside the project (no link out).
            inside = path.resolve() == real_root / where
            if (
                plain_relative(where)
                and inside
                and (path / "package.json").is_file()
                and "node_modules" not in path.parts
            ):
                found.add(where)
    return sorted(found)


NO_BUILD = "package.json has no 'build' script; set run_command to what builds the bundle"


def _add_notes(detection: Detection, notes: list[str]) -> None:
    """A package's warnings; the missing build script's is tied to run_command (gone once the user sets one)."""
    for note in notes:
        if note.endswith(NO_BUILD):
            detection.warn_about("run_command", note)
        else:
            detection.warnings.append(note)


def _package_settings(root: Path, where: str, lock_files: list[str]) -> tuple[dict[str, Any], str, list[str]]:
    """The build of the package in `where` ("" for the project root): its settings, the metric's description and
    the warnings. A workspace package is built with `npm run build --workspace=<dir>` from the root; its outputs
    are its own directory's."""
    prefix = f"{where}/" if where else ""
    base = root / where if where else root
    warnings: list[str] = []
    package = _read_package(base / "package.json", warnings)
    scripts = package["scripts"] if isinstance(package.get("scripts"), dict) else {}
    build = scripts.get("build") if isinstance(scripts.get("build"), str) else None
    if build is None:
        warnings.append(f"{prefix}{NO_BUILD}")
    out_dir = prefix + _output_dir(base, build or "")
    more_outputs, output_warnings = (
        foresee_outputs(base, package, [out_dir.removeprefix(prefix)]) if build else ([], [])
    )
    warnings += [w.replace("package.json's", f"{prefix}package.json's") for w in output_warnings]
    settings = {
        "run_command": f"npm run build --workspace={where}" if where else "npm run build",
        # npm's cache and node_modules/.cache are private to each run (npm_config_cache, CACHE_DIR): caches.py
        "writable": [out_dir, *(prefix + p for p in more_outputs)],
        "shared_inputs": ["node_modules"],  # with slots: the installed packages, read-only in every slot
        "metric_name": "bundle_kb",
        "metric_measure": f"size_kb:{out_dir} !*.map",  # what ships: source maps left out
        "metric_direction": "lower_is_better",
        "readonly_files": ["package.json", *lock_files] + ([f"{prefix}package.json"] if where else []),
    }
    if build is None:  # `npm run build` would only fail ("Missing script"): nothing to run until one is set
        del settings["run_command"]
    source = (
        f"total size of the build output directory '{out_dir}/' in KB, source maps (*.map) left out "
        f"(measured by the server; an output not written by the run is a metric_error)"
    )
    return settings, source, warnings


def detect(root: Path) -> Detection | None:
    path = root / "package.json"
    if not path.is_file():
        return None
    warnings: list[str] = []
    package = _read_package(path, warnings)
    lock_files = [name for name in LOCK_FILES if (root / name).is_file()]
    workspaces = _workspaces(root, package)
    settings, source, package_warnings = _package_settings(root, "", lock_files)
    candidates = _targets(package)
    for where in workspaces:
        inner = _read_package(root / where / "package.json", [])
        candidates += [f"{where}/{target}" for target in _targets(inner)]
    detection = Detection(
        project_type=NAME,
        score=50,
        evidence=["package.json"],
        settings=dict(settings),
        metric_source=source,
        warnings=warnings,
        target_candidates=candidates,
        no_target="no tracked source file found (source/main/module/exports, src/index.*); set target_file",
    )
    if not workspaces:
        _add_notes(detection, package_warnings)
        return detection

    def for_target(target: str | None) -> dict[str, Any]:
        """The workspace package holding the target is the one built and measured (the root's without one)."""
        where = next((w for w in reversed(workspaces) if target and target.startswith(w + "/")), "")
        chosen, detection.metric_source, notes = (
            (settings, source, package_warnings) if not where else _package_settings(root, where, lock_files)
        )
        _add_notes(detection, notes)
        for key in settings:  # the root's build settings give way to the package's
            detection.settings.pop(key, None)
        if where:
            detection.evidence = ["package.json", f"{where}/package.json"]
            detection.warn_about(
                "target_file",
                f"npm workspaces: the target is in the package '{where}', which is built and measured "
                f"({', '.join(workspaces[:6])} found); set target_file to a file of another package to "
                "optimise that one",
            )
        return chosen

    detection.with_target = for_target
    return detection
