"""Zero configuration for C/C++ projects (CMake, a Makefile) and npm workspaces (newuser6): real projects in
tmp_path, the real configuration loader, and a real confined baseline built by cmake, make and npm (offline)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from mcp_autoresearch.setup.project import load_project

from .conftest import git, make_repo

SOLVER = "int solve(int n) {\n    int s = 0;\n    for (int i = 0; i < n; i++) s += i;\n    return s;\n}\n"
MAIN = '#include <stdio.h>\nint solve(int);\nint main(void) { printf("sum: %d\\n", solve(10)); return 0; }\n'
CMAKE = "cmake_minimum_required(VERSION 3.10)\nproject(bench C)\nadd_executable(${PROJECT_NAME} main.c solver.c)\n"
MAKEFILE = (
    "CC ?= gcc\nBUILD := build\n$(BUILD)/bench: main.c solver.c | $(BUILD)\n\t$(CC) -O2 -o $@ main.c solver.c\n"
    "$(BUILD):\n\tmkdir -p $(BUILD)\n.PHONY: clean\nclean:\n\trm -rf $(BUILD)\n"
)


def needs(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")


def c_project(root: Path, build_file: str, text: str) -> Path:
    return make_repo(root, {build_file: text, "main.c": MAIN, "solver.c": SOLVER, ".gitignore": "build/\n"})


def test_a_cmake_project_is_detected_with_its_program_built_in_build(tmp_path: Path) -> None:
    info = load_project(c_project(tmp_path / "c", "CMakeLists.txt", CMAKE)).info
    assert info.project_type == "c" and info.evidence == ["CMakeLists.txt"]
    assert info.target_file == "main.c"
    assert info.run_command == (
        "cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build && ./build/bench"
    )
    assert info.writable == ["build"] and info.network == "off" and info.readonly_files == ["CMakeLists.txt"]
    assert info.metric_name == "binary_kb" and info.metric_direction == "lower_is_better"
    assert info.provenance.source == "server" and info.ready
    said = " ".join(info.warnings)
    assert "cannot know which number your program prints" in said and 'metric_name = "time_ms"' in said
    assert "cold build (CMake's configure included)" in said


def test_a_cmake_project_with_several_programs_says_which_to_choose(tmp_path: Path) -> None:
    cmake = CMAKE + "add_executable(other solver.c main.c)\n"
    info = load_project(c_project(tmp_path / "c", "CMakeLists.txt", cmake)).info
    assert info.run_command == "cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build"
    assert info.metric_name is None and not info.ready
    said = " ".join(info.warnings)
    assert "cannot know which program prints the metric (programs found: build/bench, build/other)" in said


def test_a_makefile_writing_into_build_is_detected(tmp_path: Path) -> None:
    info = load_project(c_project(tmp_path / "c", "Makefile", MAKEFILE)).info
    assert info.project_type == "c" and info.run_command == "make && ./build/bench"
    assert info.writable == ["build"]
    assert info.metric_name == "binary_kb" and "build/bench" in info.metric_source and info.ready
    assert not [w for w in info.warnings if "outside a directory of outputs" in w], info.warnings


def test_a_makefile_writing_at_the_root_is_said_plainly(tmp_path: Path) -> None:
    """newuser5's project: `make` links `bench` at the project root, which no `writable` entry can allow."""
    makefile = "bench: main.c solver.c\n\t$(CC) -O2 -o bench main.c solver.c\n"
    info = load_project(c_project(tmp_path / "c", "Makefile", makefile)).info
    assert info.project_type == "c" and info.writable == [] and not info.ready
    said = [w for w in info.warnings if "writes bench outside a directory of outputs" in w]
    assert said and 'writable = ["build"]' in said[0] and "-o build/app" in said[0], info.warnings


def test_a_makefile_without_c_sources_is_no_c_project(tmp_path: Path) -> None:
    root = make_repo(
        tmp_path / "p", {"Makefile": "test:\n\tpytest\n", "pyproject.toml": "[project]\nname='x'\n"}
    )
    assert load_project(root).info.project_type == "python"


