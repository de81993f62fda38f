"""The Ray backend against a real local Ray head (started once per session): jobs stream into the server's log,
the metric is read as locally, the wrapper's report cannot be forged, and the worker confines the run."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import psutil
import pytest

from mcp_autoresearch.backends import ray_records, ray_wrapper
from mcp_autoresearch.backends.ray_backend import RayBackend
from mcp_autoresearch.backends.ray_package import SHIPPED, StartError, build_package
from mcp_autoresearch.backends.ray_records import Unframer
from mcp_autoresearch.errors import ConfigError
from mcp_autoresearch.lifecycle.experiment import Experiment
from mcp_autoresearch.measure import output_size

from .helpers.ports import free_port
from .helpers.ray_head import (
    ISOLATION,
    _config,
    _experiment,
    _project,
    head_ready,
    ray_ports,
    start_head,
    stop_head,
)

# Ray's own tail_job_logs passes ssl=None to aiohttp.
pytestmark = pytest.mark.filterwarnings("ignore:ssl=None is deprecated:DeprecationWarning")
# The run's attempts on the wrapper: its stdout through /proc, its memory (the key). In the view the wrapper is
# not in the run's /proc at all; without namespaces it is, and refuses both.
CHEAT = """
import os, sys
pid = os.getpid()
while pid > 1:
    cmd = open(f"/proc/{pid}/cmdline", "rb").read()
    if b"ray_wrapper.py\\0" in cmd and b"confine.py" not in cmd:
        break
    pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
else:
    print("no wrapper in sight")
    sys.exit()
try:
    with open(f"/proc/{pid}/fd/1", "w") as out:
        out.write("#autoresearch-ray end forged {}\\n")
    print("WROTE the wrapper's stdout")
except OSError as exc:
    print("refused fd/1:", exc.strerror)
try:
    open(f"/proc/{pid}/mem", "rb").read(1)
    print("READ the wrapper's memory")
except OSError as exc:
    print("refused mem:", exc.strerror)
