"""The evaluation stage's configuration: what `eval_command`, `holdout_command` and `hidden` may be, checked when
the configuration is loaded (`check_stage_config`) and when a session opens (`refuse_unhidable`), and the hidden
paths every stage but the evaluation's has covered in its view."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigError, SessionError
from ..names import RESULTS_TSV, RUN_LOG
from ..sandbox.policy import Isolation
from .config import Config


def _expand(root: Path, entry: str) -> Path:
    path = Path(os.path.expanduser(entry))
    return Path(os.path.normpath(path if path.is_absolute() else root / path))


def _overlaps(one: Path, other: Path) -> bool:
    return one == other or one in other.parents or other in one.parents


def check_stage_config(root: Path, config: Config) -> Config:
    """Refuse what would break the stage's promises; returns the config with `hidden` as absolute paths (each
    slot's checkout then hides the same, the project's, files)."""
    if config.eval_command and config.metric_measure:
        raise ConfigError(
            "eval_command and metric_measure both say where the metric comes from: with an evaluation stage the "
            "value is what eval_command prints; remove one of them"
        )
    if config.eval_command and config.metric_parse and RUN_LOG in config.metric_parse:
        raise ConfigError(
            "metric_parse reads run.log, the run's own output, but with eval_command the metric comes from the "
            "evaluation's output: read \"$AUTORESEARCH_LOG\" (the evaluation's log) instead"
        )
    if (config.eval_command or config.holdout_command or config.hidden) and config.backend == "ray":
        raise ConfigError(
            'eval_command, holdout_command and hidden are not supported with backend = "ray" yet (the stage '
            'would have to run on the worker that holds the run\'s outputs); use backend = "local"'
        )
    if config.holdout_command and config.parallel:
        raise ConfigError(
            "holdout_command is not supported with slots yet (the kept run's outputs stay in its slot); set slots = 1"
        )
    if config.holdout_command and not config.eval_command:
        raise ConfigError("holdout_command needs eval_command (the holdout is measured like the evaluation)")
    if config.hidden and not (config.eval_command or config.holdout_command):
        raise ConfigError(
            "hidden paths are readable only by eval_command or holdout_command: set eval_command"
        )
    root = root.resolve()
    for what in ("eval_command", "holdout_command"):
        _refuse_writable_program(root, config, what)
    guarded = {root: "the project itself"}
    if config.target_file:
        guarded[root / config.target_file] = f"the target {config.target_file}"
    hidden: list[str] = []
    for entry in config.hidden:
        path = _expand(root, entry)
        real = Path(os.path.realpath(path))
        for candidate in {path, real}:
            for guarded_path, what in guarded.items():
                if candidate == guarded_path or candidate in guarded_path.parents:
                    raise ConfigError(
                        f"hidden entry '{entry}' would hide {what} from the run; list only data files"
                    )
            for writable in config.run_writes:  # a `persistent` cache as well: a run writes it too
                written = _expand(root, writable)  # and where it leads, for an entry that is a link
                if any(_overlaps(candidate, place) for place in {written, Path(os.path.realpath(written))}):
                    kind = "writable" if writable in config.writable else "persistent"
                    raise ConfigError(
                        f"hidden entry '{entry}' overlaps the {kind} entry '{writable}': a run could write (and so "
                        "know or replace) what only the evaluation may read; keep hidden data out of the paths "
                        "runs may write (writable, persistent)"
                    )
        hidden.append(str(path))
    return config.model_copy(update={"hidden": hidden}) if hidden != list(config.hidden) else config


INTERPRETERS = {"python", "python3", "node", "bash", "sh", "perl", "ruby", "Rscript", "uv", "julia"}
# Programs that run the command after them (`timeout 60 python3 x.py`); their own flags and numbers are skipped.
WRAPPERS = {"env", "timeout", "nice", "nohup", "exec", "command", "time", "stdbuf", "ionice", "taskset"}
SCRIPT_SUFFIXES = (
    ".py",
    ".pyc",
    ".pyz",
    ".sh",
    ".bash",
    ".js",
    ".mjs",
    ".cjs",
    ".ts",
    ".rb",
    ".pl",
    ".r",
    ".jl",
)
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=(.*)$")
_SEPARATORS = {";", "&&", "||", "|", "&"}


def _refuse_writable_program(root: Path, config: Config, key: str) -> None:
    """The stage must not run code a run can write: its programs (after wrappers such as `timeout` or `env`, and
    inside `sh -c '...'`), the script an interpreter is given (after its flags), any word that names a script,
    and the folders of variables set on the command line (PYTHONPATH=out) may not lie beneath a path a run may
    write, a `writable` or a `persistent` one (a run would plant its own scorer there)."""
    command = getattr(config, key)
    if not command:
        return
    target = Path(os.path.realpath(root / config.target_file)) if config.target_file else None
    for word in _code_words(command):
        if "/" not in word and not (root / word).exists():
            continue  # a program found on PATH, a module name
        path = Path(os.path.realpath(_expand(root, word)))
        if path == target:
            raise ConfigError(
                f"{key} runs the target {config.target_file}: the candidate's code would compute its own number; "
                "let the target write its result to a writable file and the evaluation read it there"
            )
        for entry in config.run_writes:
            if _overlaps(path, Path(os.path.realpath(_expand(root, entry)))):
                kind = "writable" if entry in config.writable else "persistent"
                raise ConfigError(
                    f"{key} runs '{word}', which lies in the {kind} path '{entry}': a run could replace it with "
                    "its own scorer; keep the evaluation's code in read-only files (readonly_files)"
                )


def _code_words(command: str) -> list[str]:
    """The words of a command that name code to run or a place code is loaded from (see the caller)."""
    try:
        words = [
            part for word in shlex.split(command) for part in (shlex.split(word) if " " in word else [word])
        ]
    except ValueError:
        return []
    found: list[str] = []
    program, script, folder, cd = True, False, "", False
    for word in words:
        assigned = _ASSIGNMENT.match(word)
        if word in _SEPARATORS:
            program, script, cd = True, False, False
        elif cd:  # `cd out && python3 scorer.py`: later relative words are beneath `out`
            folder, cd = os.path.join(folder, word), False
        elif assigned and program:
            found += [os.path.join(folder, part) for part in assigned.group(1).split(os.pathsep) if part]
        elif program:
            if word in WRAPPERS or word.startswith("-") or word[:1].isdigit():
                continue
            found.append(os.path.join(folder, word) if "/" in word else word)  # else found on PATH
            program, script, cd = False, Path(word).name.rstrip("0123456789.") in INTERPRETERS, word == "cd"
        elif script and not word.startswith("-"):
            found.append(os.path.join(folder, word))
            script = False
        elif word.lower().endswith(SCRIPT_SUFFIXES):
            found.append(os.path.join(folder, word))
    return found


def session_records(config: Config) -> list[str]:
    """The server's records of the session, relative to the project: the JSONL and results.tsv hold every run's
    values, the best's too, from which a run could work out which of its runs is the re-measurement. A run
    sees them empty (the view), and they are never shipped to a Ray worker."""
    return [config.jsonl_path, RESULTS_TSV]


def hidden_paths(config: Config) -> list[str]:
    """The paths a run's view covers: each `hidden` entry and, where it is a link, the place it leads to."""
    found: list[str] = []
    for entry in config.hidden:
        for path in (entry, os.path.realpath(entry)):
            if path not in found:
                found.append(path)
    return found


