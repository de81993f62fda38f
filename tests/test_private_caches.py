"""Tool caches are private to each run (issue 19, item 3): a cache entry one run writes never reaches the next,
user-wide caches other programs run code from are not writable, `persistent` keeps a listed cache (and says
what that means), and nothing beneath a shared input may be writable.

Real runs of the real keeper, with a real `node`/`npm` where the test builds a Node project.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mcp_autoresearch.errors import ConfigError
from mcp_autoresearch.lifecycle.experiment import Experiment
from mcp_autoresearch.sandbox.caches import PRIVATE_CACHES
from mcp_autoresearch.sandbox.policy import probe_isolation
from mcp_autoresearch.setup.config import Config
from mcp_autoresearch.setup.project import load_project

from .conftest import make_repo, run_cli
from .helpers.needs import require

ISOLATION = probe_isolation("auto")
require(
    ISOLATION.confined,
    f"CI must confine runs, but Landlock is unavailable here: {ISOLATION.reason}",
    f"Landlock is unavailable here: {ISOLATION.reason}",
)
NODE = shutil.which("node") and shutil.which("npm")
needs_node = pytest.mark.skipif(
    not NODE and not os.environ.get("CI"), reason="node and npm are not installed (tests/install-deps.sh)"
)

# A bundler with a content-addressed cache where find-cache-dir puts it: $CACHE_DIR/<name> when set, else
# node_modules/.cache/<name> (babel-loader, terser-webpack-plugin and cache-loader work this way).
BUILD_JS = """\
const fs = require("fs"), path = require("path"), crypto = require("crypto");
const source = fs.readFileSync("src/index.js", "utf8");
const key = crypto.createHash("sha256").update(source).digest("hex");
const dir = process.env.CACHE_DIR ? path.join(process.env.CACHE_DIR, "minibundle")
  : path.join("node_modules", ".cache", "minibundle");
let out;
try { out = fs.readFileSync(path.join(dir, key), "utf8"); console.log("cache hit"); }
catch { out = source.repeat(100); }
try { fs.mkdirSync(dir, { recursive: true }); fs.writeFileSync(path.join(dir, key), out); }
catch (e) { console.log("cache not written: " + e.code); }
fs.mkdirSync("dist", { recursive: true });
fs.writeFileSync("dist/app.js", out);
"""
# The target's evil part: it plants the entry for the content the agent submits next, wherever a cache may be.
POISON_JS = """\
const fs = require("fs"), path = require("path"), crypto = require("crypto");
const key = crypto.createHash("sha256").update(fs.readFileSync("src/index.js", "utf8")).digest("hex");
for (const base of [process.env.CACHE_DIR, path.join("node_modules", ".cache")]) {
  if (!base) continue;
  try {
    fs.mkdirSync(path.join(base, "minibundle"), { recursive: true });
    fs.writeFileSync(path.join(base, "minibundle", key), "x");
    console.log("planted in " + base);
  } catch (e) { console.log("refused in " + base + ": " + e.code); }
}
"""
SOURCE = "export const answer = 42; // a module of some size\n" * 20


def node_project(path: Path) -> Path:
    root = make_repo(
        path,
        {
            "package.json": '{"name": "web", "scripts": {"build": "node build.js"}}\n',
            "build.js": BUILD_JS,
            "poison.js": POISON_JS,
            "src/index.js": SOURCE,
            ".gitignore": "node_modules\ndist\n",
        },
    )
    (root / "node_modules").mkdir()  # the installed packages (a shared input): untracked
    return root


def experiment(config: Config, root: Path, run_id: str, **update: object) -> Experiment:
    config = config.model_copy(update={"timeout": 60.0, **update})
    isolation = probe_isolation(config.isolation, config.network)
    return Experiment(config, root, run_id, root / ".autoresearch" / "runs", "t", None, isolation)


@needs_node
@pytest.mark.parametrize("isolation", ["auto", "off"])
def test_a_poisoned_build_cache_entry_does_not_reach_the_next_run(tmp_path: Path, isolation: str) -> None:
    """Issue 19's *Why*: a run plants a content-addressed cache entry for the exact content submitted next; the
    next honest build must build it, not copy the planted output (measured smaller than it is)."""
    root = node_project(tmp_path / "web")
    config = load_project(root).config
    assert config.metric_measure == "size_kb:dist !*.map" and "node_modules/.cache" not in config.writable
    config = config.model_copy(update={"isolation": isolation})
    planted = experiment(
        config, root, "r1", run_command="node poison.js", metric_measure=None, metric_regex="(never)"
    ).run()
    text = Path(planted.log_path).read_text()
    assert "planted in /" in text, text  # its own cache, private to it
    if isolation == "auto":
        assert "refused in node_modules/.cache: E" in text, text
    honest = experiment(config, root, "r2").run()
    log = Path(honest.log_path).read_text()
    assert honest.status == "ok", log
    assert "cache hit" not in log, log
    assert honest.value is not None and honest.value > 1.0, (honest.value, log)  # 100 copies of ~1 KB


@needs_node
def test_npm_runs_with_a_private_cache_and_cannot_write_the_users(tmp_path: Path, monkeypatch) -> None:
    """~/.npm holds npx's installs, which a person later runs outside any sandbox: a run cannot write it, and
    npm itself works with the run's own cache."""
    home = tmp_path / "home"
    (home / ".npm").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    root = node_project(tmp_path / "web")
    config = load_project(root).config
    assert not any(entry.startswith("~") for entry in config.writable), config.writable
    plant = (
        'echo "cache=$npm_config_cache tmp=$TMPDIR"; mkdir -p ~/.npm/_npx/evil/node_modules/.bin && '
        "echo planted > ~/.npm/_npx/evil/node_modules/.bin/tool; npm run build"
    )
    result = experiment(config, root, "r1", run_command=plant).run()
    log = Path(result.log_path).read_text()
    assert not (home / ".npm" / "_npx").exists(), log
    assert result.status == "ok" and result.value is not None, (
        log
    )  # npm ran, with its cache in the run's TMPDIR
    tmp = log.split("tmp=")[1].split()[0]
    assert f"cache={tmp}/caches/npm_config_cache" in log


