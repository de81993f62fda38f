"""The index entry of the target, after a decision, is written in-process exactly as git would leave it (no git
process), and git runs as before whenever the index or the target is anything but plain."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from mcp_autoresearch.session.workspace import Workspace
from mcp_autoresearch.vcs.index_file import parse_index, set_entry
from mcp_autoresearch.vcs.repo import Repo

from .conftest import GIT_ENV, decided_baseline, git, make_repo

TARGET = "src/deep/model.py"
FILES = {TARGET: "LR = 1\n", "src/other.py": "X = 1\n", "README.md": "demo\n", "data/eval.py": "E = 1\n"}
BRANCH = "autoresearch/t"


def _trace_commands(trace: Path) -> list[str]:
    """The git commands started while GIT_TRACE pointed at `trace`."""
    found = []
    for line in trace.read_text().splitlines() if trace.exists() else []:
        if "trace: built-in: git" in line or "trace: exec: git" in line:
            words = line.split("git ", 1)[1].split()
            found.append(next((w for w in words if not w.startswith("-") and "=" not in w), "?"))
    return found


def _project(tmp_path: Path, version: int, executable: bool = False) -> tuple[Repo, Path]:
    """A committed project on the session branch, its index of `version` with a cache tree (`TREE`)."""
    root = make_repo(tmp_path / "r", FILES)
    if executable:
        (root / TARGET).chmod(0o755)
        git(root, "add", TARGET)
        git(root, "commit", "-q", "-m", "executable")
    git(root, "checkout", "-q", "-b", BRANCH)
    git(root, "update-index", "--index-version", str(version))
    if version == 3:  # git keeps version 3 only while an entry has extended flags (else it writes 2)
        git(root, "update-index", "--skip-worktree", "data/eval.py")
    git(root, "write-tree")  # populates the cache tree
    data = (root / ".git" / "index").read_bytes()
    parsed = parse_index(data)
    assert parsed is not None and parsed.version == version
    assert [signature for signature, _start, _end in parsed.extensions] == [b"TREE"]
    return Repo(root), root


def _candidate(repo: Repo, root: Path, content: bytes) -> tuple[str, str]:
    """The server's candidate commit of `content` (as after `start_run`): (parent, candidate)."""
    parent = repo.head_commit()
    (root / TARGET).write_bytes(content)
    return parent, repo.commit_file(BRANCH, TARGET, content, "experiment", parent)


def _assert_clean(root: Path) -> None:
    """Everything git itself says of a repository whose index, work tree and HEAD agree."""
    assert git(root, "status", "--porcelain") == ""
    assert (
        subprocess.run(
            ["git", "diff", "--cached", "--quiet"], cwd=root, env={**os.environ, **GIT_ENV}
        ).returncode
        == 0
    )
    assert subprocess.run(["git", "diff", "--quiet"], cwd=root, env={**os.environ, **GIT_ENV}).returncode == 0
    assert git(root, "write-tree").strip() == git(root, "rev-parse", "HEAD^{tree}").strip()
    git(root, "fsck", "--strict", "--no-dangling")  # check=True: fails on any error


def _debug_stat(root: Path, path: str) -> dict[str, str]:
    """`git ls-files --debug` of one path, as {field: value}."""
    out = git(root, "ls-files", "--debug", "--", path)
    fields: dict[str, str] = {}
    for line in out.splitlines()[1:]:
        for part in line.strip().split("\t"):
            key, _, value = part.partition(": ")
            fields[key.strip()] = value.strip()
    return fields


def _assert_stat_recorded(root: Path, path: str) -> None:
    st = os.lstat(root / path)
    fields = _debug_stat(root, path)
    assert fields["mtime"] == f"{st.st_mtime_ns // 10**9}:{st.st_mtime_ns % 10**9}"
    assert fields["ctime"] == f"{st.st_ctime_ns // 10**9}:{st.st_ctime_ns % 10**9}"
    assert (fields["ino"], fields["size"]) == (str(st.st_ino & 0xFFFFFFFF), str(st.st_size))
    assert (fields["dev"], fields["uid"], fields["gid"]) == (
        str(st.st_dev & 0xFFFFFFFF),
        str(st.st_uid),
        str(st.st_gid),
    )


