"""ML training in karpathy/autoresearch's shape: `train.py` (edited) + `prepare.py` (the fixed evaluation)."""

from __future__ import annotations

import shutil
from pathlib import Path

from .base import Detection

NAME = "ml"


def detect(root: Path) -> Detection | None:
    if not ((root / "train.py").is_file() and (root / "prepare.py").is_file()):
        return None
    warnings = []
    if shutil.which("uv"):
        run = "uv run train.py"
    else:
        run = "python train.py"
        warnings.append("uv is not on PATH: running 'python train.py' instead of 'uv run train.py'")
    return Detection(
        project_type=NAME,
        score=90,
        evidence=["train.py", "prepare.py"],
        settings={
            "target_file": "train.py",
            "run_command": run,
            # caches of torch, triton and uv; nothing inside the project (the evaluation data stays read-only)
            "writable": ["~/.cache/torch", "~/.triton", "~/.cache/uv"],
            "metric_name": "val_bpb",
            "metric_direction": "lower_is_better",
            "readonly_files": ["prepare.py"],
        },
        metric_source="the last 'val_bpb: <float>' line of the run's output (memory from 'peak_vram_mb:')",
        warnings=warnings,
    )