@pytest.mark.anyio
@pytest.mark.parametrize("build_file", ["CMakeLists.txt", "Makefile"])
async def test_a_c_project_runs_its_baseline_with_zero_configuration(
    tmp_path: Path, agent_for: Any, build_file: str
) -> None:
    """The detected settings work as they are (confined where the machine allows it): the baseline builds the
    program into build/, runs it, and the server measures its size; a smaller program is kept."""
    needs("cc", "cmake" if build_file == "CMakeLists.txt" else "make")
    root = c_project(tmp_path / "c", build_file, CMAKE if build_file == "CMakeLists.txt" else MAKEFILE)
    (root / "main.c").write_text(MAIN + "static const char pad[65536] = {1};\nconst char *keep = pad;\n")
    git(root, "commit", "-qam", "a padded program")
    async with agent_for(root) as agent:
        await agent.ok("start_session")
        run, _ = await agent.experiment("baseline")
        assert run["status"] == "ok" and run["value"] > 64, run
        await agent.edit("static const char pad[65536] = {1};\nconst char *keep = pad;\n", "")
        run, decision = await agent.experiment("drop the padding")
        assert run["status"] == "ok" and decision["decision"] == "keep", (run, decision)
    assert (root / "build" / "bench").is_file()


BUILD_JS = """\
const fs = require('fs');
fs.mkdirSync('dist', { recursive: true });
fs.writeFileSync('dist/index.js', fs.readFileSync('src/index.js', 'utf8').replace(/\\s+/g, ' '));
"""


def workspaces(root: Path) -> Path:
    """An npm workspaces monorepo: two packages, each built by a tiny local script into its own dist/."""
    files = {
        "package.json": json.dumps(
            {
                "name": "mono",
                "private": True,
                "workspaces": ["packages/*"],
                "scripts": {"build": "npm run build --workspaces"},
            }
        ),
        ".gitignore": "dist/\n",
    }
    for name in ("app", "util"):
        package = {
            "name": name,
            "version": "1.0.0",
            "main": "dist/index.js",
            "scripts": {"build": "node build.js"},
        }
        files[f"packages/{name}/package.json"] = json.dumps(package)
        files[f"packages/{name}/build.js"] = BUILD_JS
        files[f"packages/{name}/src/index.js"] = f"// {name}\nexport const x = 1;\n" + "// padding\n" * 40
    return make_repo(root, files)


def test_npm_workspaces_build_and_measure_the_package_holding_the_target(tmp_path: Path) -> None:
    root = workspaces(tmp_path / "mono")
    info = load_project(root).info
    assert info.target_file == "packages/app/src/index.js"
    assert info.run_command == "npm run build --workspace=packages/app"
    assert info.writable == ["packages/app/dist"] and "packages/app/dist/" in info.metric_source
    assert info.readonly_files == ["package.json", "packages/app/package.json"]
    assert any("npm workspaces: the target is in the package 'packages/app'" in w for w in info.warnings)
    # The user's target chooses the package (before: the root's dist/ was measured and writable).
    (root / "autoresearch.toml").write_text('target_file = "./packages/util/src/index.js"\n')
    info = load_project(root).info
    assert info.run_command == "npm run build --workspace=packages/util"
    assert info.writable == ["packages/util/dist"] and "packages/util/dist/" in info.metric_source


@pytest.mark.anyio
async def test_npm_workspaces_baseline_builds_the_targets_package(tmp_path: Path, agent_for: Any) -> None:
    needs("npm", "node")
    root = workspaces(tmp_path / "mono")
    async with agent_for(root, {"target_file": "packages/util/src/index.js"}) as agent:
        await agent.ok("start_session")
        run, _ = await agent.experiment("baseline")
        assert run["status"] == "ok", run
        await agent.edit("// padding\n" * 40, "")
        run, decision = await agent.experiment("drop the padding")
        assert run["status"] == "ok" and decision["decision"] == "keep", (run, decision)
    assert (root / "packages/util/dist/index.js").is_file() and not (root / "dist").exists()
