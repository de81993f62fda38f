"""Where the deciding number comes from, in one definition every surface shows: an evaluation stage, the
server's own measurement, or the process tree that ran the target ("self-reported").

A self-reported number is one the target's code could print or fake (one `print`, a patched evaluator); the
label says so, with the one change that removes the doubt. This module only classifies settings: it reads no
file and runs nothing, so readers (briefing, dashboard, web page) call it on a session's frozen rules.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..names import RUN_LOG, RUN_LOGS, STATE_DIR
from ..setup.config import Config

MetricSource = Literal["evaluation", "server", "self-reported"]
# In a session's rules: True when its runs were confined by nothing (neither Landlock nor the private view) on a
# machine that ran them, though `isolation` was not "off" (the default "auto" where the machine has neither).
UNCONFINED = "runs_unconfined"

# Where the README explains the two ways out of self-reporting.
EVAL_DOCS = "README, 'Where the number comes from'"
ML_RECIPE = "README, 'The ML recipe'"
# A pipe into a scorer, `objective | scorer`: each side one plain command (no other shell operators).
_PIPE = re.compile(r"^(?P<run>[^|;&<>`$()]+?)\s*\|\s*(?P<score>[^|;&<>`$()]+)$")


class MetricProvenance(BaseModel):
    """Where the metric's value comes from, why that matters, and how to make it trustworthy."""

    source: MetricSource = Field(
        description="evaluation (eval_command's output, a process the target never ran in), server (measured "
        "by the server: a size or the wall time), or self-reported (read from what the run itself printed)."
    )
    reason: str = Field(description="Why, in one line.")
    fix: str | None = Field(
        None, description="For a self-reported metric: the change that removes the doubt."
    )

    def line(self) -> str:
        """One line for people: the label, the reason, and the fix when there is one."""
        return f"{self.source}: {self.reason}" + (f". Fix: {self.fix}" if self.fix else "")


def metric_provenance(settings: Config | Mapping[str, Any], unconfined: bool = False) -> MetricProvenance:
    """Classify a configuration, or a session's frozen rules (a mapping of the same keys; missing keys are
    unset). The order mirrors how a value is read: the evaluation's output wins, then a measurement the
    server makes itself (only when nothing reads the value from output instead), else the run's output.
    `unconfined`: this machine confines runs by nothing (`Isolation.unconfined`; a session's rules say it with
    UNCONFINED), which for the evaluation stage is `isolation = "off"`."""
    get = settings.get if isinstance(settings, Mapping) else lambda key: getattr(settings, key, None)
    unconfined = unconfined or bool(get(UNCONFINED))
    passed_on = _reads_run_log(str(get("eval_command") or ""))
    if passed_on:
        return MetricProvenance(
            source="self-reported",
            reason=f"eval_command reads {passed_on}, the run's own output: the target's code printed what it "
            "passes on and can print any value",
            fix="let eval_command compute the metric from what the run wrote to its outputs, never from the "
            f"run's log ({EVAL_DOCS})",
        )
    if get("eval_command") and (get("isolation") == "off" or unconfined):
        off = get("isolation") == "off"
        return MetricProvenance(
            source="self-reported",
            reason=(
                'with isolation = "off"'
                if off
                else "with runs confined by nothing here (no Landlock, no namespaces)"
            )
            + " a run may write anywhere the user may, and so leave code the evaluation runs (a usercustomize.py or "
            ".pth in the user's site-packages, a program on PATH): the evaluation is separate in time only",
            fix='remove isolation = "off", so that runs are confined and the evaluation runs no code of theirs'
            if off
            else "run the server on Linux with Landlock or user namespaces (detect's isolation line says what is "
            "missing), so that runs are confined and the evaluation runs no code of theirs",
        )
    if get("eval_command") and get("metric_parse"):
        return MetricProvenance(
            source="self-reported",
            reason="metric_parse is a command of its own that may read what the run left (its outputs, its log), "
            "not only the evaluation's output, so the run could choose the value it passes on",
            fix="remove metric_parse and let eval_command print '<metric_name>: <value>' (or set metric_regex), "
            f"so the value is read from the evaluation's output alone ({EVAL_DOCS})",
        )
    if get("eval_command"):
        return MetricProvenance(
            source="evaluation",
            reason="read from the output of eval_command, which runs after every process of the run is gone, "
            "in a process the target's code never ran in",
        )
    measure = get("metric_measure")
    if measure and not get("metric_parse") and not get("metric_regex"):
        what = (
            "the wall time of the run"
            if measure == "wall_time_s"
            else f"the size of {_measured_path(measure)}"
        )
        return MetricProvenance(
            source="server",
            reason=f"{what}, measured by the server itself; whether the run did its work is its own exit status "
            "(a change that stops it early with status 0 measures as a gain)",
        )
    return MetricProvenance(
        source="self-reported", reason=_self_reported_reason(get), fix=self_reported_fix(get)
    )