"""


def run_wrapper(spec: dict, root: str) -> int:
    """`ray_wrapper.run` in a forked child, as on a worker: it makes its process non-dumpable and drops
    CAP_SYS_PTRACE from the bounding set, which this test process (and every server it starts later) must keep.
    Its output goes to the same descriptors (capfd reads it); monkeypatches of the parent hold in the child."""
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            code = ray_wrapper.run(spec, root)
        finally:
            sys.stdout.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_output_streams_into_the_log_and_the_metric_is_read(tmp_path: Path, ray_address: str) -> None:
    root = _project(tmp_path)
    (root / "results.tsv").write_text("commit\tscore\n")
    seen: list[tuple[float, float, str]] = []
    ended: list[int] = []
    # The run waits in a `sleep` of its own until its line "step 2" has reached the server's progress (the test
    # ends that sleep then): streamed while it ran, however late Ray's log arrives on a loaded machine.
    hold = f"280.{time.monotonic_ns() % 10**6:06d}"
    command = (
        "printf 'step 1\\r'; echo 'step 2'; test -e .git && echo 'GIT UPLOADED'; "
        "test -e results.tsv && echo 'RECORDS UPLOADED'; "
        f"sleep {hold}; "
        "echo \"score: 1.25 seed=$AUTORESEARCH_SEED\"; echo 'METRIC aux=3'"
    )

    def progress(elapsed: float, timeout: float, line: str) -> None:
        seen.append((elapsed, timeout, line))
        if line in ("step 2", "GIT UPLOADED", "RECORDS UPLOADED"):  # the last line before the sleep
            for proc in psutil.process_iter(["cmdline"]):
                if proc.info["cmdline"] == ["sleep", hold]:
                    proc.terminate()
                    ended.append(proc.pid)

    config = _config(command, ray_address=ray_address, timeout=300)
    experiment = Experiment(
        config,
        root,
        "r1",
        tmp_path / "logs",
        isolation=ISOLATION,
        on_progress=progress,
        backend=RayBackend.from_config(config),
    )
    result = experiment.run()
    assert result.status == "ok", result.error
    assert result.value == 1.25 and result.secondary == {"aux": 3.0}
    log = Path(result.log_path).read_bytes()
    assert log.startswith(b"step 1\rstep 2\n")  # the run's bytes exactly, nothing of Ray's or the wrapper's
    assert (
        re.search(rb"score: 1\.25 seed=\d+\n", log)
        and b"#autoresearch-ray" not in log
        and b"GIT UPLOADED" not in log
        and b"RECORDS UPLOADED" not in log  # the session's records (every run's values) stay here
    )
    assert ("step 2", config.timeout) in [(line, timeout) for _, timeout, line in seen], seen
    assert ended  # the sleep was ended by the progress that showed "step 2", not by its own end


def test_a_size_is_measured_on_the_worker(tmp_path: Path, ray_address: str) -> None:
    root = _project(tmp_path)
    build = (
        "mkdir -p dist && head -c 2048 /dev/zero > dist/app.js && head -c 8192 /dev/zero > dist/app.js.map"
    )
    result = _experiment(
        root, ray_address, build, metric_measure="size_kb:dist !*.map", writable=["dist"]
    ).run()
    assert result.status == "ok", result.error
    assert result.value == 2.0 and not (root / "dist" / "app.js").exists()  # the worker's dist/, not ours


def test_an_output_holding_a_fifo_is_refused_on_the_worker(tmp_path: Path, ray_address: str) -> None:
    """The worker checks the output as the server does (`output_checks`): before the fix it measured 2 KB."""
    root = _project(tmp_path)
    build = "mkdir -p dist && head -c 2048 /dev/zero > dist/app.js && mkfifo dist/pipe"
    result = _experiment(root, ray_address, build, metric_measure="size_kb:dist", writable=["dist"]).run()
    assert result.status == "metric_error" and "'dist/pipe' is a FIFO" in (result.error or ""), result.error


def test_the_timeout_ends_the_job(tmp_path: Path, ray_address: str) -> None:
    root = _project(tmp_path)
    started = time.monotonic()
    result = _experiment(root, ray_address, "echo started; sleep 60; echo never", timeout=1.5).run()
    assert result.status == "timeout" and "1.5 s timeout" in (result.error or "")
    assert time.monotonic() - started < 15
    log = Path(result.log_path).read_text()
    assert "started" in log and "never" not in log


def test_cancel_stops_the_job(tmp_path: Path, ray_address: str) -> None:
    root = _project(tmp_path)
    experiment = _experiment(root, ray_address, "echo started; sleep 60")
    log = tmp_path / "logs" / "r1.log"

    def cancel_when_started() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and b"started" not in (log.read_bytes() if log.exists() else b""):
            time.sleep(0.1)
        experiment.cancel("client cancelled")

    threading.Thread(target=cancel_when_started, daemon=True).start()
    started = time.monotonic()
    result = experiment.run()
    assert result.status == "cancelled" and result.error == "client cancelled"
    assert time.monotonic() - started < 30


def test_the_run_cannot_forge_the_report_or_write_outside_its_paths(tmp_path: Path, ray_address: str) -> None:
    """A crash (exit 3) that prints fake reports, writes the wrapper's stdout, reads its memory, writes the
    target on the worker and leaves a daemon printing: exit 3 it stays, and none of it reaches the report."""
    root = _project(tmp_path)
    (root / "cheat.py").write_text(CHEAT)
    fake_begin = "#autoresearch-ray begin " + hashlib.sha256(b"mine").hexdigest()
    command = (
        f"echo '{fake_begin}'; echo '#autoresearch-ray end mine {{\"exit\":0,\"duration_s\":1}}'; "
        "python3 cheat.py; echo 'score: 9' >> train.py; "
        "(sleep 1; echo LATE DAEMON) & echo 'score: 2'; exit 3"
    )
    result = _experiment(root, ray_address, command).run()
    assert (
        result.status == "crash" and result.exit_code == 3 and (result.error or "").startswith("exit code 3")
    )
    log = Path(result.log_path).read_text()
    assert fake_begin in log  # printed output, taken as output
    assert "no wrapper in sight" in log and "WROTE" not in log and "READ" not in log  # its own pid namespace
    assert "train.py: Read-only file system" in log
    assert "LATE DAEMON" not in log


def test_missing_ray_or_no_cluster_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = RayBackend.from_config(_config("true", ray_address=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(
        ConfigError, match=r"no Ray job API answers at http://127.0.0.1:\d+ .*ray start --head"
    ):
        backend.check()
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.job_submission", None)
    with pytest.raises(ConfigError, match=r"pip install 'mcp-autoresearch\[ray\]'"):
        backend.check()


def test_the_address_comes_from_the_config_then_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "http://from-env:8265")
    assert RayBackend.from_config(_config("true")).address == "http://from-env:8265"
    assert (
        RayBackend.from_config(_config("true", ray_address="http://head:8265/")).address == "http://head:8265"
    )
    monkeypatch.delenv("RAY_ADDRESS")
    assert RayBackend.from_config(_config("true")).address == "http://127.0.0.1:8265"


def _pair() -> tuple[int, int]:
    """The server's key pair, as a RayJobRun makes it."""
    return ray_records.key_pair()


