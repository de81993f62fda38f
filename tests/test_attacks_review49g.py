"""Hostile review 49g: the Ray backend (backends/ray_*.py).

- The package's configuration files keep the cluster's address in every form the server itself reads besides
  the one unquoted `ray_address =` line: a quoted key, the dashed key of pyproject.toml, and the `## autoresearch`
  section of CLAUDE.md / AGENTS.md. The run then reads where the cluster is.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from mcp_autoresearch.backends.ray_package import build_package
from mcp_autoresearch.setup.sources import read_markdown, read_pyproject, read_toml_file

from .helpers.ray_head import _project

CONFIGS = {
    "autoresearch.toml": 'metric_name = "score"\n"ray_address" = "http://quoted-head:8265"\n',
    "pyproject.toml": '[tool.autoresearch]\nray-address = "http://dashed-head:8265"\n',
    "CLAUDE.md": "# Notes\n\n## autoresearch\n- metric_name: score\n- ray_address: `http://claude-head:8265`\n",
    "AGENTS.md": "## autoresearch\n- ray-address: http://agents-head:8265\n",
}


def test_no_form_of_the_cluster_address_that_the_server_reads_is_shipped(tmp_path: Path) -> None:
    """Attack: the project names the cluster in a form the server's configuration reader accepts but the package's
    redaction (one unquoted `ray_address =` line of autoresearch.toml / pyproject.toml) misses; the run reads it
    from its working directory. Must hold: whatever source the server takes `ray_address` from, the package holds
    no address (the rest of each file is kept)."""
    root = _project(tmp_path)
    for name, text in CONFIGS.items():
        (root / name).write_text(text)
    # Each form is one the server reads as the cluster's address.
    assert read_toml_file(root / "autoresearch.toml").values["ray_address"] == "http://quoted-head:8265"
    assert (pyproject := read_pyproject(root / "pyproject.toml")) is not None
    assert pyproject.values["ray_address"] == "http://dashed-head:8265"
    for name, host in (("CLAUDE.md", "claude-head"), ("AGENTS.md", "agents-head")):
        assert (source := read_markdown(root / name)) is not None
        assert source.values["ray_address"] == f"http://{host}:8265"
    build_package(root, tmp_path / "p.zip", [".git"], {"job": "j"}, 1 << 20)
    with zipfile.ZipFile(tmp_path / "p.zip") as package:
        shipped = {name: package.read(name).decode() for name in CONFIGS}
    for name, text in shipped.items():
        assert "-head" not in text, (name, text)
    assert (
        'metric_name = "score"' in shipped["autoresearch.toml"]
        and "[tool.autoresearch]" in shipped["pyproject.toml"]
    )
    assert "- metric_name: score" in shipped["CLAUDE.md"] and "## autoresearch" in shipped["AGENTS.md"]
