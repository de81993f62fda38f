"""The single-file rule in code: which path may change, and fingerprints of the files that must not.

Every path the agent names goes through `resolve_target_path`; nothing else decides what is writable.
"""

from __future__ import annotations

import hashlib
import os
import stat
import unicodedata
from pathlib import Path

from ..errors import ConfigError, RuleViolation
from ..records.atomic import open_regular

MAX_PATH_CHARS = 4096


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str | None:
    """Hash of a regular file's content; None when it does not exist or is a directory. Anything else gets a
    marker that differs from any hash, so it counts as changed: a file that cannot be read, a symlink (named
    with its target and the target's hash), a FIFO or a device (never opened in a way that can block)."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if stat.S_ISDIR(st.st_mode):
        return None
    if stat.S_ISLNK(st.st_mode):  # the link and what it points to both count
        return f"symlink to {os.readlink(path)}: {sha256_file(path.resolve())}"
    if not stat.S_ISREG(st.st_mode):
        return f"not a regular file (mode {stat.filemode(st.st_mode)})"
    try:
        fd = open_regular(path)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    with os.fdopen(fd, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _inside(root: Path, path: Path) -> bool:
    return path == root or root in path.parents


def check_target_file(root: Path, target: str, readonly: list[str]) -> Path:
    """Validate the configured target: an existing regular file inside the project (after resolving symlinks),
    not under .git/, and not read-only. Returns its resolved path."""
    if "\x00" in target:
        raise ConfigError("target_file contains a NUL byte")
    root = root.resolve()
    candidate = Path(target)
    if candidate.is_absolute():
        raise ConfigError(f"target_file '{target}' must be a path relative to the project root")
    resolved = (root / candidate).resolve()
    if not _inside(root, resolved):
        raise ConfigError(f"target_file '{target}' resolves to {resolved}, outside the project {root}")
    relative = resolved.relative_to(root)
    if relative.parts and relative.parts[0] == ".git":
        raise ConfigError(f"target_file '{target}' is inside .git/; choose a source file of the project")
    if (root / candidate).is_symlink():
        raise ConfigError(
            f"target_file '{target}' is a symbolic link; name the file it points to ('{relative.as_posix()}')"
        )
    if not resolved.exists():
        raise ConfigError(f"target_file '{target}' does not exist in {root}")
    if not resolved.is_file():
        raise ConfigError(f"target_file '{target}' is not a regular file")
    for entry in readonly:
        protected = (root / entry).resolve()
        if resolved == protected or protected in resolved.parents:
            raise ConfigError(
                f"target_file '{target}' is read-only (readonly_files lists '{entry}'); it cannot be both"
            )
    return resolved


def _fold(text: str) -> str:
    return unicodedata.normalize("NFC", text).casefold()


def resolve_target_path(root: Path, target_rel: str, requested: str | None) -> Path:
    """The path the agent may write: always the configured target. A `requested` path is accepted only when it
    names that same file, so the agent learns the rule instead of silently writing elsewhere."""
    root = root.resolve()
    target = root / target_rel
    if requested is None:
        return target
    rule = f"only the target file '{target_rel}' may be edited (single-file rule)"
    if not isinstance(requested, str) or not requested.strip():
        raise RuleViolation(f"path is empty; {rule}. Omit path to edit the target.")
    if "\x00" in requested:
        raise RuleViolation(f"path contains a NUL byte; {rule}")
    if len(requested) > MAX_PATH_CHARS:
        raise RuleViolation(f"path is {len(requested)} characters long; {rule}")
    if requested.endswith(("/", os.sep)):
        raise RuleViolation(f"path '{requested}' names a directory; {rule}")
    raw = Path(requested)
    candidate = raw if raw.is_absolute() else root / raw
    # Compare the lexical path first: '../x' or 'sub/../../x' is refused even if it would land on the target.
    lexical = Path(os.path.normpath(candidate))
    if not _inside(root, lexical):
        raise RuleViolation(f"path '{requested}' is outside the project; {rule}")
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError):
        raise RuleViolation(f"path '{requested}' cannot be resolved; {rule}") from None
    if lexical != target or resolved != target.resolve():
        hint = ""
        if lexical != target and _fold(str(lexical)) == _fold(str(target)):
            hint = " (the names differ only in case or Unicode form; use the exact name)"
        raise RuleViolation(f"path '{requested}' is not the target{hint}; {rule}")
    return target


MAX_READONLY_FILES = 20_000


def fingerprint_files(root: Path, paths: list[str]) -> dict[str, str | None]:
    """sha256 of each read-only file (None for a missing one), to prove later that nobody changed them.
    A directory stands for every file below it (symlinks are not followed)."""
    found: dict[str, str | None] = {}
    for rel in paths:
        path = root / rel
        if path.is_dir() and not path.is_symlink():
            for dirpath, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d != ".git")
                for name in sorted(files):
                    full = Path(dirpath) / name
                    if len(found) >= MAX_READONLY_FILES:
                        return found
                    found[full.relative_to(root).as_posix()] = sha256_file(full)
        else:
            found[rel] = sha256_file(path)
    return found


def new_files(root: Path, entries: list[str], expected: dict[str, str | None], limit: int = 100) -> list[str]:
    """Files below the read-only directories that were not there when the session started: a module that would
    shadow the evaluator's, a forged bytecode cache, data planted for it. (None are looked for when the session
    started with more files than were fingerprinted.)"""
    if len(expected) >= MAX_READONLY_FILES:
        return []
    found: list[str] = []
    for rel in entries:
        path = root / rel
        if not path.is_dir() or path.is_symlink():
            continue
        for dirpath, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if d != ".git"]
            for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
                key = (Path(dirpath) / name).relative_to(root).as_posix()
                if key not in expected:
                    found.append(key)
                    if len(found) >= limit:
                        return sorted(found)
    return sorted(found)


def changed_fingerprints(root: Path, expected: dict[str, str | None]) -> list[str]:
    return [rel for rel, digest in expected.items() if sha256_file(root / rel) != digest]
