"""What stopped a new user on project kinds not tried before (a Maven project, a Rust crate, a web bundle,
karpathy's layout): real projects, real runs, the real server."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from mcp_autoresearch.lifecycle.experiment import Experiment
from mcp_autoresearch.sandbox.policy import maven_hint, probe_isolation
from mcp_autoresearch.setup.project import load_project

from .conftest import git, make_repo, run_cli

ISOLATION = probe_isolation("auto")

# What `mvn -q package -DskipTests` printed in a confined run of a fresh project whose plugins were not all in
# ~/.m2 (the line cut where the log_tail cut it; the rest is Maven's).
MAVEN_LOCK_FAILURE = (
    "[ERROR] Failed to execute goal org.apache.maven.plugins:maven-surefire-plugin:3.2.5:test (default-test) on "
    "project fib: Execution default-test of goal org.apache.maven.plugins:maven-surefire-plugin:3.2.5:test "
    "failed: Plugin org.apache.maven.plugins:maven-surefire-plugin:3.2.5 or one of its dependencies could not "
    "be resolved: Failed to read artifact descriptor for org.apache.maven:maven-core:jar:3.2.5: Could not "
    "transfer artifact org.apache.maven:maven-core:pom:3.2.5 from/to central (https://repo.maven.apache.org/"
    "maven2): /root/.m2/repository/org/apache/maven/maven-core/3.2.5/maven-core-3.2.5.pom.part.lock (No such "
    "file or directory) -> [Help 1]\n"
)
COMPILE_ERROR = (
    "[ERROR] COMPILATION ERROR : \n[ERROR] /p/src/main/java/demo/App.java:[11,29] illegal start of type\n"
    "[ERROR] Failed to execute goal org.apache.maven.plugins:maven-compiler-plugin:3.13.0:compile\n"
)


def test_maven_missing_an_artifact_is_told_how_to_fetch_it() -> None:
    """The baseline of a fresh Maven project crashed with 'exit code 1' and nothing else: Maven could not
    write the artifact it lacked into ~/.m2 (read-only to runs), and its message says 'No such file or
    directory', which no write hint recognised. A compile error is no missing artifact."""
    hint = maven_hint(MAVEN_LOCK_FAILURE)
    assert hint is not None and "~/.m2" in hint and "dependency:go-offline" in hint
    assert maven_hint(COMPILE_ERROR) is None
    assert maven_hint("npm ERR! could not be resolved\n") is None


POM = """\
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>demo</groupId><artifactId>app</artifactId><version>1.0</version>
  <dependencies>
    <dependency><groupId>invalid.newuser4</groupId><artifactId>absent</artifactId><version>1.0</version></dependency>
  </dependencies>
</project>
"""
APP = "package demo;\npublic class App { public static void main(String[] a) { } }\n"


@pytest.mark.skipif(shutil.which("mvn") is None, reason="needs Maven (mvn)")
@pytest.mark.skipif(not (ISOLATION.confined or ISOLATION.namespaces), reason="needs confinement")
def test_a_maven_run_missing_an_artifact_says_how_to_fetch_it(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "app", {"pom.xml": POM, "src/main/java/demo/App.java": APP})
    config = load_project(root).config
    assert config.run_command == "mvn -q package -DskipTests" and config.writable == ["target"]
    experiment = Experiment(config, root, "r1", root / ".autoresearch" / "runs", "t", None, ISOLATION)
    result = experiment.run()
    assert result.status == "crash" and "~/.m2" in (result.error or ""), (result.status, result.error)


@pytest.mark.anyio
async def test_a_session_started_on_another_sessions_branch_points_back_to_the_persons_branch(
    ml_project: Path, agent_for: Any
) -> None:
    """A new user's first baseline crashed; they fixed the configuration, committed it (on the session's
    branch, which was checked out) and started a new session. `clean` then told them to switch to, and land
    on, `autoresearch/<first>`, as if it were their branch: it is the branch of the session they start over."""
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session", tag="first")
        (ml_project / "autoresearch.toml").write_text("time_budget = 60\n")
        git(ml_project, "add", "autoresearch.toml")
        git(ml_project, "commit", "-q", "-m", "config")
        await agent.ok("start_session", tag="second")
    for command in (["clean", "--tag", "second"], ["finish", "--land", "main"]):
        out = run_cli(*command, "--project", str(ml_project))
        assert "autoresearch/first" not in out.stdout + out.stderr, (command, out.stdout, out.stderr)
    assert "git checkout main" in run_cli("clean", "--tag", "second", "--project", str(ml_project)).stderr


def test_a_long_log_line_keeps_its_end_where_maven_puts_the_cause(tmp_path: Path) -> None:
    """log_tail shortens a long line to its beginning and its end: Maven's one-line failure names its cause last
    (here '... .part.lock (No such file or directory) -> [Help 1]'), which the beginning alone cut away."""
    from mcp_autoresearch.records.logtail import tail

    log = tmp_path / "r1.log"
    log.write_text("[INFO] Building app 1.0\n" + MAVEN_LOCK_FAILURE)
    shown = tail(log).splitlines()
    assert shown[0] == "[INFO] Building app 1.0"
    assert shown[1].startswith("[ERROR] Failed to execute goal") and len(shown[1]) == 300, shown[1]
    assert shown[1].endswith("(No such file or directory) -> [Help 1]"), shown[1]
