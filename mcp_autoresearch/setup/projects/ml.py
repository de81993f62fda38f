"""ML training in karpathy/autoresearch's shape: `train.py` (edited) + `prepare.py` (the fixed evaluation)."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from ..config import KEYS
from .base import Detection

NAME = "ml"

# The ML recipe (README, "The ML recipe"): train.py exports its model here, the user's one-time export of
# prepare.py's validation rows is read from VALIDATION_FILE, and the bundled evaluator computes val_bpb.
MODEL_FILE = "out/model.onnx"
VALIDATION_FILE = "~/.cache/autoresearch/val.npz"
VALIDATION_SHARD = "~/.cache/autoresearch/data/shard_06542.parquet"  # prepare.py's pinned validation shard
# The server's own interpreter (the one with mcp-autoresearch and its ml-eval extra), not the project's `python`;
# -P: the project folder (the stage's working directory) is not put on sys.path, so no file there shadows a module.
EVAL_COMMAND = (
    f"{shlex.quote(sys.executable)} -P -m mcp_autoresearch.evaluate {MODEL_FILE} --data {VALIDATION_FILE}"
)
SELF_REPORTED = (
    "val_bpb is printed by train.py itself (self-reported: one print can forge it). To measure it outside the "
    f"run, follow README's 'The ML recipe': train.py exports {MODEL_FILE}, export the validation rows once to "
    f'{VALIDATION_FILE}, then set eval_command = "{EVAL_COMMAND}", '
    f'hidden = ["{VALIDATION_FILE}", "{VALIDATION_SHARD}"], writable = ["out"]'
)


def evaluation_stage(root: Path) -> dict[str, Any] | None:
    """The bundled evaluator's settings, when train.py exports the model and the validation file exists."""
    try:
        exports = MODEL_FILE in (root / "train.py").read_text(errors="replace")
    except OSError:
        return None
    if not exports or not Path(VALIDATION_FILE).expanduser().is_file():
        return None
    return {
        "eval_command": EVAL_COMMAND,
        "hidden": [VALIDATION_FILE, VALIDATION_SHARD],  # the run can neither train on them nor read them
        "writable": ["out"],  # where train.py writes the model; a fresh folder for every run
    }


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
    stage = evaluation_stage(root)
    if stage is not None and "eval_command" in KEYS and "hidden" in KEYS:
        detection.settings.update(stage)
        detection.metric_source = f"the evaluation stage: {EVAL_COMMAND} (on the model train.py exported)"
    else:
        detection.warnings.append(SELF_REPORTED)
    if not uv:
        detection.warn_about(
            "run_command", "uv is not on PATH: running 'python train.py' instead of 'uv run train.py'"
        )
    return detection
