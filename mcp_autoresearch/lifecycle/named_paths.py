"""The paths an evaluation's command names beneath the entries a run may write that are never moved aside before
it (a `writable` folder outside the project, a `persistent` cache: `fresh_outputs.unmoved_entries`). What an
earlier run left there is still there, so what the command names there is snapshotted before the run
(`snapshot_named`) and checked after it as an output is (`unsafe_named`): no link, no FIFO, nothing just as it
was before the run."""

from __future__ import annotations

import os
import re
import shlex
import stat
from pathlib import Path

from ..measure.output_checks import Snapshot, snapshot, unsafe_output, walk_output


def named_outside(root: Path, entries: list[str], command: str) -> list[Path]:
    """The paths `command` (the evaluation's) names beneath `entries`, those a run may write that are never moved
    aside (`unmoved_entries`): what an earlier run left there is still there."""
    top = os.path.normpath(root)
    outside = [os.path.normpath(os.path.join(top, os.path.expanduser(entry))) for entry in entries]
    # Where they lead too (an entry that is a link: the command may name the place itself), each folder on a named
    # path resolved on its own, so that a link planted beneath one is still found beneath it.
    places = set(outside) | {os.path.realpath(path) for path in outside}
    try:
        words = shlex.split(command) if outside else []
    except ValueError:
        return []
    found = []
    for word in words:
        word = _REDIRECTION.sub("", word)  # `<file`, `2>file`: a redirection's path, written without a space
        named = os.path.normpath(os.path.join(top, os.path.expanduser(word.partition("=")[2] or word)))
        if _beneath(named, places) or any(
            _beneath(os.path.realpath(up), places) for up in _folders_of(named)
        ):
            found.append(Path(named))
    return found


def _beneath(path: str, places: set[str]) -> bool:
    return any(path == place or path.startswith(place + os.sep) for place in places)


def _folders_of(path: str) -> list[str]:
    """`path`'s folders, nearest first (not `path` itself: a link there is the named output's own, checked)."""
    folders = []
    parent = os.path.dirname(path)
    while parent and parent != path:
        folders.append(parent)
        path, parent = parent, os.path.dirname(parent)
    return folders


# A shell redirection's operator at a word's beginning (`<`, `0<`, `>`, `2>>`, `&>`, `<>`, `>|`, `<<<`).
_REDIRECTION = re.compile(r"^(?:\d*|&)(?:<<<|<>|<|>>|>\||>)")


def snapshot_named(root: Path, entries: list[str], command: str) -> Snapshot:
    """Before a run: what the paths `command` names outside the project hold (`named_outside`)."""
    return frozenset().union(*(snapshot(path) for path in named_outside(root, entries, command)))


def unsafe_named(root: Path, entries: list[str], command: str, before: Snapshot) -> str | None:
    """Why a path the evaluation's command names outside the project may not be handed to it: what
    `output_checks.unsafe_output` refuses in an output (a link, a FIFO, ...), or a file just as it was before
    the run (`before`, from `snapshot_named`): a run that wrote nothing there would be measured on an earlier
    run's output."""
    for named in named_outside(root, entries, command):
        if not os.path.lexists(named):
            continue  # the evaluation says it is missing
        problem = unsafe_output(named, 0.0, frozenset(), str(named))
        if problem:
            return problem
        found, _unreadable = walk_output(named)
        for relative, st in found:
            if not stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino, st.st_ctime_ns) in before:
                shown = named if relative == "." else named / relative
                return (
                    f"'{shown}' was not written by this run (it is as it was before the run started; an output "
                    "outside the project or in a persistent cache is not moved aside before a run, so it may be an "
                    "earlier run's)"
                )
    return None
