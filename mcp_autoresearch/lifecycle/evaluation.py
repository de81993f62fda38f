"""The evaluation stage's policy: what `eval_command` (and `holdout_command`) may write and read, which paths are
hidden from runs, and the configuration refusals that keep those promises.

The stage runs after every process of `run_command` is gone (the keeper ended the run's whole tree: the command
returned, then whatever it left was killed), in a process tree of its own, confined like a run but with nothing
writable except its private TMPDIR (and the device files /dev/null, /dev/zero, ... and a GPU's); the project and
the run's outputs are read-only to it. Only its output supplies the metric. `hidden` paths are covered in a run's
private view (a directory by an empty tmpfs, a file by /dev/null bound over it), so a run, the checks command and
metric_parse cannot read them; the evaluation stage's view shows them. Hiding needs the private view
(namespaces): a session with `hidden` and no view is refused.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from ..records.logtail import clean_text, read_tail_bytes
from ..sandbox.write_grants import granted_paths

EVAL_SUFFIX = "-eval"
# An evaluator's own verdict on a candidate it refuses (the bundled ML evaluator prints it as its last line, then
# exits with status 3): `metric_error: <reason>: <summary>`, one printable line.
EVALUATOR_REFUSED = 3
VERDICT = re.compile(rb"^metric_error: ([a-z][a-z-]{0,40}): ([ -~]{1,300})$", re.MULTILINE)
HOLDOUT_SUFFIX = "-holdout"


def eval_writable(tmpdir: str) -> list[str]:
    """What the evaluation stage may write: its private TMPDIR and device files, nothing else (in the private
    view its /tmp, /var/tmp and /dev/shm are fresh and its own too)."""
    return granted_paths("/", [], tmpdir, device_dirs=[])


def evaluation_logs(log_dir: Path, shown: Path | None = None, every_session: bool = False) -> list[str]:
    """Every log made of an evaluation in `log_dir` but the one metric_parse reads (`shown`, an evaluation's
    log, with what was made of it): its output (`-eval.log`), its stderr (`-eval.stderr.log`), the end kept of a
    cut one (`-eval.kept.log`), what metric_parse printed of it (`-eval-metric.out`); with `every_session`, the
    folders beside it too (the other sessions' runs, whole). What a scorer printed there may come from hidden
    data, so a run's view hides them: the earlier runs', this run's own too (with `repeats`, the first run's
    evaluation is over while the second runs), and every other session's of the project."""
    others: list[str] = []
    if every_session:
        try:
            others = sorted(str(p) for p in log_dir.parent.iterdir() if p != log_dir and _real_dir(p))
        except OSError:
            pass
    try:
        names = os.listdir(log_dir)
    except OSError:
        return others
    own = shown.name.removesuffix(".log") if shown is not None else None
    return others + [
        str(log_dir / name)
        for name in sorted(names)
        if (EVAL_SUFFIX + "." in name or EVAL_SUFFIX + "-" in name)
        and not (own and (name.startswith(own + ".") or name.startswith(own + "-")))
    ]


def _real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return False


def stderr_said(log_path: Path) -> str | None:
    """The last line the stage printed on its stderr (`<log>.stderr.log`, beside its output's log `log_path`):
    where a scorer says why it failed (a Python traceback's last line), which its output's log does not hold."""
    text = clean_text(read_tail_bytes(log_path.with_suffix(".stderr.log"), 4096))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else None


def stage_failure(
    what: str, status: str, exit_code: int | None, error: str | None, log_path: Path, said: str | None = None
) -> str:
    """The reason of a failed evaluation (or holdout) stage, naming the stage and its log; `said`: the last line
    of its stderr (`stderr_said`), for a stage whose output may be shown."""
    if status == "timeout":
        how = error or "timed out"
    elif status == "failed_to_start":
        how = f"could not be started: {error}"
    elif exit_code is not None and exit_code < 0:
        how = f"killed by signal {-exit_code}"
    else:
        how = f"exit code {exit_code}" + (" (command not found?)" if exit_code == 127 else "")
    verdict = evaluator_verdict(log_path) if exit_code == EVALUATOR_REFUSED else None
    if verdict:
        return f"{verdict} (the evaluation stage ({what}) refused the candidate; see its log {log_path})"
    if said:
        stderr = log_path.with_suffix(".stderr.log")
        return f"the evaluation stage ({what}) failed: {how}: {said}; see its logs {log_path} and {stderr}"
    return f"the evaluation stage ({what}) failed: {how}; see its log {log_path}"


def evaluator_verdict(log_path: Path) -> str | None:
    """`<reason>: <summary>` from the last verdict line in the end of the evaluation's log, if there is one."""
    try:
        tail = read_tail_bytes(log_path, 4096)
    except OSError:
        return None
    found = list(VERDICT.finditer(tail.replace(b"\r\n", b"\n")))
    return f"{found[-1][1].decode()}: {found[-1][2].decode()}" if found else None
