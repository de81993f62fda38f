"""Run one command of an experiment on a Ray cluster, through the Ray Jobs API, as `runner.ProcessRun` does here.

Configuration: `backend = "ray"`, `ray_address = "http://head:8265"` (the dashboard's job API; default the
`RAY_ADDRESS` environment variable, else http://127.0.0.1:8265), `ray_num_cpus` / `ray_num_gpus` (what each job
reserves: `entrypoint_num_cpus` / `entrypoint_num_gpus`). Ray is imported only here, inside functions, and only
when this backend is used: the server starts without it.

Each command becomes one job:
- its working directory is a zip we build from the candidate's snapshot (`cwd`), without `.git`, `.autoresearch`
  and the `shared_inputs` (node_modules, .venv, data: the workers' image or shared storage must provide them),
  plus `.autoresearch-ray/` (`ray_wrapper.py`, `ray_records.py` and copies of the keeper's
  stdlib-only modules: `confine.py`, `landlock.py`, `namespaces.py`, `output_dirs.py`, `output_checks.py`) and
  `.autoresearch-ray.json` (the command, its environment, the isolation setting, the writable entries, the
  limit, the server's public key value, the submission id: every package is unique, so Ray's
  content-addressed cache never hands one run's extracted directory to another). A `ray_address` line in the
  snapshot's configuration files (`ray_package.CONFIG_FILES`) is replaced by a comment: the run never reads where the
  cluster is.
  We build the zip because Ray's own directory packing also drops what `.gitignore` names (untracked inputs,
  build folders) and would need our files inside the snapshot. Ray's docs give a local working_dir 100 MiB;
  Ray 2.60 refuses a package of its gRPC message size (512 MiB) or more, and so do we, before uploading;
- the entrypoint is the wrapper, which confines the command on the worker as the keeper does here (Landlock:
  writes only beneath the `writable` entries mapped into the job's directory, a private TMPDIR and devices; the
  whole tree dies when the command ends), cuts it off from the cluster (no network, its own process ids, Ray's
  files and variables hidden) and frames its output in tagged records (`ray_records`). The environment travels in the package, not in
  `runtime_env.env_vars`, where Ray would expand `${NAME}` in the values;
- its log is followed (`tail_job_logs`, a bounded buffer; the wrapper sends no more of a long output than the
  server's log keeps, `log_limit_mb`: a run that prints 1 GB costs neither); the run's own output, un-framed, goes into `log_path`, so the metric is read from it exactly as for
  a local run. The wrapper's `begin`/`end` records are not the run's output. The report (exit code, duration,
  peak RSS, output size) is accepted only from a log that is one unbroken chain of the wrapper's records, read
  to its end, and only when Ray's own record of the job agrees: it ended by itself, with the exit code the
  report gives, and ran about as long as the report says (a job Ray saw run 20 s cannot report 0.011 s).
  Otherwise the run is "rejected", with the reason;
- the server stops every job under its session's prefix that it did not submit itself (a run that reached
  the job API) and rejects the run during which it found one, naming the jobs, in the result and the log;
- the wrapper enforces the time limit itself; the server stops the job (`stop_job`) at a cancel, or when the
  wrapper's report is overdue. A job that waits longer than STARTUP_TIMEOUT_S for resources fails to start.

This module never imports MCP and never touches the snapshot it packs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import tempfile
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..records.logtail import last_line
from ..records.run_log import log_bounds
from ..sandbox.caches import private_variables
from ..sandbox.process_run import DEFAULT_GRACE_S, ProcessResult, ProgressCallback
from ..sandbox.write_grants import DEVICE_DIRS, DEVICE_FILES, DEVICE_GLOBS
from ..setup.config import Config
from ..setup.stage_config import session_records
from . import ray_records, ray_wrapper
from .ray_package import ALWAYS_EXCLUDED, WRAPPER_DIR, Log, StartError, build_package, package_limit, within
from .ray_trust import END_WAIT_S, ray_contradiction, rejection

log = logging.getLogger("mcp_autoresearch")

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
STARTUP_TIMEOUT_S = 600.0  # queued for resources or setting up the runtime env, before the command starts
REPORT_SLACK_S = 15.0  # after the limit (+ grace): the wrapper's report is overdue, the job is stopped
STOP_WAIT_S = 15.0  # for a stopped job to reach a terminal state
# Ray's stop_job SIGTERMs the processes it sees and SIGKILLs them RAY_JOB_STOP_WAIT_TIME_S (3 s by default) later:
# the keeper's own sweep (SIGKILL to the whole tree after its grace) must come first, or Ray kills the keeper
# and every process the run started after Ray looked survives, orphaned, on the worker.
KEEPER_GRACE_MAX_S = 1.0
PROGRESS_EVERY_S = 2.0
ENTRYPOINT = f'exec "$(command -v python3 || command -v python)" -I -S {WRAPPER_DIR}/ray_wrapper.py'


@dataclass
class RayBackend:
    """Where a run's commands go when `backend = "ray"`: one Ray job per command."""

    address: str
    num_cpus: float | None = None
    num_gpus: float | None = None
    shared_inputs: list[str] = field(default_factory=list)
    target_file: str | None = None
    records: list[str] = field(default_factory=list)  # never shipped (`session_records`)
    grace_s: float = DEFAULT_GRACE_S
    # names this session's jobs on a shared cluster: autoresearch-<prefix><marker>-<uuid>
    job_prefix: str = ""
    submitted: set[str] = field(default_factory=set)  # the submission ids this server sent
    foreign: set[str] = field(default_factory=set)  # those it found under its prefix, stopped and reported
    known: set[str] | None = (
        None  # the jobs under the prefix when this server first looked (its predecessor's)
    )
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_config(cls, config: Config) -> RayBackend:
        address = config.ray_address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
        return cls(
            address.rstrip("/"),
            config.ray_num_cpus,
            config.ray_num_gpus,
            list(config.shared_inputs),
            config.target_file,
            records=session_records(config),
        )

    def stop_jobs(self, run_id: str) -> int:
        """Stop this session's jobs of `run_id` that are still running (after a restart: the server that
        submitted them is gone, the cluster is not). Returns how many were stopped."""
        from ray.job_submission import JobSubmissionClient

        prefix = f"autoresearch-{self.job_prefix}{re.sub(r'[^A-Za-z0-9_-]', '-', run_id)}-"
        stopped = 0
        try:
            client = JobSubmissionClient(self.address)
            for job in client.list_jobs():
                name = job.submission_id or ""
                if name.startswith(prefix) and not job.status.is_terminal() and client.stop_job(name):
                    stopped += 1
        except Exception as exc:  # the cluster is gone too: nothing of the run is left to stop
            log.warning("could not stop the Ray jobs of %s: %s", run_id, exc)
        return stopped

    @property
    def prefix(self) -> str:
        return f"autoresearch-{self.job_prefix}"

    def note_known(self, client: Any) -> None:
        """Remember, once, which jobs already carry this session's name: they are its predecessor's."""
        with self.lock:
            if self.known is not None:
                return
        names = {
            job.submission_id
            for job in client.list_jobs()
            if (job.submission_id or "").startswith(self.prefix)
        }
        with self.lock:
            if self.known is None:
                self.known = names

    def sweep(self, client: Any) -> list[str]:
        """Stop every running job under this session's prefix that this server did not submit, and return those
        not reported yet that appeared since it first looked (a run, or anything else, that reached the job
        API and named a job after us). Its predecessor's jobs are stopped, not reported."""
        self.note_known(client)
        found = []
        for job in client.list_jobs():
            name = job.submission_id or ""
            with self.lock:
                if not name.startswith(self.prefix) or name in self.submitted or name in self.foreign:
                    continue
                new = name not in (self.known or set())
                if new:
                    self.foreign.add(name)
                    found.append(name)
            if not job.status.is_terminal():
                try:
                    client.stop_job(name)
                except Exception as exc:  # gone meanwhile, or the cluster refuses: reported all the same
                    log.warning("could not stop the Ray job %s: %s", name, exc)
        if found:
            log.warning(
                "stopped Ray jobs under this session's name that the server did not submit: %s",
                ", ".join(found),
            )
        return found

    def check(self) -> None:
        """ConfigError, with what to do, when Ray is not installed or no job API answers at the address."""
        try:
            import ray.job_submission  # noqa: F401
        except ImportError:
            raise ConfigError(
                'backend = "ray" needs Ray, which is not installed in the server\'s environment: '
                "pip install 'mcp-autoresearch[ray]'"
            ) from None
        where = urllib.parse.urlsplit(self.address if "://" in self.address else f"http://{self.address}")
        reason = None
        try:  # first a bounded connect: Ray's own check has no timeout, and a silent address would hang
            socket.create_connection((where.hostname or "127.0.0.1", where.port or 8265), timeout=5).close()
            self.note_known(self.client())  # Ray's version check, with its token (RAY_AUTH_MODE=token) if any
        # OSError, ValueError, and Ray's ConnectionError/RuntimeError/AuthenticationError
        except Exception as exc:
            lines = str(exc).strip().splitlines()
            reason = lines[0] if lines else type(exc).__name__
        if reason is not None:
            raise ConfigError(
                f"no Ray job API answers at {self.address} ({reason}). Start a cluster with `ray start --head` "
                f"(its job API listens on {DEFAULT_ADDRESS}), or set ray_address in the configuration (or the "
                "RAY_ADDRESS environment variable) to the cluster's dashboard address, e.g. http://head:8265"
            )

    def client(self) -> Any:
        from ray.job_submission import JobSubmissionClient

        # Ray logs every package upload at INFO on the server's stderr; one line per run helps nobody.
        logging.getLogger("ray.dashboard.modules.dashboard_sdk").setLevel(logging.WARNING)
        return JobSubmissionClient(self.address)

    def process(
        self,
        command: str,
        cwd: Path,
        log_path: Path,
        timeout_s: float,
        env: dict[str, str],
        marker: str,
        on_progress: ProgressCallback | None = None,
        writable: list[str] | None = None,
        confined: bool = True,
        *,
        required: bool = False,
        measure: str | None = None,
        log_limit: int | None = None,
    ) -> RayJobRun:
        """One command as a Ray job, with `ProcessRun`'s interface (`run()`, thread-safe `cancel()`).
        `confined`: Landlock on the worker (`required`: or nothing runs, exit 125); `measure`: a
        `size_b:`/`size_kb:`/`size_mb:` metric the wrapper measures on the worker; `log_limit`: the most its log keeps of
        the output, in bytes (`records/run_log.py`)."""
        writable = list(writable or [])
        spec: ray_wrapper.JobSpec = {
            "command": command,
            "env": env,
            "isolation": "required" if required else ("auto" if confined else "off"),
            "write": writable,
            "device_dirs": DEVICE_DIRS,
            "device_files": DEVICE_FILES,
            "device_globs": DEVICE_GLOBS,
            "caches": private_variables(Path(cwd), writable, env),
            "timeout": timeout_s,
            "grace": min(self.grace_s, KEEPER_GRACE_MAX_S),
            "measure": measure,
            "target": self.target_file,
            "log_bound": list(log_bounds(log_limit)) if log_limit else None,
        }
        return RayJobRun(self, cwd, log_path, timeout_s, marker, on_progress, spec, log_limit)


