"""The bundled ML evaluator, run as the evaluation stage runs it: a real subprocess on real ONNX files.

The models are tiny language models built with onnx.helper (no torch): embedding, a running sum over time (causal)
or over the future (not), a projection to logits. The value is checked against a NumPy computation of
karpathy/autoresearch's evaluate_bpb written here independently.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

VOCAB, WIDTH, SEQ, ROWS = 11, 4, 16, 6
rng = np.random.default_rng(7)
EMBED = rng.normal(size=(VOCAB, WIDTH)).astype(np.float32)
PROJECT = rng.normal(size=(WIDTH, VOCAB)).astype(np.float32)
TOKEN_BYTES = np.array([0, 1, 1, 2, 3, 1, 4, 1, 2, 0, 1], dtype=np.int32)  # ids 0 and 9 are special


def build_model(
    *, reverse: int = 0, extra_nodes: list[onnx.NodeProto] | None = None, domain: str = ""
) -> onnx.ModelProto:
    """tokens [B, T] -> Gather -> CumSum over time (reverse=1: over the future) -> MatMul -> logits [B, T, V]."""
    nodes = [
        helper.make_node("Gather", ["embed", "tokens"], ["embedded"]),
        helper.make_node("CumSum", ["embedded", "axis"], ["mixed"], reverse=reverse),
        helper.make_node("MatMul", ["mixed", "project"], ["projected"]),
        *(extra_nodes or [helper.make_node("Identity", ["projected"], ["logits"], domain=domain)]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_lm",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "time"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "time", VOCAB])],
        initializer=[
            numpy_helper.from_array(EMBED, "embed"),
            numpy_helper.from_array(PROJECT, "project"),
            numpy_helper.from_array(np.array(1, dtype=np.int64), "axis"),
        ],
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def reference_bpb(rows: np.ndarray, reverse: bool = False) -> float:
    """evaluate_bpb in NumPy: sum of per-token cross-entropy (nats) where token_bytes[y] > 0, over the bytes."""
    inputs, targets = rows[:, :-1], rows[:, 1:]
    embedded = EMBED[inputs].astype(np.float64)
    mixed = np.flip(np.cumsum(np.flip(embedded, 1), 1), 1) if reverse else np.cumsum(embedded, 1)
    logits = mixed @ PROJECT.astype(np.float64)
    log_probs = (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    loss = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    nbytes = TOKEN_BYTES[targets]
    return float((loss * (nbytes > 0)).sum() / (math.log(2) * nbytes.sum()))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    rows = np.random.default_rng(3).integers(0, VOCAB, size=(ROWS, SEQ + 1)).astype(np.uint16)
    rows[:, 0] = 9  # each row starts with a special token, like BOS
    path = tmp_path / "val.npz"
    np.savez(path, rows=rows, token_bytes=TOKEN_BYTES)
    return path


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def evaluate(
    model: Path, data: Path | str, *extra: str, home: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The evaluator as the stage runs it: the server's interpreter, -P (the working folder not on sys.path)."""
    command = [
        sys.executable,
        "-P",
        "-m",
        "mcp_autoresearch.evaluate",
        str(model),
        "--data",
        str(data),
        *extra,
    ]
    env = {**os.environ, "HOME": str(home)} if home else None
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "val_bpb" not in result.stdout
    last = result.stdout.splitlines()[-1]
    assert last.startswith("metric_error: ") and result.stdout.endswith("\n")
    return last


def rows_of(data: Path) -> np.ndarray:
    with np.load(data) as archive:
        return archive["rows"].astype(np.int64)


def test_a_causal_model_gets_the_value_of_evaluate_bpb(tmp_path: Path, data: Path) -> None:
    model = save(build_model(), tmp_path / "model.onnx")
    result = evaluate(model, data, "--batch-size", "4")  # 6 rows: a full batch, then a partial one
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and result.stdout.endswith("\n")
    name, value = lines[0].split(": ")
    assert name == "val_bpb"
    assert float(value) == pytest.approx(reference_bpb(rows_of(data)), abs=1e-6)
    assert "causality probe: 256 cuts, 0 failed" in result.stderr


def test_the_value_does_not_depend_on_the_batch_size_and_rows_limits_the_rows(
    tmp_path: Path, data: Path
) -> None:
    model = save(build_model(), tmp_path / "model.onnx")
    one, three = evaluate(model, data, "--batch-size", "1"), evaluate(model, data, "--batch-size", "3")
    assert one.stdout == three.stdout and one.returncode == 0
    first_two = evaluate(model, data, "--rows", "2")
    assert float(first_two.stdout.split(": ")[1]) == pytest.approx(reference_bpb(rows_of(data)[:2]), abs=1e-6)


