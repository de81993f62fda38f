"""Understanding a project: merge the configuration sources over auto-detection and validate the result.

`load_project` is what `detect_project` (tool and CLI) returns, and what a session starts from.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from ..errors import ConfigError
from ..measure.metrics import Measure
from ..measure.provenance import MetricProvenance, metric_provenance
from ..sandbox.caches import check_shared_inputs, executed_from
from ..sandbox.policy import Isolation, check_writable, probe_isolation
from ..vcs.checkouts import check_slots_home, check_writable_for_slots
from .config import DEFAULTS, KEYS, Config, build_config
from .projects import Detection, detect_all
from .single_file import check_target_file
from .sources import Source, command_line_source, read_file_sources
from .stage_config import check_stage_config

# Keys that describe how the metric is obtained. Detection's values for them only apply to the metric it names:
# a user who configures another metric_name gets that metric read from the output, not detection's measurement.
METRIC_KEYS = (
    "metric_parse",
    "metric_regex",
    "metric_measure",
    "metric_direction",
    "memory_regex",
    "repeats",
    "min_delta",
)
# How the value is read. One of them configured replaces detection's way of reading its metric.
READ_KEYS = ("metric_parse", "metric_regex", "metric_measure")


class ProjectInfo(BaseModel):
    """What the server understood of the project: what changes, how it runs, which number decides."""

    project_type: str = Field(description="ml, node, flutter, java, rust, go, c, python, custom or unknown")
    root: str = Field(description="Absolute path of the project root.")
    target_file: str | None = Field(description="The single file the agent may edit, relative to root.")
    run_command: str | None = Field(description="Shell command that runs one experiment.")
    metric_name: str | None
    metric_direction: str = Field(description="lower_is_better or higher_is_better")
    metric_source: str = Field(description="How the server obtains the metric value.")
    provenance: MetricProvenance = Field(
        description="Where the value comes from: evaluation, server, or self-reported (with the fix)."
    )
    integrity: str = Field("any", description="any, or required: a self-reported metric refuses to start.")
    time_budget: float = Field(description="Seconds an experiment is meant to take.")
    timeout: float = Field(description="Hard limit in seconds; the whole process tree is killed after it.")
    readonly_files: list[str] = Field(description="Files that must never change.")
    checks_command: str | None = Field(None, description="Command that must pass after a successful run.")
    eval_command: str | None = Field(
        None,
        description="The evaluation stage: run after each run is gone, read-only; its output gives the metric.",
    )
    hidden: list[str] = Field(default_factory=list, description="Paths only the evaluation stage may read.")
    holdout: bool = Field(False, description="A holdout_command is set (its values are never shown).")
    repeats: int = Field(1, description="Runs per experiment (the median decides) under the greedy rule.")
    min_delta: float = Field(0.0, description="Smallest change that counts as an improvement.")
    log_limit_mb: float = Field(
        64.0, description="The most a command's log keeps of its output, in MB (its beginning and its end)."
    )
    writable: list[str] = Field(description="Paths a run may write; everything else is read-only to it.")
    persistent: list[str] = Field(
        default_factory=list,
        description="Caches a run may write that are kept for the next runs: a channel from one run to the next, "
        "not trusted (every other cache is private to each run).",
    )
    slots: int = Field(1, description="Experiments in flight at once, each in a checkout of its own.")
    backend: str = Field("local", description="Where runs go: local, or ray (a Ray cluster).")
    isolation: str = Field(
        description="The layers that confine runs here, in one line: 'namespaces + landlock (ABI n)', "
        "'landlock (ABI n); no namespaces: <reason>', or 'none: <reason>' (then only the after-run checks "
        "protect the project)."
    )
    network: str = Field(
        "on", description="on: runs may use the network; off: a run has its own loopback only."
    )
    config_source: dict[str, str] = Field(description="For each setting, the source that gave it.")
    evidence: list[str] = Field(description="Files that decided the project type.")
    warnings: list[str]
    ready: bool = Field(description="True when target, run command and metric are all known.")
    message: str = Field(description="What to do next.")
    keep_rule: str = Field(
        "", description="The keep rule, or how it is chosen (the baseline's noise runs decide by default)."
    )
    max_experiments: int | None = Field(None, description="The session's experiment budget (None: none).")
    max_hours: float | None = Field(
        None, description="The session's wall-clock budget in hours (None: none)."
    )
    stall_after: int = Field(
        8, description="Experiments without a keep before next_step proposes other nodes to branch from."
    )


@dataclass
class Project:
    root: Path
    config: Config
    info: ProjectInfo


def describe_metric_source(config: Config, detected_source: str | None) -> str:
    """How the metric is obtained, in one line for the agent. `detected_source` is detection's own description,
    given only when detection's metric is the one in use (no metric setting came from configuration)."""
    if config.eval_command:
        how = (
            f"metric_parse ({config.metric_parse})"
            if config.metric_parse
            else (
                f"metric_regex {config.metric_regex!r}"
                if config.metric_regex
                else f"its last '{config.metric_name}: <float>' or 'METRIC {config.metric_name}=<float>' line"
            )
        )
        return (
            f"the evaluation stage: eval_command ({config.eval_command}) runs after the run is gone, read-only, "
            f"and {how} reads its output; nothing the run printed counts"
        )
    if detected_source:
        return detected_source
    if config.metric_parse:
        return f"first number printed by metric_parse: {config.metric_parse}"
    if config.metric_regex:
        return f"last match of metric_regex {config.metric_regex!r} in the run's output"
    if config.metric_measure:
        return describe_measure(config.metric_measure)
    if config.metric_name:
        name = config.metric_name
        return f"the last '{name}: <float>' or 'METRIC {name}=<float>' line of the run's output"
    return "unknown: set metric_name (and metric_parse or metric_regex if the output needs it)"


