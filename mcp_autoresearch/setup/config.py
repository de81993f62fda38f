"""The configuration model: every key, its type, its default and its validation, in one place.

Sources (files, flags, detection) are read in `config_sources.py`; this module only says what a valid value is.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigError
from ..names import DEFAULT_JSONL, STATE_DIR
from ..records.results_tsv import ResultsFormat

Direction = Literal["lower_is_better", "higher_is_better"]
IsolationSetting = Literal["auto", "required", "off"]
NetworkSetting = Literal["on", "off"]
IntegritySetting = Literal["any", "required"]
KeepRule = Literal["greedy", "sequential"]
Backend = Literal["local", "ray"]
MAX_SLOTS = 64

DIRECTION_ALIASES = {
    "lower": "lower_is_better",
    "lower_is_better": "lower_is_better",
    "min": "lower_is_better",
    "minimize": "lower_is_better",
    "higher": "higher_is_better",
    "higher_is_better": "higher_is_better",
    "max": "higher_is_better",
    "maximize": "higher_is_better",
}

# Every key declares whether a session keeps the value it started with (`FROZEN`: anything that can change what is
# measured, what may change or how it is judged) or may change between two server lives (`FREE`).
FROZEN: dict[str, Any] = {"session": "frozen"}
FREE: dict[str, Any] = {"session": "free"}

# `metric_measure` forms: the server measures the value itself instead of reading it from the output.
MEASURE_RE = re.compile(r"^(wall_time_s|size_(?:b|kb|mb):.+)$")


class ConfigValues(BaseModel):
    """The keys a source may set. Every field is optional here: a missing key falls back to the next source."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    target_file: str | None = Field(
        None, description="The single file the agent may edit (relative path).", json_schema_extra=FROZEN
    )
    run_command: str | None = Field(
        None, description="Shell command that runs one experiment.", json_schema_extra=FROZEN
    )
    metric_name: str | None = Field(
        None, description="Name of the metric that decides.", json_schema_extra=FROZEN
    )
    metric_parse: str | None = Field(
        None,
        description="Shell command printing the metric (first float of its output wins).",
        json_schema_extra=FROZEN,
    )
    metric_regex: str | None = Field(
        None, description="Regex with one group matching the metric in the log.", json_schema_extra=FROZEN
    )
    metric_measure: str | None = Field(
        None,
        description="Measured metric: wall_time_s, size_b:<path>, size_kb:<path> or size_mb:<path>.",
        json_schema_extra=FROZEN,
    )
    metric_direction: Direction | None = Field(
        None, description="lower_is_better or higher_is_better.", json_schema_extra=FROZEN
    )
    eval_command: str | None = Field(
        None,
        description="Command that computes the metric after the run, in a process the run never ran in.",
        json_schema_extra=FROZEN,
    )
    integrity: IntegritySetting | None = Field(
        None,
        description="any (a self-reported metric is allowed, and labelled) or required (refuse to start a "
        "session whose metric the run itself reports).",
        json_schema_extra=FREE,  # checked whenever a session opens
    )
    time_budget: float | None = Field(
        None, gt=0, description="Seconds an experiment is meant to take.", json_schema_extra=FROZEN
    )
    timeout: float | None = Field(
        None, gt=0, description="Hard limit in seconds; the run is killed after it.", json_schema_extra=FROZEN
    )
    readonly_files: list[str] | None = Field(
        None, description="Files that must never change.", json_schema_extra=FROZEN
    )
    checks_command: str | None = Field(
        None, description="Command that must pass after a successful run.", json_schema_extra=FROZEN
    )
    checks_timeout: float | None = Field(
        None, gt=0, description="Hard limit in seconds for checks_command.", json_schema_extra=FROZEN
    )
    repeats: int | None = Field(
        None, ge=1, le=100, description="Runs per experiment; the median decides.", json_schema_extra=FROZEN
    )
    min_delta: float | None = Field(
        None, ge=0, description="Smallest change that counts as an improvement.", json_schema_extra=FROZEN
    )
    # The budgets say how long a session may go on, not what it measures: free, so a person can raise them.
    max_experiments: int | None = Field(
        None,
        ge=1,
        description="The session's experiment budget: no run starts once this many are logged or in flight.",
        json_schema_extra=FREE,
    )
    max_hours: float | None = Field(
        None,
        gt=0,
        description="The session's wall-clock budget in hours, from its start (across restarts): no run starts "
        "after it.",
        json_schema_extra=FREE,
    )
    stall_after: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="Experiments without a keep before next_step proposes other nodes to branch from.",
        json_schema_extra=FROZEN,  # it defines the tree's dead ends, which every view of the session shows
    )
    eval_timeout: float | None = Field(
        None, gt=0, description="Hard limit in seconds for eval_command.", json_schema_extra=FROZEN
    )
    hidden: list[str] | None = Field(
        None,
        description="Paths only eval_command and holdout_command may read; runs and checks cannot.",
        json_schema_extra=FROZEN,
    )
    holdout_command: str | None = Field(
        None,
        description="Command run like eval_command after every keep; its values are never shown to the agent.",
        json_schema_extra=FROZEN,
    )
    memory_regex: str | None = Field(
        None, description="Regex with one group: peak memory in MB from the log.", json_schema_extra=FROZEN
    )
    # How much of an output the log keeps. The metric a run prints last is always kept, but a metric read from the
    # middle of a long output (an earlier match of metric_regex) depends on it: frozen, as what is measured is.
    log_limit_mb: float | None = Field(
        None,
        ge=0.01,
        le=1_000_000,
        description="The most a command's log keeps of its output, in MB: past it, the beginning and the last "
        "8 MB (at most half of it), with a line saying what was left out between them.",
        json_schema_extra=FROZEN,
    )
    jsonl_path: str | None = Field(
        None, description="Where the JSONL log lives (relative to the project).", json_schema_extra=FROZEN
    )
    writable: list[str] | None = Field(
        None,
        description="Paths a run may write (relative to the project, absolute, or ~/...); all else is read-only.",
        json_schema_extra=FROZEN,
    )
    persistent: list[str] | None = Field(
        None,
        description="Cache paths a run may write that are kept from run to run (a channel from one run to the "
        "next: not trusted); every other cache is private to each run.",
        json_schema_extra=FROZEN,
    )
    isolation: IsolationSetting | None = Field(
        None,
        description="auto (confine runs when the kernel can), required (refuse to start without), or off.",
        json_schema_extra=FROZEN,
    )
    network: NetworkSetting | None = Field(
        None,
        description="on (runs may use the network) or off (a run has its own loopback and nothing else).",
        json_schema_extra=FROZEN,
    )
    results_format: ResultsFormat | None = Field(
        None,
        description="results.tsv's columns: autoresearch (the original tool's) or karpathy.",
        json_schema_extra=FREE,
    )
    keep_rule: KeepRule | None = Field(
        None,
        description="greedy (better by more than min_delta) or sequential (better with the stated confidence); "
        "default: greedy for a deterministic metric, sequential for a noisy one.",
        json_schema_extra=FROZEN,
    )
    confidence: float | None = Field(
        None,
        ge=0.5,
        lt=1,
        description="sequential: the confidence a keep needs that the change is better.",
        json_schema_extra=FROZEN,
    )
    max_repeats: int | None = Field(
        None, ge=1, le=100, description="sequential: most runs of one candidate.", json_schema_extra=FROZEN
    )
    noise_runs: int | None = Field(
        None,
        ge=1,
        le=100,
        description="Runs of the baseline that measure the noise (stops at 2 equal values).",
        json_schema_extra=FROZEN,
    )
    slots: int | None = Field(
        None,
        ge=1,
        le=MAX_SLOTS,
        description="Experiments in flight at once, each in its own checkout (default 1).",
        json_schema_extra=FROZEN,
    )
    slot_devices: list[str] | None = Field(
        None,
        description="CUDA_VISIBLE_DEVICES of each slot in turn, e.g. 0, 1, 2, 3 (default: not set).",
        json_schema_extra=FROZEN,
    )
    shared_inputs: list[str] | None = Field(
        None,
        description="Untracked inputs every slot sees read-only (node_modules, .venv, a data directory).",
        json_schema_extra=FROZEN,
    )
    backend: Backend | None = Field(
        None,
        description="Where slots run: local (this machine) or ray (a Ray cluster).",
        json_schema_extra=FROZEN,
    )
    ray_address: str | None = Field(
        None,
        description="The Ray cluster's dashboard address for job submission (default: RAY_ADDRESS, else local).",
        json_schema_extra=FREE,
    )
    ray_num_cpus: float | None = Field(
        None, gt=0, description="CPUs each Ray job reserves (entrypoint_num_cpus).", json_schema_extra=FROZEN
    )
    ray_num_gpus: float | None = Field(
        None, ge=0, description="GPUs each Ray job reserves (entrypoint_num_gpus).", json_schema_extra=FROZEN
    )

    @field_validator("metric_direction", mode="before")
    @classmethod
    def _direction(cls, value: Any) -> Any:
        if isinstance(value, str):
            return DIRECTION_ALIASES.get(value.strip().lower(), value)
        return value

    @field_validator(
        "readonly_files", "writable", "persistent", "slot_devices", "shared_inputs", "hidden", mode="before"
    )
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        # The markdown format of the original tool writes lists comma-separated.
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("metric_name")
    @classmethod
    def _one_word(cls, value: str | None) -> str | None:
        if value is not None and value and not re.fullmatch(r"[A-Za-z0-9_.\-/%]+", value):
            raise ValueError(
                "must be one word (letters, digits, _ . - / %); use metric_regex for other output"
            )
        return value

    @field_validator("shared_inputs")
    @classmethod
    def _inside(cls, value: list[str] | None) -> list[str] | None:
        for item in value or []:
            parts = Path(item).parts
            if Path(item).is_absolute() or item.startswith("~") or ".." in parts:
                raise ValueError(f"'{item}' must be a path inside the project (relative, no '..')")
            if parts and parts[0] in (".git", STATE_DIR):
                raise ValueError(f"'{item}' is the repository's or the server's own folder")
        return value

    @field_validator("slot_devices")
    @classmethod
    def _devices(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not re.fullmatch(r"[A-Za-z0-9_,:\-]+", item) for item in value):
            raise ValueError("each entry is one CUDA_VISIBLE_DEVICES value, such as 0 or 2,3 or GPU-<uuid>")
        return value

    @field_validator("isolation", "backend", "network", "integrity", mode="before")
    @classmethod
    def _isolation(cls, value: Any) -> Any:
        if isinstance(value, bool):  # network = true / false in TOML
            return "on" if value else "off"
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("readonly_files", "writable", "persistent", "shared_inputs", "hidden")
    @classmethod
    def _no_empty_entries(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not item.strip() or item.strip() in (".", "./") for item in value):
            raise ValueError("entries must name files or directories inside the project (not empty, not '.')")
        return value

    @field_validator("metric_regex", "memory_regex")
    @classmethod
    def _one_group(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression ({exc})") from None
        if compiled.groups != 1:
            raise ValueError(f"must have exactly one group (it has {compiled.groups})")
        return value

    @field_validator("metric_measure")
    @classmethod
    def _measure(cls, value: str | None) -> str | None:
        if value is not None and not MEASURE_RE.match(value):
            raise ValueError("must be wall_time_s, size_b:<path>, size_kb:<path> or size_mb:<path>")
        return value

    @field_validator(
        "time_budget", "timeout", "checks_timeout", "eval_timeout", "min_delta", "confidence", "max_hours"
    )
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator(
        "target_file", "run_command", "metric_name", "jsonl_path", "eval_command", "holdout_command"
    )
    @classmethod
    def _not_empty(cls, value: str | None) -> str | None:
        if value is not None and not value:
            raise ValueError("must not be empty")
        if value is not None and "\x00" in value:
            raise ValueError("must not contain a NUL byte")
        return value


KEYS: tuple[str, ...] = tuple(ConfigValues.model_fields)


def _frozen(name: str) -> bool:
    extra = ConfigValues.model_fields[name].json_schema_extra
    if extra not in (FROZEN, FREE):
        raise TypeError(f"configuration key {name!r} must declare json_schema_extra=FROZEN or FREE")
    return extra == FROZEN


# The settings a session keeps for its whole life (a resume with another value is refused).
FROZEN_KEYS: tuple[str, ...] = tuple(name for name in KEYS if _frozen(name))

DEFAULTS: dict[str, Any] = {
    "metric_direction": "lower_is_better",
    "time_budget": 300.0,
    "readonly_files": [],
    "repeats": 1,
    "min_delta": 0.0,
    "jsonl_path": DEFAULT_JSONL,
    "writable": [],
    "persistent": [],
    "isolation": "auto",
    "integrity": "any",
    "network": "on",
    "results_format": "autoresearch",
    "confidence": 0.95,
    "max_repeats": 5,
    "noise_runs": 3,
    "slots": 1,
    "slot_devices": [],
    "shared_inputs": [],
    "hidden": [],
    "backend": "local",
    "stall_after": 8,
}


class Config(BaseModel):
    """The effective configuration: every source merged, defaults applied."""

    model_config = ConfigDict(frozen=True)

    target_file: str | None
    run_command: str | None
    metric_name: str | None
    metric_parse: str | None = None
    metric_regex: str | None = None
    metric_measure: str | None = None
    metric_direction: Direction = "lower_is_better"
    integrity: IntegritySetting = "any"
    time_budget: float = 300.0
    timeout: float = 600.0
    readonly_files: list[str] = Field(default_factory=list)
    checks_command: str | None = None
    checks_timeout: float = 300.0
    eval_command: str | None = None
    eval_timeout: float = 600.0
    hidden: list[str] = Field(default_factory=list)
    holdout_command: str | None = None
    repeats: int = 1
    min_delta: float = 0.0
    max_experiments: int | None = None
    max_hours: float | None = None
    stall_after: int = 8
    memory_regex: str | None = None
    log_limit_mb: float = 64.0
    jsonl_path: str = DEFAULT_JSONL
    writable: list[str] = Field(default_factory=list)
    persistent: list[str] = Field(default_factory=list)
    isolation: IsolationSetting = "auto"
    network: NetworkSetting = "on"
    results_format: ResultsFormat = "autoresearch"
    keep_rule: KeepRule | None = None  # None: decided by the noise measured at the session's start
    confidence: float = 0.95
    max_repeats: int = 5
    noise_runs: int = 3
    slots: int = 1
    slot_devices: list[str] = Field(default_factory=list)
    shared_inputs: list[str] = Field(default_factory=list)
    backend: Backend = "local"
    ray_address: str | None = None
    ray_num_cpus: float | None = None
    ray_num_gpus: float | None = None

    def frozen_rules(self) -> dict[str, Any]:
        """The settings a session freezes for its life (`FROZEN_KEYS`), as its record keeps them."""
        return {key: getattr(self, key) for key in FROZEN_KEYS}

    @property
    def run_writes(self) -> list[str]:
        """Every entry a run may write: the `writable` outputs, then the `persistent` caches."""
        return [*self.writable, *self.persistent]

    @property
    def parallel(self) -> bool:
        """Runs go to slots (their own checkouts), not the user's work tree: more than one slot, or Ray."""
        return self.slots > 1 or self.backend == "ray"


# An unknown key is named with a suggestion for the first few only, each cut short: a file of many thousand
# unknown keys (a hostile repository's) took seconds of difflib per load, and the message grew with it.
SHOWN_UNKNOWN_KEYS = 5
SHOWN_KEY_CHARS = 80


def validate_values(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate one source's raw keys; return only the keys it sets. Errors name the key, the value and `where`."""
    unknown = [key for key in raw if key not in KEYS]
    if unknown:
        parts = []
        for key in unknown[:SHOWN_UNKNOWN_KEYS]:
            shown = key[:SHOWN_KEY_CHARS]
            close = difflib.get_close_matches(shown, KEYS, n=1)
            parts.append(
                f"{shown!r}"
                + ("..." if shown != key else "")
                + (f" (did you mean '{close[0]}'?)" if close else "")
            )
        if len(unknown) > SHOWN_UNKNOWN_KEYS:
            parts.append(f"and {len(unknown) - SHOWN_UNKNOWN_KEYS} more")
        raise ConfigError(
            f"{where}: unknown configuration key {', '.join(parts)}; known keys: {', '.join(KEYS)}"
        )
    try:
        values = ConfigValues.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "?"
        top = str(first["loc"][0]) if first["loc"] else key
        value = raw.get(top, first.get("input"))
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{where}: invalid value {value!r} for '{key}': {message}") from None
    return values.model_dump(exclude_unset=True)


def build_config(merged: dict[str, Any]) -> Config:
    """Apply defaults and derived values (timeout = 2 x time_budget, checks_timeout = timeout)."""
    values = {**DEFAULTS, **{k: v for k, v in merged.items() if v is not None}}
    values.setdefault("timeout", 2 * values["time_budget"])
    values.setdefault("checks_timeout", values["timeout"])
    values.setdefault("eval_timeout", values["timeout"])
    values.setdefault("target_file", None)
    values.setdefault("run_command", None)
    values.setdefault("metric_name", None)
    return Config.model_validate(values)
