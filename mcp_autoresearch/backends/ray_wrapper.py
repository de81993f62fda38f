"""The entrypoint of a Ray job: one command of a run, on a Ray worker, confined as it is locally, cut off from
the cluster, and reported in records the run cannot forge.

Standard library only: it is uploaded with the candidate's snapshot (in `.autoresearch-ray/`, with
`ray_records.py` and copies of the keeper's modules `confine.py`, `landlock.py`, `namespaces.py`,
`output_dirs.py`, and the output check `output_checks.py`) and started as
`python3 -I -S .autoresearch-ray/ray_wrapper.py` in the job's working directory. It reads `.autoresearch-ray.json` (the command, its environment, the isolation setting, the writable
entries, the time limit, the measured path, the server's public key value), then:
0. checks that the view below can be built on this worker (a forked child builds it and exits; before step 1,
   so that an ordinary user's child can still map its uid into a user namespace, and before any key exists);
1. makes itself non-dumpable and drops CAP_SYS_PTRACE from the bounding set (its children, root included, can
   neither open /proc/<wrapper>/fd or mem nor attach to it);
2. agrees on a key with the server and writes the `begin` record (`ray_records`: every later record is tagged
   with it, in sequence);
3. starts the keeper (`confine.py`, the same code as for local runs: Landlock with the writable entries mapped
   into the working directory, a private TMPDIR, subreaper; the whole tree dies when the command ends) with the
   command's output on a pipe, in the keeper's private view (`namespaces.py`) with the network off: no network
   but its own loopback (no route to the cluster's job API, GCS or dashboard), its own process ids (no other
   job's process, and not this wrapper, is visible), no capabilities, every mount read-only but the writable
   entries, a private /tmp, /run, /dev/shm, and Ray's temp dir, ~/.ray and the file of RAY_AUTH_TOKEN_PATH
   hidden too (Ray's sockets, session files with the cluster's address, other jobs' logs, the cluster's
   token); the job's directory, the private TMPDIR and absolute writable entries are mounted back. Ray's
   variables (RAY_ADDRESS, tokens) are removed from the command's environment;
4. forwards that output framed and tagged, one record per line;
5. at its deadline, stops forwarding (nothing printed while being killed counts) and ends the tree;
6. writes the `end` record: exit code, its own measured duration, peak RSS, the size of the
   `size_b:`/`size_kb:`/`size_mb:` output when asked (or why `output_checks` refuses it), whether it timed out, and what confined the run.

With isolation "auto", a worker where Landlock or the namespaces are missing runs the command without them and
the report says so (`confined`, `namespaces`, `note`); with "required" it runs nothing and exits 125.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TypedDict

if __package__:  # imported from the package (the tests)
    from ..measure import output_checks, output_size
    from ..sandbox import confine, run_tmpdirs, write_grants
    from ..sandbox import landlock as landlock_rules
    from ..sandbox import namespaces as namespaces_view
    from ..sandbox import view as private_view
    from .ray_records import Framed
else:  # run as a script: -I leaves the script's folder off sys.path; our modules are shipped beside us
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import confine  # type: ignore[no-redef, import-not-found]
    import landlock as landlock_rules  # type: ignore[no-redef, import-not-found]
    import namespaces as namespaces_view  # type: ignore[no-redef, import-not-found]
    import output_checks  # type: ignore[no-redef, import-not-found]
    import output_size  # type: ignore[no-redef, import-not-found]
    import run_tmpdirs  # type: ignore[no-redef, import-not-found]
    import view as private_view  # type: ignore[no-redef, import-not-found]
    import write_grants  # type: ignore[no-redef, import-not-found]
    from ray_records import Framed  # type: ignore[no-redef, import-not-found]

SPEC = ".autoresearch-ray.json"
SIZE_KINDS = tuple(f"{kind}:" for kind in output_size.SIZE_UNITS)  # the size measures the wrapper takes here


class JobSpec(TypedDict, total=False):
    """The job's spec (`SPEC`), written by the server's Ray backend."""

    command: str  # the shell command of this run
    env: dict[str, str]  # variables the command gets on top of the worker's (Ray's own removed)
    isolation: str  # auto, required or off
    write: list[str]  # the writable entries (relative ones are mapped into the job's directory)
    device_dirs: list[str]  # device paths a run may write (GPU, /dev/null...)
    device_files: list[str]
    device_globs: list[str]
    caches: list[str]  # the cache variables pointed at the run's private TMPDIR
    timeout: float  # seconds; the tree is ended at the deadline
    grace: float  # seconds between SIGTERM and SIGKILL
    measure: str | None  # a size_b:/size_kb:/size_mb: metric the wrapper measures here
    target: str | None  # the target file (the measured output must be newer than it, or than the run)
    job: str  # the submission id
    server_public: str  # the server's public key value, hex
    log_bound: list[int] | None  # the output's head and tail sent (`Framed.bound`); None: all of it


PR_SET_DUMPABLE = 4
CAP_SYS_PTRACE = 19


def _harden() -> None:
    """Close /proc/<this pid> to the run (fd, environ, mem) and keep ptrace out of its reach, root included."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        libc.prctl(landlock_rules.PR_CAPBSET_DROP, CAP_SYS_PTRACE, 0, 0, 0)  # fails harmlessly when not root
    except (OSError, AttributeError):
        pass


