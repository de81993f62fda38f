"""The tests' modules rewritten for pytest's assertions once, by xdist's controller, before its workers start.

Each worker otherwise rewrites every test module while it collects (about 8 s of CPU each on this 2-core
machine, four times a run), and caches nothing where `PYTHONDONTWRITEBYTECODE` is set, as it is on the machines
the tests run on; on a fresh clone the workers collect side by side and none finds another's cache either. The
controller writes each module's rewritten code where the workers look for it first (pytest's own cache files,
checked against the source's size and time), so they only read it. Best effort: pytest's functions for it are
its own (pytest below 9.2, the `test` extra); where they differ, each worker rewrites as before."""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]


def rewrite_once(config: pytest.Config) -> None:
    """In the controller of a distributed run only: a worker, or a run in one process, rewrites as it imports."""
    if hasattr(config, "workerinput") or getattr(config.option, "dist", "no") == "no":
        return
    try:
        from _pytest.assertion import rewrite

        state = config.stash.get(rewrite.assertstate_key, None)
        if state is None or state.mode != "rewrite":
            return
        for source in sorted(TESTS.glob("test_*.py")) + [TESTS / "conftest.py"]:
            cached = rewrite.get_cache_dir(source) / (source.name[:-3] + rewrite.PYC_TAIL)
            if rewrite._read_pyc(source, cached, state.trace) is not None:
                continue
            if rewrite.try_makedirs(cached.parent):
                source_stat, code = rewrite._rewrite_test(source, config)
                rewrite._write_pyc(state, code, source_stat, cached)
    except (ImportError, AttributeError, TypeError, OSError, SyntaxError):
        return  # the workers rewrite for themselves
