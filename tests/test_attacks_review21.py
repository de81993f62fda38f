"""Review 21: attacks on zero configuration for C/C++ and npm workspaces, as a hostile repository: its Makefile,
CMakeLists.txt and package.json choose the names the detector puts into run_command, `writable` and the metric.
Real repositories in tmp_path and the real configuration loader. Each test here failed before its fix."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from mcp_autoresearch.sandbox.write_grants import expand, inside
from mcp_autoresearch.setup.project import Project, load_project

from .conftest import make_repo

MAIN = "int main(void) { return 0; }\n"


def assert_stays_inside(root: Path, project: Project) -> None:
    """What detection proposes names only the project's own paths, and runs nothing the files did not ask for."""
    info = project.info
    for entry in info.writable:
        path = expand(str(root), entry)
        assert inside(str(root), path) and path != str(root) and ".git" not in Path(path).parts, entry
    assert not any(mark in (info.run_command or "") for mark in (";", "..", "~", ">", "`")), info.run_command
    measured = (project.config.metric_measure or "").split(":", 1)[-1]
    assert ".." not in measured and "~" not in measured and not measured.startswith("/"), measured


@pytest.mark.parametrize(
    "makefile",
    [
        # `-o ~/bin/bench`: the detector proposed writable = ["~"], the user's whole home directory.
        "all: ~/bin/bench\n~/bin/bench: main.c\n\t$(CC) -o ~/bin/bench main.c\n",
        # A rule's name went into run_command unquoted: `make && ./build/x;echo>PWNED`.
        'build/x;echo>PWNED: main.c\n\tmkdir -p build && $(CC) -o "$@" main.c\n',
        # A program outside the project: run and measured there (`./build/../../x`, size_kb:build/../../x).
        "build/../../x: main.c\n\tmkdir -p build && $(CC) -o $@ main.c\n",
        # `.git` proposed as writable: `detect` then failed with "writable entry '.git'", an entry nobody wrote.
        "all:\n\t$(CC) -o .git/hooks/x main.c\n",
    ],
)
def test_a_makefiles_names_cannot_reach_home_run_a_command_or_leave_the_project(
    tmp_path: Path, makefile: str
) -> None:
    root = make_repo(tmp_path / "c", {"Makefile": makefile, "main.c": MAIN})
    project = load_project(root)
    assert project.info.project_type == "c"
    assert_stays_inside(root, project)


@pytest.mark.parametrize("program", ["x;echo>PWNED", "../../x", "~/x"])
def test_a_cmake_programs_name_cannot_run_a_command_or_leave_the_project(
    tmp_path: Path, program: str
) -> None:
    cmake = f"cmake_minimum_required(VERSION 3.10)\nproject(p C)\nadd_executable({program} main.c)\n"
    root = make_repo(tmp_path / "c", {"CMakeLists.txt": cmake, "main.c": MAIN})
    project = load_project(root)
    assert project.info.project_type == "c"
    assert_stays_inside(root, project)


@pytest.mark.parametrize("outdir", ["/tmp", "../outside"])
def test_a_build_scripts_output_outside_the_project_is_not_proposed_writable(
    tmp_path: Path, outdir: str
) -> None:
    """`esbuild --outdir=/home/me` made the detector propose the user's home directory as writable."""
    package = {"name": "r", "scripts": {"build": f"esbuild src/index.js --bundle --outdir={outdir}"}}
    root = make_repo(tmp_path / "n", {"package.json": json.dumps(package), "src/index.js": "export {}\n"})
    project = load_project(root)
    assert project.info.project_type == "node" and project.info.writable == ["dist"]
    assert_stays_inside(root, project)


def workspace_project(root: Path, patterns: list[str], packages: list[str], **more: str) -> Path:
    package = {"name": "p", "main": "index.js", "scripts": {"build": "mkdir -p dist && cp index.js dist/"}}
    files = {"package.json": json.dumps({"name": "r", "workspaces": patterns}), **more}
    for where in packages:
        files[f"{where}/package.json"] = json.dumps(package)
        files[f"{where}/index.js"] = "module.exports = 1\n"
    return make_repo(root, files)


@pytest.mark.parametrize(
    ("patterns", "package"),
    [
        ([""], "packages/a"),  # glob('') raised: a traceback from `detect`
        (["./"], "packages/a"),
        (["~/*"], "~/x"),  # a folder named `~`: writable `~/x/dist` is the home directory's x/dist
        (["packages/*"], "packages/x;echo>PWNED"),  # `npm run build --workspace=packages/x;echo>PWNED`
    ],
)
def test_npm_workspaces_cannot_crash_detect_reach_home_or_run_a_command(
    tmp_path: Path, patterns: list[str], package: str
) -> None:
    root = workspace_project(tmp_path / "w", patterns, [package])
    project = load_project(root, {"target_file": f"{package}/index.js"})
    assert project.info.project_type == "node"
    assert_stays_inside(root, project)


def test_npm_workspaces_repeated_double_stars_walk_the_tree_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`**/**/**/...` walked the whole tree again beneath every match of the `**` before it: a dozen of them took
    detection hours on a modest repository. Counted here as the directories listed, not as time."""
    folders = [f"d{a}/d{b}/d{c}" for a in range(3) for b in range(3) for c in range(3)]
    root = workspace_project(tmp_path / "w", ["**/**/**/**/**/**"], ["packages/a"])
    for folder in folders:
        (root / folder).mkdir(parents=True)
    listed: list[Any] = []
    real_scandir = os.scandir

    def counting_scandir(path: Any = ".") -> Any:
        listed.append(path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    info = load_project(root, {"target_file": "packages/a/index.js"}).info
    monkeypatch.undo()
    assert info.run_command == "npm run build --workspace=packages/a"
    assert len(listed) < 10 * (len(folders) + 20), len(listed)