def test_every_private_cache_points_into_the_runs_tmpdir_unless_listed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / ".cache").mkdir(parents=True)
    root = make_repo(tmp_path / "p", {"t.py": "x = 1\n"})
    names = [cache.variable for cache in PRIVATE_CACHES]
    for name in names:
        monkeypatch.delenv(name, raising=False)
    script = "echo tmp=$TMPDIR; " + "; ".join(f'echo "{name}=${name}"' for name in names) + "; echo score: 1"
    config = Config.model_validate({"target_file": "t.py", "run_command": script, "metric_name": "score"})
    text = Path(experiment(config, root, "r1").run().log_path).read_text()
    tmp = text.split("tmp=")[1].split()[0]
    for name in names:
        if name != "CACHE_DIR":
            assert f"{name}={tmp}/caches/{name.lower()}\n" in text, (name, text)
    assert "CACHE_DIR=\n" in text  # a common name: set only in a Node project (package.json), as below
    (root / "package.json").write_text("{}\n")
    node = Path(experiment(config, root, "r4").run().log_path).read_text()
    assert f"CACHE_DIR={node.split('tmp=')[1].split()[0]}/caches/cache_dir\n" in node, node
    # Gradle's home is the run's own; the user's dependency cache stays readable where there is one.
    (tmp_path / "home" / ".gradle" / "caches").mkdir(parents=True)
    monkeypatch.delenv("GRADLE_RO_DEP_CACHE", raising=False)
    gradle = experiment(config, root, "r0", run_command='echo "ro=$GRADLE_RO_DEP_CACHE"; echo score: 1').run()
    assert f"ro={tmp_path}/home/.gradle/caches\n" in Path(gradle.log_path).read_text()
    listed = experiment(config, root, "r2", writable=["~/.cache/uv"], persistent=["~/.npm"]).run()
    text = Path(listed.log_path).read_text()
    assert "UV_CACHE_DIR=\n" in text and "npm_config_cache=\n" in text and "GOCACHE=/" in text, text
    off = experiment(config, root, "r3", isolation="off")
    assert "GOCACHE=/" in Path(off.run().log_path).read_text()  # confined or not


def test_persistent_keeps_a_cache_from_run_to_run_and_says_what_it_is(tmp_path: Path, monkeypatch) -> None:
    home = tmp_path / "home"
    (home / ".cache").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    root = make_repo(
        tmp_path / "p",
        {
            "t.py": "x = 1\n",
            "autoresearch.toml": (
                'target_file = "t.py"\nrun_command = "true"\nmetric_name = "score"\npersistent = ["~/.cache/tool"]\n'
            ),
        },
    )
    project = load_project(root)
    assert project.config.persistent == ["~/.cache/tool"] and project.info.persistent == ["~/.cache/tool"]
    assert any(
        "persistent = ~/.cache/tool" in w and "channel from one run to the next" in w
        for w in project.info.warnings
    ), project.info.warnings
    script = (
        "cat ~/.cache/tool/entry 2>/dev/null || echo none; echo kept > ~/.cache/tool/entry; echo score: 1"
    )
    first = experiment(project.config, root, "r1", run_command=script).run()
    second = experiment(project.config, root, "r2", run_command=script).run()
    assert "none" in Path(first.log_path).read_text()
    assert "kept" in Path(second.log_path).read_text()
    # Not listed: the same write is refused, and nothing reaches the next run.
    (home / ".cache" / "tool" / "entry").unlink()
    bare = project.config.model_copy(update={"persistent": []})
    experiment(bare, root, "r3", run_command=script).run()
    assert not (home / ".cache" / "tool" / "entry").exists()
    shown = run_cli("detect", "--project", str(root))
    assert "persistent:   ~/.cache/tool (kept from run to run" in shown.stdout, shown.stdout


