"""The entrypoint of a Ray job: one command of a run, on a Ray worker, confined as it is locally, reported in a
trailer the run cannot forge.

Standard library only: it is uploaded with the candidate's snapshot (in `.autoresearch-ray/`, with a copy of
`confine.py`) and started as `python3 -I -S .autoresearch-ray/ray_wrapper.py` in the job's working directory. It
reads `.autoresearch-ray.json` (the command, its environment, the isolation setting, the writable entries, the
time limit, the measured path), then:
1. makes itself non-dumpable and drops CAP_SYS_PTRACE from the bounding set (its children, root included, can
   neither open /proc/<wrapper>/fd or mem nor attach to it; its environ stays readable here, and holds nothing
   secret);
2. writes `#autoresearch-ray begin <sha256 of a nonce>`: the nonce lives only in this process's memory;
3. starts the keeper (`confine.py`: Landlock with the writable entries mapped into the working directory, a
   private TMPDIR, subreaper; the whole tree dies when the command ends) with the command's output on a pipe;
4. forwards that output framed, one record per line: `|text` (a line of valid UTF-8 without CR) or `%base64`
   (any other bytes, exactly; also a burst of many lines at once). Nothing the run prints can start a line
   with `#`;
5. at its deadline, stops forwarding (nothing printed while being killed counts) and ends the tree;
6. writes `#autoresearch-ray end <nonce> <json>`: exit code, its own measured duration, peak RSS, the size of
   the `size_kb:`/`size_mb:` output when asked, whether it timed out and whether it was confined.

Both ends of this stream format live here: `Framed` (the wrapper's side) and `Unframer` (the server's).

Why the trailer holds: the run writes only into the pipe, so everything it prints arrives framed; to write the
job's log directly it would need the wrapper's stdout (/proc/<wrapper>/fd/1: refused by Landlock's ptrace
scoping, by non-dumpability, and by the missing CAP_SYS_PTRACE) or the log file's path (outside its writable
paths). An unconfined run (isolation "off", or "auto" on a worker without Landlock) can append to the log file,
but cannot know the nonce, and the server accepts only the first `end` whose nonce hashes to the `begin` record
written before the run started. No secret is passed in the environment, the command line or the package: Ray
keeps those in its job table, readable by anyone who can reach the cluster.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import fnmatch
import glob
import hashlib
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

if __package__:  # imported from the package (the tests)
    from . import confine
    from . import landlock as landlock_rules
else:  # run as a script: -I leaves the script's folder off sys.path; confine.py is shipped beside us
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import confine  # type: ignore[no-redef, import-not-found]
    import landlock as landlock_rules  # type: ignore[no-redef, import-not-found]

SPEC = ".autoresearch-ray.json"
CONTROL = "#autoresearch-ray"
RECORD_BYTES = 48 * 1024  # a longer line is forwarded in pieces
BURST_LINES = 8  # more complete lines than this waiting at once travel as one `%` record (Ray's tail is per line)
FRAGMENT_AFTER_S = 0.5  # a partial line (a progress bar) is forwarded after this long without a newline
PR_SET_DUMPABLE = 4
CAP_SYS_PTRACE = 19
FS_CLOCK_SLACK_NS = 2_000_000_000
MAX_RECORD_CHARS = 256 * 1024  # a record is at most ~65 KB; a longer "line" is not ours and is dropped


class Framed:
    """Writes the run's output as records on fd 1; `|` lines are text, `%` lines carry bytes exactly."""

    def __init__(self, fd: int = 1) -> None:
        self.fd = fd
        self.pending = b""
        self.since = time.monotonic()

    def _write(self, line: str) -> None:
        data = (line + "\n").encode()
        while data:
            data = data[os.write(self.fd, data) :]

    def _record(self, chunk: bytes) -> None:
        if chunk.endswith(b"\n") and b"\r" not in chunk:
            try:
                self._write("|" + chunk[:-1].decode("utf-8"))
                return
            except UnicodeDecodeError:
                pass
        self._write("%" + base64.b64encode(chunk).decode("ascii"))

    def data(self, chunk: bytes) -> None:
        if chunk and not self.pending:
            self.since = time.monotonic()
        self.pending += chunk
        while True:
            if self.pending.count(b"\n", 0, RECORD_BYTES) > BURST_LINES:  # a burst: one record, not a line each
                end = self.pending.rfind(b"\n", 0, RECORD_BYTES) + 1
                self._write("%" + base64.b64encode(self.pending[:end]).decode("ascii"))
                self.pending = self.pending[end:]
                continue
            cut = self.pending.find(b"\n", 0, RECORD_BYTES)
            if cut < 0 and len(self.pending) < RECORD_BYTES:
                return
            end = cut + 1 if cut >= 0 else RECORD_BYTES
            self._record(self.pending[:end])
            self.pending = self.pending[end:]
            self.since = time.monotonic()

    def flush(self, idle_only: bool = False) -> None:
        if self.pending and (not idle_only or time.monotonic() - self.since >= FRAGMENT_AFTER_S):
            self._record(self.pending)
            self.pending = b""

    def control(self, text: str) -> None:
        self.flush()
        self._write(f"{CONTROL} {text}")


