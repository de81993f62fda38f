"""The shape of the package, as issue 22's review measured it: modules per folder, floors of imports (the
longest chain of imports), functions over 60 lines, duplicated blocks, strict type errors, dead definitions.

    .venv/bin/python bench/code_shape.py [REV]     (default: the working tree; REV: a commit, read with git)

Dead definitions: module-level functions and classes whose name appears nowhere else in the package, the tests
or the benchmarks (a lower bound of what vulture would report; entry points named in pyproject count as used).
Duplicated blocks: pairs of six or more shared lines inside the package, from the `duplicates` tool when present.
"""

from __future__ import annotations

import ast
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PKG = "mcp_autoresearch"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.test_structure import _imports  # noqa: E402 (the benchmark runs from any directory)


def modules(root: Path) -> dict[str, Path]:
    found = {}
    for path in (root / PKG).rglob("*.py"):
        if "examples" in path.relative_to(root / PKG).parts:
            continue
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules this one imports (the structure test's reading of an import)."""
    return {m for m in _imports(name, path) if m in known and m != name}


def floors(graph: dict[str, set[str]]) -> int:
    depth: dict[str, int] = {}

    def visit(node: str, stack: set[str]) -> int:
        if node in depth:
            return depth[node]
        if node in stack:
            return 0
        stack.add(node)
        depth[node] = 1 + max((visit(n, stack) for n in graph[node]), default=0)
        stack.discard(node)
        return depth[node]

    return max(visit(n, set()) for n in graph)


def long_functions(mods: dict[str, Path], limit: int = 60) -> list[tuple[int, str]]:
    found = []
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > limit:
                    found.append((length, f"{name}.{node.name}"))
    return sorted(found, reverse=True)


def dead_definitions(root: Path, mods: dict[str, Path]) -> list[str]:
    texts = [p.read_text(encoding="utf-8") for p in mods.values()]
    for folder in ("tests", "bench"):
        texts += [p.read_text(encoding="utf-8") for p in (root / folder).rglob("*.py")]
    texts.append((root / "pyproject.toml").read_text(encoding="utf-8"))
    words = collections.Counter(w for text in texts for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
    dead = []
    for name, path in mods.items():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            defines = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            if defines and words[node.name] <= 1 and not node.name.startswith("__"):
                dead.append(f"{name}.{node.name}")
    return dead


def strict_errors(root: Path) -> int:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--disallow-untyped-defs",
            "--disallow-any-generics",
            "--no-incremental",
            "--cache-dir",
            os.devnull,
            PKG,
        ],
        cwd=root,
        capture_output=True,
        text=True,
    ).stdout
    match = re.search(r"Found (\d+) errors?", out)
    return int(match.group(1)) if match else 0


def duplicated_blocks(root: Path) -> int | None:
    tool = shutil.which("duplicates")
    if tool is None:
        return None
    out = subprocess.run(
        [tool, "--repo", str(root / PKG), "--most", "200", "--seconds", "120"], capture_output=True, text=True
    ).stdout
    match = re.search(r"^(\d+) pairs of places", out, re.M)
    return int(match.group(1)) if match else 0


def report(root: Path) -> None:
    mods = modules(root)
    known = set(mods)
    graph = {name: imports(name, path, known) for name, path in mods.items()}
    folders = collections.Counter(str(path.parent.relative_to(root)) for path in mods.values())
    longs = long_functions(mods)
    dead = dead_definitions(root, mods)
    print(f"modules: {len(mods)}; per folder: {dict(sorted(folders.items()))}")
    print(f"floors of imports: {floors(graph)}")
    print(f"functions over 60 lines: {len(longs)} (longest: {', '.join(f'{n} {ln}' for ln, n in longs[:3])})")
    print(f"modules over 500 lines: {sum(1 for p in mods.values() if len(p.read_text().splitlines()) > 500)}")
    print(f"dead definitions: {len(dead)} {dead[:12]}")
    print(f"strict type errors: {strict_errors(root)}")
    blocks = duplicated_blocks(root)
    print(
        f"duplicated blocks (duplicates, package): {blocks if blocks is not None else 'tool not installed'}"
    )


def main() -> None:
    if len(sys.argv) > 1:
        with tempfile.TemporaryDirectory() as scratch:
            subprocess.run(f"git archive {sys.argv[1]} | tar -x -C {scratch}", shell=True, check=True)
            report(Path(scratch))
    else:
        report(Path(__file__).resolve().parent.parent)


if __name__ == "__main__":
    main()