def test_listing_a_place_other_programs_run_code_from_is_flagged(tmp_path: Path) -> None:
    root = make_repo(
        tmp_path / "p",
        {
            "t.py": "x = 1\n",
            "autoresearch.toml": (
                'target_file = "t.py"\nrun_command = "true"\nmetric_name = "score"\nwritable = ["~/.gradle"]\n'
                'persistent = ["~/.npm/_cacache"]\n'
            ),
        },
    )
    warnings = load_project(root).info.warnings
    assert any(
        w.startswith("~/.gradle, ~/.npm/_cacache: other programs run code from there") for w in warnings
    ), warnings


def test_a_persistent_entry_that_would_open_the_rules_is_refused_by_its_name(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "p", {"t.py": "x = 1\n", "autoresearch.toml": 'persistent = [".git"]\n'})
    with pytest.raises(
        ConfigError, match="persistent entry '.git' would let a run change the git repository"
    ):
        load_project(root)


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ('writable = ["dist", "node_modules/.cache"]', "writable entry 'node_modules/.cache'"),
        ('persistent = ["node_modules"]', "persistent entry 'node_modules'"),
        ('writable = ["cachelink"]', "writable entry 'cachelink'"),  # a link into the shared input
        (
            'writable = ["data"]\nshared_inputs = ["data/train"]',
            "writable entry 'data' holds the shared input",
        ),
        # a shared input that is a link: what lies beneath where it leads is refused too
        (
            'writable = ["dist", "elsewhere/.cache"]\nshared_inputs = ["modules"]',
            "writable entry 'elsewhere/.cache'",
        ),
    ],
)
def test_nothing_beneath_a_shared_input_may_be_written(tmp_path: Path, setting: str, named: str) -> None:
    root = node_project(tmp_path / "web")
    (root / "node_modules" / ".cache").mkdir()
    (root / "cachelink").symlink_to("node_modules/.cache")
    (root / "elsewhere").mkdir()
    (root / "modules").symlink_to(root / "elsewhere")  # a shared input that is itself a link
    (root / "elsewhere" / ".cache").mkdir()
    (root / "data" / "train").mkdir(parents=True)
    (root / "autoresearch.toml").write_text(setting + "\n")
    with pytest.raises(ConfigError) as refused:
        load_project(root)
    message = str(refused.value)
    assert named in message and "the shared input" in message and "read-only" in message, message
    done = run_cli("detect", "--project", str(root))
    assert done.returncode == 2 and named in done.stderr


HONEST_CJS = "// a module of some size\n" * 40 + "module.exports = 42;\n"
POISON_CJS = """\
const fs = require("fs"), path = require("path");
for (const base of [process.env.CACHE_DIR, path.join("node_modules", ".cache")]) {
  if (!base) continue;
  try {
    fs.mkdirSync(path.join(base, "minibundle"), { recursive: true });
    fs.writeFileSync(path.join(base, "minibundle", "planted"), "x");
    console.log("planted in " + base);
  } catch (e) { console.log("refused in " + base + ": " + e.code); }
}
module.exports = 1;
"""


