"""Python packages: the metric is the wall time of the test suite (pytest)."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import tomllib
from pathlib import Path

from ...terminal_text import printable
from .base import Detection, find_files, first_existing, rel, wall_time_settings

NAME = "python"
MIN_DELTA_S = 0.1  # a test suite takes a second to minutes; differences under 0.1 s are noise
ROOT_TESTS_LISTED = 20  # root test modules named one by one in the run command; beyond, the root itself


def _package_name(root: Path) -> str | None:
    try:
        data = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None
    name = data.get("project", {}).get("name")
    return name.replace("-", "_").lower() if isinstance(name, str) else None


def _targets(root: Path) -> list[str]:
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
    named = [found] if found and not found.endswith("__init__.py") else []
    # An empty __init__.py is a poor target: prefer the largest modules of the package.
    base = str(Path(found).parent) if found else ("src" if (root / "src").is_dir() else ".")
    modules = [p for p in find_files(root, base, (".py",)) if "test" not in p.name and p.name != "setup.py"]
    modules.sort(key=lambda p: (-p.stat().st_size, len(str(p))))
    return named + [rel(root, p) for p in modules[:20]] + ([found] if found and not named else [])


def _interpreter(root: Path) -> tuple[str, list[str]]:
    """The project's own environment when it has one: `.venv/bin/python`, else `uv run python` with uv.lock;
    otherwise the interpreter on PATH, named in a warning (the tests may not even import there)."""
    venv = root / ".venv" / "bin" / "python"
    if venv.is_file() and os.access(venv, os.X_OK):
        return ".venv/bin/python", []
    notes = []
    if (root / "uv.lock").is_file():
        if shutil.which("uv"):
            return "uv run python", []
        notes.append("uv.lock found but uv is not on PATH, and there is no .venv")
    name = "python" if shutil.which("python") else "python3"
    found = shutil.which(name)
    where = f"'{name}' from PATH ({os.path.realpath(found)})" if found else f"'{name}', which is not on PATH"
    notes.append(
        f"no project environment (.venv, or uv.lock with uv): the tests run with the interpreter {where}; "
        "set run_command if they need another"
    )
    return name, notes


# Where pytest reads `testpaths`, in its own order of precedence: (file, section).
PYTEST_INI = [
    ("pytest.ini", "pytest"),
    ("pyproject.toml", None),
    ("tox.ini", "pytest"),
    ("setup.cfg", "tool:pytest"),
]


def pytest_testpaths(root: Path) -> tuple[list[str], str] | None:
    """pytest's configured `testpaths` that exist, and the file that set them (None when none is set). As pytest
    does, the first file with a pytest section is the configuration, whether it sets testpaths or not."""
    for name, section in PYTEST_INI:
        path = root / name
        if not path.is_file():
            continue
        try:
            if section is None:
                table = tomllib.loads(path.read_text(encoding="utf-8")).get("tool", {}).get("pytest", {})
                if "ini_options" not in table:
                    continue
                found: object = table["ini_options"].get("testpaths")
            else:
                parser = configparser.ConfigParser(interpolation=None)
                parser.read_string(path.read_text(encoding="utf-8"))
                if not parser.has_section(section):
                    continue
                found = parser.get(section, "testpaths", fallback=None)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, configparser.Error):
            continue
        entries = found.split() if isinstance(found, str) else found if isinstance(found, list) else []
        paths = [
            e for e in entries if isinstance(e, str) and (root / e).exists() and ".." not in Path(e).parts
        ]
        return (paths, name) if paths else None
    return None


def _root_test_files(root: Path) -> list[str]:
    """The test modules at the project root (`test_*.py`, `*_test.py`), which pytest collects there, as a
    single-module library keeps them (`test_inflection.py` beside `inflection/`); `./` before one pytest would
    read as an option (`-k_test.py`); more than ROOT_TESTS_LISTED of them, the root itself (`.`), where pytest
    collects every one. A name a command line cannot hold as written (not UTF-8, a control character) is left out:
    pytest's own cache fails on it after the tests (UnicodeEncodeError), and so would every run."""
    found = sorted(
        {p.name for pattern in ("test_*.py", "*_test.py") for p in root.glob(pattern) if p.is_file()}
    )
    found = [name for name in found if printable(name) == name]
    if len(found) > ROOT_TESTS_LISTED:
        return ["."]
    return [f"./{name}" if name.startswith("-") else name for name in found]


def detect(root: Path) -> Detection | None:
    markers = [name for name in ("pyproject.toml", "setup.py", "setup.cfg") if (root / name).is_file()]
    if not markers:
        return None
    configured = pytest_testpaths(root)
    tests = (
        configured[0]
        if configured
        else [name for name in ("tests", "test") if (root / name).is_dir()][:1] or _root_test_files(root)
    )
    settings = {
        "metric_name": "test_time_s",
        **wall_time_settings(MIN_DELTA_S),
        "writable": [".pytest_cache"],
        "shared_inputs": [".venv", "venv"],  # with slots: the environment, read-only in every slot
        "metric_direction": "lower_is_better",
        "readonly_files": markers,
    }
    interpreter_notes: list[str] = []
    if tests:
        python, interpreter_notes = _interpreter(root)
        settings["run_command"] = f"{python} -m pytest -q -x {' '.join(map(shlex.quote, tests))}"
        if python.startswith("uv "):
            settings["writable"] = [".pytest_cache"]  # uv's cache is private to each run (TMPDIR)
    detection = Detection(
        NAME,
        40,
        markers + ([configured[1]] if configured and configured[1] not in markers else []),
        settings,
        "wall time of the test suite in seconds (measured by the server)",
        [],
        target_candidates=_targets(root),
        no_target="no tracked module found to optimise; set target_file",
    )
    if not tests:  # said only while no source of the user's gives run_command
        detection.warn_about(
            "run_command",
            "no tests/ directory, no test_*.py at the root and no pytest testpaths: set run_command to what "
            "exercises the code",
        )
    for note in interpreter_notes:
        detection.warn_about("run_command", note)
    return detection