class Unframer:
    """The server's side of the stream: the job's log -> the run's own output (written with `write`) and the wrapper's verified report.

    Lines that are not records (Ray's own "Runtime env is setting up" lines) are dropped; data before the
    `begin` record cannot be the run's; after the first `end` whose nonce matches `begin`, nothing counts."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self.write = write
        self.buffer = ""
        self.commitment: str | None = None
        self.begun_at: float | None = None  # monotonic, when the begin record arrived
        self.report: dict[str, Any] | None = None
        self.received = 0  # characters of the stream consumed (to resume a dropped connection)

    @property
    def done(self) -> bool:
        return self.report is not None

    def feed(self, text: str) -> None:
        self.received += len(text)
        self.buffer += text
        while not self.done and "\n" in self.buffer:
            line, self.buffer = self.buffer.split("\n", 1)
            self._line(line)
        if len(self.buffer) > MAX_RECORD_CHARS:
            self.buffer = ""

    def _line(self, line: str) -> None:
        prefix = CONTROL + " "
        if line.startswith(prefix):
            kind, _, rest = line[len(prefix) :].partition(" ")
            if kind == "begin" and self.commitment is None:
                self.commitment, self.begun_at = rest.strip(), time.monotonic()
            elif kind == "end" and self.commitment is not None:
                nonce, _, payload = rest.partition(" ")
                if hashlib.sha256(nonce.encode()).hexdigest() == self.commitment:
                    try:
                        report = json.loads(payload)
                    except ValueError:
                        return
                    self.report = report if isinstance(report, dict) else None
            return
        if self.commitment is None:
            return
        if line.startswith("|"):
            self.write(line[1:].encode("utf-8", "surrogateescape") + b"\n")
        elif line.startswith("%"):
            try:
                self.write(base64.b64decode(line[1:], validate=True))
            except (binascii.Error, ValueError):
                pass


def _harden() -> None:
    """Close /proc/<this pid> to the run (fd, environ, mem) and keep ptrace out of its reach, root included."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        libc.prctl(landlock_rules.PR_CAPBSET_DROP, CAP_SYS_PTRACE, 0, 0, 0)  # fails harmlessly when not root
    except (OSError, AttributeError):
        pass