def refuse_unhidable(
    root: Path,
    config: Config,
    isolation: Isolation,
    is_tracked: Callable[[str], bool],
    commit_holding: Callable[[str], str | None],
) -> None:
    """Refuse a session whose `hidden` paths a run could still read: without the private view (nothing covers
    them), tracked by git, or held by any commit (a slot's checkout or a restore could bring it back where the
    view does not cover it). `is_tracked` and `commit_holding` take a project-relative path. Git's objects
    themselves, where any version of the data may still be, are covered in every run's view
    (`hidden_repositories`)."""
    if not config.hidden:
        return
    if not isolation.namespaces:
        raise SessionError(
            f"hidden paths are hidden from runs by their private view, which runs do not get here "
            f"({isolation.view_reason}); run the server where user namespaces are allowed, or remove `hidden`"
        )
    root = root.resolve()
    for entry in config.hidden:
        path = Path(entry)
        if root not in path.parents:
            continue
        rel = path.relative_to(root).as_posix()
        if is_tracked(rel):
            raise SessionError(
                f"hidden entry '{rel}' is tracked by git, so a run could read it from the repository's objects; "
                f"a person must untrack it first (git rm -r --cached {rel}, add it to .gitignore, and commit), "
                f"and, if it must stay secret, remove it from the history too (git filter-repo, then {PRUNE})"
            )
        commit = commit_holding(rel)
        if commit:
            raise SessionError(
                f"hidden entry '{rel}' is in the repository's history (commit {commit} holds it), so a run could "
                "read it from .git's objects (git log -p); a person must remove it from every commit and reflog "
                f"(git filter-repo, then {PRUNE}), or use data that was never committed"
            )


PRUNE = "git reflog expire --expire=now --all && git gc --prune=now"


def hidden_repositories(config: Config, starts: list[Path]) -> list[str]:
    """With `hidden` data, the git folders a run's view covers too: a repository's objects may hold any version of
    the data (committed once, under another name, before a filter, unreachable and not pruned), whatever a check
    of its history says. The repository of each hidden entry, of each of `starts` (the project, its runs' logs:
    a hidden entry outside the project may be in the project's history), each worktree's common folder, and the
    object stores it borrows from (`objects/info/alternates`). A run then sees no repository there (git fails
    in it); the evaluation reads the data and is not covered."""
    if not config.hidden:
        return []
    found: list[str] = []
    for start in [*map(Path, config.hidden), *starts]:
        git_dir = _enclosing_git_dir(start)
        if git_dir is None:
            continue
        for folder in (git_dir, *_linked_stores(git_dir)):
            if folder not in found:
                found.append(folder)
    return found


def _enclosing_git_dir(start: Path) -> str | None:
    """The git folder of the nearest repository holding `start` (a `.git` folder, or the one a `.git` file names),
    without a git process: this runs for every run."""
    for folder in (start, *start.parents):
        marker = folder / ".git"
        try:
            if marker.is_dir():
                return os.path.realpath(marker)
            if marker.is_file():
                text = marker.read_text(encoding="utf-8", errors="replace").strip()
                if text.startswith("gitdir:"):
                    named = Path(text.removeprefix("gitdir:").strip())
                    return os.path.realpath(named if named.is_absolute() else folder / named)
        except OSError:
            continue
    return None


def _linked_stores(git_dir: str) -> list[str]:
    """A worktree's (or submodule's) common folder, and the object stores the repository borrows from."""
    found: list[str] = []
    try:
        common = Path(git_dir, "commondir").read_text(encoding="utf-8").strip()
        found.append(os.path.realpath(Path(git_dir, common)))
    except OSError:
        pass
    for folder in [git_dir, *found]:
        try:
            lines = Path(folder, "objects", "info", "alternates").read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                path = Path(line) if Path(line).is_absolute() else Path(folder, "objects", line)
                found.append(os.path.realpath(path))
    return found
