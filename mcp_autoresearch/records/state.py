"""Session state on disk, written atomically, and the lock that keeps one server per project.

Everything the server must remember across a restart lives here: the branch, the best kept commit, the
read-only fingerprints, and the run that is in flight or waiting for its decision.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, Concatenate, Literal, ParamSpec, Protocol, TypeVar

import psutil
from pydantic import BaseModel, ValidationError, model_validator

from ..errors import SessionError
from ..measure.stats import Step
from ..names import SESSIONS, STATE_DIR, own_record, public_state
from ..phases import Phase
from ..statuses import Decision, RunStatus
from .atomic import Fingerprint, atomic_write, fingerprint, open_read, own_dir, read_regular, swap_write
from .journal import Seal


class Best(BaseModel):
    value: float
    commit: str
    run_id: str
    description: str
    nonblank_lines: int
    values: list[float] = []  # every run of the best: its own, then its re-measurements (value: their median)


class TestRecord(BaseModel):
    """The sequential test's last look at a candidate (`stats.Step`), as the decision will use it."""

    action: Literal["keep", "discard", "more"]
    estimate: float
    low: float
    high: float
    probability: float
    needed: float
    best_runs: int
    rule: str

    @classmethod
    def of(cls, step: Step) -> TestRecord:
        return cls(**asdict(step))

    def step(self) -> Step:
        return Step(**self.model_dump())


class RunOutcome(BaseModel):
    """How a run ended, as measured by the server (what commit_or_reset decides from)."""

    status: RunStatus = "crash"
    value: float | None = None
    values: list[float] = []  # every value when repeats > 1
    spread: float | None = None
    duration_s: float = 0.0
    memory_gb: float | None = None
    exit_code: int | None = None
    log_path: str = ""
    log_tail: str = ""
    error: str | None = None
    secondary: dict[str, float] = {}
    leftovers_killed: int = 0
    output_cut: str | None = None  # what the bounded logs left out of the output (None: nothing)
    best_values: list[float] = []  # runs of the best added while measuring this candidate (sequential rule)
    test: TestRecord | None = None  # the sequential test's last look (None under the greedy rule)
    remeasured: list[float] = []  # runs of the candidate after the rule kept it (not part of `values`)
    regression: str | None = None  # why those runs show it worse than when judged (None: they do not)
    best_regression: str | None = None  # why the best's runs added for this candidate show the best worse


class DecisionRecord(BaseModel):
    """A decision written down before it is applied, so a restart can finish applying it."""

    decision: Decision = "crash"
    reason: str = ""
    delta: float | None = None
    prev: float | None = None  # the value of the node it was judged against (its parent) before this run
    best: bool | None = (
        None  # a keep that makes the run the session's best (None: a record of 0.x, keep = best)
    )


class Pending(BaseModel):
    """A run between its start and its logged decision."""

    run_id: str
    description: str
    parent_commit: str  # the commit the candidate was built on (its parent node's commit)
    parent_run: str | None = None  # the run id of its parent node (None: the baseline, or a state of 0.x)
    commit: str | None = None  # the candidate commit that ran (None while being created)
    is_baseline: bool = False
    nonblank_lines: int = 0
    target_sha256: str = ""  # the target's content as committed (the index may lag behind until the decision)
    phase: Phase = "starting"
    started_at: str = ""
    result: RunOutcome | None = None  # version 0.1 wrote these two as plain objects of the same keys
    decision: DecisionRecord | None = None
    git_config: dict[str, str | None] = {}  # git's configuration and attribute files as the run found them
    refs_digest: str = ""  # every ref but the session's own, as the run found them
    rerun_of: str | None = None  # run_experiment(rerun=true) on content measured before, by that run
    measuring_best: bool = False  # the best's content is in the work tree for a re-measurement
    placement: Literal["tree", "slots"] = "tree"  # where it runs: the user's work tree, or slots (Ray's too)
    slot: int | None = None  # with slots: the slot it runs (ran) in
    parent_value: float | None = None  # with slots: the best's value when the candidate was built on it
    rebases: int = 0  # with slots: times its change was merged onto a newer best and run again
    built_on_best: bool = True  # its parent was the best when it was built (False: branch_from or combine)
    combined: list[str] = []  # a combine: the two runs whose targets it merges

    @model_validator(mode="before")
    @classmethod
    def _named_parent(cls, data: Any) -> Any:
        """Before the research tree, `parent` held the commit the candidate was built on."""
        if isinstance(data, dict) and "parent" in data and "parent_commit" not in data:
            data = dict(data)
            data["parent_commit"] = data.pop("parent")
        return data


