"""What private caches cost a run, per ecosystem installed here: the same build measured by the server's own
Experiment (confined, network on), with the tool's cache in each of these places, interleaved so machine load
hits them alike:

- shared, writable: the user-wide store, writable by every run (the defaults before issue 19: `~/.npm`,
  `~/.m2`, `~/.cargo/registry` were in `writable`);
- read-only store: the user-wide store prepared once before the session, readable, not writable (the default
  now for Maven's repository and Cargo's home), the run's own writes in its private TMPDIR;
- private, cold: an empty cache of the run's own in its TMPDIR (the default now for npm, `node_modules/.cache`,
  Go's build cache, pip, uv, Gradle's home, Inductor, Triton), or for Maven an empty repository of the run's
  own, which downloads every dependency on every run.

Each store is the benchmark's own (prepared in a temporary directory in the home directory: /tmp is hidden
from runs): the user's ~/.m2, ~/.npm and ~/.cargo
are never written.

    python bench/private_caches.py [--rounds 3] [--only maven npm webpack cargo go]

The first round warms the shared caches (the "before" rows): their median is a warm run's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mcp_autoresearch.lifecycle.experiment import Experiment
from mcp_autoresearch.sandbox.policy import probe_isolation
from mcp_autoresearch.setup.config import Config

POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>demo</groupId><artifactId>demo</artifactId><version>1.0</version>
  <properties><maven.compiler.source>17</maven.compiler.source><maven.compiler.target>17</maven.compiler.target>
  <project.build.sourceEncoding>UTF-8</project.build.sourceEncoding></properties>
  <build><plugins>
    <plugin><groupId>org.apache.maven.plugins</groupId><artifactId>maven-resources-plugin</artifactId>
      <version>3.3.1</version></plugin>
    <plugin><groupId>org.apache.maven.plugins</groupId><artifactId>maven-compiler-plugin</artifactId>
      <version>3.13.0</version></plugin>
    <plugin><groupId>org.apache.maven.plugins</groupId><artifactId>maven-surefire-plugin</artifactId>
      <version>3.2.5</version></plugin>
    <plugin><groupId>org.apache.maven.plugins</groupId><artifactId>maven-jar-plugin</artifactId>
      <version>3.4.1</version></plugin>
  </plugins></build>
</project>
"""
APP = 'package demo; public class App { public static void main(String[] a) { System.out.println("hi"); } }\n'
BUILD = "node -e \"require('fs').mkdirSync('dist',{recursive:true});require('fs').writeFileSync('dist/a.js','x')\""


@dataclass
class Case:
    ecosystem: str
    choice: str
    command: str
    writable: list[str]
    env: dict[str, str] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def git_init(root: Path) -> None:
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(
        ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "init"], cwd=root, check=True
    )


def maven(base: Path) -> tuple[Path, list[Case]]:
    root = base / "mvn"
    (root / "src/main/java/demo").mkdir(parents=True)
    (root / "pom.xml").write_text(POM)
    (root / "src/main/java/demo/App.java").write_text(APP)
    (root / ".gitignore").write_text("target\n")
    git_init(root)
    store = base / "m2"  # the user's repository, prepared once: a copy of ~/.m2's (else downloaded)
    user = Path.home() / ".m2" / "repository"
    if user.is_dir():
        shutil.copytree(user, store, symlinks=True)
    subprocess.run(
        [
            "mvn",
            "-q",
            *(["-o"] if user.is_dir() else []),
            "package",
            "-DskipTests",
            f"-Dmaven.repo.local={store}",
        ],
        cwd=root,
        check=True,
    )
    offline = f"mvn -q -o package -DskipTests -Dmaven.repo.local={store}"
    return root, [
        Case("maven", "shared, writable (before)", offline, ["target", str(store)]),
        Case("maven", "read-only store (now)", offline, ["target"]),
        Case(
            "maven",
            "private, cold (own repository)",
            'mvn -q package -DskipTests -Dmaven.repo.local="$TMPDIR/m2"',
            ["target"],
        ),
    ]


def npm(base: Path) -> tuple[Path, list[Case]]:
    root = base / "web"
    root.mkdir()
    (root / "package.json").write_text(json.dumps({"name": "web", "scripts": {"build": BUILD}}) + "\n")
    (root / ".gitignore").write_text("dist\n")
    git_init(root)
    store = base / "npm"
    subprocess.run(
        ["npm", "run", "build"],
        cwd=root,
        check=True,
        capture_output=True,
        env={**os.environ, "npm_config_cache": str(store)},
    )
    return root, [
        Case(
            "npm",
            "shared, writable (before)",
            "npm run build",
            ["dist", str(store)],
            {"npm_config_cache": str(store)},
        ),
        Case("npm", "private, cold (now)", "npm run build", ["dist"]),
    ]


WEBPACK_CONFIG = """module.exports = {
  mode: "production",
  entry: "./src/index.js",
  output: { path: __dirname + "/dist", filename: "app.js" },
  module: { rules: [{ test: /\\.m?js$/, use: { loader: "babel-loader",
    options: { cacheDirectory: true, presets: ["@babel/preset-env"] } } }] },
};
"""
PACKAGES = [
    "webpack@5",
    "webpack-cli@5",
    "babel-loader@9",
    "@babel/core@7",
    "@babel/preset-env@7",
    "lodash-es@4",
]