def describe_measure(spec: str) -> str:
    measure = Measure.parse(spec)
    if measure.kind == "wall_time_s":
        return "wall time of the run in seconds (measured by the server)"
    left_out = f", leaving out {', '.join(measure.exclude)}" if measure.exclude else ""
    return (
        f"size of '{measure.path}' in {measure.unit}{left_out}, after the run (measured by the server; "
        "an output not written by the run is a metric_error)"
    )


def wall_time_warning(config: Config) -> str:
    """Said in `detect`: a wall time is noisy, and how much of that noise the settings absorb. One story with
    the keep rule's (describe_keep_rule): where the baseline's runs measure the noise, nothing more is asked."""
    name = config.metric_name or "the metric"
    runs = f"{config.repeats} runs" if config.repeats > 1 else "1 run"
    greedy = (
        f"{runs} per experiment (the median decides), and a change must beat the best by more than "
        f"min_delta = {config.min_delta:g} s"
    )
    if config.keep_rule != "greedy" and config.noise_runs > 1:
        return (
            f"{name} is a wall time, which varies from run to run: the baseline runs {config.noise_runs} times to "
            f"measure that noise and the keep rule is chosen from it (see keep rule); if it is greedy, {greedy}"
        )
    if config.repeats == 1 and config.min_delta == 0:
        return (
            f"{name} is a wall time, which varies from run to run: with the greedy rule, one run per experiment "
            "and min_delta = 0, noise alone can keep or discard a change; set repeats (3 or more) and min_delta"
        )
    return (
        f"{name} is a wall time, which varies from run to run: {greedy}; compare with the spread the baseline "
        "reports, and raise min_delta above it if needed"
    )


def check_project_root(path: str | os.PathLike[str] | None) -> Path:
    root = Path(path or ".").expanduser()
    if not root.exists():
        raise ConfigError(f"project directory '{root}' does not exist")
    if not root.is_dir():
        raise ConfigError(f"project path '{root}' is not a directory")
    return root.resolve()