class SessionState(BaseModel):
    tag: str
    branch: str
    base_commit: str
    started_from: str | None = (
        None  # the branch checked out when the session started (None: detached, or older)
    )
    created_at: str
    target_file: str
    metric_name: str
    metric_direction: str
    readonly_hashes: dict[str, str | None]
    rules: dict[str, Any] = {}  # the settings that define the measurement, fixed for the session's life
    run_counter: int = 0
    best: Best | None = None
    baseline_value: float | None = None  # the median of the baseline's runs (see standing.py)
    baseline_commit: str | None = None
    baseline_values: list[float] = []  # every run of the baseline, frozen when something else is kept
    # tracked files flagged skip-worktree/assume-unchanged when the session started
    hidden_paths: list[str] = []
    # Every run between its start and its logged decision, by start: at most one in the user's tree (without
    # slots), or those of the slots.
    inflight: list[Pending] = []
    keep_rule: str | None = None  # greedy | sequential, fixed once the baseline measured the noise
    noise_ss: float = (
        0.0  # the noise of groups of runs that can no longer grow (sum of squares about their means)
    )
    noise_df: int = 0  # ... and its degrees of freedom; the best's own runs are added when needed
    # The budgets in force (see budget.py): the configuration's, or lower ones from start_session's arguments
    # until the configured values (as last read: `budget_configured`) change.
    max_experiments: int | None = None
    max_hours: float | None = None
    budget_configured: dict[str, float | int | None] = {}
    # The node the work tree's target starts from when it is not the best (branch_from, combine, or a kept node
    # that did not become the best): the next candidate's parent. None: the best.
    next_parent: str | None = None
    next_parent_commit: str | None = None
    next_combined: list[str] = []  # combine(run_a, run_b) waits for its run: the next row's `combined`

    @model_validator(mode="before")
    @classmethod
    def _one_list(cls, data: Any) -> Any:
        """Before one list, the run in the user's tree was kept apart (`pending`) and slot runs did not say
        where they ran: a state written then reads into the one list."""
        if not isinstance(data, dict) or "pending" not in data:
            return data
        data = dict(data)
        tree = data.pop("pending")
        runs = [{"placement": "slots", **p} if isinstance(p, dict) else p for p in data.get("inflight") or []]
        if tree is not None:
            runs.insert(0, {**tree, "placement": "tree"} if isinstance(tree, dict) else tree)
        data["inflight"] = runs
        return data

    @model_validator(mode="after")
    def _parent_runs(self) -> SessionState:
        """A run recorded before runs named their parent node was built on the best: that is its parent."""
        best = self.best
        for run in self.inflight:
            if run.parent_run is None and best is not None and run.parent_commit == best.commit:
                run.parent_run = best.run_id
        return self

    @property
    def pending(self) -> Pending | None:
        """The run in the user's work tree (without slots), between its start and its logged decision."""
        return next((p for p in self.inflight if p.placement == "tree"), None)

    def drop(self, run_id: str) -> None:
        """The run's decision is logged (or it never started): it is no longer in the list."""
        self.inflight = [p for p in self.inflight if p.run_id != run_id]


def state_dir(root: Path) -> Path:
    return root / STATE_DIR


def server_dir(root: Path, *parts: str) -> Path:
    """`.autoresearch/<parts>`, created as needed, every component a real directory: a symlink a run planted
    there is replaced (the link only), so the server never writes outside the project through it."""
    return own_dir(root, STATE_DIR, *parts, replace_links=True)


