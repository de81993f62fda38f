"""Fresh outputs (issue 19, item 2): every run starts from empty output directories (what was there is moved
aside, never deleted), and a measured output holding a link, a FIFO, a socket, a hard link to a file outside it,
a future timestamp or a file this run did not write is refused (`metric_error`), confined and not, in single runs
and in slots."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mcp_autoresearch.lifecycle.experiment import Experiment, ExperimentResult
from mcp_autoresearch.lifecycle.fresh_outputs import unsafe_outputs
from mcp_autoresearch.measure.output_checks import snapshot, unsafe_output
from mcp_autoresearch.sandbox.policy import Isolation, probe_isolation
from mcp_autoresearch.setup.config import Config

from .conftest import git, make_repo, run_cli

CONFINED = probe_isolation("auto")
# auto: the private view and Landlock (where the machine has them); landlock: Landlock alone; off: not confined.
MODES = ["auto", "landlock", "off"] if CONFINED.confined else ["off"]


def isolation_for(setting: str) -> Isolation:
    if setting == "landlock":
        return replace(CONFINED, view_reason="left out by the test")
    return probe_isolation(setting)


# An honest bundler: `PAD` KB of bundle, and a larger source map that the measure leaves out.
BUILD_PY = """\
import os
PAD = 10
os.makedirs('dist', exist_ok=True)
# EVIL
open('dist/bundle.js', 'w').write('x' * 1024 * PAD)
open('dist/bundle.js.map', 'w').write('m' * 1024 * 50)
"""


def project(root: Path) -> Path:
    return make_repo(root, {"build.py": BUILD_PY, ".gitignore": "dist/\ncache/\n"})


def experiment(
    root: Path, run_id: str, setting: str, command: str = "python build.py", **more: Any
) -> ExperimentResult:
    values = {
        "target_file": "build.py",
        "run_command": command,
        "metric_name": "kb",
        "metric_measure": "size_kb:dist !*.map",
        "metric_direction": "lower_is_better",
        "writable": ["dist", "cache"],
        **more,
    }
    config = Config.model_validate(values)
    isolation = isolation_for(setting)
    return Experiment(config, root, run_id, root / ".autoresearch" / "runs", "t", None, isolation).run()


def aside(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def write_target(root: Path, pad: int, evil: str = "") -> None:
    (root / "build.py").write_text(BUILD_PY.replace("PAD = 10", f"PAD = {pad}").replace("# EVIL", evil))


@pytest.mark.parametrize("setting", MODES)
def test_a_link_left_in_dist_does_not_make_the_next_honest_build_smaller(
    tmp_path: Path, setting: str
) -> None:
    """A run leaves `dist/bundle.js` as a link to the excluded source map and fails; the next, honest build
    writes `bundle.js`: measured before the fix through the link (0 KB: its bytes went into the map)."""
    root = project(tmp_path / "web")
    write_target(root, 10, "os.symlink('bundle.js.map', 'dist/bundle.js'); raise SystemExit(1)")
    assert experiment(root, "r1", setting).status == "crash"
    write_target(root, 9)
    result = experiment(root, "r2", setting)
    assert result.status == "ok" and result.value == 9.0, (result.status, result.value, result.error)
    assert not (root / "dist" / "bundle.js").is_symlink()
    aside = root / ".autoresearch" / "outputs" / "t" / "run-r1" / "dist" / "bundle.js"
    assert aside.is_symlink(), "the failed run's output is moved aside, not deleted"


@pytest.mark.parametrize("setting", MODES)
def test_a_future_timestamp_is_refused_and_does_not_skip_the_next_build(tmp_path: Path, setting: str) -> None:
    """A `make`-like build (skip when the output is newer than the target): a run writes a tiny bundle with a
    modification time a year ahead; before the fix it was measured, and so was every later run's stale copy."""
    root = project(tmp_path / "web")
    make_like = "test dist/bundle.js -nt build.py || python build.py"
    ahead = (
        "open('dist/bundle.js', 'w').write('x'); os.utime('dist/bundle.js', (2e9, 2e9)); raise SystemExit(0)"
    )
    write_target(root, 10, ahead)
    evil = experiment(root, "r1", setting, make_like)
    assert (
        evil.status == "metric_error"
        and "dist/bundle.js" in (evil.error or "")
        and "future" in (evil.error or "")
    )
    write_target(root, 12)
    honest = experiment(root, "r2", setting, make_like)
    assert honest.status == "ok" and honest.value == 12.0, (honest.status, honest.value, honest.error)


