"""Checks a model file that a run wrote (ONNX) before anything loads it as a model.

The checks read the file's bytes once and parse them as protobuf data; nothing in the file is executed, imported or
unpickled, and no other file is opened. A model is refused when it is not a regular file, is larger than the limit,
keeps any tensor in external data (a path that would be read beside or outside the artifact), declares or uses an
operator domain other than the standard one (custom operators, onnxruntime's contrib operators, local functions),
uses an operator outside the allow-list (no control flow, no random numbers, nothing that reads or writes files),
holds sub-graphs or training graphs, or does not map one integer token matrix [batch, time] to one float tensor of
logits [batch, time, vocabulary]. The bytes returned are the ones checked, so what is loaded afterwards is what was
checked (no second read of a file the run may have replaced).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

# The standard ONNX domain, under its two spellings. Everything else (custom operators, "com.microsoft" contrib
# operators, a local function's domain) is refused.
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})
MIN_OPSET = 13

# What a decoder-only language model exported by torch.onnx needs, and nothing that branches, loops, draws random
# numbers, or handles strings, sequences or optional values.
OPERATOR_GROUPS = {
    "arithmetic and activations": "Abs Add Ceil Celu Clip Cos Div Elu Erf Exp Floor Gelu HardSigmoid HardSwish"
    " IsInf IsNaN LeakyRelu Log Max Mean Min Mish Mod Mul Neg Pow PRelu Reciprocal Relu Round Selu Sigmoid Sign"
    " Sin Softplus Softsign Sqrt Sub Sum Tanh ThresholdedRelu",
    "linear algebra, normalisation, attention": "MatMul Gemm Einsum Softmax LogSoftmax LayerNormalization"
    " RMSNormalization Attention RotaryEmbedding",
    "reductions": "ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare ReduceL1 ReduceL2"
    " ReduceLogSumExp ArgMax ArgMin CumSum",
    "comparisons and logic": "And Equal Greater GreaterOrEqual Less LessOrEqual Not Or Xor Where",
    "shapes, indexing and constants": "Cast CastLike Concat Constant ConstantOfShape Dropout Expand Flatten Gather"
    " GatherElements GatherND Identity Pad Range Reshape ScatterElements ScatterND Shape Size Slice Split Squeeze"
    " Tile Transpose Trilu Unsqueeze",
}
ALLOWED_OPERATORS = frozenset(name for group in OPERATOR_GROUPS.values() for name in group.split())

_TOKEN_TYPES = frozenset({onnx.TensorProto.INT64, onnx.TensorProto.INT32})
_LOGIT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE})
_PRINTABLE_NAME = re.compile(r"[A-Za-z0-9_.]{1,64}")


class ArtifactRefused(Exception):
    """The artifact is not evaluated. `reason` is a fixed word, `summary` fixed text (both safe to print where
    the metric is read); `detail` may name things from the artifact (escaped) and goes to the log only."""

    def __init__(self, reason: str, summary: str, detail: str) -> None:
        super().__init__(f"{reason}: {summary} ({detail})")
        self.reason = reason
        self.summary = summary
        self.detail = detail


@dataclass(frozen=True)
class CheckedModel:
    """The bytes that were checked, and the shapes of the model's one input and one output (None: symbolic)."""

    data: bytes
    input_shape: tuple[int | None, ...]
    output_shape: tuple[int | None, ...]


def shown(name: str) -> str:
    """A name from the artifact as the log may show it: plain when short and plain, else escaped and cut."""
    return name if _PRINTABLE_NAME.fullmatch(name) else ascii(name[:64])


def refused(summary: str, detail: str) -> ArtifactRefused:
    return ArtifactRefused("refused-artifact", summary, detail)


def unreadable(summary: str, detail: str) -> ArtifactRefused:
    return ArtifactRefused("unreadable-artifact", summary, detail)