def state_path(root: Path, tag: str) -> Path:
    """The session's state for people and tools to read; the server itself trusts only its own record."""
    return state_dir(root) / SESSIONS / public_state(tag)


def record_path(root: Path, tag: str) -> Path:
    return state_dir(root) / SESSIONS / own_record(tag)


class OwnRecord(BaseModel):
    """What the server last wrote, written before anything else: the state, and the JSONL it vouches for (its
    first `jsonl_size` bytes hash to `jsonl_sha256`). A restarted server trusts this, never the public copy
    (`<tag>.json`) nor a JSONL that disagrees with it, so a run that rewrites either and kills the server
    gains nothing. It is no secret: a run that is not confined can rewrite this file too (see README)."""

    state: SessionState
    jsonl_size: int = 0
    jsonl_sha256: str = ""
    jsonl_tail: str = ""  # the JSONL's last bytes of those sealed, written since its last fsync (UTF-8 lines)
    public_behind: str = ""  # the sha256 of the public copy when this save left it for the end of the step

    def seal(self) -> Seal:
        return Seal(self.jsonl_size, self.jsonl_sha256, self.jsonl_tail.encode("utf-8"))


def state_files_fingerprint(paths: tuple[Path, Path]) -> tuple[Fingerprint | None, ...]:
    """Size, times (ctime too: `os.utime` cannot reset it) and inode of the record and its public copy (their
    paths: `record_path`, `state_path`)."""
    return tuple(map(fingerprint, paths))


def save_state(root: Path, state: SessionState, seal: Seal | None = None, behind: str = "") -> str:
    """Write-then-rename: a reader (or a restart) sees the old state or the new one, never half of one. The
    server's own record first (with the JSONL's seal), then the public copy, unless `behind` (the sha256 of the
    public copy as it is) says the caller writes it later, once for all the saves of a step (`write_public`).
    The record is fsynced only when the seal asks (it covers a decision no fsynced record holds yet): a kill -9
    loses no write, fsynced or not; an OS crash may lose the saves since the last decision (README, "Crash
    safety"). Returns the sha256 of the public copy."""
    directory = server_dir(root, SESSIONS)
    seal = seal or Seal(0, "")
    record = OwnRecord(
        state=state,
        jsonl_size=seal.size,
        jsonl_sha256=seal.digest,
        jsonl_tail=seal.tail.decode("utf-8"),
        public_behind=behind,
    )
    data = record.model_dump_json().encode("utf-8")
    atomic_write(directory / own_record(state.tag), data, mode=0o644, sync=seal.sync)
    if seal.sync and seal.durable is not None:
        seal.durable(seal.size)
    return behind or write_public(root, state)


def write_public(root: Path, state: SessionState) -> str:
    """The public copy, for people and tools to read (not synced: the server's record is what a restart uses).
    Returns its sha256."""
    data = state.model_dump_json(indent=1).encode("utf-8")
    swap_write(server_dir(root, SESSIONS) / public_state(state.tag), data, 0o644, False)
    return hashlib.sha256(data).hexdigest()


class PublicCopy:
    """When the public copy of the state is written: at every save outside a tool call, and once at the end of
    a call for all of its saves (each of which writes the server's record, the one a restart trusts)."""

    def __init__(self) -> None:
        self._local = threading.local()  # per thread: a run's thread saves outside any call
        self.owed = False  # a save left the public copy behind
        self.written = ""  # the sha256 of the public copy as the server last wrote it ("": not known)

    def deferred(self) -> bool:
        return getattr(self._local, "depth", 0) > 0

    @contextmanager
    def one_call(self, flush: Callable[[], None]) -> Iterator[None]:
        depth = getattr(self._local, "depth", 0)
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth
            if depth == 0 and self.owed:
                flush()


class Steps(Protocol):
    public_copy: PublicCopy

    def write_public(self) -> None: ...


S = TypeVar("S", bound=Steps)
P = ParamSpec("P")
R = TypeVar("R")