UNSAFE = {
    "fifo": "os.mkfifo('dist/extra')",
    "socket": "import socket; socket.socket(socket.AF_UNIX).bind('dist/extra')",
    "hard-link": "os.makedirs('cache', exist_ok=True); open('cache/big', 'w').write('y'); "
    "os.link('cache/big', 'dist/extra')",
    "symlink": "os.symlink('bundle.js', 'dist/extra')",
}


@pytest.mark.parametrize("setting", MODES)
@pytest.mark.parametrize("kind", sorted(UNSAFE))
def test_an_output_that_is_not_plain_files_is_refused(tmp_path: Path, setting: str, kind: str) -> None:
    root = project(tmp_path / "web")
    write_target(root, 10, UNSAFE[kind])
    result = experiment(root, "r1", setting)
    if kind == "hard-link" and isolation_for(setting).namespaces:  # each output is a mount of its own there
        assert result.status == "crash" and "cross-device" in Path(result.log_path).read_text(), result.error
        return
    assert result.status == "metric_error" and "'dist/extra'" in (result.error or ""), (
        result.status,
        result.error,
    )


# cargo's way: the binary is built in target/release/deps/ and hard-linked as target/release/<name>.
CARGO_LIKE = """\
import os
os.makedirs('target/release/deps', exist_ok=True)
open('target/release/deps/app-1f2e3d', 'wb').write(b'x' * 4096)
os.link('target/release/deps/app-1f2e3d', 'target/release/app')
"""


@pytest.mark.parametrize("setting", MODES)
def test_a_binary_hard_linked_within_its_output_directory_is_measured(tmp_path: Path, setting: str) -> None:
    """A new user's Rust crate: `cargo build --release` links target/release/<name> to its copy in deps/, and
    the detected `size_kb:target/release/<name>` was a metric_error at every run, the baseline included ('a
    hard link to a file outside'). Both names are in target/, which the run wrote: the bytes are its own."""
    root = make_repo(tmp_path / "crate", {"build.py": CARGO_LIKE, ".gitignore": "target/\n"})
    result = experiment(root, "r1", setting, metric_measure="size_kb:target/release/app", writable=["target"])
    assert result.status == "ok" and result.value == 4.0, (result.status, result.error)


@pytest.mark.parametrize("setting", [mode for mode in MODES if not isolation_for(mode).namespaces])
def test_a_measured_file_hard_linked_from_another_output_is_still_refused(
    tmp_path: Path, setting: str
) -> None:
    """The other name must lie in the measured file's own output directory: one in another writable entry
    (a cache kept from run to run, say) still makes the bytes someone else's."""
    root = project(tmp_path / "web")
    write_target(root, 10, UNSAFE["hard-link"])
    result = experiment(root, "r1", setting, metric_measure="size_kb:dist/extra")
    assert result.status == "metric_error" and "hard link" in (result.error or ""), (
        result.status,
        result.error,
    )


def test_the_users_outputs_from_before_the_session_are_moved_aside_not_lost(tmp_path: Path) -> None:
    root = project(tmp_path / "web")
    (root / "dist").mkdir()
    (root / "dist" / "mine.js").write_text("the user's own build\n")
    result = experiment(root, "r1", "off", "rm -rf dist && python build.py")
    assert result.status == "ok" and result.value == 10.0, result.error
    kept = root / ".autoresearch" / "outputs" / "t" / "found-before-r1" / "dist" / "mine.js"
    assert kept.read_text() == "the user's own build\n"
    for run in ("r2", "r3", "r4", "r5"):
        assert experiment(root, run, "off").status == "ok"
    folders = aside(root / ".autoresearch" / "outputs" / "t")
    assert folders == ["found-before-r1", "run-r4"], "only the previous run's outputs stay"
    assert kept.exists()


