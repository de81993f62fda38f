"""A build removes and recreates its output directory (issue 21: `rimraf dist`, `rm -rf dist && mkdir dist`), in
the user's tree and in slots, and still cannot remove, rename or create anything else of the project."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from mcp_autoresearch.sandbox.policy import probe_isolation

from .conftest import git, make_repo
from .helpers.needs import require

pytestmark = pytest.mark.anyio

ISOLATION = probe_isolation("auto")
require(
    ISOLATION.confined,
    f"CI must confine runs, but Landlock is unavailable here: {ISOLATION.reason}",
    f"Landlock is unavailable here: {ISOLATION.reason}",
)
if shutil.which("node") is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the Node build tests, but node is not installed")
    pytest.skip("node is not installed", allow_module_level=True)

# What a bundler does, in a few lines: read the source, write the bundle (and a map) into dist/.
BUILD_JS = """\
const fs = require('fs');
const source = fs.readFileSync('src/index.js', 'utf8');
fs.mkdirSync('dist/chunks', { recursive: true });
fs.writeFileSync('dist/index.js', source.replace(/\\s+/g, ' '));
fs.writeFileSync('dist/chunks/a.js', '1');
fs.writeFileSync('dist/index.js.map', '{}');
"""
SOURCE = "// a library\nexport function add(a, b) {\n    return a + b;\n}\n" + "// padding\n" * 40
RIMRAF = "node -e \"require('fs').rmSync('dist', { recursive: true, force: true })\""


def node_project(root: Path, build: str) -> Path:
    package = {"name": "lib", "source": "src/index.js", "scripts": {"build": build}}
    return make_repo(
        root, {"package.json": json.dumps(package), "build.js": BUILD_JS, "src/index.js": SOURCE}
    )


@pytest.mark.parametrize(
    "clean", ["rm -rf dist && mkdir dist", RIMRAF, "rm -rf dist && mkdir -p dist && rmdir dist && mkdir dist"]
)
async def test_a_build_removes_and_recreates_its_output_directory(
    tmp_path: Path, agent_for: Any, clean: str
) -> None:
    """Zero configuration (detection gives `writable = ["dist", ...]`): the baseline and a smaller bundle both
    build, each from an emptied dist/ (the previous bundle's files are gone)."""
    root = node_project(tmp_path / "lib", f"{clean} && node build.js")
    async with agent_for(root) as agent:
        await agent.ok("start_session")
        run, decision = await agent.experiment("baseline")
        assert run["status"] == "ok", run
        (root / "dist" / "stale.js").write_text("left by an older build\n")
        await agent.edit("// padding\n" * 40, "")
        run, decision = await agent.experiment("drop the padding")
        assert run["status"] == "ok" and decision["decision"] == "keep", (run, decision)
    assert sorted(p.name for p in (root / "dist").iterdir()) == ["chunks", "index.js", "index.js.map"]


ESCAPES = """
import os
steps = {
    'rmdir-src': lambda: os.rmdir('src/empty'),
    'remove-src': lambda: os.system('rm -rf src') == 0 or (_ for _ in ()).throw(OSError(0, 'rm failed')),
    'rename-src': lambda: os.rename('src', 'dist/src'),
    'rename-dist': lambda: os.rename('dist', 'dist2'),
    'mkdir-new': lambda: os.mkdir('lib'),
    'mkdir-in-src': lambda: os.mkdir('src/new'),
    'unlink-package': lambda: os.unlink('package.json'),
}
for what, step in steps.items():
    try:
        step(); print('REACHED', what)
    except OSError as exc:
        print('refused', what)
"""


async def test_nothing_else_of_the_project_can_be_removed_renamed_or_created(
    tmp_path: Path, agent_for: Any
) -> None:
    """The answers cover only the output directories: removing, renaming or creating anything else is refused
    as before (an empty directory in src/, src/ itself, a new top-level directory, package.json)."""
    root = node_project(tmp_path / "lib", "rm -rf dist && mkdir dist && node build.js && python3 escape.py")
    (root / "src" / "empty").mkdir()
    (root / "src" / "empty" / ".keep").write_text("")
    os.remove(root / "src" / "empty" / ".keep")  # untracked and empty: what `rmdir` could take
    (root / "escape.py").write_text(ESCAPES)
    git(root, "add", "escape.py")
    git(root, "commit", "-qm", "escape attempts")
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".git" not in p.parts)
    async with agent_for(root) as agent:
        await agent.ok("start_session")
        run, _ = await agent.experiment("baseline")
    text = Path(run["log_path"]).read_text()
    assert "REACHED" not in text and text.count("refused") == 7, text
    after = sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".git" not in p.parts)
    assert [p for p in before if p not in after] == [], text
    assert (root / "src" / "empty").is_dir() and (root / "package.json").is_file()


async def test_slots_remove_and_recreate_their_output_directory(
    tmp_path: Path, agent_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTORESEARCH_SLOTS_DIR", str(tmp_path / "slots"))
    root = node_project(tmp_path / "lib", "rm -rf dist && mkdir dist && node build.js")
    async with agent_for(root, {"slots": 2}) as agent:
        await agent.ok("start_session", tag="s1")
        await agent.ok("run_experiment", description="baseline")
        run = await agent.until_done()
        assert run["status"] == "ok", run


def test_with_landlock_alone_a_build_still_recreates_its_output_directory(tmp_path: Path) -> None:
    """Where namespaces are unavailable, Landlock alone refuses `rmdir dist` (EACCES: removing an entry of the
    project): the same answers let the build go on, and other removals stay refused."""
    from dataclasses import replace

    from mcp_autoresearch.lifecycle.experiment import Experiment
    from mcp_autoresearch.setup.config import Config

    root = node_project(tmp_path / "lib", "unused")
    (root / "dist").mkdir()
    (root / "dist" / "old.js").write_text("x")
    command = (
        "rm -rf dist && mkdir dist && node build.js && echo kb: 1 && (rmdir src 2>/dev/null || echo src kept)"
    )
    config = Config.model_validate(
        {"target_file": "src/index.js", "run_command": command, "metric_name": "kb", "writable": ["dist"]}
    )
    landlock_alone = replace(ISOLATION, view_reason="left out by the test")
    result = Experiment(config, root, "r1", root / ".autoresearch" / "runs", "t", None, landlock_alone).run()
    assert result.status == "ok", Path(result.log_path).read_text()
    assert "src kept" in Path(result.log_path).read_text()
    assert sorted(p.name for p in (root / "dist").iterdir()) == ["chunks", "index.js", "index.js.map"]