class RayJobRun:
    """One command as one Ray job. Thread-safe `cancel()`; `run()` blocks until the job has ended."""

    def __init__(
        self,
        backend: RayBackend,
        cwd: Path,
        log_path: Path,
        timeout_s: float,
        marker: str,
        on_progress: ProgressCallback | None,
        spec: ray_wrapper.JobSpec,
        log_limit: int | None = None,
    ) -> None:
        self.backend = backend
        self.log_limit = log_limit
        self._log: Log | None = None  # while it runs
        self.cwd = cwd
        self.log_path = log_path
        self.timeout_s = timeout_s
        self.on_progress = on_progress
        self.spec = spec
        safe = re.sub(r"[^A-Za-z0-9_-]", "-", marker)[:60] or "run"
        self.submission_id = f"autoresearch-{backend.job_prefix}{safe}-{uuid.uuid4().hex[:12]}"
        spec["job"] = self.submission_id
        # A fresh key pair per job: only the public half travels (in the package); see ray_records.
        self._private, public = ray_records.key_pair()
        spec["server_public"] = f"{public:x}"
        self._submitted_at = 0.0
        self._cancel = threading.Event()
        self._cancel_reason = ""

    def cancel(self, reason: str = "cancelled") -> None:
        self._cancel_reason = reason
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def run(self) -> ProcessResult:
        started = time.monotonic()
        log = self._log = Log(self.log_path, self.log_limit)
        try:
            return self._run(log, started)
        finally:
            log.close()

    def _result(
        self,
        log: Log,
        status: Any,
        code: int | None,
        duration: float,
        error: str | None,
        rss: int = 0,
        sizes: dict[str, int | str] | None = None,
    ) -> ProcessResult:
        return ProcessResult(status, code, duration, rss, self.log_path, error, sizes=sizes, **log.figures())

    def _run(self, log: Log, started: float) -> ProcessResult:
        if self._cancel.is_set():
            return self._result(log, "cancelled", None, 0.0, self._cancel_reason)
        try:
            client = self.backend.client()
            with tempfile.TemporaryDirectory(prefix="autoresearch-ray-") as tmp:
                package = Path(tmp) / f"{self.submission_id}.zip"
                excluded = [
                    *ALWAYS_EXCLUDED,
                    *within(self.cwd, self.backend.records),
                    *self.backend.shared_inputs,
                ]
                limit = package_limit()
                size = build_package(self.cwd, package, excluded, self.spec, limit)
                if size >= limit:
                    raise StartError(
                        f"the snapshot packs to {size / 2**20:.0f} MiB or more, over Ray's upload limit of "
                        f"{limit / 2**20:.0f} MiB: list large untracked inputs in shared_inputs (they are not "
                        "uploaded; the workers must provide them) and keep data on shared storage"
                    )
                self.backend.note_known(client)
                with self.backend.lock:
                    self.backend.submitted.add(self.submission_id)
                self._submitted_at = time.monotonic()
                client.submit_job(
                    entrypoint=ENTRYPOINT,
                    submission_id=self.submission_id,
                    runtime_env={"working_dir": str(package)},
                    entrypoint_num_cpus=self.backend.num_cpus,
                    entrypoint_num_gpus=self.backend.num_gpus,
                )
        except Exception as exc:  # ray raises plain exceptions (RuntimeError, ConnectionError, ValueError)
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.write(f"autoresearch: could not submit the Ray job: {message}\n".encode())
            return self._result(log, "failed_to_start", None, 0.0, f"Ray job not submitted: {message}")
        unframer = ray_records.Unframer(log.write, self._private, log.skip, log.note_recent)
        outcome = asyncio.run(self._follow(client, unframer, started))
        unframer.close()
        if outcome != "ended" or unframer.report is None:
            self._stop(client)
        info = self._final_info(client)
        try:
            foreign = self.backend.sweep(client)
        except Exception as exc:  # the cluster stopped answering: nothing to stop there now
            log.write(f"autoresearch: could not list the cluster's jobs: {exc}\n".encode())
            foreign = []
        result = self._outcome(log, unframer, outcome, info, started, foreign)
        if result.status == "rejected":
            log.write(f"autoresearch: {result.error}\n".encode())
        return result

    def _outcome(
        self,
        log: Log,
        unframer: ray_records.Unframer,
        outcome: str,
        info: Any,
        started: float,
        foreign: list[str],
    ) -> ProcessResult:
        report = unframer.report
        begun = unframer.begun_at
        elapsed = time.monotonic() - (begun if begun is not None else started)
        if outcome == "cancelled":
            return self._result(log, "cancelled", None, elapsed, self._cancel_reason or "cancelled")
        rejected = rejection(unframer, outcome, foreign)
        if rejected is None and report is not None and outcome == "ended":
            setup_s = (begun or started) - self._submitted_at
            why = ray_contradiction(report, info, setup_s)
            rejected = f"Ray's record of the job contradicts the wrapper's report: {why}" if why else None
        if rejected is not None:
            return self._result(log, "rejected", None, elapsed, rejected)
        if report is not None and report.get("note"):
            log.write(f"autoresearch: on the Ray worker: {report['note']}\n".encode())
        if outcome == "timeout" or (report is not None and report.get("timed_out")):
            duration = float(report["duration_s"]) if report else elapsed
            return self._result(
                log, "timeout", None, duration, f"killed after the {self.timeout_s:g} s timeout"
            )
        if report is not None:
            sizes = report.get("sizes")
            return self._result(
                log,
                "exited",
                int(report["exit"]),
                float(report["duration_s"]),
                None,
                int(report.get("peak_rss") or 0),
                sizes if isinstance(sizes, dict) else None,
            )
        status = getattr(info, "status", None)
        message = (getattr(info, "message", None) or "").strip().splitlines()
        if outcome == "not_started":
            error = f"the Ray job did not start within {STARTUP_TIMEOUT_S:g} s (status {status}): no free resources?"
        elif begun is None:
            error = f"the Ray job failed before the command started (status {status}): {message[0] if message else ''}"
        else:
            code = getattr(info, "driver_exit_code", None)
            log.write(
                f"autoresearch: the Ray job ended without the wrapper's report (status {status})\n".encode()
            )
            return self._result(log, "exited", code if code else 1, elapsed, None)
        log.write(f"autoresearch: {error}\n".encode())
        return self._result(log, "failed_to_start", None, 0.0, error)

    async def _follow(self, client: Any, unframer: ray_records.Unframer, started: float) -> str:
        """Copy the job's log into ours until the log ends ("ended": Ray ends it after the job ended and one
        more read of the file, 2-3 s later; nothing the job wrote escapes it, so a forged end record followed by
        the wrapper's own records is seen), or until a cancel, an overdue report ("timeout"), a start that never
        comes ("not_started") or a job that goes on after its report ("lingering")."""
        reader = asyncio.ensure_future(self._read(client, unframer))
        next_progress = time.monotonic() + PROGRESS_EVERY_S
        overdue_at = self.timeout_s + self.backend.grace_s + REPORT_SLACK_S  # after the begin record
        reported_at: float | None = None  # the wrapper's end record arrived
        try:
            while not reader.done():
                now = time.monotonic()
                if self._cancel.is_set():
                    return "cancelled"
                begun = unframer.begun_at
                if begun is None and now - started > STARTUP_TIMEOUT_S:
                    return "not_started"
                if unframer.done and reported_at is None:
                    reported_at = now
                if reported_at is not None and now - reported_at > END_WAIT_S and not self._terminal(client):
                    return "lingering"
                if begun is not None and reported_at is None and now - begun > overdue_at:
                    if not self._terminal(client):
                        return "timeout"
                    overdue_at = now - begun + 2.0  # it has ended; its log is still arriving (a chatty run)
                if self.on_progress and begun is not None and now >= next_progress:
                    next_progress = now + PROGRESS_EVERY_S
                    try:
                        recent = self._log.recent() if self._log is not None else b""
                        self.on_progress(now - begun, self.timeout_s, last_line(self.log_path, recent=recent))
                    except Exception:  # a failing progress consumer must never break the run
                        pass
                await asyncio.wait({reader}, timeout=0.1)
            reader.result()
            return "ended"
        finally:
            reader.cancel()
            try:
                await reader
            except (asyncio.CancelledError, Exception):
                pass

    async def _read(self, client: Any, unframer: ray_records.Unframer) -> None:
        """Follow the log to its end (Ray ends the stream once the job has ended): whatever follows the
        wrapper's end record is checked too. A dropped connection is resumed where it left off."""
        for _attempt in range(5):
            seen = 0
            try:
                async for chunk in client.tail_job_logs(self.submission_id):
                    if seen + len(chunk) <= unframer.received:
                        seen += len(chunk)
                        continue
                    chunk = chunk[max(0, unframer.received - seen) :]
                    seen = unframer.received + len(chunk)
                    unframer.feed(chunk)
                return
            except Exception:  # resumed even after the job ended: what follows its end record counts too
                await asyncio.sleep(1.0)

    def _terminal(self, client: Any) -> bool:
        try:
            return bool(client.get_job_status(self.submission_id).is_terminal())
        except Exception:
            return False

    def _stop(self, client: Any) -> None:
        try:
            client.stop_job(self.submission_id)
        except Exception:
            pass

    def _final_info(self, client: Any) -> Any:
        """The job's info once terminal (Ray kills a stopped job after its own grace); None if it never says."""
        deadline = time.monotonic() + STOP_WAIT_S + self.backend.grace_s
        info = None
        while time.monotonic() < deadline:
            try:
                info = client.get_job_info(self.submission_id)
                if info.status.is_terminal():
                    return info
            except Exception:
                pass
            time.sleep(0.1)
        return info
