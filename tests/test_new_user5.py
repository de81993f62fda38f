"""What stopped a new user on project kinds not tried before (a C project built by make, a data-science script
scored by an evaluation stage): real projects, the real configuration loader, the real messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_autoresearch.sandbox.policy import denied_write_hint
from mcp_autoresearch.setup.project import load_project

from .conftest import make_repo

MAKEFILE = "bench: bench.c\n\t$(CC) -O2 -o bench bench.c\n"
C_CONFIG = (
    'target_file = "bench.c"\nrun_command = "make -s && ./bench"\nmetric_name = "sort_ms"\n'
    'writable = ["bench"]\n'
)


def test_the_linker_refused_its_output_names_the_file() -> None:
    """A confined `make` whose binary lies at the project root: ld printed 'cannot open output file bench', and
    the message named 'output' as the path refused."""
    output = (
        "/usr/bin/ld: cannot open output file bench: Read-only file system\n"
        "collect2: error: ld returned 1 exit status\nmake: *** [Makefile:7: bench] Error 1\n"
    )
    hint = denied_write_hint(output)
    assert hint is not None and "refused a write (bench)" in hint, hint


def c_project(tmp_path: Path) -> Path:
    """A C program `make` builds as `bench` at the project root, `writable = ["bench"]` in its config."""
    files = {
        "bench.c": "int main(void){return 0;}\n",
        "Makefile": MAKEFILE,
        ".gitignore": "bench\n",
        "autoresearch.toml": C_CONFIG,
    }
    return make_repo(tmp_path / "c", files)


def test_a_writable_entry_not_there_yet_is_said_to_become_a_directory(tmp_path: Path) -> None:
    """`writable = ["bench"]` for the binary `make` builds at the project root: the server made `bench` an
    empty directory before the run, `make` found it up to date and `./bench` was 'Permission denied'."""
    root = c_project(tmp_path)
    warnings = load_project(root).info.warnings
    said = [w for w in warnings if w.startswith("writable entry 'bench'")]
    assert said and "creates it as an empty directory" in said[0], warnings
    assert 'writable = ["build"]' in said[0] and "build/bench" in said[0]


def test_a_writable_entry_that_is_a_file_is_said_to_be_unreplaceable(tmp_path: Path) -> None:
    root = c_project(tmp_path)
    (root / "bench").write_bytes(b"\x7fELF")  # built once before the session
    warnings = load_project(root).info.warnings
    assert any(w.startswith("writable entry 'bench' is a file") for w in warnings), warnings


@pytest.mark.parametrize("listed", ['writable = ["out"]\n', 'writable = ["dist"]\n'])
def test_a_writable_directory_gets_no_such_warning(tmp_path: Path, listed: str) -> None:
    """An entry that is a directory is what writable means; a detected entry (Node's dist before the first
    build) is not the user's word and gets no warning either."""
    root = make_repo(
        tmp_path / "p",
        {
            "fit.py": "print(1)\n",
            "out/.keep": "",
            "autoresearch.toml": (
                f'target_file = "fit.py"\nrun_command = "python3 fit.py"\nmetric_name = "x"\n{listed}'
            ),
        },
    )
    (root / "dist").mkdir()
    assert not [w for w in load_project(root).info.warnings if w.startswith("writable entry")]
    node = make_repo(tmp_path / "web", {"package.json": '{"scripts": {"build": "x"}}', "src/index.js": "1\n"})
    assert not [w for w in load_project(node).info.warnings if w.startswith("writable entry")]


def test_an_evaluation_stage_without_hidden_answers_is_warned(tmp_path: Path) -> None:
    """A numpy script scored by `eval_command`: the scorer read the held-out labels from data.npz, which the run
    read too; one experiment saved the labels as its predictions and was kept with rmse 0, labelled
    'evaluation' (the run cannot choose the number) with no word about the answers."""
    config = (
        'target_file = "fit.py"\nrun_command = "mkdir -p out && python3 fit.py"\n'
        'eval_command = "python3 score.py"\nmetric_name = "rmse"\nwritable = ["out"]\n'
    )
    files = {
        "fit.py": "print(1)\n",
        "score.py": "print('rmse: 1')\n",
        "out/.keep": "",
        "autoresearch.toml": config,
    }
    root = make_repo(tmp_path / "ds", files)
    assert any("hidden is empty" in w for w in load_project(root).info.warnings)
    (root / "answers.npz").write_bytes(b"x")
    (root / "autoresearch.toml").write_text(config + 'hidden = ["answers.npz"]\n')
    assert not any("hidden is empty" in w for w in load_project(root).info.warnings)
