"""Git objects read in-process on the experiment's path agree with git, whether loose or packed."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_autoresearch.vcs.repo import Repo

from .conftest import git, make_repo


@pytest.mark.parametrize("packed", [False, True])
def test_files_and_commits_read_in_process_agree_with_git(tmp_path: Path, packed: bool) -> None:
    root = make_repo(tmp_path / "r", {"src/model.py": "LR = 1\n", "README.md": "demo\n"})
    if packed:
        git(root, "gc", "-q")  # every object packed: read through git cat-file
    repo = Repo(root)
    head = repo.head_commit()
    assert repo.show_file(head, "src/model.py") == b"LR = 1\n"
    for missing in ("nope.py", "README.md/below", "src/nope.py"):
        with pytest.raises(KeyError):
            repo.show_file(head, missing)
    commit = repo.write_commit("src/model.py", b"LR = 2\n", "experiment: LR 2", head)
    assert git(root, "show", f"{commit}:src/model.py") == "LR = 2\n"
    assert git(root, "show", f"{commit}:README.md") == "demo\n"
    assert git(root, "rev-parse", f"{commit}^").strip() == head
    assert repo.show_file(commit, "src/model.py") == b"LR = 2\n"
    assert repo.show_file("HEAD", "src/model.py") == b"LR = 1\n"  # a name, not an id: through git
