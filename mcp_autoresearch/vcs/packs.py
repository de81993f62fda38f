"""Which pack files claim a git object id, read in-process from their indexes.

The server writes its candidates' objects loose (`repo.py`). git looks an object up in the packs before the
loose objects, and does not check that what it reads hashes to the id it asked for: a pack planted with other
content under the id of a candidate's blob (by the agent's shell, which knows the content it is about to write,
or by an unconfined run) would give git's checkouts, diffs and `finish --land` code that was never measured.
Standard library only; an index this reader does not know counts as claiming the id (git then judges).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from ..records.atomic import open_regular

IDX_V2 = b"\377tOc\0\0\0\2"
_FANOUT = 256 * 4


def packs_claiming(objects_dir: Path, binsha: bytes) -> list[Path]:
    """The pack indexes in `objects_dir/pack` that list `binsha` (or that this reader cannot read)."""
    folder = objects_dir / "pack"
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    return [folder / name for name in names if name.endswith(".idx") and _lists(folder / name, binsha)]


def _lists(idx: Path, binsha: bytes) -> bool:
    try:
        with os.fdopen(open_regular(idx), "rb") as handle:
            head = handle.read(8)
            base, width, skip = (8, 20, 0) if head == IDX_V2 else (0, 24, 4)  # version 2, else version 1
            if head[:4] == IDX_V2[:4] and head != IDX_V2:
                return True  # a version this reader does not know
            handle.seek(base)
            fanout = struct.unpack(">256I", handle.read(_FANOUT))
            low = fanout[binsha[0] - 1] if binsha[0] else 0
            high = fanout[binsha[0]]
            while low < high:
                middle = (low + high) // 2
                handle.seek(base + _FANOUT + middle * width + skip)
                found = handle.read(20)
                if found == binsha:
                    return True
                low, high = (middle + 1, high) if found < binsha else (low, middle)
            return False
    except (OSError, struct.error):
        return True
