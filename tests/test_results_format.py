"""Item 12.18: results.tsv in karpathy/autoresearch's columns for a project in its layout (analysis.ipynb reads
them), the original tool's columns for every other type, and `results_format` to choose; written and rebuilt
from the JSONL in the session's format."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_autoresearch.errors import ConfigError
from mcp_autoresearch.setup.project import load_project

from .conftest import make_repo, run_cli

pytestmark = pytest.mark.anyio

KARPATHY_HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
ORIGINAL_HEADER = "commit\tmetric\tvalue\tstatus\tdescription"


async def two_experiments(agent, tag: str) -> None:
    await agent.ok("start_session", tag=tag)
    await agent.experiment("baseline")
    await agent.edit("LR = 0.5", "LR = 0.3")
    await agent.experiment('lower "LR"')


async def test_karpathy_layout_writes_and_rebuilds_karpathys_columns(ml_project: Path, agent_for) -> None:
    root = ml_project
    assert load_project(root).config.results_format == "karpathy"
    async with agent_for(root) as agent:
        await two_experiments(agent, "k")
    lines = (root / "results.tsv").read_text().splitlines()
    assert lines[0] == KARPATHY_HEADER
    assert [line.split("\t")[1:4] for line in lines[1:]] == [
        ["1.400000", "0.5", "keep"],
        ["1.200000", "0.5", "keep"],
    ]
    assert lines[2].endswith('\t"lower ""LR"""')  # quoted as pandas and csv read it
    written = (root / "results.tsv").read_text()
    # The CLI's karpathy view is the same text.
    assert run_cli("results", "--project", str(root), "--format", "karpathy").stdout == written

    # Rebuilt from the JSONL in the same format, whatever happened to the file.
    (root / "results.tsv").write_text(ORIGINAL_HEADER + "\n")
    async with agent_for(root) as agent:
        await agent.ok("start_session", tag="k")
        assert (await agent.client.read_resource("autoresearch://results")).contents[0].text == written
    assert (root / "results.tsv").read_text() == written


async def test_other_types_and_results_format_key(tmp_path: Path, agent_for) -> None:
    custom = make_repo(
        tmp_path / "c",
        {
            "train.py": "LR = 0.5\nprint(f'score: {LR}')\n",
            "autoresearch.toml": 'target_file = "train.py"\nrun_command = "python3 train.py"\nmetric_name = "score"\n',
        },
    )
    assert load_project(custom).config.results_format == "autoresearch"
    async with agent_for(custom) as agent:
        await agent.ok("start_session", tag="c")
        await agent.experiment("baseline")
    assert (custom / "results.tsv").read_text().splitlines()[0] == ORIGINAL_HEADER

    (custom / "autoresearch.toml").write_text(
        (custom / "autoresearch.toml").read_text() + 'results_format = "karpathy"\n'
    )
    assert load_project(custom).config.results_format == "karpathy"
    (custom / "autoresearch.toml").write_text('results_format = "karpathy-ish"\n')
    with pytest.raises(ConfigError, match="results_format"):
        load_project(custom)


async def test_karpathy_layout_can_keep_the_original_format(ml_project: Path, agent_for) -> None:
    async with agent_for(ml_project, {"results_format": "autoresearch"}) as agent:
        await agent.ok("start_session", tag="o")
        await agent.experiment("baseline")
    assert (ml_project / "results.tsv").read_text().splitlines()[0] == ORIGINAL_HEADER


async def test_a_row_the_page_cache_lost_is_written_again_from_the_jsonl(ml_project: Path, agent_for) -> None:
    """results.tsv's appends are not fsynced (the JSONL, which is, holds every row): after an OS crash that lost
    its last row, the next load writes it again."""
    async with agent_for(ml_project) as agent:
        await two_experiments(agent, "lost")
    tsv = ml_project / "results.tsv"
    whole = tsv.read_text()
    tsv.write_text(
        whole[: whole.rstrip("\n").rindex("\n") + 1]
    )  # as if the last append never reached the disk
    async with agent_for(ml_project) as agent:
        await agent.ok("start_session", tag="lost")
    assert tsv.read_text() == whole