def _reads_run_log(command: str) -> str | None:
    """What of the run's own output an evaluation command names (run.log at the root, $AUTORESEARCH_RUN_LOG, the
    captured logs under .autoresearch/runs), else None. Only what the command line says: a scorer script that
    opens the run's log itself is not seen here."""
    names = (
        ("AUTORESEARCH_RUN_LOG", "$AUTORESEARCH_RUN_LOG"),
        (RUN_LOG, RUN_LOG),
        (f"{STATE_DIR}/{RUN_LOGS}", "the run's log"),
    )
    for word, what in names:
        if word in command:
            return what
    return None


def _measured_path(measure: str) -> str:
    return measure.partition(":")[2].split(" !")[0].strip() or "the output"


def _self_reported_reason(get: Any) -> str:
    if get("metric_parse"):
        return "read by metric_parse from what the run left behind: the target's code wrote it and can write any value"
    return (
        "read from the run's own output: the target's code ran in that process tree and can print any value"
    )


def self_reported_fix(get: Any) -> str:
    """The one-line way out: the ML recipe for karpathy's layout, a split pipe where the run command pipes into
    a scorer, else the general move of the scorer into eval_command."""
    target = str(get("target_file") or "")
    if target.rsplit("/", 1)[-1] == "train.py" or get("metric_name") == "val_bpb":
        return (
            "export the trained model as data from train.py and set eval_command to the bundled evaluator, so "
            f"val_bpb comes from a process the candidate never ran in ({ML_RECIPE})"
        )
    split = split_pipe(str(get("run_command") or ""), get("writable") or [])
    if split is not None:
        return split
    return (
        "let run_command write its result to a writable file and set eval_command to the scorer that reads it "
        "and prints the metric, so the number comes from a process the candidate never ran in "
        f"({EVAL_DOCS})"
    )


def split_pipe(run_command: str, writable: list[str]) -> str | None:
    """`objective | scorer`: the scorer shares the run's process tree. The same two commands as a run that
    writes its output to a file and an evaluation that reads it there (the scorer still reads standard
    input). None for any other command: nothing is proposed that might not work."""
    match = _PIPE.match(run_command.strip())
    if match is None:
        return None
    run, score = match["run"].strip(), match["score"].strip()
    try:
        if not shlex.split(run) or not shlex.split(score):
            return None
    except ValueError:
        return None
    folder = next((w.strip("/") for w in writable if not w.startswith(("/", "~")) and "." not in w), None)
    output = f"{folder or 'out'}/run-output.txt"
    writable_note = "" if folder else ', writable = ["out"]'
    run = run if folder else f"mkdir -p out && {run}"
    return (
        f'the scorer shares the run\'s process tree; split the pipe: run_command = "{run} > {output}"'
        f'{writable_note}, eval_command = "{score} < {output}" ({EVAL_DOCS})'
    )
