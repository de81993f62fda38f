"""A run about to start, whatever its placement: every rule before a run (a description, the budgets, the target
still a regular file and the only file changed, the baseline first and unmodified), no twin in flight, no content
measured before unless asked again; then its id and its record."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..errors import RuleViolation
from ..measure.keep_rule import nonblank_lines
from ..records.atomic import read_regular
from ..records.budget import refuse_past_budget
from ..records.rows import Row, one_line
from ..records.state import Pending
from ..session.context import SessionCore
from ..session.editing import Editor
from ..setup.single_file import sha256_bytes

MAX_DESCRIPTION = 500  # characters of an experiment's description


@dataclass(frozen=True)
class Candidate:
    """The target's content about to run, once every rule before a run holds."""

    description: str
    data: bytes
    is_baseline: bool
    earlier: Row | None  # the logged run that measured this content before


def described(description: str) -> str:
    """The description a run is logged with (one line, bounded); refused when empty."""
    description = one_line(description or "", MAX_DESCRIPTION)
    if not description:
        raise RuleViolation("description is empty; say in a few words what this experiment changes")
    return description


def candidate(
    core: SessionCore, editor: Editor, description: str, parent: str, in_flight: int = 0
) -> Candidate:
    """Every rule a run must meet before it starts, single or in a slot: a description; the session's budgets
    (`refuse_past_budget`: the runs in flight count too); the target still a regular file; read-only files unchanged; no other tracked file
    changed; the first run the unmodified baseline, every later one a change of the target against `parent`."""
    description = described(description)
    core.check_head()
    refuse_past_budget(core.state, len(core.journal), in_flight)
    target = editor.target_path(must_exist=True)
    core.check_readonly()
    changed = [core.repo.project_path(p) for p in core.repo.changed_tracked_files()]
    others = [p for p in changed if p != core.target_rel]
    if others:
        raise RuleViolation(
            "files other than the target differ from the best kept commit: "
            + ", ".join(others[:20])
            + f". Only {core.target_rel} may change, and no tool of this server writes other files: "
            + "a person must restore them (git checkout -- "
            + " ".join(others[:20])
            + ")"
        )
    data = read_regular(target)  # a FIFO or a symlink swapped in since cannot block the lock nor be followed
    if core.plain_target:
        # Compared with the parent's content, not the index: after a decision the index may still lag.
        target_changed = data != core.repo.show_file(parent, core.target_repo_path)
    else:  # git converts this file on its way in: only git can say whether it changed
        target_changed = core.target_rel in changed
    is_baseline = core.state.best is None
    if is_baseline and target_changed:
        raise RuleViolation(
            f"the first run of a session must be the unmodified baseline, but {core.target_rel} was "
            "edited; undo the edit with apply_edit (the baseline is the file as committed), run the "
            "baseline, then experiment"
        )
    if not is_baseline and not target_changed:
        raise RuleViolation(
            f"{core.target_rel} is unchanged since the best kept commit; edit it (apply_edit) first"
        )
    earlier = core.journal.measured(sha256_bytes(data)) if not is_baseline else None
    return Candidate(description, data, is_baseline, earlier)


def new_run(
    core: SessionCore, editor: Editor, description: str, parent: str, rerun: bool, in_flight: int = 0
) -> tuple[Pending, bytes] | AlreadyMeasured:
    """A run about to start, whatever its placement: every rule before a run (`candidate`), no twin of a run
    in flight, no content measured before unless `rerun`; then its id and its record (not yet in the state).
    Returns the record and the candidate's content, or the earlier run that measured this content."""
    found = candidate(core, editor, description, parent, in_flight)
    content_sha = sha256_bytes(found.data)
    twin = next(
        (p for p in core.state.inflight if p.target_sha256 == content_sha and not p.is_baseline), None
    )
    if twin is not None and not found.is_baseline:
        raise RuleViolation(
            f"this content is already in flight as {twin.run_id}; edit the target to try another idea"
        )
    if found.earlier is not None and not rerun:
        return AlreadyMeasured(found.earlier.run_id)
    core.state.run_counter += 1
    pending = Pending(
        run_id=f"r{core.state.run_counter}",
        description=found.description,
        parent_commit=parent,
        parent_run=parent_node(core, parent),
        is_baseline=found.is_baseline,
        nonblank_lines=nonblank_lines(found.data.decode("utf-8", errors="replace")),
        target_sha256=content_sha,
        started_at=datetime.now().isoformat(timespec="seconds"),
        rerun_of=found.earlier.run_id if found.earlier is not None else None,
    )
    return pending, found.data


def parent_node(core: SessionCore, commit: str) -> str | None:
    """The run id of the node a candidate built on `commit` starts from: the best, as the greedy loop has it
    (None: the baseline)."""
    best = core.state.best
    return best.run_id if best is not None and best.commit == commit else None


@dataclass(frozen=True)
class AlreadyMeasured:
    """run_experiment on content measured before in this session: nothing ran; the earlier run answers."""

    run_id: str