@needs_node
@pytest.mark.anyio
async def test_with_slots_a_cache_write_never_reaches_the_users_node_modules(
    tmp_path: Path, agent_for, monkeypatch
) -> None:
    """Zero-config Node with slots: `node_modules` is a link to the user's own copy in every slot. The target's
    code writes a cache entry where a build tool would: it lands in the run's own cache, never in the user's
    node_modules (before, node_modules/.cache was writable by default, through the link)."""
    monkeypatch.setenv("AUTORESEARCH_SLOTS_DIR", str(tmp_path / "slots-home"))
    root = make_repo(
        tmp_path / "web",
        {
            "package.json": '{"name": "web", "main": "src/index.js", "scripts": {"build": "node build.js"}}\n',
            "build.js": 'require("./src/index.js");\n' + BUILD_JS,
            "src/index.js": HONEST_CJS,
            ".gitignore": "node_modules\ndist\n",
        },
    )
    (root / "node_modules").mkdir()
    async with agent_for(root, {"slots": 2, "keep_rule": "greedy", "target_file": "src/index.js"}) as agent:
        started = await agent.ok("start_session", tag="nc")
        assert "private to each run" in started["caches"] and "kept" not in started["caches"], started
        await agent.ok("run_experiment", description="baseline")
        await agent.until_done()
        await agent.ok("commit_or_reset")
        await agent.ok("apply_edit", content=POISON_CJS)
        hostile = await agent.ok("run_experiment", description="plants a cache entry")
        await agent.until_done(hostile["run_id"])
        await agent.ok("commit_or_reset", run_id=hostile["run_id"])
    assert not (root / "node_modules" / ".cache").exists(), list((root / "node_modules").rglob("*"))


def test_go_detection_says_what_a_private_build_cache_costs_and_how_to_keep_it(tmp_path: Path) -> None:
    root = make_repo(
        tmp_path / "app", {"go.mod": "module example.com/app\n", "main.go": "package main\nfunc main() {}\n"}
    )
    project = load_project(root)
    assert project.config.writable == [".autoresearch/bin"] and project.config.persistent == []
    assert any(w.startswith("each run builds with an empty Go build cache") for w in project.info.warnings)
    (root / "autoresearch.toml").write_text('persistent = ["~/.cache/go-build"]\n')
    kept = load_project(root).info.warnings
    assert not any("empty Go build cache" in w for w in kept) and any(
        "persistent = ~/.cache/go-build" in w for w in kept
    )


KEEPS = """\
import os
seen = os.path.exists("cache/entry")
os.makedirs("cache", exist_ok=True)
open("cache/entry", "w").write("kept")
print(f"score: {1 if seen else 2}")
"""


@pytest.mark.anyio
async def test_with_slots_a_relative_persistent_cache_survives_to_the_slots_next_run(
    tmp_path: Path, agent_for, monkeypatch
) -> None:
    """A slot is put back to the candidate's tree before every run; a `persistent` directory inside the project
    is kept there, as a `writable` output is (each slot keeps its own)."""
    monkeypatch.setenv("AUTORESEARCH_SLOTS_DIR", str(tmp_path / "slots-home"))
    root = make_repo(tmp_path / "p", {"t.py": "X = 1\n", "keeps.py": KEEPS, ".gitignore": "cache\n"})
    settings = {
        "target_file": "t.py",
        "run_command": "python3 keeps.py",
        "metric_name": "score",
        "slots": 2,
        "keep_rule": "greedy",
        "persistent": ["cache"],
        "readonly_files": ["keeps.py"],
    }
    async with agent_for(root, settings) as agent:
        started = await agent.ok("start_session", tag="pc")
        assert started["caches"].startswith(
            "private to each run, empty at its start, unless listed (npm_config_cache"
        ), started
        assert started["caches"].endswith(
            "kept from run to run (persistent, a channel from one run to the next, not trusted): cache"
        ), started
        await agent.ok("run_experiment", description="baseline")
        baseline = await agent.until_done()
        assert baseline["value"] == 2.0, baseline  # it found no cache, and left one
        await agent.ok("commit_or_reset")
        await agent.ok("apply_edit", content="X = 2\n")
        await agent.ok("run_experiment", description="the next run")
        again = await agent.until_done()
        assert again["value"] == 1.0, again  # it found the cache the baseline left


def test_on_ray_a_job_gets_private_caches_and_may_write_its_persistent_entry(
    tmp_path: Path, ray_address: str
) -> None:
    from mcp_autoresearch.backends.ray_backend import RayBackend

    from .helpers.ray_head import _config, _project

    root = _project(tmp_path)
    kept = tmp_path / "kept"
    kept.mkdir()
    command = f'echo "go=$GOCACHE node=$CACHE_DIR tmp=$TMPDIR"; echo x > {kept}/entry; echo score: 1'
    config = _config(command, ray_address=ray_address, persistent=[str(kept)])
    backend = RayBackend.from_config(config)
    result = Experiment(config, root, "r1", tmp_path / "logs", isolation=ISOLATION, backend=backend).run()
    log = Path(result.log_path).read_text()
    assert result.status == "ok", log
    tmp = log.split("tmp=")[1].split()[0]
    assert f"go={tmp}/gocache " in log and "node= " in log, log  # no package.json: CACHE_DIR is left alone
    assert (kept / "entry").read_text() == "x\n"