def test_unsafe_output_refuses_old_files_unless_they_were_there_before_the_run(tmp_path: Path) -> None:
    """A file whose change time is older than the run (a folder of old files renamed into the output keeps
    them) is refused, unless the snapshot taken before the run holds it."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.bin").write_text("from before")
    fresh = snapshot(out)
    later = time.time() + 10  # a run that starts 10 s after the file last changed
    assert "not written by this run" in (unsafe_output(out, later, now=later) or "")
    assert unsafe_output(out, later, fresh, now=later) is None


NODE_BUILD = """\
const fs = require('fs');
fs.mkdirSync('dist', { recursive: true });
fs.writeFileSync('dist/index.js', fs.readFileSync('src/index.js', 'utf8'));
"""


@pytest.mark.anyio
@pytest.mark.parametrize("setting", [mode for mode in MODES if mode != "landlock"])
async def test_zero_config_node_rimraf_keeps_the_users_dist(
    tmp_path: Path, agent_for: Any, setting: str
) -> None:
    """Zero configuration, a build that starts with `rimraf dist`: it runs, and what the user had in dist/
    before the session is in .autoresearch/outputs/, not removed by the build (it was, before the fix)."""
    if shutil.which("node") is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI must run the Node build tests, but node is not installed")
        pytest.skip("node is not installed")
    rimraf = "node -e \"require('fs').rmSync('dist', { recursive: true, force: true })\""
    package = {"name": "lib", "source": "src/index.js", "scripts": {"build": f"{rimraf} && node build.js"}}
    files = {"package.json": json.dumps(package), "build.js": NODE_BUILD, "src/index.js": "export {};\n" * 50}
    root = make_repo(tmp_path / "lib", files)
    (root / "dist").mkdir()
    (root / "dist" / "mine.js").write_text("the user's\n")
    async with agent_for(root, {"isolation": setting}) as agent:
        await agent.ok("start_session", tag="n1")
        run, _ = await agent.experiment("baseline")
        assert run["status"] == "ok", run
    assert sorted(p.name for p in (root / "dist").iterdir()) == ["index.js"]
    assert (root / ".autoresearch/outputs/n1/found-before-r1/dist/mine.js").read_text() == "the user's\n"


@pytest.mark.anyio
async def test_slots_a_link_left_in_dist_does_not_shrink_the_next_build(
    tmp_path: Path, agent_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTORESEARCH_SLOTS_DIR", str(tmp_path / "slots"))
    root = project(tmp_path / "web")
    overrides = {
        "target_file": "build.py",
        "run_command": "python build.py",
        "metric_name": "kb",
        "metric_measure": "size_kb:dist !*.map",
        "metric_direction": "lower_is_better",
        "writable": ["dist"],
        "slots": 2,
    }
    async with agent_for(root, overrides) as agent:
        await agent.ok("start_session", tag="s1")
        baseline, _ = await agent.experiment("baseline")
        assert baseline["value"] == 10.0, baseline
        plant = "os.path.lexists('dist/bundle.js') and os.remove('dist/bundle.js'); "
        plant += "os.symlink('bundle.js.map', 'dist/bundle.js'); raise SystemExit(1)"
        await agent.edit("# EVIL", plant)
        run, _ = await agent.experiment("leave a link")
        assert run["status"] == "crash", run
        for pad in (9, 8):  # two runs: whichever slot the link was left in, one of them runs there
            await agent.edit(f"PAD = {pad + 1 if pad == 9 else 9}", f"PAD = {pad}")
            run, _ = await agent.experiment(f"honest, {pad} KB")
            assert run["status"] == "ok" and run["value"] == float(pad), run


def test_nothing_is_moved_through_a_link_and_a_measure_through_one_is_refused(tmp_path: Path) -> None:
    """`out` is a link (as a slot's shared input is): the files of `out/dist` stay where they are, and the
    size of `out/dist` is not measured through the link."""
    root = project(tmp_path / "web")
    (root / "real" / "dist").mkdir(parents=True)
    (root / "real" / "dist" / "keep.js").write_text("x")
    (root / "out").symlink_to("real")
    result = experiment(
        root,
        "r1",
        "off",
        "echo ran > out/dist/new.js",
        writable=["out/dist"],
        metric_measure="size_kb:out/dist",
    )
    assert result.status == "metric_error" and "'out' is a symbolic link" in (result.error or ""), (
        result.error
    )
    assert sorted(p.name for p in (root / "real" / "dist").iterdir()) == ["keep.js", "new.js"]


def test_what_the_checks_write_in_an_output_is_the_runs_not_the_users(tmp_path: Path) -> None:
    """The checks command runs after the run and writes in dist/: that output is still the run's (pruned in
    time), not taken for the user's (kept for ever, one folder per run)."""
    root = project(tmp_path / "web")
    for run in ("r1", "r2"):
        result = experiment(root, run, "off", checks_command="echo checked > dist/checked.txt")
        assert result.status == "ok", result.error
    assert aside(root / ".autoresearch" / "outputs" / "t") == ["run-r1"]


