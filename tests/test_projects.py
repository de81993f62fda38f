"""Zero-config detection: one test per project type of the registry, plus conflicts."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mcp_autoresearch.project import load_project

from .conftest import make_repo


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


def test_java_maven_finds_entry_point(tmp_path: Path) -> None:
    info = detect(
        tmp_path,
        {
            "pom.xml": "<project/>",
            "src/main/java/com/x/Util.java": "class Util {}\n",
            "src/main/java/com/x/App.java": "class App { public static void main(String[] a) {} }\n",
        },
    )
    assert info.project_type == "java"
    assert info.target_file == "src/main/java/com/x/App.java"
    assert info.run_command == "mvn -q package -DskipTests"
    assert info.metric_name == "build_time_s"
    assert "wall time" in info.metric_source


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
    assert info.run_command == "./gradlew build -x test -q"


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
    assert info.run_command == "python -m pytest -q -x tests"
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
