"""Runs a checked ONNX language model with onnxruntime: its logits (for the causality probe), and the loss of
every target (for the value).

For the loss the evaluator appends nodes of its own to the checked graph: the log-softmax of the logits and the
negative log-probability of each target. The loss is so computed where the model runs (on the GPU with
onnxruntime-gpu) and only a [batch, time] tensor leaves it, not [batch, time, vocabulary] logits. The targets enter
the graph under a name that no part of the model uses, so none of the model's nodes can read them.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .onnx_artifact import ArtifactRefused, CheckedModel

# The runtime's own error types vary between versions and providers: every failure of a call is the model's.
RUNTIME_ERRORS = (Exception,)


class EvaluatorError(Exception):
    """The evaluator cannot work (the user's setup, not the model)."""


def with_loss_output(data: bytes) -> tuple[bytes, str, str]:
    """The checked model with the evaluator's loss nodes appended: (bytes, targets input, loss output)."""
    model = onnx.ModelProto()
    model.ParseFromString(data)
    graph = model.graph
    used = _names(graph)

    def fresh(base: str) -> str:
        name, number = base, 0
        while name in used:
            number += 1
            name = f"{base}_{number}"
        used.add(name)
        return name

    targets, axes, as_float, log_probs, indices, picked, squeezed, loss = (
        fresh(f"evaluator_{part}")
        for part in ("targets", "axes", "logits", "log_probs", "indices", "picked", "squeezed", "loss")
    )
    graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), axes))
    graph.node.extend(
        [
            helper.make_node("Cast", [graph.output[0].name], [as_float], to=TensorProto.FLOAT),
            helper.make_node("LogSoftmax", [as_float], [log_probs], axis=-1),
            helper.make_node("Unsqueeze", [targets, axes], [indices]),
            helper.make_node("GatherElements", [log_probs, indices], [picked], axis=-1),
            helper.make_node("Squeeze", [picked, axes], [squeezed]),
            helper.make_node("Neg", [squeezed], [loss]),
        ]
    )
    graph.input.append(helper.make_tensor_value_info(targets, TensorProto.INT64, None))
    graph.output.append(helper.make_tensor_value_info(loss, TensorProto.FLOAT, None))
    return model.SerializeToString(), targets, loss


def _names(graph: onnx.GraphProto) -> set[str]:
    """Every value name of the graph (sub-graphs were refused)."""
    names = {value.name for value in [*graph.input, *graph.output, *graph.value_info]}
    names |= {tensor.name for tensor in graph.initializer}
    names |= {sparse.values.name for sparse in graph.sparse_initializer}
    for node in graph.node:
        names |= set(node.input) | set(node.output)
    return names


class ModelRun:
    """One onnxruntime session of the checked model with the loss appended."""

    def __init__(self, model: CheckedModel, vocab_size: int, device: str, threads: int) -> None:
        import onnxruntime

        self.vocab_size = vocab_size
        data, self.targets_name, self.loss_name = with_loss_output(model.data)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        # Only fatal messages from the runtime's own log (which can quote the model's node names).
        onnxruntime.set_default_logger_severity(4)
        options.log_severity_level = 4
        # The bytes are ONNX protobuf (checked); never let the runtime guess another format from them.
        options.add_session_config_entry("session.load_model_format", "ONNX")
        available = onnxruntime.get_available_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise EvaluatorError(
                "--device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu)"
            )
        use_cuda = device != "cpu" and "CUDAExecutionProvider" in available
        providers = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
        )
        self.provider = providers[0]
        try:
            self.session = onnxruntime.InferenceSession(data, options, providers=providers)
        except RUNTIME_ERRORS as exc:
            raise ArtifactRefused(
                "model-failed", "onnxruntime cannot load the model", str(exc)[:500]
            ) from None
        token_input = next(i for i in self.session.get_inputs() if i.name != self.targets_name)
        self.tokens_name = token_input.name
        self.token_type = np.int32 if "int32" in token_input.type else np.int64
        self.logits_name = next(o.name for o in self.session.get_outputs() if o.name != self.loss_name)

    def _run(self, output: str, tokens: np.ndarray, targets: np.ndarray) -> np.ndarray:
        feeds = {
            self.tokens_name: tokens.astype(self.token_type),
            self.targets_name: targets.astype(np.int64),
        }
        try:
            (value,) = self.session.run([output], feeds)
        except RUNTIME_ERRORS as exc:
            raise ArtifactRefused(
                "model-failed", "the model failed on a batch of tokens", str(exc)[:500]
            ) from None
        return np.asarray(value)

    def logits(self, tokens: np.ndarray) -> np.ndarray:
        """Logits [B, T, >= vocabulary], checked (the targets fed are placeholders: the loss is not read)."""
        logits = self._run(self.logits_name, tokens, np.zeros_like(tokens))
        batch, seq_len = tokens.shape
        if logits.ndim != 3 or logits.shape[:2] != (batch, seq_len) or logits.shape[2] < self.vocab_size:
            raise ArtifactRefused(
                "bad-output",
                f"the logits must have the shape [{batch}, {seq_len}, >= {self.vocab_size}]",
                f"they have the shape {list(logits.shape)}",
            )
        _check_finite(logits)
        return logits

    def losses(self, tokens: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """The cross-entropy (nats) of each target [B, T], computed on the model's device."""
        losses = self._run(self.loss_name, tokens, targets)
        if losses.shape != tokens.shape:
            raise ArtifactRefused(
                "bad-output", "the logits do not match the tokens' shape", f"losses {list(losses.shape)}"
            )
        _check_finite(losses)
        return losses


def _check_finite(values: np.ndarray) -> None:
    if not np.isfinite(values).all():
        raise ArtifactRefused("bad-output", "the logits hold NaN or infinite values", "non-finite values")