@pytest.mark.parametrize("setting", MODES)
def test_every_output_handed_on_is_checked(tmp_path: Path, setting: str) -> None:
    """What an evaluation stage calls before it is handed the outputs: every output, not only the measured one."""
    root = project(tmp_path / "web")
    write_target(root, 10, "os.makedirs('cache', exist_ok=True); os.mkfifo('cache/pipe')")
    started = time.time()
    result = experiment(root, "r1", setting, "python build.py && echo kb: 1", metric_measure=None)
    assert result.status == "ok", result.error
    assert unsafe_outputs(root, ["dist", "cache"], started) == (
        "'cache/pipe' is a FIFO: an output may hold only regular files and directories"
    )
    os.remove(root / "cache" / "pipe")
    assert unsafe_outputs(root, ["dist", "cache"], started) is None


@pytest.mark.anyio
async def test_slots_with_zero_config_node_and_installed_packages(
    tmp_path: Path, agent_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Zero-config Node lists `node_modules/.cache` as writable, and a slot's `node_modules` is a link to the
    project's: that output is the project's, never moved aside through the link; the runs go on."""
    if shutil.which("node") is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI must run the Node build tests, but node is not installed")
        pytest.skip("node is not installed")
    monkeypatch.setenv("AUTORESEARCH_SLOTS_DIR", str(tmp_path / "slots"))
    package = {"name": "lib", "source": "src/index.js", "scripts": {"build": "node build.js"}}
    files = {"package.json": json.dumps(package), "build.js": NODE_BUILD, "src/index.js": "export {};\n" * 50}
    root = make_repo(tmp_path / "lib", {**files, ".gitignore": "node_modules/\ndist/\n"})
    (root / "node_modules" / ".cache" / "tool").mkdir(parents=True)
    (root / "node_modules" / ".cache" / "tool" / "entry").write_text("the project's cache\n")
    async with agent_for(root, {"slots": 2}) as agent:
        await agent.ok("start_session", tag="s2")
        run, _ = await agent.experiment("baseline")
        assert run["status"] == "ok", run
    assert (root / "node_modules" / ".cache" / "tool" / "entry").read_text() == "the project's cache\n"


@pytest.mark.anyio
async def test_slots_a_future_timestamp_is_refused_and_the_next_build_runs(
    tmp_path: Path, agent_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTORESEARCH_SLOTS_DIR", str(tmp_path / "slots"))
    root = project(tmp_path / "web")
    overrides = {
        "target_file": "build.py",
        "run_command": "test dist/bundle.js -nt build.py || python build.py",
        "metric_name": "kb",
        "metric_measure": "size_kb:dist !*.map",
        "metric_direction": "lower_is_better",
        "writable": ["dist"],
        "slots": 2,
    }
    async with agent_for(root, overrides) as agent:
        await agent.ok("start_session", tag="s3")
        baseline, _ = await agent.experiment("baseline")
        assert baseline["value"] == 10.0, baseline
        ahead = "open('dist/bundle.js', 'w').write('x'); os.utime('dist/bundle.js', (2e9, 2e9)); raise SystemExit(0)"
        await agent.edit("# EVIL", ahead)
        run, _ = await agent.experiment("a tiny bundle from the future")
        assert run["status"] == "metric_error" and "future" in run["error"], run
        for pad in (9, 8):  # two runs: whichever slot the bundle was left in, one of them runs there
            await agent.edit(f"PAD = {pad + 1}", f"PAD = {pad}")
            run, _ = await agent.experiment(f"honest, {pad} KB")
            assert run["status"] == "ok" and run["value"] == float(pad), run


@pytest.mark.anyio
@pytest.mark.parametrize("users_build", [True, False])
async def test_clean_removes_the_runs_outputs_and_keeps_the_users(
    tmp_path: Path, agent_for: Any, users_build: bool
) -> None:
    """`clean` names where the user's own outputs were kept, and only where there are some (it said "those found
    in the outputs before a run are in .../found-before-*" of a folder that did not exist)."""
    root = project(tmp_path / "web")
    if users_build:
        (root / "dist").mkdir()
        (root / "dist" / "mine.js").write_text("the user's\n")
    overrides = {
        "target_file": "build.py",
        "run_command": "python build.py",
        "metric_name": "kb",
        "metric_measure": "size_kb:dist !*.map",
        "writable": ["dist"],
    }
    async with agent_for(root, overrides) as agent:
        await agent.ok("start_session", tag="c1")
        await agent.experiment("baseline")
        await agent.edit("PAD = 10", "PAD = 9")
        await agent.experiment("smaller")
    outputs = root / ".autoresearch" / "outputs" / "c1"
    names = aside(outputs)
    runs = [n for n in names if n.startswith("run-")]
    assert runs and names == (["found-before-r1"] if users_build else []) + runs, names
    git(root, "checkout", "-q", "main")
    listed = run_cli("clean", "--project", str(root), "--tag", "c1", cwd=root).stdout
    assert f".autoresearch/outputs/c1/{runs[0]}/" in listed, listed
    assert ("found-before-*" in listed) == users_build, listed
    assert run_cli("clean", "--project", str(root), "--tag", "c1", "--yes", cwd=root).returncode == 0
    if users_build:
        assert sorted(p.name for p in outputs.iterdir()) == ["found-before-r1"]
        assert (outputs / "found-before-r1" / "dist" / "mine.js").read_text() == "the user's\n"
    else:
        assert not outputs.exists() or list(outputs.iterdir()) == []


@pytest.mark.anyio
async def test_a_restarted_server_does_not_keep_the_last_runs_outputs_as_the_users(tmp_path: Path) -> None:
    """A new server (a new process: what the last one knew in memory is gone) moves the previous server's last
    outputs aside as that run's (pruned like any run's), not as `found-before-*` (kept until `clean`: a
    `target/` of gigabytes per restart). What changed since the run left it is still the user's, never pruned."""
    from mcp import Client

    from .conftest import Agent, stdio_params

    config = 'target_file = "build.py"\nrun_command = "python build.py"\nmetric_name = "kb"\n'
    config += (
        'metric_measure = "size_kb:dist !*.map"\nmetric_direction = "lower_is_better"\nwritable = ["dist"]\n'
    )
    root = make_repo(
        tmp_path / "web", {"build.py": BUILD_PY, ".gitignore": "dist/\n", "autoresearch.toml": config}
    )
    outputs = root / ".autoresearch" / "outputs" / "o1"
    for server, (old, pad) in enumerate(((10, 9), (9, 8), (8, 7))):
        async with Client(stdio_params(root)) as client:
            agent = Agent(client)
            await agent.ok("start_session", tag="o1")
            if server == 0:
                run, _ = await agent.experiment("baseline")
                assert run["status"] == "ok", run
            if server == 2:  # the user touches the output between two servers: theirs now
                (root / "dist" / "mine.js").write_text("the user's\n")
            run = await agent.ok(
                "run_experiment",
                description=f"pad {pad}",
                edits=[{"old_text": f"PAD = {old}", "new_text": f"PAD = {pad}"}],
                decide=True,
            )
            assert run["status"] == "ok" and run["decided"]["decision"] == "keep", run
        names = aside(outputs)
        if server < 2:
            assert not [n for n in names if n.startswith("found-before")], names
    assert [n for n in names if n.startswith("found-before")] == ["found-before-r4"], names
    assert (outputs / "found-before-r4" / "dist" / "mine.js").read_text() == "the user's\n"


def test_an_earlier_runs_outputs_holding_a_read_only_folder_are_removed_by_an_ordinary_user() -> None:
    """Only the previous run's outputs are kept; older ones are removed. One holding a folder without its owner's
    write right (a run's chmod, or a tool's own: Go's module cache is read-only) stayed on disk for good when the
    server is an ordinary user, as it usually is (root ignores the rights: run as one here when the tests are
    root)."""
    import subprocess
    import sys
    import tempfile

    user = 12345
    base = Path(tempfile.mkdtemp(prefix="autoresearch-test-prune-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        old = base / "run-r1"
        folder = old / "pkg" / "mod"
        folder.mkdir(parents=True)
        (folder / "file.go").write_text("package mod\n")
        as_root = os.geteuid() == 0
        if as_root:
            for path in (base, old, old / "pkg", folder, folder / "file.go"):
                os.chown(path, user, user)
        os.chmod(folder, 0o555)
        os.chmod(old / "pkg", 0o555)
        remove = "import sys\nfrom mcp_autoresearch.lifecycle.fresh_outputs import remove_tree\nremove_tree(sys.argv[1])"
        command = [sys.executable, "-c", remove, str(old)]
        if as_root:
            command = ["setpriv", "--reuid", str(user), "--regid", str(user), "--clear-groups", *command]
        subprocess.run(command, check=True, capture_output=True)
        assert not os.path.lexists(old), sorted(str(p) for p in old.rglob("*"))
    finally:
        shutil.rmtree(base, ignore_errors=True)