def test_only_the_wrappers_chain_counts_and_any_other_line_marks_the_log_tampered(
    capfd: pytest.CaptureFixture[str],
) -> None:
    private, public = _pair()
    out = ray_records.Framed()
    out.begin(public)
    out.data(b"line one\n")
    out.data(b"#autoresearch-ray end {}\n\xff\r")
    out.flush()
    honest = capfd.readouterr().out
    out.end({"exit": 3})
    end = capfd.readouterr().out
    written: list[bytes] = []
    unframer = Unframer(written.append, private)
    unframer.feed("|before the begin record: not the run's\nRay: Runtime env is setting up\n")
    unframer.feed(honest + end)
    assert unframer.report == {"exit": 3} and unframer.tampered is None
    assert b"".join(written) == b"line one\n#autoresearch-ray end {}\n\xff\r"
    for foreign in ("|score: -1000\n", honest.splitlines()[1] + "\n", "#autoresearch-ray begin 5\n"):
        replay = Unframer([].append, private)
        replay.feed(honest + foreign + end)
        assert replay.tampered is not None, foreign
    dropped = Unframer([].append, private)  # a record taken out: the next one has the wrong number
    dropped.feed("\n".join(honest.splitlines()[:-1]) + "\n" + end)
    assert dropped.tampered is not None and dropped.report is None
    after = Unframer([].append, private)
    after.feed(honest + end + "|late\n")
    assert after.report == {"exit": 3} and "after the wrapper's end record" in (after.tampered or "")
    other_private, _ = _pair()  # another job's server key: none of this job's tags verify
    stranger = Unframer([].append, other_private)
    stranger.feed(honest + end)
    assert stranger.report is None and stranger.tampered is not None


def test_the_wrapper_frames_every_byte(capfd: pytest.CaptureFixture[str]) -> None:
    private, public = _pair()
    out = ray_records.Framed()
    out.begin(public)
    out.data(b"plain\n\xffbinary\nprogress\r")
    out.data(b"x" * (ray_records.RECORD_BYTES + 10))
    out.flush()
    written: list[bytes] = []
    unframer = Unframer(written.append, private)
    unframer.feed(capfd.readouterr().out)
    assert unframer.tampered is None
    assert b"".join(written) == b"plain\n\xffbinary\nprogress\r" + b"x" * (ray_records.RECORD_BYTES + 10)


