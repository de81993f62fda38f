"""Shared by the tests of parallel slots: every test gets its own slots folder, never the user's."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True, name="slots_home")
def private_slots_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Imported into a test module, this fixture puts the slots of each of its tests under `tmp_path`."""
    home = tmp_path / "slots-home"
    monkeypatch.setenv("AUTORESEARCH_SLOTS_DIR", str(home))
    return home