def writable_paths(root: str, spec: JobSpec, tmpdir: str) -> list[str]:
    """The run's writable entries on this worker, by the rule local runs follow (`write_grants`): relative ones
    inside the working directory (one that climbs out of it is dropped: it would reach other jobs' directories),
    then TMPDIR and the devices the server named."""
    return write_grants.granted_paths(
        root,
        list(spec.get("write", [])),
        tmpdir,
        only_inside=True,
        device_dirs=list(spec.get("device_dirs", [])),
        device_files=list(spec.get("device_files", [])),
        device_globs=list(spec.get("device_globs", [])),
    )


def measured_path(measure: str | None) -> str | None:
    """The path a `size_b:`/`size_kb:`/`size_mb:` measure names (None for any other measure)."""
    if not measure or not measure.startswith(SIZE_KINDS):
        return None
    return measure.partition(":")[2].split(" !")[0].strip()


def measure_size(
    root: str,
    measure: str,
    started_ns: int,
    target: str | None,
    fresh: frozenset[tuple[int, int, int]] = frozenset(),
) -> int | str:
    """The bytes of a `size_b:`/`size_kb:`/`size_mb:` output, measured as the server measures one (`output_size`, shipped
    with this wrapper), or why it cannot be measured; `fresh`: its snapshot before the run."""
    try:
        return output_size.measure_output(
            Path(root), output_size.Measure.parse(measure), started_ns / 1e9, target, fresh
        )
    except output_size.OutputError as exc:
        return str(exc)