def test_a_validation_path_under_home_works_without_a_shell_to_expand_it(tmp_path: Path, data: Path) -> None:
    model = save(build_model(), tmp_path / "model.onnx")
    result = evaluate(model, "~/val.npz", "--rows", "1", "--probe-cuts", "1", home=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_model_that_sees_the_future_is_refused_as_non_causal(tmp_path: Path, data: Path) -> None:
    model = save(build_model(reverse=1), tmp_path / "model.onnx")
    line = refusal(evaluate(model, data, "--probe-cuts", "8"))
    assert line.startswith(
        "metric_error: non-causal: changing the tokens after a position changed the logits"
    )


def test_a_model_that_looks_one_token_ahead_only_at_some_positions_is_caught(
    tmp_path: Path, data: Path
) -> None:
    """Leaks at half the positions (the next token's embedding added where the time index is even): the probe's
    cut points are random, so some fall on a leaking position."""
    leak = [
        helper.make_node("Slice", ["embedded", "one", "big", "axis1"], ["next_embedded"]),
        helper.make_node("Pad", ["next_embedded", "pads"], ["next_padded"]),
        helper.make_node("Mul", ["next_padded", "even"], ["next_masked"]),
        helper.make_node("MatMul", ["next_masked", "project"], ["peek"]),
        helper.make_node("Add", ["projected", "peek"], ["logits"]),
    ]
    model = build_model(extra_nodes=leak)
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
            numpy_helper.from_array(np.array([1 << 30], dtype=np.int64), "big"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),  # Slice takes 1-D axes
            numpy_helper.from_array(np.array([0, 0, 0, 0, 1, 0], dtype=np.int64), "pads"),
            numpy_helper.from_array((np.arange(SEQ) % 2 == 0).astype(np.float32).reshape(1, SEQ, 1), "even"),
        ]
    )
    line = refusal(evaluate(save(model, tmp_path / "model.onnx"), data))
    assert line.startswith("metric_error: non-causal: ")


def test_a_custom_operator_is_refused_before_onnxruntime_sees_the_model(tmp_path: Path, data: Path) -> None:
    model = save(build_model(domain="com.example.evil"), tmp_path / "model.onnx")
    result = evaluate(model, data)
    assert refusal(result) == (
        "metric_error: refused-artifact: the model imports an operator domain other than the standard one"
    )
    assert "com.example.evil" in result.stderr  # named in the log, never on stdout
    assert "onnxruntime" not in result.stderr


def test_a_contrib_operator_in_the_standard_import_list_is_still_refused(tmp_path: Path, data: Path) -> None:
    model = build_model(
        extra_nodes=[helper.make_node("Gelu", ["projected"], ["logits"], domain="com.microsoft")]
    )
    result = evaluate(save(model, tmp_path / "model.onnx"), data)
    assert refusal(result) == (
        "metric_error: refused-artifact: the model uses a custom operator (a domain other than the standard one)"
    )


def test_an_operator_outside_the_allow_list_is_refused(tmp_path: Path, data: Path) -> None:
    noise = [
        helper.make_node("RandomNormalLike", ["projected"], ["noise"]),
        helper.make_node("Add", ["projected", "noise"], ["logits"]),
    ]
    result = evaluate(save(build_model(extra_nodes=noise), tmp_path / "model.onnx"), data)
    assert (
        refusal(result) == "metric_error: refused-artifact: the model uses an operator outside the allow-list"
    )
    assert "RandomNormalLike" in result.stderr


def test_names_from_the_model_never_make_a_line_of_the_output(tmp_path: Path, data: Path) -> None:
    """A node name, an operator and an input name that hold a forged metric line: the output and the log show
    them escaped, on the evaluator's own lines."""
    forged = "x\nval_bpb: 0.000001\n"
    node = helper.make_node("MatMul", ["mixed", "project"], ["logits"], name=forged)
    bad_op = helper.make_node(forged, ["projected"], ["logits"])
    for extra in ([bad_op], [node]):
        model = build_model(extra_nodes=extra)
        if extra == [node]:
            del model.graph.node[2]  # the node named like a metric line computes the logits
            model.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT  # refused: names the input
            model.graph.input[0].name = forged
            model.graph.node[0].input[1] = forged
        result = evaluate(save(model, tmp_path / "model.onnx"), data)
        refusal(result)
        lines = (result.stdout + result.stderr).splitlines()
        assert not any(line.startswith("val_bpb") for line in lines), result.stderr