def _inside(outer: str, inner: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def writable_paths(root: str, spec: dict, tmpdir: str) -> list[str]:
    """The run's writable entries on this worker: relative ones inside the working directory (one that climbs
    out of it is dropped: it would reach other jobs' directories), then TMPDIR and the devices."""
    expanded: list[str] = []
    for entry in spec.get("write", []):
        path = os.path.normpath(os.path.join(root, os.path.expanduser(entry)))
        if os.path.isabs(os.path.expanduser(entry)) or _inside(root, path):
            expanded.append(path)
    paths: list[str] = []
    device_dirs = list(spec.get("device_dirs", []))
    for path in expanded:
        if any(other != path and _inside(other, path) for other in [*expanded, *device_dirs]):
            continue  # writable through its parent, which the run may have reshaped: never granted by name
        if not os.path.lexists(path) and os.path.isdir(os.path.dirname(path)):
            try:
                os.mkdir(path)
            except OSError:
                pass
        paths.append(path)
    paths.append(tmpdir)
    paths += device_dirs + list(spec.get("device_files", []))
    for pattern in spec.get("device_globs", []):
        paths += sorted(glob.glob(pattern))
    return paths


def measure_size(root: str, measure: str, started_ns: int, target: str | None) -> int | str:
    """The bytes of a `size_kb:`/`size_mb:` output (exclusions ` !glob`), as `metrics.scan_output` counts them,
    or why it cannot be measured (missing, a link out of it, not written by this run)."""
    _kind, _, rest = measure.partition(":")
    rel, *excludes = rest.split(" !")
    rel = rel.strip()
    globs = [item.strip() for item in excludes if item.strip()]
    real_root = os.path.realpath(root)
    path = os.path.realpath(os.path.join(root, rel))
    if not _inside(real_root, path):
        return f"'{rel}' is outside the project"
    size, newest, newest_path = 0, 0, ""

    def saw(name: str, st: os.stat_result) -> None:
        nonlocal newest, newest_path
        if max(st.st_mtime_ns, st.st_ctime_ns) > newest:
            newest, newest_path = max(st.st_mtime_ns, st.st_ctime_ns), name

    if os.path.isfile(path):
        st = os.stat(path)
        size = st.st_size
        saw(os.path.basename(path), st)
    elif not os.path.isdir(path):
        return f"'{os.path.basename(rel)}' does not exist after the run, so its size cannot be measured"
    else:
        real_dir = os.path.realpath(path)
        for dirpath, dirs, files in os.walk(path):
            try:
                saw(os.path.relpath(dirpath, path), os.stat(dirpath))
            except OSError:
                pass
            for name in [*files, *dirs]:
                full = os.path.join(dirpath, name)
                if os.path.islink(full) and not _inside(real_dir, os.path.realpath(full)):
                    shown = os.path.relpath(full, path)
                    return (f"'{os.path.basename(rel)}/{shown}' is a symbolic link out of '{os.path.basename(rel)}' "
                            f"(to {os.path.realpath(full)}): its size cannot be measured honestly")
            for name in files:
                full = os.path.join(dirpath, name)
                relative = os.path.relpath(full, path).replace(os.sep, "/")
                base = relative.rsplit("/", 1)[-1]
                if any(fnmatch.fnmatch(base, g) or fnmatch.fnmatch(relative, g) for g in globs):
                    continue
                try:
                    st = os.lstat(full)
                except OSError:
                    continue
                if not os.path.islink(full) and os.path.isfile(full):
                    size += st.st_size
                    saw(relative, st)
    # As locally: the output must have changed during this run, or after the target last changed.
    since = started_ns - FS_CLOCK_SLACK_NS
    if target:
        try:
            st = os.stat(os.path.join(root, target))
            target_ns = max(st.st_mtime_ns, st.st_ctime_ns)
            if target_ns <= started_ns:
                since = target_ns
        except OSError:
            pass
    if newest < since:
        return (f"{rel.rstrip('/')}/ was not written by this run: its newest file ({newest_path}) is older than the "
                "run. The build probably failed without a non-zero exit code; look at the log")
    return size


def _environment(spec: dict, tmpdir: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(spec.get("env", {}))
    for name in ("TMPDIR", "TMP", "TEMP"):
        env[name] = tmpdir
    for variable in spec.get("caches", []):  # tools' shared caches, moved into the private TMPDIR
        env.setdefault(variable, os.path.join(tmpdir, variable.lower()))
    return env


def _pump(read_fd: int, out: Framed, keeper: subprocess.Popen, deadline: float, stop: list[bool]) -> bool:
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
            while keeper.poll() is None:  # read and dropped: a full pipe would block the keeper (its notes) and
                select.select([read_fd], [], [], 0.1)  # the tree's writers, and us with them, past the limit
                _discard(read_fd)
            return timed_out
        ready, _, _ = select.select([read_fd], [], [], min(0.25, max(0.0, deadline - time.monotonic())))
        if ready:
            _drain(read_fd, out)
        out.flush(idle_only=True)
    _drain(read_fd, out, 4096)  # the tree has ended: what the pipe holds was printed before the end (bounded: a
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


def run(spec: dict, root: str) -> int:
    out = Framed()
    _harden()
    nonce = os.urandom(16).hex()
    out.control("begin " + hashlib.sha256(nonce.encode()).hexdigest())
    mode = spec.get("isolation", "auto")
    landlock, abi, note = False, None, None
    if mode != "off":
        try:
            abi = landlock_rules.probe()
            landlock = True
        except (landlock_rules.ConfineError, OSError) as exc:
            note = str(exc)
    tmpdir = tempfile.mkdtemp(prefix="autoresearch-run-")
    started_ns = time.time_ns()
    started = time.monotonic()
    timed_out = False
    try:
        if mode == "required" and not landlock:
            out.data(f"{confine.MARK} {note}\n".encode())  # as the local keeper: nothing runs
            code = confine.SETUP_FAILED
        else:
            keeper_spec = {
                "landlock": landlock,
                "write": writable_paths(root, spec, tmpdir) if landlock else [],
                "parent": os.getpid(),
                "grace": float(spec.get("grace", 3.0)),
            }
            argv = confine.command_line(sys.executable, keeper_spec, ["/bin/sh", "-c", spec["command"]])
            read_fd, write_fd = os.pipe()
            stop = [False]
            signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))  # Ray's stop_job
            keeper = subprocess.Popen(argv, cwd=root, stdin=subprocess.DEVNULL, stdout=write_fd, stderr=write_fd,
                                      env=_environment(spec, tmpdir))
            os.close(write_fd)
            timed_out = _pump(read_fd, out, keeper, started + float(spec["timeout"]), stop)
            os.close(read_fd)
            code = keeper.returncode
        duration = time.monotonic() - started
        report: dict = {
            "exit": code, "duration_s": round(duration, 6), "timed_out": timed_out, "confined": landlock,
            "abi": abi, "note": note,
            "peak_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
        }
        measure = spec.get("measure")
        if measure and measure.startswith(("size_kb:", "size_mb:")) and code == 0 and not timed_out:
            report["sizes"] = {measure: measure_size(root, measure, started_ns, spec.get("target"))}
        out.control(f"end {nonce} {json.dumps(report, separators=(',', ':'))}")
        return code
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def main() -> None:
    sys.dont_write_bytecode = True  # nothing of ours is written into the job's working directory
    root = os.getcwd()
    with open(os.path.join(root, SPEC), encoding="utf-8") as handle:
        spec = json.load(handle)
    code = run(spec, root)
    os._exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