def load_project(
    root: str | os.PathLike[str] | None,
    overrides: dict[str, Any] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    files: bool = True,
) -> Project:
    """Read every source, detect the project type, merge, validate. Raises ConfigError with one clear line.
    With `files=False` the configuration files are left out: what the command line alone gives (and detection)."""
    root = check_project_root(root)
    sources: list[Source] = []
    cli = command_line_source(overrides)
    if cli:
        sources.append(cli)
    if files:
        sources += read_file_sources(root, Path(config_file).expanduser() if config_file else None)
    targets = [s.values["target_file"] for s in sources if isinstance(s.values.get("target_file"), str)]
    detections = detect_all(root, targets[0] if targets else None)
    detected = detections[0] if detections else None
    merged = _merge(sources, detections)
    config = _validated(root, build_config(merged.values), merged.warnings)
    isolation = probe_isolation(config.isolation, config.network)
    _add_config_warnings(config, isolation, merged.warnings)
    if "writable" in merged.user_keys:
        merged.warnings += writable_warnings(root, list(config.writable), _commands(config))
    if config.eval_command and not config.hidden and "hidden" not in merged.user_keys:
        merged.warnings.append(
            "eval_command is set but hidden is empty: a run can read every file the scorer reads, the answers it "
            "compares against too, and write them as its result (a perfect score); list those files in hidden "
            "(only eval_command and holdout_command may read them); hidden = [] says the scorer reads no answers "
            "(it computes what it compares against)"
        )
    if detected:
        project_type = detected.project_type
    elif merged.user_keys:
        project_type = "custom"
    else:
        project_type = "unknown"
    provenance = metric_provenance(config, isolation.unconfined)
    ready, message = _readiness(config, project_type, merged.target_notes, provenance)
    info = ProjectInfo(
        project_type=project_type,
        root=str(root),
        target_file=config.target_file,
        run_command=config.run_command,
        metric_name=config.metric_name,
        metric_direction=config.metric_direction,
        metric_source=describe_metric_source(
            config,
            detected.metric_source
            if detected and not merged.user_keys.intersection(("metric_name", *READ_KEYS))
            else None,
        ),
        provenance=provenance,
        integrity=config.integrity,
        time_budget=config.time_budget,
        timeout=config.timeout,
        readonly_files=list(config.readonly_files),
        checks_command=config.checks_command,
        eval_command=config.eval_command,
        hidden=list(config.hidden),
        holdout=config.holdout_command is not None,
        repeats=config.repeats,
        min_delta=config.min_delta,
        log_limit_mb=config.log_limit_mb,
        max_experiments=config.max_experiments,
        max_hours=config.max_hours,
        stall_after=config.stall_after,
        writable=list(config.writable),
        persistent=list(config.persistent),
        slots=config.slots,
        backend=config.backend,
        isolation=isolation.describe(),
        network=config.network,
        config_source=merged.origin,
        evidence=detected.evidence if detected else [s.label for s in sources if s.values],
        warnings=merged.warnings,
        ready=ready,
        message=message,
        keep_rule=describe_keep_rule(config),
    )
    return Project(root=root, config=config, info=info)


@dataclass
class _Merged:
    """The sources merged over detection: the values, where each came from, what the user gave, the notes."""

    values: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    user_keys: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    target_notes: list[str] = field(default_factory=list)


def _merge(sources: list[Source], detections: list[Detection]) -> _Merged:
    """The first source that gives a key wins; detection fills in the rest (not a metric's keys when the user
    named the metric or how it is read), then the defaults."""
    merged = _Merged()
    detected = detections[0] if detections else None
    if detected:
        merged.warnings += detected.warnings
        for other in detections[1:]:
            merged.warnings.append(
                f"also looks like a {other.project_type} project ({', '.join(other.evidence)}); "
                f"{detected.project_type} has the stronger evidence"
            )
    for source in sources:
        for key, value in source.values.items():
            if key not in merged.values:
                merged.values[key] = value
                merged.origin[key] = source.label
    # Every key a source of the user's gave. Decided here, not from labels: "autoresearch.toml" starts with "auto".
    merged.user_keys = set(merged.values)
    metric_from_user = "metric_name" in merged.values
    read_from_user = any(key in merged.values for key in READ_KEYS)
    if detected:
        label = f"auto-detected ({detected.project_type})"
        for key, value in detected.settings.items():
            if (
                key in merged.values
                or (metric_from_user and key in METRIC_KEYS)
                or (read_from_user and key in READ_KEYS)
            ):
                continue
            merged.values[key] = value
            merged.origin[key] = label
        for key, messages in detected.setting_warnings.items():
            if merged.origin.get(key, label) == label:  # detection's value is in use, or nothing gave one
                merged.warnings += messages
                if key == "target_file" and key not in merged.origin:
                    merged.target_notes = messages
    for key in KEYS:
        if key not in merged.origin:
            if key == "timeout" and "time_budget" in merged.origin:
                merged.origin[key] = "default (2 x time_budget)"
            elif key == "checks_timeout":
                merged.origin[key] = "default (= timeout)"
            elif key in DEFAULTS or key in ("timeout",):
                merged.origin[key] = "default"
    return merged


