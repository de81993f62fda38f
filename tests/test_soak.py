"""A reduced crash soak in the suite: SIGKILL the stdio server at random moments, restart, check every invariant
(the full one, 200 experiments and 50 kills, is `python bench/crash_soak.py`; numbers in BENCHMARKS.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parent.parent / "bench" / "crash_soak.py"


@pytest.mark.slow
def test_crash_soak(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("crash_soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    sys.modules["crash_soak"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    stats = module.soak(experiments=30, kills=8, seed=3, root=tmp_path)
    assert stats.kills >= 8 and stats.logged >= 30
    assert stats.checks >= stats.kills  # every restart was checked