def webpack(base: Path) -> tuple[Path, list[Case]]:
    """babel-loader's cache (node_modules/.cache/babel-loader, or $CACHE_DIR/babel-loader): lodash-es (640
    modules) transpiled and bundled. Installs its packages from the npm registry once."""
    root = base / "bundle"
    (root / "src").mkdir(parents=True)
    (root / "package.json").write_text('{"name": "bundle", "private": true}\n')
    (root / "webpack.config.js").write_text(WEBPACK_CONFIG)
    (root / "src/index.js").write_text(
        'import * as _ from "lodash-es";\nconsole.log(Object.keys(_).length);\n'
    )
    (root / ".gitignore").write_text("node_modules\ndist\n")
    install = ["npm", "install", "--silent", "--no-audit", "--no-fund", *PACKAGES]
    subprocess.run(install, cwd=root, check=True, capture_output=True)
    git_init(root)
    command = "node node_modules/webpack-cli/bin/cli.js --no-stats"
    return root, [
        Case("webpack", "shared node_modules/.cache (before)", command, ["dist", "node_modules/.cache"]),
        Case("webpack", "private CACHE_DIR, cold (now)", command, ["dist"]),
    ]


MAIN_GO = """package main

import (
	"encoding/json"
	"fmt"
	"net/http"
)

func main() {
	out, _ := json.Marshal(map[string]int{"status": http.StatusOK})
	fmt.Println(string(out))
}
"""


def golang(base: Path) -> tuple[Path, list[Case]]:
    """go build's compiled packages (GOCACHE): a program using net/http and encoding/json, no module
    dependencies (the module proxy is unreachable here)."""
    root = base / "app"
    root.mkdir()
    (root / "go.mod").write_text("module example.com/app\n\ngo 1.19\n")
    (root / "main.go").write_text(MAIN_GO)
    (root / ".gitignore").write_text("bin\n")
    git_init(root)
    store = base / "go-build"
    env = {"GOCACHE": str(store), "GOFLAGS": "-mod=mod", "GOPROXY": "off"}
    subprocess.run(
        ["go", "build", "-o", str(base / "warm"), "."], cwd=root, check=True, env={**os.environ, **env}
    )
    command = "go build -o bin/app ."
    return root, [
        Case("go", "shared GOCACHE, writable (before)", command, ["bin", str(store)], env),
        Case("go", "private GOCACHE, cold (now)", command, ["bin"], {"GOPROXY": "off"}),
        # Go 1.20+ ships no compiled standard library: a cold cache compiles it, as -a does here (Go 1.19).
        Case(
            "go",
            "private, std compiled (go >= 1.20)",
            "go build -a -o bin/app .",
            ["bin"],
            {"GOPROXY": "off"},
        ),
    ]


def cargo(base: Path) -> tuple[Path, list[Case]]:
    root = base / "demo"
    subprocess.run(["cargo", "new", "-q", "--vcs", "none", str(root)], check=True)
    (root / ".gitignore").write_text("target\n")
    subprocess.run(["cargo", "generate-lockfile", "--offline"], cwd=root, check=True)
    git_init(root)
    home = base / "cargo-home"  # an empty CARGO_HOME: crates.io is unreachable here, so no dependencies
    home.mkdir()
    command = 'cargo build --release -q --target-dir "$TMPDIR/target"'  # a full build every run
    env = {"CARGO_HOME": str(home)}
    return root, [
        Case("cargo", "shared, writable (before)", command, ["target", str(home)], env),
        Case("cargo", "read-only CARGO_HOME (now)", command, ["target"], env),
    ]


def one(root: Path, case: Case, index: int) -> None:
    values = {
        "target_file": "pom.xml",
        "run_command": case.command + " && echo && echo score: 1",
        "metric_name": "score",
        "writable": case.writable,
        "timeout": 600.0,
        "network": "on",
    }
    config = Config.model_validate(values)
    isolation = probe_isolation("auto", "on")
    logs = root.parent / "logs"
    result = Experiment(config, root, f"r{index}", logs, "bench", None, isolation, env=case.env).run()
    if result.status == "ok":
        case.times.append(result.duration_s)
    else:
        case.failures.append(f"{result.status}: {result.log_tail[-300:]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--only", nargs="*", help="ecosystems to measure (maven npm webpack cargo go; default all)"
    )
    args = parser.parse_args()
    setups = [
        (name, make)
        for name, make, tool in (
            ("maven", maven, "mvn"),
            ("npm", npm, "npm"),
            ("webpack", webpack, "npm"),
            ("cargo", cargo, "cargo"),
            ("go", golang, "go"),
        )
        if shutil.which(tool) and (not args.only or name in args.only)
    ]
    with tempfile.TemporaryDirectory(prefix=".bench-caches-", dir=Path.home()) as scratch:
        prepared = [
            make(Path(scratch) / name) for name, make in setups if (Path(scratch) / name).mkdir() is None
        ]
        for index in range(args.rounds):
            for root, cases in prepared:
                for case in cases:
                    one(root, case, index)
        print(
            f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"
        )
        print(f"{'ecosystem':10} {'cache':34} {'median s':>9} {'min s':>7} {'max s':>7}  runs")
        for _, cases in prepared:
            for case in cases:
                if case.times:
                    print(
                        f"{case.ecosystem:10} {case.choice:34} {statistics.median(case.times):9.2f} "
                        f"{min(case.times):7.2f} {max(case.times):7.2f}  {len(case.times)}"
                    )
                for failure in case.failures[:1]:
                    print(f"{case.ecosystem:10} {case.choice:34} FAILED {failure!r}")


if __name__ == "__main__":
    main()
