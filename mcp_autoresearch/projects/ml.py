"""ML training in karpathy/autoresearch's shape: `train.py` (edited) + `prepare.py` (the fixed evaluation)."""

from __future__ import annotations

import shutil
from pathlib import Path

from .base import Detection

NAME = "ml"


def detect(root: Path) -> Detection | None:
    if not ((root / "train.py").is_file() and (root / "prepare.py").is_file()):
        return None
    uv = shutil.which("uv") is not None
    run = "uv run train.py" if uv else "python train.py"
    detection = Detection(
        project_type=NAME,
        score=90,
        evidence=["train.py", "prepare.py"],
        settings={
            "run_command": run,
            # Nothing: what the evaluator loads (data, weights, the environment, compiled kernels) must not be
            # writable by one run for the next. uv's and Triton's caches are private to each run (TMPDIR).
            "writable": [],
            "shared_inputs": [".venv"],  # with slots: the environment, read-only in every slot
            "metric_name": "val_bpb",
            "metric_direction": "lower_is_better",
            "readonly_files": ["prepare.py"],
            "results_format": "karpathy",  # the columns karpathy's analysis.ipynb reads
        },
        metric_source="the last 'val_bpb: <float>' line of the run's output (memory from 'peak_vram_mb:')",
        target_candidates=["train.py"],
        no_target="train.py is not usable as the target; set target_file",
    )
    if not uv:
        detection.warn_about(
            "run_command", "uv is not on PATH: running 'python train.py' instead of 'uv run train.py'"
        )
    return detection
