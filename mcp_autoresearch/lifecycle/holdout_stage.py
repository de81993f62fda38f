"""The holdout stage: after a keep is decided (never before: it cannot change a decision), `holdout_command` runs
as an evaluation stage on what the keep left in the project, and its value goes only into the server's own
records (`holdout.py`); no tool result carries it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from ..measure.holdout import record_holdout
from ..names import HOLDOUT
from ..records.state import server_dir
from ..sandbox.policy import Isolation
from ..setup.config import Config
from .experiment import Experiment
from .fresh_outputs import changed_since_measured, unmoved_entries

log = logging.getLogger("mcp_autoresearch")


def run_holdout(
    config: Config,
    root: Path,
    tag: str,
    isolation: Isolation | None,
    run_id: str,
    value: float | None,
    baseline: bool,
    watch: Callable[[Experiment], AbstractContextManager[Experiment]],
) -> None:
    """Measure the keep `run_id` (metric `value`) on the holdout and record it. Never raises: a failing holdout
    is recorded as such and changes nothing of the session. `watch`: while the holdout runs, a server leaving
    can cancel it (`Runs.side_stage`)."""
    if not config.holdout_command:
        return
    try:
        folder = server_dir(root, HOLDOUT, tag)
        experiment = Experiment(
            config, root, f"{run_id}-holdout", folder, tag, None, isolation, publish_run_log=False
        )
        # The checks (the target's code) ran after the evaluation: outputs changed since are not measured.
        writable, command = list(config.writable), config.holdout_command
        unmoved = unmoved_entries(root, writable, list(config.persistent))
        error = changed_since_measured(root, writable, run_id, unmoved, command)
        with watch(experiment):
            found, error = (
                (None, error)
                if error
                else experiment.evaluate_only(
                    config.holdout_command, folder / f"{run_id}.log", "holdout_command"
                )
            )
    except Exception as exc:  # the decision stands whatever happens here
        log.exception("the holdout of %s failed", run_id)
        found, error = None, f"{type(exc).__name__}: {exc}"
    record = {"run_id": run_id, "baseline": baseline, "metric": value, "holdout": found, "error": error}
    record_holdout(root, tag, record)
