"""C and C++ projects built with CMake or a Makefile: the build's program is built (and run) in `build/`.

What the detector cannot know is which number the program prints: the metric it proposes is the program's size
(measured by the server), and `detect` says how to read a printed number instead."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ...vcs.readonly import tracked_and_ignored
from .base import Detection, find_files, plain_relative, read_small, rel

NAME = "c"
SOURCE_SUFFIXES = (".c", ".cc", ".cpp", ".cxx", ".c++")
MAKEFILES = ["GNUmakefile", "makefile", "Makefile"]
BUILD_DIR = "build"
CMAKE_BUILD = f"cmake -S . -B {BUILD_DIR} -DCMAKE_BUILD_TYPE=Release && cmake --build {BUILD_DIR}"
# Rule names that are never a file the build writes, declared .PHONY or not.
PHONY_NAMES = {
    "all",
    "clean",
    "distclean",
    "install",
    "uninstall",
    "test",
    "tests",
    "check",
    "run",
    "default",
}
COLD_BUILD = (
    "every run starts from an empty build/ (outputs are moved aside before each run), so each run is a cold "
    "build{configure}: {cost} (BENCHMARKS.md); a run cannot reuse the previous run's objects"
)


def _main_files(root: Path, sources: list[Path]) -> list[str]:
    """The sources defining main() first, then the others, largest first (bounded)."""
    with_main = [p for p in sources if re.search(r"\bmain\s*\(", read_small(p))]
    others = sorted((p for p in sources if p not in with_main), key=lambda p: -p.stat().st_size)
    return [rel(root, p) for p in [*with_main, *others][:20]]


def _metric(program: str | None, how: str) -> tuple[dict[str, Any], str]:
    if program is None:
        return {}, "unknown: set metric_name (the number the program prints, see warnings)"
    settings = {
        "metric_name": "binary_kb",
        "metric_measure": f"size_kb:{program}",
        "metric_direction": "lower_is_better",
    }
    return settings, f"size of the built program {program} in KB ({how}; measured by the server)"


def _which_number(program: str | None, programs: list[str], build: str) -> str:
    """What the user still has to choose, in one warning."""
    read_printed = (
        "set metric_name to the number it prints as a line '<name>: <value>' (e.g. metric_name = \"time_ms\", "
        'metric_direction = "lower_is_better"; read from the run\'s output, so self-reported), or '
        'metric_measure = "wall_time_s" to time the whole run (the cold build included)'
    )
    if program:
        return (
            f"the detector cannot know which number your program prints: the metric proposed is the size of "
            f"{program}, and run_command runs it after the build (its exit status says it still works; remove "
            f"'&& ./{program}' if it needs arguments or input). To optimise what it computes or how fast, "
            + read_printed
        )
    found = (
        f"programs found: {', '.join(programs[:8])}" if programs else "no program found in the build files"
    )
    return (
        f"the detector cannot know which program prints the metric ({found}): set run_command to the build and "
        f'the program that prints it (e.g. run_command = "{build} && ./{BUILD_DIR}/<program>"), and '
        + read_printed
    )


def detect(root: Path) -> Detection | None:
    if (root / "CMakeLists.txt").is_file():
        return _cmake(root)
    makefile = next((name for name in MAKEFILES if (root / name).is_file()), None)
    if makefile is None:
        return None
    sources = find_files(root, ".", SOURCE_SUFFIXES)
    return _make(root, makefile, sources) if sources else None


def _cmake(root: Path) -> Detection:
    text = read_small(root / "CMakeLists.txt")
    project = re.search(r"\bproject\s*\(\s*([\w.+-]+)", text, re.IGNORECASE)
    names = {"PROJECT_NAME": project.group(1)} if project else {}
    names["CMAKE_PROJECT_NAME"] = names.get("PROJECT_NAME", "")
    programs: list[tuple[str, list[str]]] = []
    for found in re.finditer(r"\badd_executable\s*\(([^)]*)\)", text, re.IGNORECASE):
        words = found.group(1).split()
        if not words or {"IMPORTED", "ALIAS"}.intersection(words):
            continue
        name = re.sub(r"\$\{(\w+)\}", lambda m: names.get(m.group(1), m.group(0)), words[0])
        if plain_relative(name) and "/" not in name:  # a name put into run_command: no shell syntax, no path
            programs.append((name, [w for w in words[1:] if w.endswith(SOURCE_SUFFIXES)]))
    warnings = []
    located = "RUNTIME_OUTPUT_DIRECTORY" not in text
    if not located:
        warnings.append(
            "CMakeLists.txt sets a RUNTIME_OUTPUT_DIRECTORY: the detector cannot tell where the program is "
            "written; set run_command and metric_measure (e.g. size_kb:build/bin/<program>) yourself"
        )
    if re.search(r"\b(FetchContent|ExternalProject)", text):
        warnings.append(
            'CMakeLists.txt fetches dependencies (FetchContent/ExternalProject): with network = "off" the '
            "configure step cannot download them, and with an empty build/ every run would download them "
            'again; provide them locally (FETCHCONTENT_SOURCE_DIR_<NAME>, find_package) or set network = "on"'
        )
    program = f"{BUILD_DIR}/{programs[0][0]}" if len(programs) == 1 and located else None
    run = CMAKE_BUILD + (f" && ./{program}" if program else "")
    metric, source = _metric(program, "CMake's add_executable")
    settings = {
        "run_command": run,
        "writable": [BUILD_DIR],
        "readonly_files": ["CMakeLists.txt"],
        **metric,
    }
    sources = find_files(root, ".", SOURCE_SUFFIXES)
    named = [root / s for _, listed in programs[:1] for s in listed if (root / s).is_file()]
    candidates = _main_files(root, named) + _main_files(root, sources)
    detection = Detection(
        NAME,
        55,
        ["CMakeLists.txt"],
        settings,
        source,
        warnings,
        target_candidates=candidates,
        no_target="no tracked C or C++ source (.c, .cc, .cpp, .cxx) found; set target_file",
    )
    cost = (
        "a 13-file C++ program took 70 s from scratch (0.4 s of it CMake's configure), against 1.1 s when one "
        "file changed, on 2 busy cores"
    )
    detection.warn_about(
        "metric_name", _which_number(program, [f"{BUILD_DIR}/{p}" for p, _ in programs], run)
    )
    detection.warn_about(
        "run_command", COLD_BUILD.format(configure=" (CMake's configure included)", cost=cost)
    )
    return detection


def _expand(text: str) -> str:
    """The Makefile with its simple variables substituted (the first assignment of each; two levels)."""
    values: dict[str, str] = {}
    for found in re.finditer(r"^[ \t]*([A-Za-z_]\w*)[ \t]*(?:::?=|\?=|=)[ \t]*(.*)$", text, re.MULTILINE):
        values.setdefault(found.group(1), found.group(2).split("#", 1)[0].strip())
    for _ in range(2):
        text = re.sub(r"\$[({](\w+)[)}]", lambda m: values.get(m.group(1), m.group(0)), text)
    return text


def _make_outputs(text: str) -> tuple[list[str], list[str]]:
    """Paths the Makefile writes: rule targets that are no phony name, and `-o` arguments; and the phony names."""
    phony = set(PHONY_NAMES)
    for found in re.finditer(r"^\.PHONY[ \t]*:(.*)$", text, re.MULTILINE):
        phony.update(found.group(1).split())
    outputs = []
    for found in re.finditer(r"^([^\s#:=.$][^:=#\n]*?)[ \t]*::?(?!=)", text, re.MULTILINE):
        outputs += [t for t in found.group(1).split() if t not in phony]
    outputs += re.findall(r"(?:^|\s)-o[ \t]*([^\s;&|)]+)", text)
    return [o.removeprefix("./") for o in outputs if "$" not in o], sorted(phony)


def _make(root: Path, makefile: str, sources: list[Path]) -> Detection:
    outputs, _ = _make_outputs(_expand(read_small(root / makefile)))
    # What is proposed as `writable` or run must be a plain path inside the project (no `~`, `..`, shell syntax).
    outputs = [o for o in outputs if plain_relative(o.replace("%", "x"))]
    known = tracked_and_ignored(root)
    tracked = known[0] if known else set()
    tops = {o.split("/", 1)[0] for o in outputs if "/" in o and not o.startswith("/")}
    # A directory of outputs holds no tracked file: `src/%.o` is written among the sources.
    dirs = sorted(t for t in tops if not any(f.startswith(t + "/") for f in tracked))
    at_root = sorted({o for o in outputs if "/" not in o and o not in [*tracked, *dirs] and "%" not in o})
    among_sources = sorted(
        {o for o in outputs if "/" in o and o.split("/", 1)[0] not in dirs and o not in tracked}
    )
    programs = sorted(
        {
            o
            for o in outputs
            if o.split("/", 1)[0] in dirs and "/" in o and "%" not in o and not Path(o).suffix
        }
    )
    program = programs[0] if len(programs) == 1 else None
    run = "make" + (f" && ./{program}" if program else "")
    metric, source = _metric(program, f"the {makefile}'s rule")
    settings: dict[str, Any] = {"run_command": run, "readonly_files": [makefile], **metric}
    warnings = []
    if dirs:
        settings["writable"] = dirs
    misplaced = at_root + among_sources
    if misplaced or not dirs:
        where = (
            f"writes {', '.join(misplaced[:5])} outside a directory of outputs"
            if misplaced
            else ("writes no output into a directory of its own that the detector can see")
        )
        warnings.append(
            f"the {makefile} {where}: a confined run may write only beneath the `writable` directories, which "
            "cannot be the project root or a directory of sources, so the build fails there. Have it write "
            f"its objects and program into {BUILD_DIR}/ (e.g. `$(CC) -o {BUILD_DIR}/app ...`, objects as "
            f'{BUILD_DIR}/%.o) and set writable = ["{BUILD_DIR}"]'
        )
    detection = Detection(
        NAME,
        30,  # a Makefile is often only a task runner: every other type's evidence is stronger
        [makefile],
        settings,
        source,
        warnings,
        target_candidates=_main_files(root, sources),
        no_target="no tracked C or C++ source (.c, .cc, .cpp, .cxx) found; set target_file",
    )
    programs_found = programs or [o for o in at_root if not Path(o).suffix]
    cost = "as many compilations as the program has sources: a 13-file C++ program took 70 s, against 1.1 s when one file changed"
    detection.warn_about("metric_name", _which_number(program, programs_found, "make"))
    if dirs:
        detection.warn_about("run_command", COLD_BUILD.format(configure="", cost=cost))
    return detection