def one_call(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """A step the agent calls: its saves write the public copy of the state once, at its end."""

    @functools.wraps(method)
    def step(self: S, *args: P.args, **kwargs: P.kwargs) -> R:
        with self.public_copy.one_call(self.write_public):
            return method(self, *args, **kwargs)

    return step


def load_record(root: Path, tag: str) -> tuple[OwnRecord | None, list[str]]:
    """The server's own record of a session (None when there is none), and what disagreed with it. A session
    of an earlier version has only the public copy: that is used, without a seal."""
    notes: list[str] = []
    public = _read_state(state_path(root, tag))
    try:
        data = read_regular(record_path(root, tag))
    except FileNotFoundError:
        return (OwnRecord(state=public) if public is not None else None), notes
    except OSError as exc:
        raise SessionError(f"{record_path(root, tag)} is not a regular file ({exc}); move it aside") from None
    try:
        record = OwnRecord.model_validate_json(data)
    except (ValidationError, ValueError) as exc:
        raise SessionError(
            f"the server's record {record_path(root, tag)} is unreadable ({str(exc).splitlines()[0]}); "
            "move it aside to start over"
        ) from None
    if public != record.state and not _left_behind(root, record):
        notes.append(
            f"{STATE_DIR}/{SESSIONS}/{public_state(tag)} was written outside the server: ignored, rewritten"
        )
    return record, notes


def _left_behind(root: Path, record: OwnRecord) -> bool:
    """The public copy is the one the server left for the end of a step (it stopped within that step)."""
    try:
        data = read_regular(state_path(root, record.state.tag))
    except OSError:
        return False
    return bool(record.public_behind) and hashlib.sha256(data).hexdigest() == record.public_behind


def _read_state(path: Path) -> SessionState | None:
    try:
        return SessionState.model_validate_json(read_regular(path))
    except FileNotFoundError:
        return None
    except (ValidationError, ValueError, OSError):
        return None


def load_state(root: Path, tag: str) -> SessionState | None:
    record, _notes = load_record(root, tag)
    return record.state if record is not None else None


def set_current_tag(root: Path, tag: str) -> None:
    """Remember the session opened last (for views when no session branch is checked out)."""
    if current_tag(root) != tag:
        atomic_write(state_dir(root) / "current", (tag + "\n").encode("utf-8"), mode=0o644)


def recorded_tags(root: Path) -> set[str]:
    """The tags of every session the server holds its own record of."""
    suffix = own_record("")
    try:
        names = os.listdir(state_dir(root) / SESSIONS)
    except OSError:
        return set()
    return {name[: -len(suffix)] for name in names if name.endswith(suffix) and len(name) > len(suffix)}


def current_tag(root: Path) -> str | None:
    """The session opened last; the current session is the checked-out one (`session.current_session`)."""
    try:
        tag = read_regular(state_dir(root) / "current").decode("utf-8", "replace").strip()
    except OSError:
        return None
    return tag or None


class ProjectLock:
    """An exclusive flock on .autoresearch/server.lock, held while the server lives. The kernel drops it when
    the holder dies, so a stale lock from a killed server is taken over without any cleanup."""

    def __init__(self, root: Path) -> None:
        self.path = state_dir(root) / "server.lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        server_dir(self.path.parent.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise SessionError(
                f"another autoresearch server holds this project ({holder}); use that server, or stop it first"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None


def server_pid(root: Path) -> int | None:
    """The pid of the server that holds (or last held) the project, as its lock file says; None when none did, or
    when that pid now names a process started after the lock was written (the server gone, its pid reused: the
    user's own browser could descend from it). Read without taking the lock (a reader must never keep a server
    from starting)."""
    lock = state_dir(root) / "server.lock"
    try:
        with open_read(lock) as handle:
            pid = json.loads(handle.read(4096) or b"{}").get("pid")
            written = os.fstat(handle.fileno()).st_mtime
        if not (isinstance(pid, int) and pid > 0) or psutil.Process(pid).create_time() > written + 1.0:
            return None
    except (OSError, ValueError, AttributeError, psutil.Error):
        return None
    return pid


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info.get('pid')} on {info.get('host')}, since {info.get('since')}"
    except (ValueError, OSError):
        return "pid unknown"
