"""Which tool caches each run gets to itself, and which cache paths are refused or flagged at configuration.

A cache one run writes and the next run reads is a channel between runs: a run can plant an entry (a compiled
module, a content-addressed build result, a package) for exactly the content the agent submits next. So, by
default, every cache a tool writes during a run is private to that run: the tool is pointed, through its own
setting, at a directory inside the run's private TMPDIR, which is removed when the run ends (`run_caches`).
Dependency stores the user prepared (Go's module cache, Cargo's registry, Maven's `~/.m2`, Gradle's
`~/.gradle/caches` through `GRADLE_RO_DEP_CACHE`) stay where they are, readable and not writable. A user who
wants a cache kept across runs lists it in `persistent`, a channel from one run to the next, never trusted;
detection never sets it.

User-wide caches that other programs execute from (`~/.npm`, whose `_npx` folder npx runs from; Gradle's
`init.d` scripts; `~/.cargo/bin`; Maven's plugins in `~/.m2`) are flagged when listed (`executed_from`), and
no `writable` or `persistent` entry may be, lie beneath or hold a shared input (`node_modules`, `.venv`;
`check_shared_inputs`).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError


@dataclass(frozen=True)
class PrivateCache:
    """One tool's cache: the variable that moves it, and where the tool writes it when the variable is unset."""

    variable: str
    default: str  # the tool's own location (relative to the project, absolute, or ~/...)
    tools: str  # who writes it, for the documentation and `describe`
    only_with: str | None = None  # set only in a project holding this file (a name other programs use too)


PRIVATE_CACHES: tuple[PrivateCache, ...] = (
    PrivateCache("npm_config_cache", "~/.npm", "npm and npx (packages, npx's installs, logs)"),
    PrivateCache(
        "CACHE_DIR",
        "node_modules/.cache",
        "Node tools that use find-cache-dir (babel-loader, terser)",
        "package.json",
    ),  # CACHE_DIR is a common name (a script's own data cache, say): set only in a Node project
    PrivateCache("GOCACHE", "~/.cache/go-build", "go build's compiled packages"),
    PrivateCache("PIP_CACHE_DIR", "~/.cache/pip", "pip's downloads and built wheels"),
    # uv's cache holds hard links to the project's installed packages: writable, a run could rewrite the
    # environment the evaluator imports.
    PrivateCache("UV_CACHE_DIR", "~/.cache/uv", "uv"),
    PrivateCache("GRADLE_USER_HOME", "~/.gradle", "Gradle (caches, daemons, init.d scripts)"),
    PrivateCache(
        "TORCHINDUCTOR_CACHE_DIR", "/tmp/torchinductor_" + os.environ.get("USER", "root"), "torch.compile"
    ),
    PrivateCache("TRITON_CACHE_DIR", "~/.triton/cache", "Triton's compiled kernels"),
    PrivateCache("CUDA_CACHE_PATH", "~/.nv/ComputeCache", "CUDA's JIT-compiled kernels"),
)

# With Gradle's home private, its dependency cache stays readable (Gradle 6.2+): the folder holding modules-2.
GRADLE_READ_ONLY = ("GRADLE_RO_DEP_CACHE", "~/.gradle/caches")

# User-wide places other programs run code from: writable, a run could plant what a person later runs outside
# any sandbox (npx's cache, Gradle's init scripts and wrapper, installed binaries, build plugins).
EXECUTED_FROM = (
    "~/.npm",
    "~/.gradle",
    "~/.m2",
    "~/.cargo",
    "~/go",
    "~/.pub-cache",
    "~/.local/bin",
    "~/.local/lib",
    "~/.cache/pre-commit",
)


def _expand(root: Path, entry: str) -> Path:
    path = Path(os.path.expanduser(entry))
    return Path(os.path.normpath(path if path.is_absolute() else root / path))


def _contains(outer: Path, inner: Path) -> bool:
    return outer == inner or outer in inner.parents


def _declared(root: Path, entries: list[str], default: str) -> bool:
    """The cache's own location is inside an entry the user listed (`writable` or `persistent`)."""
    return _declared_in(root, tuple(entries), default, os.path.expanduser("~"))


@functools.lru_cache(maxsize=256)
def _declared_in(root: Path, entries: tuple[str, ...], default: str, _home: str) -> bool:
    """`_declared`, once per project, entries and home (asked again before every command of a run)."""
    cache = _expand(root, default)
    return any(_contains(_expand(root, entry), cache) for entry in entries)


