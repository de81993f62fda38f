"""Configuration sources, precedence, the markdown format, and every kind of bad configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_autoresearch.errors import ConfigError
from mcp_autoresearch.setup.project import load_project
from mcp_autoresearch.setup.sources import parse_markdown_section

from .conftest import make_repo

BASE = {"train.py": "print('val_bpb: 1.0')\n", "prepare.py": "", "model.py": "x = 1\n", "other.py": "y = 2\n"}


def project(tmp_path: Path, **files: str) -> Path:
    return make_repo(
        tmp_path / "p", {**BASE, **{k.replace("__", "/").replace("_DOT_", "."): v for k, v in files.items()}}
    )


def test_markdown_section_format_of_the_original() -> None:
    text = """# Project
Some prose.
## autoresearch
- target_file: src/model.py
- run_command: `python train.py --epochs 5`
- metric_name: accuracy
- metric_parse: grep "accuracy:" run.log | tail -1 | awk '{print $2}'
- metric_direction: higher_is_better
- time_budget: 600
- readonly_files: data/dataset.py, config.yaml
### details (deeper heading stays inside)
- repeats: 3
## Other section
- target_file: must_not_be_read.py
"""
    values = parse_markdown_section(text, "CLAUDE.md")
    assert values == {
        "target_file": "src/model.py",
        "run_command": "python train.py --epochs 5",
        "metric_name": "accuracy",
        "metric_parse": "grep \"accuracy:\" run.log | tail -1 | awk '{print $2}'",
        "metric_direction": "higher_is_better",
        "time_budget": "600",
        "readonly_files": "data/dataset.py, config.yaml",
        "repeats": "3",
    }


def test_markdown_heading_in_code_fence_is_ignored() -> None:
    text = "```\n## autoresearch\n- target_file: nope.py\n```\n"
    assert parse_markdown_section(text, "CLAUDE.md") is None


def test_precedence_and_per_key_sources(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        autoresearch_DOT_toml='target_file = "model.py"\n',
        pyproject_DOT_toml='[project]\nname="x"\n[tool.autoresearch]\ntarget_file = "other.py"\ntime-budget = 42\n',
        CLAUDE_DOT_md="## autoresearch\n- time_budget: 7\n- metric_name: acc\n- metric_direction: higher\n",
        AGENTS_DOT_md="## autoresearch\n- metric_name: loss\n- repeats: 2\n",
    )
    info = load_project(root).info
    assert info.target_file == "model.py"
    assert info.config_source["target_file"] == "autoresearch.toml"
    assert info.time_budget == 42
    assert info.config_source["time_budget"] == "pyproject.toml [tool.autoresearch]"
    assert info.timeout == 84  # 2 x time_budget
    assert info.metric_name == "acc" and info.config_source["metric_name"] == "CLAUDE.md"
    assert info.metric_direction == "higher_is_better"
    project_config = load_project(root).config
    assert project_config.repeats == 2
    assert info.config_source["repeats"] == "AGENTS.md"
    assert info.config_source["run_command"] == "auto-detected (ml)"
    # A metric the user configured is read from the output, not from detection's metric source.
    assert "acc" in info.metric_source


def test_toml_autoresearch_table_form(tmp_path: Path) -> None:
    root = project(
        tmp_path, autoresearch_DOT_toml='[autoresearch]\nmetric_name = "score"\nmin_delta = 0.01\n'
    )
    loaded = load_project(root)
    assert loaded.config.metric_name == "score" and loaded.config.min_delta == 0.01


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        (
            {"CLAUDE_DOT_md": "## autoresearch\n- time_budget: abc\n"},
            "CLAUDE.md (## autoresearch): invalid value 'abc' for 'time_budget'",
        ),
        ({"CLAUDE_DOT_md": "## autoresearch\n- time_bugdet: 3\n"}, "did you mean 'time_budget'"),
        ({"AGENTS_DOT_md": "## autoresearch\n- metric_direction: sideways\n"}, "'metric_direction'"),
        ({"autoresearch_DOT_toml": "target_file = [\n"}, "autoresearch.toml: not valid TOML"),
        ({"autoresearch_DOT_toml": "repeats = 0\n"}, "'repeats'"),
        ({"autoresearch_DOT_toml": "metric_regex = 'no group'\n"}, "exactly one group"),
        ({"autoresearch_DOT_toml": "metric_regex = '(unclosed'\n"}, "not a valid regular expression"),
        ({"autoresearch_DOT_toml": "timeout = -5\n"}, "'timeout'"),
        ({"autoresearch_DOT_toml": "metric_measure = 'size_gb:x'\n"}, "metric_measure"),
        ({"pyproject_DOT_toml": "[tool]\nautoresearch = 3\n"}, "must be a table"),
        (
            {"pyproject_DOT_toml": "[tool.autoresearch]\nrepeats = 'many'\n"},
            "pyproject.toml [tool.autoresearch]",
        ),
        ({"CLAUDE_DOT_md": "## autoresearch\n- repeats: 2\n- repeats: 3\n"}, "set twice"),
        ({"autoresearch_DOT_toml": 'target_file = "missing.py"\n'}, "does not exist"),
        ({"autoresearch_DOT_toml": 'target_file = "../outside.py"\n'}, "outside the project"),
        ({"autoresearch_DOT_toml": 'target_file = "/etc/passwd"\n'}, "relative"),
        ({"autoresearch_DOT_toml": 'target_file = ".git/config"\n'}, "inside .git"),
        (
            {"autoresearch_DOT_toml": 'target_file = "prepare.py"\nreadonly_files = ["prepare.py"]\n'},
            "readonly",
        ),
        ({"autoresearch_DOT_toml": 'readonly_files = ["../x"]\n'}, "outside the project"),
        ({"autoresearch_DOT_toml": 'target_file = "sub"\n', "sub__f_DOT_py": ""}, "not a regular file"),
    ],
)
def test_bad_configuration_is_one_clear_error(tmp_path: Path, files: dict[str, str], fragment: str) -> None:
    root = project(tmp_path, **files)
    with pytest.raises(ConfigError) as caught:
        load_project(root)
    message = str(caught.value)
    assert fragment in message
    assert "\n" not in message


def test_binary_config_file_is_reported(tmp_path: Path) -> None:
    root = project(tmp_path)
    (root / "CLAUDE.md").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="CLAUDE.md: not valid UTF-8"):
        load_project(root)


def test_symlinked_target_is_refused(tmp_path: Path) -> None:
    root = project(tmp_path)
    (root / "link.py").symlink_to(root / "model.py")
    (root / "autoresearch.toml").write_text('target_file = "link.py"\n')
    with pytest.raises(ConfigError, match="symbolic link"):
        load_project(root)


def test_symlink_escaping_project_is_refused(tmp_path: Path) -> None:
    root = project(tmp_path)
    outside = tmp_path / "outside.py"
    outside.write_text("x\n")
    (root / "esc.py").symlink_to(outside)
    (root / "autoresearch.toml").write_text('target_file = "esc.py"\n')
    with pytest.raises(ConfigError, match="outside the project"):
        load_project(root)


def test_nothing_matches_gives_unknown_with_instructions(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "empty", {"notes.txt": "hello\n"})
    info = load_project(root).info
    assert info.project_type == "unknown"
    assert not info.ready
    assert "autoresearch.toml" in info.message and "CLAUDE.md" in info.message


def test_custom_project_from_markdown_only(tmp_path: Path) -> None:
    root = make_repo(
        tmp_path / "c",
        {
            "solver.sh": "echo 1\n",
            "CLAUDE.md": (
                "## autoresearch\n- target_file: solver.sh\n- run_command: sh solver.sh\n- metric_name: score\n"
                "- metric_direction: higher_is_better\n"
            ),
        },
    )
    info = load_project(root).info
    assert info.project_type == "custom"
    assert info.ready
    assert info.evidence == ["CLAUDE.md"]


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ('readonly_files = [""]\n', "not empty"),
        ('readonly_files = ["."]\n', "not empty"),
        ('metric_name = "val loss"\n', "one word"),
        ('target_file = "model.py"\nreadonly_files = ["."]\n', "readonly_files"),
    ],
)
def test_more_bad_values(tmp_path: Path, toml: str, fragment: str) -> None:
    root = project(tmp_path, autoresearch_DOT_toml=toml)
    with pytest.raises(ConfigError, match=fragment):
        load_project(root)


def test_target_inside_a_readonly_directory_is_refused(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        eval__check_DOT_py="x\n",
        autoresearch_DOT_toml='target_file = "eval/check.py"\nreadonly_files = ["eval"]\n',
    )
    with pytest.raises(ConfigError, match="read-only"):
        load_project(root)


def test_custom_project_from_autoresearch_toml_only(tmp_path: Path) -> None:
    """Item 12.3: a project configured only by autoresearch.toml is `custom`, not `unknown` with advice to add the
    file it just read; and metric_source (which goes into the loop prompt) describes the configured metric."""
    root = make_repo(
        tmp_path / "c",
        {
            "solver.sh": "echo 'score: 1'\n",
            "autoresearch.toml": (
                'target_file = "solver.sh"\nrun_command = "sh solver.sh"\nmetric_name = "score"\n'
                "metric_regex = 'score: (\\d+)'\n"
            ),
        },
    )
    info = load_project(root).info
    assert info.project_type == "custom"
    assert info.ready and info.message.startswith("Ready")
    assert info.evidence == ["autoresearch.toml"]
    assert info.config_source["target_file"] == "autoresearch.toml"
    assert "metric_regex" in info.metric_source


def test_configured_metric_of_a_detected_project_is_described_as_configured(tmp_path: Path) -> None:
    """A metric that autoresearch.toml (a label starting with 'auto') configures is not detection's metric."""
    root = project(
        tmp_path,
        autoresearch_DOT_toml='metric_name = "loss"\nmetric_parse = "tail -1 run.log"\n',
    )
    info = load_project(root).info
    assert info.project_type == "ml"
    assert info.config_source["metric_name"] == "autoresearch.toml"
    assert "metric_parse" in info.metric_source and "val_bpb" not in info.metric_source
    # A metric read from the output under the configured name, when only the name is configured.
    root2 = project(tmp_path / "two", autoresearch_DOT_toml='metric_name = "loss"\n')
    assert "'loss: <float>'" in load_project(root2).info.metric_source