def _validated(root: Path, config: Config, warnings: list[str]) -> Config:
    """The paths of the configuration checked against the project: read-only files, the target, what runs may
    write or keep, the evaluation stage, the slots. Raises ConfigError; adds warnings."""
    readonly = [_normalise_relative(root, item) for item in config.readonly_files]
    for item in readonly:
        if not (root / item).exists():
            warnings.append(f"read-only file '{item}' does not exist (it will be checked if it appears)")
    if readonly != list(config.readonly_files):
        config = config.model_copy(update={"readonly_files": readonly})
    if config.target_file is not None:
        resolved = check_target_file(root, config.target_file, readonly)
        target_rel = resolved.relative_to(root).as_posix()
        if target_rel != config.target_file:
            config = config.model_copy(update={"target_file": target_rel})
    protected = {item: f"the read-only file {item}" for item in readonly}
    if config.target_file is not None:
        protected[config.target_file] = f"the target {config.target_file}"
    check_writable(root, list(config.writable), protected, config.jsonl_path)
    config = check_stage_config(root, config)
    check_writable(root, list(config.persistent), protected, config.jsonl_path, "persistent")
    check_shared_inputs(
        root,
        {"writable": list(config.writable), "persistent": list(config.persistent)},
        list(config.shared_inputs),
    )
    warnings += cache_warnings(root, config)
    if config.parallel:
        check_slots_home()
        if config.backend == "local":
            check_writable_for_slots(root, config.run_writes)
    return config


def _add_config_warnings(config: Config, isolation: Isolation, warnings: list[str]) -> None:
    if config.backend == "ray" and importlib.util.find_spec("ray") is None:  # found, never imported here
        warnings.append(
            "backend = \"ray\" needs Ray in the server's environment: pip install 'mcp-autoresearch[ray]'"
        )
    if config.isolation == "required" and not isolation.complete:
        warnings.append(f"isolation = required, but runs cannot be confined here ({isolation.missing()})")
    if config.metric_measure == "wall_time_s" and not (config.metric_parse or config.metric_regex):
        warnings.append(wall_time_warning(config))
    if config.timeout < config.time_budget:
        warnings.append(
            f"timeout ({config.timeout:g} s) is shorter than time_budget ({config.time_budget:g} s)"
        )


def _readiness(
    config: Config, project_type: str, target_notes: list[str], provenance: MetricProvenance
) -> tuple[bool, str]:
    """Whether a session can start, and the one message that says so or what to set."""
    missing = [key for key in ("target_file", "run_command", "metric_name") if getattr(config, key) is None]
    if project_type == "unknown":
        return not missing, (
            "No known project type found (train.py+prepare.py, package.json, pubspec.yaml, pom.xml/build.gradle, "
            "Cargo.toml, go.mod, CMakeLists.txt, a Makefile with C/C++ sources, pyproject.toml). Configure one: add an autoresearch.toml with target_file, "
            "run_command, metric_name (and metric_direction), or a '## autoresearch' section with '- key: value' "
            "lines to CLAUDE.md or AGENTS.md."
        )
    if missing:
        return False, "".join(f"{note[0].upper()}{note[1:]}. " for note in target_notes) + (
            f"Set {', '.join(missing)} in autoresearch.toml or the '## autoresearch' section of CLAUDE.md "
            "(or pass them on the server's command line)."
        )
    if config.integrity == "required" and provenance.source == "self-reported":
        return False, integrity_refusal(provenance)
    return True, "Ready: call start_session to create the experiment branch, then run the baseline."