@pytest.mark.parametrize("version", [2, 3, 4])
def test_a_keep_writes_the_index_git_would_write(
    tmp_path: Path, version: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Byte for byte the index `git reset -q HEAD -- target` writes from the same one: the new blob, the file's
    stat data, the cache tree invalidated on the target's folders, the checksum."""
    repo, root = _project(tmp_path, version)
    _parent, candidate = _candidate(repo, root, b"LR = 2\n")
    index = root / ".git" / "index"
    before = index.read_bytes()
    trace = tmp_path / "trace"
    monkeypatch.setenv("GIT_TRACE", str(trace))
    repo.sync_index([TARGET], plain=True)
    assert _trace_commands(trace) == []  # no git process
    monkeypatch.delenv("GIT_TRACE")
    ours = index.read_bytes()
    theirs_file = tmp_path / "git-index"
    theirs_file.write_bytes(before)
    subprocess.run(
        ["git", "-c", "core.untrackedCache=false", "reset", "-q", "HEAD", "--", TARGET],
        cwd=root,
        env={**os.environ, **GIT_ENV, "GIT_INDEX_FILE": str(theirs_file)},
        check=True,
    )
    assert ours == theirs_file.read_bytes()
    assert (
        git(root, "ls-files", "-s", TARGET).split()[1]
        == git(root, "rev-parse", f"{candidate}:{TARGET}").strip()
    )
    _assert_stat_recorded(root, TARGET)
    _assert_clean(root)


@pytest.mark.parametrize("version", [2, 3, 4])
@pytest.mark.parametrize("executable", [False, True])
def test_a_discard_restores_the_file_and_its_entry_as_git_would(
    tmp_path: Path, version: int, executable: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, root = _project(tmp_path, version, executable)
    parent, _candidate_commit = _candidate(repo, root, b"LR = 2\n")
    (root / TARGET).chmod(0o600)  # git recreates the file: its permissions come from the tree entry
    trace = tmp_path / "trace"
    monkeypatch.setenv("GIT_TRACE", str(trace))
    repo.restore_paths(parent, [TARGET], plain=True)
    repo.move_branch(BRANCH, parent, "discard")
    assert _trace_commands(trace) == []
    monkeypatch.delenv("GIT_TRACE")
    assert (root / TARGET).read_bytes() == b"LR = 1\n"
    umask = os.umask(0o022)
    os.umask(umask)
    expected = (0o777 if executable else 0o666) & ~umask
    assert stat.S_IMODE(os.lstat(root / TARGET).st_mode) == expected
    assert git(root, "ls-files", "-s", TARGET).split()[:2] == [
        "100755" if executable else "100644",
        git(root, "rev-parse", f"{parent}:{TARGET}").strip(),
    ]
    _assert_stat_recorded(root, TARGET)
    _assert_clean(root)


def test_unstage_writes_an_unrefreshed_entry_when_the_file_differs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`git reset -q -- target` with another file in the work tree: HEAD's blob, zero stat data (git compares
    the content next time), byte for byte git's index."""
    repo, root = _project(tmp_path, 2)
    _candidate(repo, root, b"LR = 2\n")
    repo.sync_index([TARGET], plain=True)
    (root / TARGET).write_bytes(b"LR = 3\n")
    git(root, "add", TARGET)
    index = root / ".git" / "index"
    before = index.read_bytes()
    trace = tmp_path / "trace"
    monkeypatch.setenv("GIT_TRACE", str(trace))
    repo.unstage([TARGET], plain=True)
    assert _trace_commands(trace) == []
    monkeypatch.delenv("GIT_TRACE")
    theirs_file = tmp_path / "git-index"
    theirs_file.write_bytes(before)
    env = {**os.environ, **GIT_ENV, "GIT_INDEX_FILE": str(theirs_file)}
    subprocess.run(
        ["git", "-c", "core.untrackedCache=false", "reset", "-q", "--", TARGET], cwd=root, env=env, check=True
    )
    assert index.read_bytes() == theirs_file.read_bytes()
    assert _debug_stat(root, TARGET)["size"] == "0"
    assert git(root, "status", "--porcelain") == f" M {TARGET}\n"
    assert git(root, "write-tree").strip() == git(root, "rev-parse", "HEAD^{tree}").strip()


def test_a_racily_clean_file_changed_since_is_smudged_as_git_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another file changed within the second of the index, same size, same mtime forced back: git smudges its
    entry (size 0) when it writes the index, so that the later index does not vouch for its stale stat data."""
    repo, root = _project(tmp_path, 2)
    _candidate(repo, root, b"LR = 2\n")
    other = root / "src" / "other.py"
    before = os.lstat(other)
    other.write_bytes(b"X = 9\n")  # same size
    os.utime(other, ns=(before.st_atime_ns, before.st_mtime_ns))
    _backdate_index(root)  # every entry racily clean: written after the index (as within its second)
    trace = tmp_path / "trace"
    monkeypatch.setenv("GIT_TRACE", str(trace))
    repo.sync_index([TARGET], plain=True)
    assert _trace_commands(trace) == []
    monkeypatch.delenv("GIT_TRACE")
    assert _debug_stat(root, "src/other.py")["size"] == "0"
    assert _debug_stat(root, "README.md")["size"] == "5"  # unchanged: left as it was
    assert git(root, "status", "--porcelain") == " M src/other.py\n"


def _backdate_index(root: Path) -> None:
    old = 1_000_000_000
    os.utime(root / ".git" / "index", (old, old))


def test_a_racily_clean_symlink_is_left_to_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, root = _project(tmp_path, 2)
    (root / "link").symlink_to("README.md")
    git(root, "add", "link")
    git(root, "commit", "-q", "-m", "link")
    _candidate(repo, root, b"LR = 2\n")
    _backdate_index(root)
    trace = tmp_path / "trace"
    monkeypatch.setenv("GIT_TRACE", str(trace))
    repo.sync_index([TARGET], plain=True)
    assert _trace_commands(trace) == ["reset"]
    monkeypatch.delenv("GIT_TRACE")
    _assert_clean(root)


def _index_state(root: Path) -> bytes:
    return (root / ".git" / "index").read_bytes()


def _unusual_index(root: Path, kind: str) -> None:
    if kind == "split-index":
        git(root, "update-index", "--split-index")
    elif kind == "offset-tables":  # EOIE and IEOT, for git's threaded index reader
        git(root, "config", "index.recordEndOfIndexEntries", "true")
        git(root, "config", "index.recordOffsetTable", "true")
        git(root, "update-index", "--force-write-index")
    else:
        git(root, "-c", "core.untrackedCache=true", "update-index", "--untracked-cache")
        git(root, "-c", "core.untrackedCache=true", "status")  # fills it
    signature = {"split-index": b"link", "offset-tables": b"EOIE"}.get(kind, b"UNTR")
    assert signature in (root / ".git" / "index").read_bytes()


@pytest.mark.parametrize("kind", ["split-index", "untracked-cache", "offset-tables", "filter", "eol"])
def test_anything_unusual_is_left_to_git_and_ends_right(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, root = _project(tmp_path, 2)
    if kind in ("split-index", "untracked-cache", "offset-tables"):
        _unusual_index(root, kind)
    else:
        attribute = "filter=lower" if kind == "filter" else "text eol=crlf"
        (root / ".gitattributes").write_text(f"*.py {attribute}\n")
        git(root, "config", "filter.lower.clean", "cat")
        git(root, "add", ".gitattributes")
        git(root, "commit", "-q", "-m", "attributes")
        repo = Repo(root)
    plain = repo.is_plain_file(TARGET)
    assert plain == (kind not in ("filter", "eol"))
    parent, _candidate_commit = _candidate(repo, root, b"LR = 2\n")
    trace = tmp_path / "trace"
    monkeypatch.setenv("GIT_TRACE", str(trace))
    repo.sync_index([TARGET], plain=plain)
    assert _trace_commands(trace) == ["reset"]
    monkeypatch.delenv("GIT_TRACE")
    _assert_clean(root)
    (root / TARGET).write_bytes(b"LR = 3\n")
    parent = repo.head_commit()
    repo.commit_file(BRANCH, TARGET, b"LR = 3\n", "experiment", parent)
    if kind == "untracked-cache":
        _unusual_index(root, kind)  # the server's git commands drop it (`core.untrackedCache=false`)
    monkeypatch.setenv("GIT_TRACE", str(trace))
    trace.unlink()
    repo.restore_paths(parent, [TARGET], plain=plain)
    assert _trace_commands(trace) == ["checkout"]
    monkeypatch.delenv("GIT_TRACE")
    repo.move_branch(BRANCH, parent, "discard")
    _assert_clean(root)


def test_a_held_index_lock_is_never_touched_and_git_does_the_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, root = _project(tmp_path, 2)
    _parent, candidate = _candidate(repo, root, b"LR = 2\n")
    lock = root / ".git" / "index.lock"
    lock.write_bytes(b"another git command's index")
    before = _index_state(root)
    blob = bytes.fromhex(git(root, "rev-parse", f"{candidate}:{TARGET}").strip())
    assert not set_entry(root / ".git" / "index", root, TARGET, blob, 0o100644)
    assert lock.read_bytes() == b"another git command's index" and _index_state(root) == before
    lock.unlink()  # the other command is done
    trace = tmp_path / "trace"
    monkeypatch.setenv("GIT_TRACE", str(trace))
    repo.sync_index([TARGET], plain=True)
    assert _trace_commands(trace) == []
    _assert_clean(root)


def test_a_folder_swapped_for_a_link_is_left_to_git(tmp_path: Path) -> None:
    """A discard never writes through a symlinked folder out of the project: git's own checkout decides."""
    repo, root = _project(tmp_path, 2)
    parent, _candidate_commit = _candidate(repo, root, b"LR = 2\n")
    outside = tmp_path / "outside"
    (root / "src" / "deep").rename(outside)
    (root / "src" / "deep").symlink_to(outside)
    blob = bytes.fromhex(git(root, "rev-parse", f"{parent}:{TARGET}").strip())
    assert not set_entry(root / ".git" / "index", root, TARGET, blob, 0o100644, b"LR = 1\n")
    assert (outside / "model.py").read_bytes() == b"LR = 2\n"


def test_the_engine_starts_no_git_process_to_decide_a_plain_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the real engine, keeps of a new best and discards alternating: the decisions update the index
    in-process (the check before each run is answered from stat data by `tracked.py`, whose own racy window
    may make it run `git status` again near the session's start)."""
    root = tmp_path / "p"
    root.mkdir()
    (root / "params.sh").write_text("K=1000\n")
    (root / "autoresearch.toml").write_text(
        'target_file = "params.sh"\nrun_command = \'. ./params.sh; echo "score: $K"\'\nmetric_name = "score"\n'
        'isolation = "off"\n'
    )
    make_repo(root, {})
    for name, value in GIT_ENV.items():
        monkeypatch.setenv(name, value)
    workspace = Workspace(root)
    try:
        session = decided_baseline(workspace, "t")
        trace = tmp_path / "trace"
        monkeypatch.setenv("GIT_TRACE", str(trace))
        best, decisions = 1000, []
        for step in range(4):
            value = best - 1 if step % 2 == 0 else best + 100 + step  # lower is better: keep, then discard
            session.apply_edit([{"old_text": f"K={best}", "new_text": f"K={value}"}], None, None, None)
            run_id = session.start_run(f"K={value}")
            assert isinstance(run_id, str)
            handle = session.run_handle(run_id)
            assert handle is not None and handle.wait(60)
            decisions.append(session.commit_or_reset(run_id).decision)
            best = value if decisions[-1] == "keep" else best
    finally:
        workspace.shutdown()
    assert decisions == ["keep", "discard", "keep", "discard"]
    assert [command for command in _trace_commands(trace) if command != "status"] == []
    assert (root / "params.sh").read_text() == f"K={best}\n"
    _assert_clean(root)
