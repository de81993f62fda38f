"""Zero-config detection: one test per project type of the registry, plus conflicts."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from mcp_autoresearch.setup.project import load_project

from .conftest import git, make_repo, run_cli


def detect(tmp_path: Path, files: dict[str, str]):
    return load_project(make_repo(tmp_path / "p", files)).info


def test_ml(tmp_path: Path) -> None:
    info = detect(tmp_path, {"train.py": "", "prepare.py": ""})
    assert info.project_type == "ml"
    assert info.target_file == "train.py"
    assert info.run_command in ("uv run train.py", "python train.py")
    assert info.metric_name == "val_bpb" and info.metric_direction == "lower_is_better"
    assert info.readonly_files == ["prepare.py"]
    assert "peak_vram_mb" in info.metric_source
    assert info.evidence == ["train.py", "prepare.py"]
    assert any("self-reported" in w and "mcp_autoresearch.evaluate" in w for w in info.warnings)


def test_ml_proposes_the_bundled_evaluator_once_train_py_exports_and_the_data_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mcp_autoresearch.setup.projects import ml

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    root = make_repo(
        tmp_path / "p", {"train.py": 'torch.onnx.export(m, (x,), "out/model.onnx")\n', "prepare.py": ""}
    )
    assert ml.evaluation_stage(root) is None  # no validation file yet
    data = tmp_path / "home/.cache/autoresearch/val.npz"
    data.parent.mkdir(parents=True)
    data.write_bytes(b"")
    stage = ml.evaluation_stage(root)
    assert (
        stage is not None
        and " -P -m mcp_autoresearch.evaluate out/model.onnx --data " in stage["eval_command"]
    )
    assert "~/.cache/autoresearch/val.npz" in stage["hidden"] and stage["writable"] == ["out"]
    (root / "train.py").write_text("print('val_bpb: 0.9')\n")  # no export: nothing to evaluate
    assert ml.evaluation_stage(root) is None


def test_node_with_source_field_and_build_script(tmp_path: Path) -> None:
    package = {
        "name": "w",
        "source": "src/app.ts",
        "main": "dist/index.js",
        "scripts": {"build": "esbuild src/app.ts --bundle --outdir=out"},
    }
    info = detect(
        tmp_path,
        {"package.json": json.dumps(package), "src/app.ts": "export {}\n", "package-lock.json": "{}"},
    )
    assert info.project_type == "node"
    assert info.target_file == "src/app.ts"
    assert info.run_command == "npm run build"
    assert info.metric_name == "bundle_kb"
    assert "out/" in info.metric_source
    assert info.readonly_files == ["package.json", "package-lock.json"]
    assert info.warnings == []


def test_node_falls_back_to_src_index_and_warns_without_build(tmp_path: Path) -> None:
    info = detect(tmp_path, {"package.json": "{}", "src/index.js": "console.log(1)\n"})
    assert info.target_file == "src/index.js"
    assert any("no 'build' script" in w for w in info.warnings)
    # `npm run build` would fail on its first run: the project is not ready until run_command is set
    assert info.run_command is None and not info.ready
    assert "Set run_command in autoresearch.toml" in info.message


def test_node_exports_map(tmp_path: Path) -> None:
    package = {"exports": {".": {"import": "./lib/main.mjs"}}, "scripts": {"build": "node build.mjs"}}
    info = detect(tmp_path, {"package.json": json.dumps(package), "lib/main.mjs": ""})
    assert info.target_file == "lib/main.mjs"


def test_flutter(tmp_path: Path) -> None:
    info = detect(tmp_path, {"pubspec.yaml": "name: app\n", "lib/main.dart": "void main() {}\n"})
    assert info.project_type == "flutter"
    assert info.target_file == "lib/main.dart"
    assert info.run_command == "flutter build apk --release"
    assert info.metric_name == "apk_mb"
    assert "app-release.apk" in info.metric_source


MAVEN_APP = {
    "pom.xml": "<project/>",
    "src/main/java/com/x/Util.java": "class Util {}\n",
    "src/main/java/com/x/App.java": "class App { public static void main(String[] a) {} }\n",
}


def test_java_maven_finds_entry_point(tmp_path: Path) -> None:
    info = detect(tmp_path / "app", MAVEN_APP)
    assert info.project_type == "java"
    assert info.target_file == "src/main/java/com/x/App.java"
    assert info.run_command == "mvn -q package -DskipTests"
    assert info.metric_name == "build_time_s"
    assert "wall time" in info.metric_source
    # The original tool's metric, which one source file seldom moves: detect says how to time the program.
    said = " ".join(info.warnings)
    assert "seldom" in said and "mvn -q package -DskipTests && java -cp target/classes com.x.App" in said, (
        said
    )
    timed = detect(tmp_path / "timed", {**MAVEN_APP, "autoresearch.toml": 'run_command = "mvn -q package"\n'})
    assert not any("seldom" in warning for warning in timed.warnings), timed.warnings


def test_kotlin_gradle_wrapper(tmp_path: Path) -> None:
    info = detect(
        tmp_path,
        {
            "build.gradle.kts": "",
            "gradlew": "#!/bin/sh\n",
            "src/main/kotlin/Main.kt": "fun main() { println(1) }\n",
        },
    )
    assert info.project_type == "java"
    assert info.target_file == "src/main/kotlin/Main.kt"
    assert info.run_command == "./gradlew build -x test -q --rerun-tasks"


def test_rust_binary(tmp_path: Path) -> None:
    info = detect(
        tmp_path, {"Cargo.toml": '[package]\nname = "fast"\nversion = "0.1.0"\n', "src/main.rs": ""}
    )
    assert info.project_type == "rust"
    assert info.target_file == "src/main.rs"
    assert info.metric_name == "binary_kb"
    assert "target/release/fast" in info.metric_source


def test_rust_library_uses_build_time(tmp_path: Path) -> None:
    info = detect(tmp_path, {"Cargo.toml": '[package]\nname = "lib"\n', "src/lib.rs": ""})
    assert info.metric_name == "build_time_s"


def test_go(tmp_path: Path) -> None:
    info = detect(tmp_path, {"go.mod": "module x\n", "cmd/tool/main.go": "package main\nfunc main() {}\n"})
    assert info.project_type == "go"
    assert info.target_file == "cmd/tool/main.go"
    assert info.run_command.endswith("./cmd/tool")
    assert info.metric_name == "binary_kb"


def test_python_package(tmp_path: Path) -> None:
    info = detect(
        tmp_path,
        {
            "pyproject.toml": '[project]\nname = "my-lib"\n',
            "src/my_lib/__init__.py": "",
            "src/my_lib/core.py": "def f(): pass\n",
            "tests/test_core.py": "def test(): pass\n",
        },
    )
    assert info.project_type == "python"
    assert info.target_file == "src/my_lib/core.py"
    assert info.run_command in ("python -m pytest -q -x tests", "python3 -m pytest -q -x tests")
    assert info.metric_name == "test_time_s"


def test_strongest_evidence_wins_and_others_are_warned(tmp_path: Path) -> None:
    info = detect(
        tmp_path,
        {"train.py": "", "prepare.py": "", "package.json": "{}", "pyproject.toml": "[project]\nname='x'\n"},
    )
    assert info.project_type == "ml"
    joined = " ".join(info.warnings)
    assert "node project" in joined and "python project" in joined


def test_broken_package_json_still_detects_with_warning(tmp_path: Path) -> None:
    info = detect(tmp_path, {"package.json": "{not json", "index.js": ""})
    assert info.project_type == "node"
    assert any("could not be read" in w for w in info.warnings)


def _path_without_uv() -> str:
    return os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if not (Path(d) / "uv").exists())


def test_uv_warning_only_for_a_detected_run_command(tmp_path: Path, monkeypatch) -> None:
    """Item 12.5: "uv is not on PATH" only when the run command is the detected one."""
    monkeypatch.setenv("PATH", _path_without_uv())
    files = {"train.py": "", "prepare.py": ""}
    detected = detect(tmp_path / "a", files)
    assert detected.run_command == "python train.py"
    assert any("uv is not on PATH" in w for w in detected.warnings)
    configured = detect(tmp_path / "b", {**files, "autoresearch.toml": 'run_command = "python3 train.py"\n'})
    assert configured.run_command == "python3 train.py"
    assert not any("uv" in w for w in configured.warnings)
    root = make_repo(tmp_path / "c", files)
    flagged = load_project(root, {"run_command": "python3 train.py --fast"}).info
    assert not any("uv" in w for w in flagged.warnings)


PY_PACKAGE = {
    "pyproject.toml": '[project]\nname = "lib"\n',
    "lib/core.py": "def f(): pass\n",
    "tests/test_core.py": "def test(): pass\n",
}


def test_python_wall_time_defaults_are_honest_and_use_the_projects_environment(
    tmp_path: Path, monkeypatch
) -> None:
    """Item 12.4: several runs and a min_delta for a wall-time metric, said in `detect`; the project's own
    interpreter (.venv, or uv with uv.lock) or a warning naming the one from PATH."""
    monkeypatch.setenv("PATH", _path_without_uv())
    root = make_repo(tmp_path / "venv", {**PY_PACKAGE, ".gitignore": ".venv/\n"})
    (root / ".venv/bin").mkdir(parents=True)
    (root / ".venv/bin/python").symlink_to(sys.executable)
    project = load_project(root)
    assert project.info.run_command == ".venv/bin/python -m pytest -q -x tests"
    assert project.config.repeats == 3 and project.config.min_delta > 0
    noise = [w for w in project.info.warnings if "wall time" in w]
    assert noise and "3 runs" in noise[0] and "min_delta" in noise[0]

    bare = load_project(make_repo(tmp_path / "bare", PY_PACKAGE)).info
    assert bare.run_command.split()[0] in ("python", "python3")
    assert any("interpreter" in w and bare.run_command.split()[0] in w for w in bare.warnings)

    locked = make_repo(tmp_path / "uv", {**PY_PACKAGE, "uv.lock": "version = 1\n"})
    assert any("uv is not on PATH" in w for w in load_project(locked).info.warnings)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "uv").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "uv").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{_path_without_uv()}")
    assert load_project(locked).info.run_command == "uv run python -m pytest -q -x tests"

    # Another metric configured: detection's repeats and min_delta belong to its metric, not to the user's.
    (locked / "autoresearch.toml").write_text('metric_name = "score"\n')
    assert load_project(locked).config.repeats == 1


def test_java_wall_time_defaults(tmp_path: Path) -> None:
    """Gradle reruns every task, so repeats time a full build; Maven cannot (clean deletes target/, which a
    confined run may not), so it runs once, and detect says noise still weighs."""
    source = {"src/main/java/App.java": "class App {}\n"}
    gradle = load_project(make_repo(tmp_path / "g", {"build.gradle": "", **source}))
    assert gradle.info.run_command == "gradle build -x test -q --rerun-tasks"
    assert gradle.config.repeats == 3 and gradle.config.min_delta > 0
    assert any("wall time" in w and "3 runs" in w for w in gradle.info.warnings)
    maven = load_project(make_repo(tmp_path / "m", {"pom.xml": "<project/>", **source}))
    assert maven.info.run_command == "mvn -q package -DskipTests"
    assert maven.config.repeats == 1 and maven.config.min_delta > 0
    assert any("wall time" in w and "1 run " in w for w in maven.info.warnings)


def test_node_target_is_never_a_build_output(tmp_path: Path) -> None:
    """Item 12.2: `main: dist/x.js` exists after the first build; the target stays the tracked source."""
    package = {"name": "x", "main": "dist/x.js", "scripts": {"build": "node build.js"}}
    root = make_repo(
        tmp_path / "n",
        {"package.json": json.dumps(package), ".gitignore": "dist/\n", "src/index.ts": "export {}\n"},
    )
    before = load_project(root).info
    assert before.target_file == "src/index.ts"
    (root / "dist").mkdir()
    (root / "dist/x.js").write_text("module.exports = 1\n")  # the first build's output (ignored, untracked)
    after = load_project(root).info
    assert after.target_file == "src/index.ts"
    assert any("dist/x.js" in w and "build output" in w for w in after.warnings)
    # A library that commits its build output: tracked, but still a build output, never the target.
    git(root, "add", "-f", "dist/x.js")
    git(root, "commit", "-q", "-m", "ship dist")
    assert load_project(root).info.target_file == "src/index.ts"


def test_node_output_dir_of_the_build_script_is_never_the_target(tmp_path: Path) -> None:
    package = {"main": "lib/index.js", "scripts": {"build": "tsc --outDir lib"}}
    root = make_repo(
        tmp_path / "n",
        {"package.json": json.dumps(package), "lib/index.js": "", "src/main.ts": "export {}\n"},
    )
    info = load_project(root).info
    assert "'lib/'" in info.metric_source
    assert info.target_file == "src/main.ts"


def test_every_type_targets_only_tracked_unignored_sources(tmp_path: Path) -> None:
    """The same rule for every type: an ignored or untracked file is never the detected target."""
    go = make_repo(
        tmp_path / "go",
        {
            "go.mod": "module x\n",
            ".gitignore": "/main.go\n",
            "cmd/tool/main.go": "package main\nfunc main() {}\n",
        },
    )
    (go / "main.go").write_text("package main\nfunc main() {}\n")  # generated, ignored
    assert load_project(go).info.target_file == "cmd/tool/main.go"

    py = make_repo(
        tmp_path / "py",
        {
            "pyproject.toml": '[project]\nname = "lib"\n',
            ".gitignore": "lib/_generated.py\n",
            "lib/__init__.py": "",
            "lib/solver.py": "def f(): pass\n",
        },
    )
    (py / "lib/_generated.py").write_text("X = 1\n" * 1000)  # the largest module, but ignored
    assert load_project(py).info.target_file == "lib/solver.py"

    ml = make_repo(tmp_path / "ml", {"README.md": "x\n"})
    (ml / "train.py").write_text("")
    (ml / "prepare.py").write_text("")
    info = load_project(ml).info
    assert info.project_type == "ml" and info.target_file is None
    assert "train.py is not tracked by git" in info.message


def test_a_target_is_never_where_the_build_writes(tmp_path: Path) -> None:
    """The paths a type lets its runs write are build outputs too: never the target, even when tracked."""
    from mcp_autoresearch.setup.projects.base import Detection, choose_target
    from mcp_autoresearch.vcs.readonly import tracked_and_ignored

    root = make_repo(tmp_path / "w", {"gen/model.py": "x = 1\n", "src/model.py": "x = 2\n"})
    detection = Detection(
        "demo",
        1,
        [],
        {"writable": ["./gen", "~/.cache/demo"]},
        "",
        target_candidates=["gen/model.py", "src/model.py"],
    )
    choose_target(root, detection, tracked_and_ignored(root))
    assert detection.settings["target_file"] == "src/model.py"
    assert any("'gen/', where the build writes" in w for w in detection.setting_warnings["target_file"])


PYTEST_CONFIGS = {
    "pyproject.toml": '[project]\nname = "toolz"\n\n[tool.pytest.ini_options]\ntestpaths = ["toolz/tests", "gone"]\n',
    "pytest.ini": "[pytest]\ntestpaths = toolz/tests\n",
    "setup.cfg": "[metadata]\nname = toolz\n\n[tool:pytest]\ntestpaths =\n    toolz/tests\n",
    "tox.ini": "[tox]\nenvlist = py3\n\n[pytest]\ntestpaths = toolz/tests\n",
}


def test_python_reads_pytest_testpaths_from_each_config_file(tmp_path: Path) -> None:
    """Issue 21.5: toolz keeps its tests in toolz/tests, named by testpaths; detection said `run command: -`."""
    for name, text in PYTEST_CONFIGS.items():
        files = {
            "setup.py": "",
            name: text,
            "toolz/core.py": "def f(): pass\n",
            "toolz/tests/test_core.py": "",
        }
        info = detect(tmp_path / name, files)
        assert info.project_type == "python", name
        assert info.run_command is not None and info.run_command.endswith("-m pytest -q -x toolz/tests"), name
        assert not any("no tests/" in w for w in info.warnings)


def test_detect_shows_the_values_of_checks_repeats_and_min_delta(tmp_path: Path) -> None:
    """Issue 21.5: `detect` and `detect_project` show the values, not only where they came from; Rust's wall
    time tells one story with the keep rule (never 'set repeats' while the baseline's runs measure the noise)."""
    root = make_repo(tmp_path / "crate", {"Cargo.toml": '[package]\nname = "lib"\n', "src/lib.rs": ""})
    info = load_project(root).info
    assert info.repeats == 3 and info.min_delta == 0.5 and info.checks_command is None
    wall = [w for w in info.warnings if "wall time" in w]
    assert wall and "set repeats" not in wall[0] and "3 runs of the baseline" in info.keep_rule
    assert "the baseline runs 3 times to measure that noise" in wall[0]
    (root / "autoresearch.toml").write_text('checks_command = "cargo test -q"\nmin_delta = 2\n')
    out = run_cli("detect", "--project", str(root))
    assert "checks:       cargo test -q" in out.stdout
    assert "repeats:      3 " in out.stdout and "min_delta:    2\n" in out.stdout
    shown = json.loads(run_cli("detect", "--project", str(root), "--json").stdout)
    assert shown["checks_command"] == "cargo test -q" and shown["repeats"] == 3 and shown["min_delta"] == 2


def test_node_foresees_outputs_named_by_package_json(tmp_path: Path) -> None:
    """Issue 21.1: microbundle writes the file `types` names (index.d.ts at the root); a build that writes
    outside the detected output failed confined. Detection adds an output-only directory to `writable` and says
    plainly when an output lands where a run cannot create it; a tracked file named there is a source."""
    package = {
        "name": "mitt",
        "source": "src/index.ts",
        "main": "dist/mitt.js",
        "module": "lib/mitt.mjs",
        "typings": "index.d.ts",
        "exports": {".": {"types": "./index.d.ts", "import": "./lib/mitt.mjs", "require": "./dist/mitt.js"}},
        "scripts": {"build": "microbundle"},
    }
    info = detect(tmp_path, {"package.json": json.dumps(package), "src/index.ts": "export {}\n"})
    assert info.target_file == "src/index.ts"
    assert info.writable[:2] == ["dist", "lib"], info.writable
    named = [w for w in info.warnings if "index.d.ts" in w]
    assert (
        named
        and "'typings'" in named[0]
        and "at the project root" in named[0]
        and "dist/index.d.ts" in named[0]
    )
    assert not any("mitt.js" in w or "mitt.mjs" in w for w in info.warnings)

    # The same names, but the root file is tracked (a hand-written declaration): a source, nothing to say.
    tracked = detect(
        tmp_path / "tracked",
        {"package.json": json.dumps(package), "src/index.ts": "export {}\n", "index.d.ts": "export {}\n"},
    )
    assert not any("index.d.ts" in w for w in tracked.warnings)
    # An output named inside a directory of sources is never made writable: it is said instead.
    sources = {**package, "module": "src/mitt.mjs", "exports": None}
    mixed = detect(tmp_path / "mixed", {"package.json": json.dumps(sources), "src/index.ts": "export {}\n"})
    assert "src" not in mixed.writable
    assert any("src/mitt.mjs" in w and "holds tracked sources" in w for w in mixed.warnings)