def private_variables(root: Path, entries: list[str], env: dict[str, str]) -> list[str]:
    """The variables a run gets pointed into its private TMPDIR: every cache the user did not list (in
    `writable` or `persistent`) and did not already point elsewhere in the server's environment."""
    return [
        cache.variable
        for cache in PRIVATE_CACHES
        if cache.variable not in env
        and not _declared(root, entries, cache.default)
        and (cache.only_with is None or (root / cache.only_with).is_file())
    ]


def cache_environment(variables: list[str], tmpdir: str, env: dict[str, str]) -> dict[str, str]:
    """The run's variables for `variables` (from `private_variables`): each cache in `<tmpdir>/caches/<name>`,
    and Gradle's user-wide dependency cache kept readable where Gradle's home is moved."""
    found = {variable: os.path.join(tmpdir, "caches", variable.lower()) for variable in variables}
    name, store = GRADLE_READ_ONLY
    if "GRADLE_USER_HOME" in found and name not in env and os.path.isdir(os.path.expanduser(store)):
        found[name] = os.path.expanduser(store)
    return found


def run_caches(root: Path, entries: list[str], tmpdir: str, env: dict[str, str]) -> dict[str, str]:
    """Environment variables that give a run its own empty caches, inside its private TMPDIR."""
    return cache_environment(private_variables(root, entries, env), tmpdir, env)


def stage_caches(root: Path, entries: list[str], tmpdir: str, env: dict[str, str]) -> dict[str, str]:
    """The evaluation stage's cache variables: every cache in its private TMPDIR, a `persistent` one included
    (a run wrote it: the evaluation would load what the run planted there), except a location set in the
    server's environment that no run may write (`entries`: what runs may write)."""
    variables = [
        cache.variable
        for cache in PRIVATE_CACHES
        if (cache.only_with is None or (root / cache.only_with).is_file())
        and (cache.variable not in env or _declared(root, entries, env[cache.variable]))
    ]
    return cache_environment(variables, tmpdir, env)


def describe(persistent: list[str]) -> str:
    """One line for the agent and the user: which caches each run has to itself, and which are kept."""
    variables = ", ".join(cache.variable for cache in PRIVATE_CACHES)
    line = f"private to each run, empty at its start, unless listed ({variables})"
    if persistent:
        line += (
            f"; kept from run to run (persistent, a channel from one run to the next, not trusted): "
            f"{', '.join(persistent)}"
        )
    return line


def check_shared_inputs(root: Path, entries: dict[str, list[str]], shared_inputs: list[str]) -> None:
    """Refuse a `writable` or `persistent` entry that is, lies beneath, or holds a shared input (links resolved
    on both sides): with slots, a shared input is a link to the user's own copy, and a write there would reach
    the user's files and every slot; without, the run would change what every later run reads."""
    shared = []
    for item in shared_inputs:
        lexical = _expand(root, item)
        shared.append((item, {lexical, Path(os.path.realpath(lexical))}))
    for key, listed in entries.items():
        for entry in listed:
            lexical = _expand(root, entry)
            paths = {lexical, Path(os.path.realpath(lexical))}
            for item, targets in shared:
                beneath = next((t for t in targets for p in paths if _contains(t, p)), None)
                holds = next((t for t in targets for p in paths if _contains(p, t)), None)
                if beneath is not None or holds is not None:
                    where = (
                        f"is beneath the shared input '{item}' ({beneath})"
                        if beneath
                        else (f"holds the shared input '{item}' ({holds})")
                    )
                    raise ConfigError(
                        f"{key} entry '{entry}' {where}, which every run sees read-only (with slots it is a link "
                        f"to your own copy): remove it from {key}, or name a directory beside it. Tools that "
                        "honour CACHE_DIR (babel-loader, terser) already write their cache into the run's "
                        "private directory"
                    )


def executed_from(root: Path, entries: list[str]) -> list[str]:
    """The listed entries that open a place other programs run code from (see EXECUTED_FROM)."""
    found = []
    for entry in entries:
        path = _expand(root, entry)
        for place in EXECUTED_FROM:
            danger = _expand(root, place)
            if _contains(path, danger) or _contains(danger, path):
                found.append(entry)
                break
    return found