def _environment(spec: JobSpec, tmpdir: str) -> dict[str, str]:
    """The command's environment: the worker's without Ray's variables (the cluster's address, job ids, a
    token), then the spec's, with TMPDIR private."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(spec.get("env", {}))
    for name in ("TMPDIR", "TMP", "TEMP"):
        env[name] = tmpdir
    for variable in spec.get("caches", []):  # tools' shared caches, moved into the private TMPDIR
        env.setdefault(variable, os.path.join(tmpdir, variable.lower()))
    return env


def hidden_paths(root: str) -> list[str]:
    """What the run must not see on this worker besides what the keeper's view hides everywhere (/tmp, /run,
    /dev/shm...): Ray's temp dir (the ancestor of the job's directory that holds `session_*`: sockets, the
    cluster's address, every job's logs and packages) and ~/.ray."""
    hidden: list[str] = []
    parts = root.split("/")
    for index, part in enumerate(parts):
        if part.startswith("session_") and index > 1:
            hidden.append("/".join(parts[:index]))
            break
    hidden.append(os.path.expanduser("~/.ray"))
    return sorted({os.path.realpath(path) for path in hidden if os.path.isdir(path)} - {"/"})


def view_spec(root: str) -> confine.KeeperSpec:
    """The keeper's private view for this run (`namespaces.py`, as for local runs), with the network off: Ray's
    temp dir, ~/.ray and the cluster's token hidden too; this interpreter stays readable where a hidden
    directory would cover it."""
    hide = hidden_paths(root)
    token = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if token and os.path.isfile(token):
        hide.append(os.path.realpath(token))
    read = [sys.prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))]
    return {"view": True, "network": False, "hide": hide, "read": sorted({os.path.realpath(p) for p in read})}


def namespaces(root: str, write: list[str]) -> tuple[confine.KeeperSpec, str | None]:
    """(the keeper's view settings, None), or ({}, why this worker cannot build the view): the same view is
    built first in a forked child, with the keeper's own code, and thrown away (no interpreter to start)."""
    view = view_spec(root)
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:  # the child only makes system calls and exits
        os.close(read_fd)
        os._exit(_try_view(view, root, write, write_fd))
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as reader:
        why = reader.read(4096).decode(errors="replace").strip()
    _, status = os.waitpid(child, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return {}, f"namespaces: {why or f'the probe ended with status {status}'}"
    return view, None


def _try_view(view: confine.KeeperSpec, root: str, write: list[str], report_fd: int) -> int:
    """In a forked child: enter the keeper's namespaces, build the view in a grandchild (PID 1 there), and
    return 0, or write why not to `report_fd` and return 1."""
    try:
        namespaces_view.enter_keeper(bool(view["network"]))
        inner = os.fork()
        if inner == 0:
            try:
                private_view.build_view(write, root, bool(view["network"]), view["read"], view["hide"])
                code = 0
            except namespaces_view.ViewError as exc:
                os.write(report_fd, str(exc).encode())
                code = 1
            except OSError as exc:
                os.write(report_fd, f"{exc.strerror}: {exc.filename}".encode())
                code = 1
            os._exit(code)
        _, status = os.waitpid(inner, 0)
        return 0 if os.waitstatus_to_exitcode(status) == 0 else 1
    except namespaces_view.ViewError as exc:
        os.write(report_fd, str(exc).encode())
    except BaseException as exc:  # noqa: BLE001 (a forked child must exit, whatever went wrong)
        os.write(report_fd, repr(exc).encode())
    return 1


def _pump(
    read_fd: int, out: Framed, keeper: subprocess.Popen[bytes], deadline: float, stop: list[bool]
) -> bool:
    """Forward the keeper's output until it exits. At the deadline (or on SIGTERM) stop forwarding first, then
    end the tree through the keeper. Returns True when the deadline was reached."""
    os.set_blocking(read_fd, False)
    timed_out = False
    while keeper.poll() is None:
        if time.monotonic() >= deadline or stop[0]:
            timed_out = not stop[0]
            _drain(read_fd, out)  # what was printed before the cut, and nothing after
            out.flush()
            keeper.send_signal(signal.SIGTERM)  # the keeper ends the whole tree (SIGKILL after its grace)
            while (
                keeper.poll() is None
            ):  # read and dropped: a full pipe would block the keeper (its notes) and
                select.select([read_fd], [], [], 0.1)  # the tree's writers, and us with them, past the limit
                _discard(read_fd)
            return timed_out
        ready, _, _ = select.select([read_fd], [], [], min(0.25, max(0.0, deadline - time.monotonic())))
        if ready:
            _drain(read_fd, out)
        out.flush(idle_only=True)
    _drain(
        read_fd, out, 4096
    )  # the tree has ended: what the pipe holds was printed before the end (bounded: a
    # process outside the tree handed our pipe would otherwise keep us here)
    out.flush()
    return False


def _discard(read_fd: int) -> None:
    """Empty the pipe without forwarding (bounded: the writers may never stop)."""
    for _ in range(64):
        try:
            if not os.read(read_fd, 1 << 16):
                return
        except OSError:  # BlockingIOError included: empty for now
            return


def _drain(read_fd: int, out: Framed, reads: int = 64) -> None:
    """Forward what the pipe holds: at most `reads` reads while writers live (a run writing faster than we
    forward must not keep us from the deadline)."""
    for _ in range(reads):
        try:
            data = os.read(read_fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            return
        if not data:
            return
        out.data(data)


def _confinement(mode: str, root: str, write: list[str]) -> tuple[int | None, confine.KeeperSpec, str | None]:
    """(Landlock's ABI or None, the keeper's view settings or {}, why something is missing) for this mode."""
    if mode == "off":
        return None, {}, None
    abi, notes = None, []
    try:
        abi = landlock_rules.probe()
    except (landlock_rules.ConfineError, OSError) as exc:
        notes.append(f"no Landlock: {exc}")
    view, why = namespaces(root, write)
    if why:
        notes.append(f"no private network or process view ({why}): the run could reach the cluster")
    return abi, view, "; ".join(notes) or None


def _ptrace_scope() -> int | None:
    """Yama's ptrace_scope on this worker: at 3, no process (root included) can read this wrapper's memory."""
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return None


def run(spec: JobSpec, root: str) -> int:
    mode = spec.get("isolation", "auto")
    # Named for this wrapper, so that when it is killed before its `finally` (Ray's stop_job SIGKILLs it) the
    # next wrapper on this worker, or the next local server, removes it (`sweep`).
    run_tmpdirs.sweep()
    tmpdir = run_tmpdirs.make()
    write = writable_paths(root, spec, tmpdir)  # first: the missing entries it creates are mounted back too
    # Before _harden: the probe's forked child maps its uid into a user namespace through /proc/self, which a
    # non-dumpable process cannot write; and before the key exists, so that child holds no secret.
    abi, view, note = _confinement(mode, root, write)
    out = Framed()
    if bound := spec.get("log_bound"):
        out.bound(int(bound[0]), int(bound[1]))
    _harden()
    out.begin(int(spec["server_public"], 16))
    landlock = abi is not None
    measured = measured_path(spec.get("measure"))
    fresh = output_checks.snapshot(Path(root) / measured) if measured else frozenset()
    started_ns = time.time_ns()
    started = time.monotonic()
    timed_out = False
    try:
        if mode == "required" and note:
            out.data(f"{confine.MARK} {note}\n".encode())  # as the local keeper: nothing runs
            code = confine.SETUP_FAILED
        else:
            keeper_spec: confine.KeeperSpec = {
                **view,
                "landlock": landlock,
                "write": write if landlock or view else [],  # the view mounts them back beneath hidden dirs
                "parent": os.getpid(),
                "grace": float(spec.get("grace", 3.0)),
            }
            argv = confine.command_line(sys.executable, keeper_spec, ["/bin/sh", "-c", spec["command"]])
            read_fd, write_fd = os.pipe()
            stop = [False]
            signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))  # Ray's stop_job
            keeper = subprocess.Popen(
                argv,
                cwd=root,
                stdin=subprocess.DEVNULL,
                stdout=write_fd,
                stderr=write_fd,
                env=_environment(spec, tmpdir),
            )
            os.close(write_fd)
            timed_out = _pump(read_fd, out, keeper, started + float(spec["timeout"]), stop)
            os.close(read_fd)
            code = keeper.returncode
        duration = time.monotonic() - started
        report: dict[str, Any] = {
            "exit": code,
            "duration_s": round(duration, 6),
            "timed_out": timed_out,
            "confined": landlock,
            "namespaces": bool(view),
            "abi": abi,
            "note": note,
            "ptrace_scope": _ptrace_scope(),
            "peak_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
        }
        measure = spec.get("measure")
        if measure and measure.startswith(SIZE_KINDS) and code == 0 and not timed_out:
            report["sizes"] = {measure: measure_size(root, measure, started_ns, spec.get("target"), fresh)}
        out.end(report)
        return code
    finally:
        run_tmpdirs.remove(tmpdir)


def main() -> None:
    sys.dont_write_bytecode = True  # nothing of ours is written into the job's working directory
    root = os.getcwd()
    with open(os.path.join(root, SPEC), encoding="utf-8") as handle:
        spec = json.load(handle)
    code = run(spec, root)
    os._exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
