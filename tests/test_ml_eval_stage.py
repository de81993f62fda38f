"""The ML recipe through the real server: karpathy's layout, `train.py` exports its model as ONNX into `out/`,
the bundled evaluator measures it in the evaluation stage from validation data the run cannot read.

train.py builds its tiny model with onnx.helper (no torch): the same shape as tests/test_evaluate.py's.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from mcp_autoresearch.sandbox.policy import probe_isolation

from .conftest import make_repo

pytestmark = pytest.mark.anyio

TRAIN_PY = """\
SCALE = 1.0
LEAK = 0  # 1: the running sum looks at the future tokens
import numpy as np
from onnx import TensorProto, helper, numpy_helper

try:
    open(VALIDATION).read(1)
    print("validation readable: yes")
except OSError:
    print("validation readable: no")
rng = np.random.default_rng(7)
embed = rng.normal(size=(11, 4)).astype(np.float32)
project = (rng.normal(size=(4, 11)) * SCALE).astype(np.float32)
graph = helper.make_graph(
    [
        helper.make_node("Gather", ["embed", "tokens"], ["embedded"]),
        helper.make_node("CumSum", ["embedded", "axis"], ["mixed"], reverse=LEAK),
        helper.make_node("MatMul", ["mixed", "project"], ["logits"]),
    ],
    "tiny_lm",
    [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "time"])],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "time", 11])],
    initializer=[
        numpy_helper.from_array(embed, "embed"),
        numpy_helper.from_array(project, "project"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), "axis"),
    ],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
open("out/model.onnx", "wb").write(model.SerializeToString())
print("val_bpb: 0.000001")  # the self-reported number: never read with an evaluation stage
"""


def reference_bpb(rows: np.ndarray, token_bytes: np.ndarray, scale: float) -> float:
    rng = np.random.default_rng(7)
    embed = rng.normal(size=(11, 4)).astype(np.float32).astype(np.float64)
    project = (rng.normal(size=(4, 11)) * scale).astype(np.float32).astype(np.float64)
    logits = np.cumsum(embed[rows[:, :-1]], 1) @ project
    peak = logits.max(-1, keepdims=True)
    log_probs = logits - peak - np.log(np.exp(logits - peak).sum(-1, keepdims=True))
    targets = rows[:, 1:]
    loss = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    nbytes = token_bytes[targets]
    return float((loss * (nbytes > 0)).sum() / (math.log(2) * nbytes.sum()))


def ml_project(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    data = tmp_path / "cache" / "val.npz"
    data.parent.mkdir()
    rows = np.random.default_rng(3).integers(0, 11, size=(6, 17))
    rows[:, 0] = 9
    token_bytes = np.array([0, 1, 1, 2, 3, 1, 4, 1, 2, 0, 1], dtype=np.int32)
    np.savez(data, rows=rows.astype(np.uint16), token_bytes=token_bytes)
    python = sys.executable
    config = f"""\
run_command = "{python} train.py"
eval_command = "{python} -P -m mcp_autoresearch.evaluate out/model.onnx --data {data} --probe-cuts 16"
hidden = ["{data}"]
writable = ["out"]
keep_rule = "greedy"
timeout = 120
"""
    root = make_repo(
        tmp_path / "proj",
        {
            "train.py": TRAIN_PY.replace("import numpy", f"VALIDATION = {str(data)!r}\nimport numpy", 1),
            "prepare.py": "# the fixed data preparation (unused here)\n",
            "autoresearch.toml": config,
            ".gitignore": "out/\n.autoresearch/\nrun.log\nresults.tsv\n",
        },
    )
    (root / "out").mkdir()
    return root, rows.astype(np.int64), token_bytes


@pytest.mark.skipif(not probe_isolation("auto").namespaces, reason="hidden needs the private view")
async def test_the_evaluator_measures_the_exported_model_and_refuses_one_that_sees_the_future(
    tmp_path: Path, agent_for
) -> None:
    root, rows, token_bytes = ml_project(tmp_path)
    async with agent_for(root) as agent:
        await agent.ok("start_session")
        base, decision = await agent.experiment("baseline")
        assert base["status"] == "ok", base
        assert base["value"] == pytest.approx(reference_bpb(rows, token_bytes, 1.0), abs=1e-6)
        assert "validation readable: no" in Path(base["log_path"]).read_text()
        await agent.edit("SCALE = 1.0\n", "SCALE = 0.5\n")
        smaller, _ = await agent.experiment("smaller logits")
        assert smaller["value"] == pytest.approx(reference_bpb(rows, token_bytes, 0.5), abs=1e-6)
        await agent.edit("LEAK = 0 ", "LEAK = 1 ")
        leak, decision = await agent.experiment("peek at the future")
    assert leak["status"] == "metric_error", leak
    assert "non-causal" in leak["error"], leak
    assert decision["decision"] != "keep"


def test_detection_proposes_the_bundled_evaluator_once_train_py_exports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mcp_autoresearch.setup.project import load_project

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    data = tmp_path / "home/.cache/autoresearch/val.npz"
    data.parent.mkdir(parents=True)
    data.write_bytes(b"")
    root = make_repo(tmp_path / "p", {"train.py": TRAIN_PY, "prepare.py": ""})
    info = load_project(root).info
    assert (
        info.eval_command is not None
        and "-P -m mcp_autoresearch.evaluate out/model.onnx" in info.eval_command
    )
    assert "~/.cache/autoresearch/val.npz" in " ".join(info.hidden) or str(data) in " ".join(info.hidden)
    assert not any("self-reported" in warning for warning in info.warnings)
