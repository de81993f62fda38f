"""How each stage of an experiment is confined: what it may write, which caches are its own, and its view
(what stays shown, what is hidden). Stages: "run" (the run and its checks), "eval" (the evaluation stage) and
"parse" (`metric_parse`, which reads a log)."""

from __future__ import annotations

import os
from pathlib import Path

from ..names import HOLDOUT, OUTPUTS_DIR, RUN_LOGS, SESSIONS, STATE_DIR
from ..sandbox import run_tmpdirs
from ..sandbox.caches import run_caches, stage_caches
from ..sandbox.launcher import Asked, launcher
from ..sandbox.policy import Isolation, keeper_command, keeper_spec, linked_inputs, writable_paths
from ..sandbox.process_run import DEFAULT_GRACE_S
from ..setup.config import Config
from ..setup.stage_config import hidden_paths, hidden_repositories, session_records
from .evaluation import eval_writable, evaluation_logs


class StageConfinement:
    """The confinement of one experiment's stages (`log_dir`: its runs' logs, `.autoresearch/runs/<tag>`)."""

    def __init__(
        self,
        config: Config,
        root: Path,
        log_dir: Path,
        isolation: Isolation | None,
        slot: tuple[Path, Path] | None = None,
    ) -> None:
        self.config = config
        self.root = root
        self.log_dir = log_dir
        self.isolation = isolation
        self.slot = slot  # in a slot: (the session's slots folder, this slot's checkout)

    def writable(self, tmpdir: str, stage: str = "run") -> list[str]:
        """A run's (and the checks') writable paths; the evaluation stage's: its TMPDIR and devices only."""
        assert self.isolation is not None
        held = self.isolation.confined or self.isolation.namespaces
        if not held:
            return []
        return (
            eval_writable(tmpdir)
            if stage == "eval"
            else writable_paths(self.root, self.config.run_writes, tmpdir)
        )

    def private_caches(self, tmpdir: str, env: dict[str, str]) -> dict[str, str]:
        """Every tool cache the user did not list in `writable` or `persistent`: the run's own, empty."""
        return run_caches(self.root, self.config.run_writes, tmpdir, env)

    def eval_env(self, tmpdir: str, env: dict[str, str]) -> dict[str, str]:
        """The evaluation's caches in its TMPDIR, `persistent` ones too, and Python's bytecode: nothing a run
        could write in a cache or a `__pycache__` is read by the evaluation."""
        caches = stage_caches(self.root, self.config.run_writes, tmpdir, env)
        return {**caches, "PYTHONPYCACHEPREFIX": os.path.join(tmpdir, "pycache")}

    def view(self, stage: str, shown: Path | None = None) -> tuple[list[str], list[str]]:
        """What the view keeps showing (the logs, a slot's shared inputs) and what it hides: the `hidden` data,
        and what a scorer printed about it (the evaluations' logs, the holdout's records), from every stage but
        the evaluation's; the target, from the evaluation's. `stage`: "run" (the run, its checks), "eval", or
        "parse" (metric_parse, which reads a log: the runs folder is shown, the other evaluations' logs hidden;
        `shown`: the evaluation's log it reads, when it reads one)."""
        inputs = linked_inputs(self.root, list(self.config.shared_inputs))
        reads = [str(self.log_dir), *inputs]
        if stage == "eval":  # (hidden data beneath a hidden directory such as /tmp is shown again, read-only)
            # The target is hidden from the evaluation: a scorer that imports it would run the candidate's code.
            target = [str(self.root / self.config.target_file)] if self.config.target_file else []
            return reads + hidden_paths(self.config), [
                *target,
                *run_tmpdirs.hidden_parent(self.root, self.project()),
            ]
        own = self.log_dir.parent.parent  # .autoresearch/runs/<tag>: the holdout's records are beside
        # The holdout's records (an earlier session's too, measured when this one has no holdout), from every
        # run; not from the stages of the holdout itself (its metric_parse).
        not_holdout = not self.log_dir.is_relative_to(own / HOLDOUT)
        measured = self.config.holdout_command or (own / HOLDOUT).is_dir()
        holdout = [str(own / HOLDOUT)] if measured and own.name == STATE_DIR and not_holdout else []
        sessions = own.name == STATE_DIR and self.log_dir.parent.name == RUN_LOGS  # .autoresearch/runs/<tag>
        logs: list[str] = []
        if self.config.hidden and stage == "parse":
            logs = evaluation_logs(self.log_dir, shown, sessions)
        elif (
            self.config.hidden or stage == "run"
        ):  # the run and its checks read no log: every session's, whole
            # One mount, whatever the session's length; and an evaluation's log written in another slot while
            # this run is in flight appears beneath it, hidden too. Without `hidden` as well: a run that found the
            # log of its own judged run would know it is being re-measured after a keep.
            logs = [str(self.log_dir.parent if sessions else self.log_dir)]
            reads = inputs  # the logs are not shown again
        # What earlier runs left in the outputs, moved aside (`fresh_outputs`): a candidate that computes nothing
        # would hand the evaluation the best's answer from there, and be kept as equal and simpler. And the
        # sessions' states and records: the best's runs and the noise, with which a run could work out when the
        # rule keeps it (the server's own code is readable), so which of its runs are the re-measurement.
        aside = [str(self.root / STATE_DIR / OUTPUTS_DIR)] if stage == "run" else []
        if stage == "run" and sessions:
            aside.append(str(own / SESSIONS))
        if self.slot is not None and stage == "run":  # the other slots' outputs (the best's, say): hidden
            aside.append(str(self.slot[0]))
            if own.name == STATE_DIR:  # the project's own too: earlier sessions' runs left theirs there
                aside.append(str(own / OUTPUTS_DIR))
            reads = [str(self.slot[1]), *reads]  # this slot's checkout, shown again
        return reads, [
            *hidden_paths(self.config),
            *hidden_repositories(self.config, [self.root, self.log_dir]),
            *holdout,
            *logs,
            *aside,
            *run_tmpdirs.hidden_parent(self.root, self.project()),
        ]

    def project(self) -> Path:
        """The session's project (in a slot, `root` is the slot's checkout): the folder above the `.autoresearch`
        its logs are in."""
        return next((folder.parent for folder in self.log_dir.parents if folder.name == STATE_DIR), self.root)

    def records(self, stage: str) -> list[str]:
        """The server's records a run sees empty and cannot write (`session_records`), in the "run" stage."""
        return [str(self.root / path) for path in session_records(self.config)] if stage == "run" else []

    def wrap(self, argv: list[str], tmpdir: str, stage: str = "run", shown: Path | None = None) -> list[str]:
        assert self.isolation is not None
        reads, hide = self.view(stage, shown)
        return keeper_command(
            self.isolation,
            self.writable(tmpdir, stage),
            argv,
            DEFAULT_GRACE_S,
            reads,
            hide,
            self.records(stage),
        )

    def launch(
        self,
        argv: list[str],
        cwd: Path,
        env: dict[str, str],
        out_fd: int,
        tmpdir: str,
        err_fd: int | None = None,
        gate_fd: int | None = None,
        stage: str = "run",
        shown: Path | None = None,
    ) -> Asked:
        """The launcher asked to start `argv` under a keeper confined for `stage` (its answer read later)."""
        assert self.isolation is not None
        reads, hide = self.view(stage, shown)
        records = self.records(stage)
        spec = keeper_spec(
            self.isolation, self.writable(tmpdir, stage), DEFAULT_GRACE_S, reads, hide, records
        )
        return launcher().ask(argv, cwd, env, out_fd, spec, err_fd, gate_fd)