def test_the_wrapper_measures_sizes_as_the_server_does(tmp_path: Path) -> None:
    (tmp_path / "dist" / "sub").mkdir(parents=True)
    (tmp_path / "dist" / "a.js").write_bytes(b"a" * 1000)
    (tmp_path / "dist" / "sub" / "b.js").write_bytes(b"b" * 300)
    (tmp_path / "dist" / "a.js.map").write_bytes(b"m" * 5000)
    spec = "size_kb:dist !*.map"
    started = time.time_ns() - 10**9
    local = output_size.scan_output(tmp_path / "dist", output_size.Measure.parse(spec)).size
    assert ray_wrapper.measure_size(str(tmp_path), spec, started, None) == local == 1300
    assert "does not exist" in str(ray_wrapper.measure_size(str(tmp_path), "size_kb:nothing", started, None))
    os.mkfifo(tmp_path / "dist" / "pipe")  # what the server's own check refuses, the worker's refuses too
    assert "'dist/pipe' is a FIFO" in str(ray_wrapper.measure_size(str(tmp_path), spec, started, None))
    os.remove(tmp_path / "dist" / "pipe")
    (tmp_path / "dist" / "out").symlink_to("/etc")
    assert "'dist/out' is a symbolic link" in str(
        ray_wrapper.measure_size(str(tmp_path), spec, started, None)
    )
    assert "outside the project" in str(
        ray_wrapper.measure_size(str(tmp_path), "size_kb:../x", started, None)
    )


