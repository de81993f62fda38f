"""What the server trusts of a Ray job: nothing, when its log holds a line the wrapper did not write, when a job
it did not submit ran under its session's name, or when Ray's own record of the job contradicts the report.

Pure functions over the verified records (`ray_records.Unframer`) and Ray's job info; no Ray import.
"""

from __future__ import annotations

from typing import Any

from .ray_records import Unframer

END_WAIT_S = 30.0  # after the wrapper's end record, for Ray to say the job ended (and its log to end)
# Ray's run time of a job minus the command's: the start-up we saw before the begin record, plus at most this
# and this share of the run time (the wrapper's own work around the command: probes, the size measured, and
# removing the private TMPDIR after the report).
RUNTIME_SLACK_S = 10.0
RUNTIME_SLACK_SHARE = 0.1
CLOCK_SLACK_S = 2.0  # a command cannot have run longer than Ray saw its job run, beyond this


def rejection(unframer: Unframer, outcome: str, foreign: list[str]) -> str | None:
    """Why the run's output and report cannot be trusted, whatever they say; None when nothing is wrong."""
    if foreign:
        return (
            f"stopped {len(foreign)} Ray job(s) named after this session that the server did not submit "
            f"({', '.join(sorted(foreign))}): something reached the cluster's job API during this run, so "
            "its result is not trusted. Check the workers' isolation (docs/ray.md)"
        )
    if unframer.tampered is not None:
        return (
            f"the Ray job's log holds a line its wrapper did not write ({unframer.tampered}): another "
            "process wrote into it, so this run's output and report are not trusted"
        )
    if outcome == "lingering":
        return f"the Ray job was still running {END_WAIT_S:g} s after its wrapper's final report"
    return None


def ray_contradiction(report: dict[str, Any], info: Any, setup_s: float) -> str | None:
    """Where Ray's record of a job disagrees with the wrapper's report, or None. The wrapper exits with the
    command's code (128 + N for signal N); Ray's run time of the job is the setup we saw before the `begin`
    record, the command, and a little of the wrapper's own."""
    status = str(getattr(getattr(info, "status", None), "value", getattr(info, "status", None)))
    if status not in ("SUCCEEDED", "FAILED"):
        return f"Ray says the job is {status}, not ended by itself"
    code = int(report.get("exit", -1))
    exit_code = code if code >= 0 else 128 - code
    ray_code = getattr(info, "driver_exit_code", None)
    if ray_code is not None and int(ray_code) != exit_code:
        return f"the report says exit code {code}, Ray says the job's process exited with {ray_code}"
    if (status == "SUCCEEDED") != (exit_code == 0):
        return f"the report says exit code {code}, Ray says the job {status}"
    start, end = getattr(info, "start_time", None), getattr(info, "end_time", None)
    duration = float(report.get("duration_s", 0.0))
    if start and end:
        ran = (end - start) / 1000
        if duration > ran + CLOCK_SLACK_S:
            return f"the report says the command ran {duration:.3f} s, Ray says the whole job ran {ran:.1f} s"
        if ran - duration > max(setup_s, 0.0) + RUNTIME_SLACK_S + RUNTIME_SLACK_SHARE * ran:
            return (
                f"Ray says the job ran {ran:.1f} s ({max(setup_s, 0.0):.1f} s of it before the command "
                f"started), the report says the command ran {duration:.3f} s"
            )
    return None
