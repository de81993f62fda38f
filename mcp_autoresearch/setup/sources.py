"""Reading the configuration sources, highest precedence first.

command line > autoresearch.toml (or --config FILE) > [tool.autoresearch] in pyproject.toml
> `## autoresearch` in CLAUDE.md > the same in AGENTS.md > auto-detection > defaults.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .config import validate_values

COMMAND_LINE = "command line"
TOML_FILE = "autoresearch.toml"
PYPROJECT = "pyproject.toml [tool.autoresearch]"
MARKDOWN_FILES = ("CLAUDE.md", "AGENTS.md")
# Files larger than this are not configuration; reading them whole would only waste memory.
MAX_CONFIG_BYTES = 1_000_000


@dataclass
class Source:
    """One configuration source: a label for `config_source`, the file it came from, and the keys it sets."""

    label: str
    values: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _read_text(path: Path, label: str) -> str:
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{label}: file is larger than {MAX_CONFIG_BYTES // 1000} KB; is it really config?"
            )
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{label}: not valid UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot be read ({exc.strerror})") from None


def _read_toml(path: Path, label: str) -> dict[str, Any]:
    try:
        return tomllib.loads(_read_text(path, label))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{label}: not valid TOML ({exc})") from None


def read_toml_file(path: Path, label: str | None = None) -> Source:
    """`autoresearch.toml`: keys at the top level, or under an `[autoresearch]` table."""
    label = label or path.name
    data = _read_toml(path, label)
    if isinstance(data.get("autoresearch"), dict) and len(data) == 1:
        data = data["autoresearch"]
    return Source(label, validate_values(data, label), path)


def read_pyproject(path: Path) -> Source | None:
    data = _read_toml(path, "pyproject.toml")
    section = data.get("tool", {}).get("autoresearch")
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ConfigError("pyproject.toml: [tool.autoresearch] must be a table of key = value lines")
    # TOML users write keys with dashes as often as with underscores.
    section = {key.replace("-", "_"): value for key, value in section.items()}
    return Source(PYPROJECT, validate_values(section, PYPROJECT), path)


_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_ITEM = re.compile(r"^\s*[-*+]\s+([A-Za-z_][\w-]*)\s*:\s*(.*?)\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def parse_markdown_section(text: str, label: str) -> dict[str, str] | None:
    """The original tool's format: `- key: value` lines under `## autoresearch`, up to the next heading of the
    same or a higher level. Headings inside fenced code blocks do not count. None when there is no section."""
    values: dict[str, str] = {}
    level: int | None = None
    in_fence = False
    for lineno, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        heading = _HEADING.match(line)
        if heading:
            depth, title = len(heading.group(1)), heading.group(2).strip().strip("`*_").lower()
            if level is not None and depth <= level:
                break
            if level is None and title == "autoresearch":
                level = depth
            continue
        if level is None:
            continue
        item = _ITEM.match(line)
        if item:
            key, value = item.group(1).replace("-", "_"), item.group(2)
            # Values are often written as inline code: `python train.py`.
            if len(value) >= 2 and value[0] == value[-1] == "`":
                value = value[1:-1].strip()
            if key in values:
                raise ConfigError(f"{label} line {lineno}: '{key}' is set twice in the autoresearch section")
            values[key] = value
    return values if level is not None else None


def read_markdown(path: Path) -> Source | None:
    label = path.name
    values = parse_markdown_section(_read_text(path, label), label)
    if values is None:
        return None
    return Source(label, validate_values(values, f"{label} (## autoresearch)"), path)


def read_file_sources(root: Path, config_file: Path | None = None) -> list[Source]:
    """Every file source present in the project, highest precedence first."""
    sources: list[Source] = []
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"--config {config_file}: no such file")
        sources.append(read_toml_file(config_file, str(config_file)))
    else:
        toml_path = root / TOML_FILE
        if toml_path.is_file():
            sources.append(read_toml_file(toml_path))
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        found = read_pyproject(pyproject)
        if found:
            sources.append(found)
    for name in MARKDOWN_FILES:
        path = root / name
        if path.is_file():
            found = read_markdown(path)
            if found:
                sources.append(found)
    return sources


def command_line_source(overrides: dict[str, Any] | None) -> Source | None:
    """Settings the user gave on the server's command line: the user's word, above every file."""
    if not overrides:
        return None
    values = {key: value for key, value in overrides.items() if value not in (None, [], ())}
    if not values:
        return None
    return Source(COMMAND_LINE, validate_values(values, COMMAND_LINE))
