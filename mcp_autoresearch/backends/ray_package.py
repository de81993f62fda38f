"""The package of a Ray job: the candidate's snapshot, the wrapper with the modules it ships with, and its spec,
in one zip that Ray uploads as the job's working directory; and the server's copy of the job's log.

Every package is unique (the spec names its job), so Ray's content-addressed cache never hands one run's
extracted directory to another. A `ray_address` line of the project's configuration is replaced by a comment:
the run never reads where the cluster is. This module never touches the snapshot it packs.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any

from ..measure import output_checks, output_size
from ..names import STATE_DIR
from ..records.atomic import open_own
from ..records.run_log import RunLog
from ..sandbox import (
    command,
    confine,
    keeper_tree,
    landlock,
    namespaces,
    output_dirs,
    prepared,
    run_tmpdirs,
    standby,
    view,
    write_grants,
)
from ..setup.sources import MARKDOWN_FILES, TOML_FILE
from . import ray_records, ray_wrapper

DEFAULT_PACKAGE_LIMIT = 512 * 1024 * 1024
WRAPPER_DIR = ".autoresearch-ray"
ALWAYS_EXCLUDED = (".git", STATE_DIR, WRAPPER_DIR, ray_wrapper.SPEC)
# Standard library only: the wrapper and the modules it imports by path on the worker.
SHIPPED = (
    ray_wrapper,
    ray_records,
    command,
    confine,
    keeper_tree,
    landlock,
    namespaces,
    output_dirs,
    prepared,
    run_tmpdirs,
    standby,
    view,
    output_checks,
    output_size,
    write_grants,
)
# Where the server reads its configuration (`setup/sources.py`): a line naming ray_address is redacted in the
# package, in every form the server reads (quoted or dotted TOML keys, pyproject's dashes, a Markdown item).
CONFIG_FILES = (TOML_FILE, "pyproject.toml", *MARKDOWN_FILES)
ADDRESS_LINE = re.compile(rb"(?m)^([ \t]*)[^\r\n]*\bray[_-]address\b[^\r\n]*")


class Log(RunLog):
    """The server's log of one run, in a file of its own: bounded by `limit` bytes and hashed (`RunLog`)."""

    def __init__(self, path: Path, limit: int | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(open_own(path, os.O_RDWR | os.O_TRUNC), limit)

    def close(self) -> None:
        os.close(self.fd)

    def figures(self) -> dict[str, Any]:
        """The log finished (its end written after what it left out), and what a `ProcessResult` says of it."""
        self.finish()
        return {
            "captured_bytes": self.size,
            "captured_sha256": self.sha256,
            "output_cut": self.summary("the command"),
            "log_end_from": self.end_from,
        }


def _normalized(entry: str) -> str:
    return os.path.normpath(entry.strip()).replace(os.sep, "/")


def within(cwd: Path, paths: list[str]) -> list[str]:
    """`paths` (relative to `cwd`, or absolute: `jsonl_path` is taken as given) as the relative paths
    `build_package` leaves out: an absolute one, or one through `..`, inside `cwd` too (where they lead, links
    followed, as well as as given); one outside it is not in the package anyway."""
    top = os.path.realpath(cwd)
    found = []
    for path in paths:
        found.append(path)
        for where in (os.path.normpath(os.path.join(cwd, path)), os.path.realpath(os.path.join(cwd, path))):
            for base in (os.path.normpath(cwd), top):
                if os.path.commonpath([base, where]) == base and where != base:
                    found.append(os.path.relpath(where, base))
    return found


def build_package(cwd: Path, dest: Path, excluded: list[str], spec: ray_wrapper.JobSpec, limit: int) -> int:
    """Zip the snapshot (minus `excluded` relative paths), the wrapper and its spec into `dest`; returns the
    zip's size. Files are added by content (a link to a file counts as that file), modes are kept (Ray restores
    them); links to directories are not followed (a loop, or the user's whole disk)."""
    skip = {_normalized(item) for item in excluded}
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for dirpath, dirs, files in os.walk(cwd):
            rel_dir = os.path.relpath(dirpath, cwd)
            rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
            dirs[:] = [
                d for d in dirs if (rel_dir + d) not in skip and not os.path.islink(os.path.join(dirpath, d))
            ]
            if rel_dir:
                archive.write(dirpath, rel_dir)
            for name in files:
                full = os.path.join(dirpath, name)
                if rel_dir + name in skip or not os.path.isfile(full):
                    continue
                if os.path.getsize(full) >= limit:  # never spend minutes compressing what cannot be sent
                    raise StartError(
                        f"{rel_dir + name} is {os.path.getsize(full) / 2**20:.0f} MiB, over Ray's upload limit of "
                        f"{limit / 2**20:.0f} MiB: list it (or its folder) in shared_inputs and provide it on the "
                        "workers (shared storage or their image)"
                    )
                _add(archive, full, rel_dir + name)
            if dest.stat().st_size >= limit:
                break
        archive.writestr(ray_wrapper.SPEC, json.dumps(spec))
        for module in SHIPPED:
            assert module.__file__ is not None
            archive.write(module.__file__, f"{WRAPPER_DIR}/{os.path.basename(module.__file__)}")
    return dest.stat().st_size


def _add(archive: zipfile.ZipFile, full: str, name: str) -> None:
    """One file into the package; a project configuration loses its `ray_address` (where the cluster is)."""
    if name not in CONFIG_FILES:
        archive.write(full, name)
        return
    note = b"ray_address: not shipped to the workers"
    note = b"<!-- " + note + b" -->" if name.endswith(".md") else b"# " + note  # a Markdown `#` is a heading
    with open(full, "rb") as handle:
        data = ADDRESS_LINE.sub(rb"\1" + note, handle.read())
    archive.writestr(zipfile.ZipInfo.from_file(full, name), data, zipfile.ZIP_DEFLATED, 1)


def package_limit() -> int:
    try:
        from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE  # the limit Ray enforces

        return int(GCS_STORAGE_MAX_SIZE)
    except (ImportError, AttributeError, ValueError):
        return DEFAULT_PACKAGE_LIMIT


class StartError(Exception):
    """The job cannot be submitted; the message says why and what to do."""