def test_a_large_output_is_streamed_not_held(tmp_path: Path, ray_address: str) -> None:
    """200 MB without a newline, then half a million short lines: the server's memory stays flat, and the log
    keeps the default 64 MB of it (the beginning and the end, `log_limit_mb`)."""
    root = _project(tmp_path)
    command = "head -c 200000000 /dev/zero | tr '\\0' x; echo; seq 1 500000; echo 'score: 9'"
    experiment = _experiment(root, ray_address, command)
    me = psutil.Process()
    base, peak, done = me.memory_info().rss, [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = experiment.run()
    finally:
        done.set()
        sampler.join()
    assert result.status == "ok" and result.value == 9.0
    assert 3_000_000 < Path(result.log_path).stat().st_size <= 64_000_200
    assert result.output_cut and "more than log_limit_mb = 64" in result.output_cut
    assert peak[0] - base < 60 * 1024 * 1024


def test_isolation_required_without_landlock_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """As the local keeper: the confine mark, exit 125, and the command never ran."""

    def no_landlock() -> int:
        raise ray_wrapper.landlock_rules.ConfineError("the kernel has no Landlock")

    monkeypatch.setattr(ray_wrapper.landlock_rules, "probe", no_landlock)
    private, public = _pair()
    spec = {"command": "touch ran", "isolation": "required", "timeout": 10, "server_public": f"{public:x}"}
    assert run_wrapper(spec, str(tmp_path)) == 125
    written: list[bytes] = []
    unframer = Unframer(written.append, private)
    unframer.feed(capfd.readouterr().out)
    assert b"".join(written).startswith(b"autoresearch-confine: no Landlock: the kernel has no Landlock")
    assert unframer.report is not None and unframer.report["exit"] == 125 and not unframer.report["confined"]
    assert not (tmp_path / "ran").exists()


NO_NAMESPACES = str(Path(__file__).parent / "helpers" / "no_namespaces.py")


def _ship(job: Path, spec: dict) -> None:
    """The package's wrapper, modules and spec in `job`, as Ray extracts them."""
    (job / ".autoresearch-ray").mkdir(exist_ok=True)
    for module in SHIPPED:
        assert module.__file__ is not None
        shutil.copy(module.__file__, job / ".autoresearch-ray")
    (job / ray_wrapper.SPEC).write_text(json.dumps(spec))


def _wrapper_without_namespaces(job: Path, spec: dict) -> tuple[int, str]:
    """The shipped wrapper as Ray starts it, on a worker that refuses namespaces (a seccomp filter, as where user
    namespaces are disabled): its exit status and its framed stdout."""
    _ship(job, spec)
    done = subprocess.run(
        [sys.executable, NO_NAMESPACES, sys.executable, "-I", "-S", ".autoresearch-ray/ray_wrapper.py"],
        cwd=job,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode, done.stdout


def test_the_tmpdir_of_a_killed_wrapper_is_removed_by_the_next_one(tmp_path: Path) -> None:
    """Ray's stop_job SIGKILLs a wrapper that outlives its grace: its run's TMPDIR stayed in the worker's /tmp
    for good (one empty folder per such job). It is named for its wrapper now, and the next wrapper on the
    worker removes the folders of wrappers that are gone."""
    job, temp = tmp_path / "job", tmp_path / "tmp"
    job.mkdir()
    temp.mkdir()
    _, public = _pair()
    spec = {"command": 'touch "$TMPDIR/started"; sleep 60', "timeout": 120, "server_public": f"{public:x}"}
    _ship(job, spec)
    argv = [sys.executable, "-I", "-S", ".autoresearch-ray/ray_wrapper.py"]
    environment = {**os.environ, "TMPDIR": str(temp)}
    wrapper = subprocess.Popen(argv, cwd=job, env=environment, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(temp.glob("autoresearch-run-*/started")):
        assert time.monotonic() < deadline and wrapper.poll() is None
        time.sleep(0.05)
    [left] = list(temp.iterdir())
    assert str(wrapper.pid) in left.name  # named for its wrapper
    wrapper.kill()
    wrapper.wait()
    deadline = time.monotonic() + 60
    while any(
        "confine.py" in " ".join(p.info["cmdline"] or []) and str(job) in (p.info["cwd"] or "")
        for p in psutil.process_iter(["cmdline", "cwd"])
    ):
        assert time.monotonic() < deadline  # the keeper ends with its wrapper (its parent-death signal)
        time.sleep(0.05)
    assert left.exists()
    _ship(job, {**spec, "command": "echo ok", "timeout": 30})
    done = subprocess.run(argv, cwd=job, env=environment, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    assert list(temp.iterdir()) == []  # the killed wrapper's folder and the next one's own


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_a_worker_running_as_an_ordinary_user_gets_the_view_too() -> None:
    """Ray workers often run as an ordinary user: the wrapper (uid 12345, system python) still gets the keeper's
    view, through a user namespace (its probe runs before the wrapper becomes non-dumpable, or the uid could
    not be mapped)."""
    job = Path(tempfile.mkdtemp(prefix="autoresearch-job-"))
    try:
        private, public = _pair()
        _ship(
            job,
            {
                "command": "ls /proc | grep -c '^[0-9]'",
                "isolation": "required",
                "timeout": 10,
                "server_public": f"{public:x}",
            },
        )
        shutil.chown(job, 12345, 12345)
        done = subprocess.run(
            [
                "setpriv",
                "--reuid",
                "12345",
                "--regid",
                "12345",
                "--clear-groups",
                "/usr/bin/python3",
                "-I",
                "-S",
                ".autoresearch-ray/ray_wrapper.py",
            ],
            cwd=job,
            capture_output=True,
            text=True,
            check=False,
            env={"PATH": "/usr/bin:/bin", "HOME": str(job)},
        )
        written: list[bytes] = []
        unframer = Unframer(written.append, private)
        unframer.feed(done.stdout)
        report = unframer.report or {}
        assert done.returncode == 0 and report.get("namespaces") is True, (done.stdout, done.stderr)
        assert int(b"".join(written)) < 5  # its own processes only
    finally:
        shutil.rmtree(job)


def test_a_worker_without_namespaces_says_so_and_required_runs_nothing(tmp_path: Path) -> None:
    """No private network or process view on this worker: "auto" runs the command and the report says the run
    could reach the cluster; "required" runs nothing (exit 125, the confine mark), as without Landlock."""
    private, public = _pair()
    spec = {"command": "echo ran", "isolation": "auto", "timeout": 10, "server_public": f"{public:x}"}
    code, out = _wrapper_without_namespaces(tmp_path, spec)
    unframer = Unframer([].append, private)
    unframer.feed(out)
    report = unframer.report or {}
    assert code == 0 and report["exit"] == 0 and not report["namespaces"], out
    assert "namespaces: unshare: Operation not permitted" in report["note"]
    assert "could reach the cluster" in report["note"]
    written: list[bytes] = []
    unframer = Unframer(written.append, private)
    code, out = _wrapper_without_namespaces(
        tmp_path, {**spec, "command": "touch ran", "isolation": "required"}
    )
    unframer.feed(out)
    assert code == 125 and b"".join(written).startswith(
        b"autoresearch-confine: no private network or process view"
    )
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("isolation", ["auto", "off"])
def test_without_namespaces_the_run_still_cannot_open_the_wrappers_stdout_or_memory(
    tmp_path: Path, isolation: str
) -> None:
    """Where the wrapper is in the run's /proc (no pid namespace), its stdout and memory are refused to the run,
    root included: by Landlock, and with isolation "off" because the wrapper is non-dumpable."""
    (tmp_path / "cheat.py").write_text(CHEAT)
    private, public = _pair()
    spec = {
        "command": "python3 cheat.py",
        "isolation": isolation,
        "timeout": 10,
        "server_public": f"{public:x}",
    }
    written: list[bytes] = []
    unframer = Unframer(written.append, private)
    code, out = _wrapper_without_namespaces(tmp_path, spec)
    unframer.feed(out)
    text = b"".join(written).decode()
    assert code == 0 and unframer.tampered is None and not (unframer.report or {}).get("namespaces"), out
    assert "refused fd/1: Permission denied" in text and "refused mem: Permission denied" in text, text


def test_an_absolute_writable_entry_is_the_workers_own_inside_the_namespaces(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """/tmp is private to the run on a worker, but an absolute `writable` entry there (a cache shared between
    runs on purpose), even one that does not exist yet, is the worker's own directory."""
    shared = Path(tempfile.mkdtemp(prefix="autoresearch-shared-", dir="/tmp")) / "cache"
    private, public = _pair()
    spec = {
        "command": f"echo kept > {shared}/entry; touch /tmp/lost; true",
        "isolation": "required",
        "timeout": 10,
        "server_public": f"{public:x}",
        "write": [str(shared)],
    }
    try:
        assert run_wrapper(spec, str(tmp_path)) == 0, capfd.readouterr().out
        unframer = Unframer([].append, private)
        unframer.feed(capfd.readouterr().out)
        assert (unframer.report or {}).get("namespaces") is True
        assert (shared / "entry").read_text() == "kept\n" and not Path("/tmp/lost").exists()
    finally:
        shutil.rmtree(shared.parent)


def test_rays_files_and_token_are_hidden_from_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Where Ray's temp dir, ~/.ray and the token file lie outside the directories every view hides (here under
    the home directory), the keeper's view hides them too: another job's log, the cluster files in ~/.ray and
    the token are not readable; the job's own directory inside Ray's temp dir is."""
    base = Path(tempfile.mkdtemp(prefix="autoresearch-raytemp-", dir=Path.home()))
    try:
        session = base / "ray" / "session_1"
        root = session / "runtime_resources" / "job"
        root.mkdir(parents=True)
        (root / "mine.txt").write_text("OWN-FILE\n")
        (session / "logs").mkdir()
        (session / "logs" / "job-other.log").write_text("SECRET-LOG\n")
        (base / "home" / ".ray").mkdir(parents=True)
        (base / "home" / ".ray" / "cluster").write_text("SECRET-HOME\n")
        (base / "token").write_text("SECRET-TOKEN\n")
        monkeypatch.setenv("HOME", str(base / "home"))
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(base / "token"))
        private, public = _pair()
        command = f"cat mine.txt; cat {session}/logs/job-other.log; ls ~/.ray; cat {base}/token; echo done"
        spec = {"command": command, "isolation": "required", "timeout": 10, "server_public": f"{public:x}"}
        written: list[bytes] = []
        code = run_wrapper(spec, str(root))
        unframer = Unframer(written.append, private)
        unframer.feed(capfd.readouterr().out)
        output = b"".join(written).decode()
        assert code == 0 and (unframer.report or {}).get("namespaces") is True, output
        assert "OWN-FILE" in output and output.rstrip().endswith("done"), output
        assert "SECRET" not in output and "cluster" not in output, output
    finally:
        shutil.rmtree(base)


def test_a_snapshot_over_the_upload_limit_is_refused_before_upload(tmp_path: Path) -> None:
    root = _project(tmp_path)
    (root / "data.bin").write_bytes(b"\0" * 4096)
    (root / "node_modules").mkdir()
    (root / "node_modules" / "big.js").write_bytes(b"\0" * 4096)
    with pytest.raises(StartError, match=r"data.bin is 0 MiB, over Ray's upload limit .* shared_inputs"):
        build_package(root, tmp_path / "p.zip", [".git", "node_modules"], {}, 4000)
    build_package(root, tmp_path / "q.zip", [".git", "node_modules", "data.bin"], {"job": "j1"}, 1 << 20)
    names = set(zipfile.ZipFile(tmp_path / "q.zip").namelist())
    names_shipped = (
        "ray_wrapper",
        "ray_records",
        "command",
        "confine",
        "keeper_tree",
        "landlock",
        "namespaces",
        "output_dirs",
        "prepared",
        "run_tmpdirs",
        "standby",
        "view",
        "output_checks",
        "output_size",
        "write_grants",
    )
    shipped = {f".autoresearch-ray/{name}.py" for name in names_shipped}
    assert names == {"train.py", ray_wrapper.SPEC, *shipped}


SESSION_EVALUATE = """\
import runpy
ns = runpy.run_path("params.py")
print(f"score: {abs(ns['X'] - 3) + abs(ns['Y'] - 5):.6f}")
"""


@pytest.mark.anyio
async def test_a_short_session_with_two_slots_on_ray(tmp_path: Path, ray_address: str, monkeypatch) -> None:
    from .conftest import Agent, git, make_repo

    monkeypatch.setenv("AUTORESEARCH_SLOTS_DIR", str(tmp_path / "slots"))
    root = make_repo(
        tmp_path / "proj", {"params.py": "X = 0\n\n\n\nY = 0\n", "evaluate.py": SESSION_EVALUATE}
    )
    (root / "user_notes.txt").write_text("mine\n")
    overrides = {
        "target_file": "params.py",
        "run_command": "python3 evaluate.py",
        "metric_name": "score",
        "readonly_files": ["evaluate.py"],
        "keep_rule": "greedy",
        "slots": 2,
        "backend": "ray",
        "ray_address": ray_address,
        "ray_num_cpus": 0.5,
        "timeout": 120,
    }
    from mcp import Client

    from mcp_autoresearch.adapters.server import create_server
    from mcp_autoresearch.session.workspace import Workspace

    async with Client(create_server(Workspace(root, overrides))) as client:
        agent = Agent(client)
        started = await agent.ok("start_session", tag="ray1")
        assert started["slots"].startswith("2 slots (Ray)")
        await agent.ok("run_experiment", description="baseline")
        base = await agent.until_done()
        assert base["status"] == "ok" and base["values"] == [8.0, 8.0]
        assert (await agent.ok("commit_or_reset"))["decision"] == "keep"
        await agent.edit("X = 0", "X = 3")
        first = await agent.ok("run_experiment", description="X to 3")
        # The second candidate tries to write the user's tree from its worker: confined there, it cannot.
        attack = (
            f"try:\n    open({str(root / 'user_notes.txt')!r}, 'a').write('x')\n    print('wrote')\n"
            "except OSError as exc:\n    print('refused', exc.errno)\n"
        )
        await agent.ok("apply_edit", content="X = 0\n\n\n\nY = 5\n" + attack)
        second = await agent.ok("run_experiment", description="Y to 5, and an attack")
        assert {first["slot"], second["slot"]} == {0, 1}
        done = await agent.until_done()
        assert (await agent.ok("commit_or_reset", run_id=done["run_id"]))["decision"] == "keep"
        other = second if done["run_id"] == first["run_id"] else first
        run = await agent.until_done(other["run_id"])
        decision = await agent.ok("commit_or_reset", run_id=other["run_id"])
        if decision["decision"] == "rerun":  # built on the old best: merged onto the new one, on Ray again
            run = await agent.until_done(other["run_id"])
            decision = await agent.ok("commit_or_reset", run_id=other["run_id"])
        assert decision["decision"] == "keep" and run["value"] == 0.0, decision
        logs = (root / ".autoresearch" / "runs" / "ray1").glob(f"{second['run_id']}*.log")
        text = "".join(path.read_text() for path in logs)
        assert "refused" in text and "wrote" not in text
    assert (root / "user_notes.txt").read_text() == "mine\n"
    assert git(root, "status", "--porcelain", "--untracked-files=no") == ""


def test_a_restarted_server_stops_the_jobs_its_predecessor_left(tmp_path: Path, ray_address: str) -> None:
    from ray.job_submission import JobSubmissionClient

    root = _project(tmp_path)
    config = _config("sleep 60; echo 'score: 1'", ray_address=ray_address)
    backend = RayBackend.from_config(config)
    backend.job_prefix = "t1-abc-"
    experiment = Experiment(config, root, "r7", root.parent / "logs", isolation=ISOLATION, backend=backend)
    runner = threading.Thread(target=experiment.run, daemon=True)
    runner.start()
    client = JobSubmissionClient(ray_address)
    deadline = time.monotonic() + 60
    while not any(j.submission_id.startswith("autoresearch-t1-abc-r7-") for j in client.list_jobs()):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    other = RayBackend.from_config(config)
    other.job_prefix = "t2-abc-"  # another session's jobs on the same cluster are left alone
    assert other.stop_jobs("r7") == 0
    restarted = RayBackend.from_config(config)
    restarted.job_prefix = "t1-abc-"
    assert restarted.stop_jobs("r7") == 1
    runner.join(60)
    assert not runner.is_alive()
    [job] = [j for j in client.list_jobs() if j.submission_id.startswith("autoresearch-t1-abc-r7-")]
    assert job.status.is_terminal() and str(job.status) in ("STOPPED", "JobStatus.STOPPED")


def test_a_large_output_does_not_grow_the_clusters_log_of_the_job_past_the_limit(
    tmp_path: Path, ray_address: str
) -> None:
    """5 MB printed with log_limit_mb = 1: the server's log keeps 1 MB, and so should the cluster's."""
    from ray.job_submission import JobSubmissionClient

    root = _project(tmp_path)
    client = JobSubmissionClient(ray_address)
    before = {job.submission_id for job in client.list_jobs()}
    command = "head -c 5000000 /dev/zero | tr '\\0' x; echo; echo 'score: 9'"
    result = _experiment(root, ray_address, command, log_limit_mb=1).run()
    assert result.status == "ok" and result.value == 9.0 and result.output_cut, result
    [job] = [j for j in client.list_jobs() if j.submission_id not in before]
    assert len(client.get_job_logs(job.submission_id)) <= 2_000_000
    assert Path(result.log_path).stat().st_size <= 1_000_200


def test_a_private_head_that_lost_its_job_agents_port_is_found_out() -> None:
    """The CI's failure of 2026-12-06: a port the head was given was taken before its job agent bound it, so the
    agent lived without its HTTP service and every job was refused ("No available agent") for the 600 s the
    fixture waited. The fixture now sees it in the agent's log and starts a head on other ports: this pins the
    sign it looks for (a Ray that words it otherwise fails here, not by a 600 s wait in CI)."""
    import socket

    ports = ray_ports()
    with socket.socket() as taken:
        taken.bind(("", ports["--dashboard-agent-listen-port"]))
        taken.listen()
        head, address, temp = start_head(ports)
        try:
            assert head_ready(head, address, temp) is False
        finally:
            stop_head(head, temp)
    left = [p for p in psutil.process_iter(["cmdline"]) if any(temp in a for a in p.info["cmdline"] or ())]
    assert not left and not os.path.exists(temp), left