def read_artifact(path: Path, max_bytes: int) -> bytes:
    """The file's bytes, read once; never through a symbolic link, never from a FIFO or device, never more than
    `max_bytes`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise unreadable("the model file does not exist", f"no file at {path}") from None
    except OSError as exc:
        raise unreadable("the model file cannot be opened", f"{path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise refused("the model path is not a regular file", str(path))
        if info.st_size > max_bytes:
            raise refused(
                f"the model file is larger than the limit of {max_bytes} bytes", f"{info.st_size} bytes"
            )
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise refused(f"the model file is larger than the limit of {max_bytes} bytes", "it grew while read")
    return data


def check_artifact(data: bytes) -> CheckedModel:
    """Parse and check the bytes; raise ArtifactRefused with the first problem found."""
    model = _parse(data)
    _check_structure(model)
    _check_graph(model.graph)  # sub-graphs are refused, so this is the only graph
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise refused("the model is not a valid ONNX model", str(exc).splitlines()[0][:300]) from None
    token_input, logits_output = _signature(model.graph)
    return CheckedModel(data, _shape(token_input), _shape(logits_output))


def _parse(data: bytes) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise unreadable("the model file is not an ONNX model (it does not parse)", str(exc)[:300]) from None
    # Arbitrary bytes sometimes parse as an empty or meaningless message.
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.node:
        raise unreadable("the model file is not an ONNX model (no graph)", f"ir_version {model.ir_version}")
    return model


def _check_structure(model: onnx.ModelProto) -> None:
    if model.functions:
        names = ", ".join(shown(f.name) for f in model.functions[:5])
        raise refused("the model holds local functions (inline them before saving)", names)
    if model.training_info:
        raise refused("the model holds training graphs", f"{len(model.training_info)} training graphs")
    for opset in model.opset_import:
        if opset.domain not in STANDARD_DOMAINS:
            raise refused(
                "the model imports an operator domain other than the standard one", shown(opset.domain)
            )
        if opset.version < MIN_OPSET:  # the evaluator's own loss nodes use opset 13's operators
            raise refused(
                f"the model uses ONNX opset {opset.version}; export it with opset {MIN_OPSET} or later",
                "torch.onnx.export's default opset is newer",
            )


def _check_graph(graph: onnx.GraphProto) -> None:
    for node in graph.node:
        if node.domain not in STANDARD_DOMAINS:
            raise refused(
                "the model uses a custom operator (a domain other than the standard one)",
                f"{shown(node.domain)}.{shown(node.op_type)}",
            )
        if node.op_type not in ALLOWED_OPERATORS:
            raise refused("the model uses an operator outside the allow-list", shown(node.op_type))
        for attribute in node.attribute:
            _check_attribute(node, attribute)
    for tensor in graph.initializer:
        _check_tensor(tensor)
    for sparse in graph.sparse_initializer:
        _check_tensor(sparse.values)
        _check_tensor(sparse.indices)


def _check_attribute(node: onnx.NodeProto, attribute: onnx.AttributeProto) -> None:
    if attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) or attribute.g.node:
        raise refused("the model holds a sub-graph", f"{shown(node.op_type)}.{shown(attribute.name)}")
    if attribute.ref_attr_name:
        raise refused("the model refers to function attributes", shown(attribute.ref_attr_name))
    for tensor in [attribute.t, *attribute.tensors]:
        _check_tensor(tensor)
    for sparse in [attribute.sparse_tensor, *attribute.sparse_tensors]:
        _check_tensor(sparse.values)
        _check_tensor(sparse.indices)


def _check_tensor(tensor: onnx.TensorProto) -> None:
    # External data names a file that the runtime would open: beside the artifact, or anywhere via "../".
    if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        raise refused(
            "the model keeps tensors in external data (save it as one file)",
            f"tensor {shown(tensor.name)} -> {ascii(location[:200])}",
        )


def _signature(graph: onnx.GraphProto) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    """The one token input (inputs that are initializers are weights, in old exports) and the one output."""
    weights = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in weights]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise refused(
            "the model must take one input (tokens [batch, time]) and give one output (logits)",
            f"{len(inputs)} inputs, {len(graph.output)} outputs",
        )
    token_input, logits_output = inputs[0], graph.output[0]
    if token_input.type.tensor_type.elem_type not in _TOKEN_TYPES or len(_shape(token_input)) != 2:
        raise refused("the model's input must be int64 or int32 tokens [batch, time]", _describe(token_input))
    if logits_output.type.tensor_type.elem_type not in _LOGIT_TYPES or len(_shape(logits_output)) != 3:
        raise refused(
            "the model's output must be float logits [batch, time, vocabulary]", _describe(logits_output)
        )
    return token_input, logits_output


def _shape(value: onnx.ValueInfoProto) -> tuple[int | None, ...]:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return ()
    return tuple(dim.dim_value if dim.HasField("dim_value") else None for dim in tensor.shape.dim)


def _describe(value: onnx.ValueInfoProto) -> str:
    element = onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)
    dims = ", ".join("?" if dim is None else str(dim) for dim in _shape(value))
    return f"{shown(value.name)}: {element} [{dims}]"
