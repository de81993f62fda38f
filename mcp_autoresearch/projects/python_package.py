"""Python packages: the metric is the wall time of the test suite (pytest)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from .base import Detection, find_files, first_existing, rel

NAME = "python"


def _package_name(root: Path) -> str | None:
    try:
        data = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None
    name = data.get("project", {}).get("name")
    return name.replace("-", "_").lower() if isinstance(name, str) else None


def _target(root: Path) -> str | None:
    name = _package_name(root)
    candidates = []
    if name:
        candidates += [
            f"src/{name}/core.py",
            f"{name}/core.py",
            f"src/{name}/__init__.py",
            f"{name}/__init__.py",
            f"src/{name}.py",
            f"{name}.py",
        ]
    candidates += ["main.py", "app.py"]
    found = first_existing(root, candidates)
    if found and not found.endswith("__init__.py"):
        return found
    # An empty __init__.py is a poor target: prefer the largest module of the package.
    base = str(Path(found).parent) if found else ("src" if (root / "src").is_dir() else ".")
    modules = [p for p in find_files(root, base, (".py",)) if "test" not in p.name and p.name != "setup.py"]
    if modules:
        return rel(root, max(modules, key=lambda p: (p.stat().st_size, -len(str(p)))))
    return found


def detect(root: Path) -> Detection | None:
    markers = [name for name in ("pyproject.toml", "setup.py", "setup.cfg") if (root / name).is_file()]
    if not markers:
        return None
    tests = [name for name in ("tests", "test") if (root / name).is_dir()]
    warnings = []
    settings = {
        "metric_name": "test_time_s",
        "metric_measure": "wall_time_s",
        "writable": [".pytest_cache"],
        "metric_direction": "lower_is_better",
        "readonly_files": markers,
    }
    if tests:
        settings["run_command"] = f"python -m pytest -q -x {tests[0]}"
    else:
        warnings.append("no tests/ directory: set run_command to what exercises the code")
    target = _target(root)
    if target:
        settings["target_file"] = target
    else:
        warnings.append("no module found to optimise; set target_file")
    return Detection(
        NAME,
        40,
        markers,
        settings,
        "wall time of the test suite in seconds (measured by the server)",
        warnings,
    )