def integrity_refusal(provenance: MetricProvenance) -> str:
    """Why integrity = "required" refuses a session, and the two ways on."""
    return (
        f"integrity = required, but the metric is self-reported ({provenance.reason}). Fix: {provenance.fix}; "
        'or set integrity = "any" to accept a self-reported metric (it is labelled as such everywhere)'
    )


def _commands(config: Config) -> list[str]:
    """The commands of an experiment, as configured."""
    found = (config.run_command, config.checks_command, config.eval_command, config.holdout_command)
    return [command for command in found if command]


def writable_warnings(root: Path, entries: list[str], commands: list[str]) -> list[str]:
    """A `writable` entry is a directory a run writes beneath. Say so where the user listed an entry of the
    project that is a file (a run may write into it but not replace it, as a linker does) or that is not there
    yet (the server creates it as an empty directory before each run, so a build that writes a file of that
    name, a binary at the project root, finds a directory there), unless one of the `commands` writes beneath
    it as a directory (`> out/samples.txt`: the bundled example's)."""
    found = []
    for entry in entries:
        path = Path(os.path.expanduser(entry))
        path = path if path.is_absolute() else root / path
        if root not in path.parents:
            continue
        example = f"{path.parent.relative_to(root) / 'build'}".removeprefix("./")
        fix = (
            f"list the directory the build writes into instead (e.g. build the output as {example}/{path.name} "
            f'with writable = ["{example}"])'
        )
        if path.is_file() and not path.is_symlink():
            found.append(
                f"writable entry '{entry}' is a file: a run may write into it but not replace or remove it, as "
                f"a linker or a copy does (refused); {fix}"
            )
        elif not os.path.lexists(path) and not _used_as_directory(entry, commands):
            found.append(
                f"writable entry '{entry}' does not exist yet: the server creates it as an empty directory before "
                f"each run (an entry is a directory a run writes beneath); if the build writes a file of that "
                f"name, {fix}"
            )
    return found


def _used_as_directory(entry: str, commands: list[str]) -> bool:
    """Whether a command names a path beneath `entry` (`out/samples.txt`, `./out/`)."""
    name = re.escape(entry.removeprefix("./").rstrip("/"))
    pattern = re.compile(r"(?<![\w.\-/~])(?:\./)?" + name + "/")
    return any(pattern.search(command) for command in commands)


def cache_warnings(root: Path, config: Config) -> list[str]:
    """Say what `persistent` is, and which listed entries open a place other programs run code from."""
    found = []
    if config.persistent:
        found.append(
            f"persistent = {', '.join(config.persistent)}: kept from run to run, a channel from one run to the next "
            "(a run can leave there what later runs read); remove an entry to give each run its own empty cache"
        )
    risky = executed_from(root, config.run_writes)
    if risky:
        found.append(
            f"{', '.join(risky)}: other programs run code from there (npx, Gradle's init scripts, installed "
            "binaries, build plugins): a run could plant what you later run outside any sandbox"
        )
    return found


def describe_keep_rule(config: Config) -> str:
    sequential = (
        f"sequential (confidence {config.confidence:g}, up to {config.max_repeats} runs per candidate)"
    )
    if config.keep_rule == "greedy":
        return f"greedy (better by more than min_delta {config.min_delta:g}; no noise runs)"
    if config.keep_rule == "sequential":
        return sequential + f"; the noise is measured by {config.noise_runs} runs of the baseline"
    return (
        f"chosen by {config.noise_runs} runs of the baseline: greedy if the metric is deterministic (two equal "
        f"values), else {sequential}"
    )


def _normalise_relative(root: Path, item: str) -> str:
    """Read-only entries as clean relative paths; an entry outside the project is a configuration error."""
    path = Path(item)
    full = path if path.is_absolute() else root / path
    normal = Path(os.path.normpath(full))
    if normal != root and root not in normal.parents:
        raise ConfigError(f"readonly_files entry '{item}' is outside the project {root}")
    return normal.relative_to(root).as_posix()