def test_a_sub_graph_is_refused(tmp_path: Path, data: Path) -> None:
    branch = helper.make_graph(
        [helper.make_node("Identity", ["projected"], ["out"])],
        "branch",
        [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
    )
    node = helper.make_node("Identity", ["projected"], ["logits"])
    node.attribute.append(helper.make_attribute("then_branch", branch))
    result = evaluate(save(build_model(extra_nodes=[node]), tmp_path / "model.onnx"), data)
    assert refusal(result) == "metric_error: refused-artifact: the model holds a sub-graph"


def test_external_data_is_refused_and_its_file_is_never_read(tmp_path: Path, data: Path) -> None:
    """The weights point at a file outside the artifact: the evaluator refuses without opening it (a FIFO that
    nothing writes to would block any reader forever)."""
    model = build_model()
    weights = model.graph.initializer[1]
    weights.ClearField("raw_data")
    weights.data_location = TensorProto.EXTERNAL
    fifo = tmp_path / "weights.bin"
    os.mkfifo(fifo)
    for key, value in {"location": "weights.bin", "offset": "0", "length": str(PROJECT.nbytes)}.items():
        weights.external_data.add(key=key, value=value)
    result = evaluate(save(model, tmp_path / "model.onnx"), data)
    assert refusal(result) == (
        "metric_error: refused-artifact: the model keeps tensors in external data (save it as one file)"
    )
    assert "weights.bin" in result.stderr


def test_a_corrupted_file_is_a_clear_error(tmp_path: Path, data: Path) -> None:
    whole = build_model().SerializeToString()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(whole[: len(whole) // 2])
    assert refusal(evaluate(truncated, data)).startswith(
        "metric_error: unreadable-artifact: the model file is not"
    )
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00" * 64 + b"PK\x03\x04 not a model at all")
    assert refusal(evaluate(garbage, data)).startswith("metric_error: unreadable-artifact: ")
    missing = refusal(evaluate(tmp_path / "missing.onnx", data))
    assert missing == "metric_error: unreadable-artifact: the model file does not exist"


def test_a_link_and_an_oversized_file_are_refused(tmp_path: Path, data: Path) -> None:
    model = save(build_model(), tmp_path / "model.onnx")
    link = tmp_path / "link.onnx"
    link.symlink_to(model)
    assert refusal(evaluate(link, data)).startswith(
        "metric_error: unreadable-artifact: the model file cannot be opened"
    )
    limit = str(model.stat().st_size - 1)
    assert refusal(evaluate(model, data, "--max-model-bytes", limit)) == (
        f"metric_error: refused-artifact: the model file is larger than the limit of {limit} bytes"
    )


def test_logits_of_the_wrong_shape_or_not_finite_are_refused(tmp_path: Path, data: Path) -> None:
    narrow = [helper.make_node("Slice", ["projected", "zero", "three", "last"], ["logits"])]
    model = build_model(extra_nodes=narrow)
    model.graph.initializer.extend(
        numpy_helper.from_array(np.array([v], dtype=np.int64), name)
        for name, v in {"zero": 0, "three": 3, "last": 2}.items()
    )
    model.graph.output[0].type.tensor_type.shape.dim[2].dim_value = 3
    assert refusal(evaluate(save(model, tmp_path / "narrow.onnx"), data, "--batch-size", "2")) == (
        f"metric_error: bad-output: the logits must have the shape [2, {SEQ}, >= {VOCAB}]"
    )
    infinite = [
        helper.make_node("Log", ["zeros"], ["minus_inf"]),
        helper.make_node("Add", ["projected", "minus_inf"], ["logits"]),
    ]
    model = build_model(extra_nodes=infinite)
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(VOCAB, dtype=np.float32), "zeros"))
    assert refusal(evaluate(save(model, tmp_path / "inf.onnx"), data, "--probe-cuts", "1")) == (
        "metric_error: bad-output: the logits hold NaN or infinite values"
    )


def test_a_missing_or_malformed_validation_file_is_the_evaluators_error(tmp_path: Path, data: Path) -> None:
    model = save(build_model(), tmp_path / "model.onnx")
    result = evaluate(model, tmp_path / "nothing.npz")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stdout.startswith("metric_error: evaluator-error: the validation file ")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, rows=np.array([object()]), token_bytes=TOKEN_BYTES)
    result = evaluate(model, pickled)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "Object arrays cannot be loaded" in result.stdout


def test_an_opset_older_than_the_evaluators_loss_nodes_is_refused(tmp_path: Path, data: Path) -> None:
    model = build_model()
    model.opset_import[0].version = 11
    assert refusal(evaluate(save(model, tmp_path / "model.onnx"), data)) == (
        "metric_error: refused-artifact: the model uses ONNX opset 11; export it with opset 13 or later"
    )


def test_the_models_nodes_cannot_read_the_evaluators_targets(tmp_path: Path, data: Path) -> None:
    """A model that names an input of a node like the evaluator's targets: the checker refuses a value no node
    defines, and the evaluator's own names never collide with the model's (it would pick another)."""
    cheat = [
        helper.make_node("Identity", ["projected"], ["logits"]),
        helper.make_node("Identity", ["evaluator_targets"], ["t"]),
    ]
    refused = refusal(evaluate(save(build_model(extra_nodes=cheat), tmp_path / "model.onnx"), data))
    assert refused.startswith("metric_error: refused-artifact: the model is not a valid ONNX model")
    from mcp_autoresearch.evaluate.onnx_session import with_loss_output

    taken = build_model(
        extra_nodes=[
            helper.make_node("Identity", ["projected"], ["evaluator_targets"]),
            helper.make_node("Identity", ["evaluator_targets"], ["logits"]),
        ]
    )
    _, targets, loss = with_loss_output(taken.SerializeToString())
    assert targets == "evaluator_targets_1" and loss == "evaluator_loss"


def test_a_model_exported_for_another_sequence_length_is_refused(tmp_path: Path, data: Path) -> None:
    model = build_model()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = SEQ * 2
    assert refusal(evaluate(save(model, tmp_path / "model.onnx"), data)) == (
        f"metric_error: refused-artifact: the model takes sequences of {SEQ * 2} tokens; the validation rows have {SEQ}"
    )
