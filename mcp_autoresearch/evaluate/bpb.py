"""The bundled ML evaluator: `python -m mcp_autoresearch.evaluate MODEL --data VALIDATION.npz`.

It computes `val_bpb` of a language model that a run exported as an ONNX file, exactly as karpathy/autoresearch's
`evaluate_bpb` does (the cross-entropy in nats summed over the targets whose byte length is > 0, divided by the
targets' total byte length and by ln 2), in a process that never imports the run's code and never runs code from
the model file (`onnx_artifact` checks it first; onnxruntime then only computes the checked graph). The model sees
tokens only and returns logits: the loss comes from nodes the evaluator appends (`onnx_session`), fed with
targets that none of the model's nodes can read.

Before the number, a causality probe: for rows and cut points drawn afresh in every evaluation, the tokens after
the cut are replaced by those of another row; the logits at and before the cut must not change. A model that
looks ahead is refused.

The validation file (prepared once by the user, hidden from the runs) is a NumPy `.npz` archive, read without
pickle, holding `rows`: the validation rows, an integer matrix [rows, T + 1] (inputs are row[:-1], targets
row[1:]), and `token_bytes`: the byte length of each token id (0 for special tokens), as in `prepare.py`.

Output contract (what the evaluation stage reads):
- success: exit status 0, and stdout is exactly one line `val_bpb: <value>` ending with a newline;
- the model is refused or fails: exit status 3, and the last stdout line is `metric_error: <reason>: <summary>`,
  where <reason> is one of `non-causal`, `refused-artifact`, `unreadable-artifact`, `bad-output`, `model-failed`;
- the evaluator itself cannot work (validation file missing or malformed, a bad argument): exit status 1 (2 for a
  usage error), with the line `metric_error: evaluator-error: <summary>`.
Stdout carries fixed text and numbers only, never a string taken from the model; details go to stderr (the log).
"""

from __future__ import annotations

import argparse
import math
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

try:
    import numpy as np

    from .onnx_artifact import ArtifactRefused, CheckedModel, check_artifact, read_artifact
    from .onnx_session import EvaluatorError, ModelRun
except ImportError as missing:  # the optional extra is not installed: one clear line, no traceback
    print(
        f"metric_error: evaluator-error: {missing.name} is not installed (pip install 'mcp-autoresearch[ml-eval]')"
    )
    sys.exit(1)

EXIT_REFUSED = 3
EXIT_EVALUATOR = 1
DEFAULT_MAX_MODEL_BYTES = 2**31  # protobuf's limit for one ONNX file
DEFAULT_PROBE_CUTS = 256
DEFAULT_CAUSAL_TOLERANCE = 1e-4  # largest change of a logit at or before a cut that still counts as causal

Logits = Callable[[np.ndarray], np.ndarray]  # tokens [B, T] -> logits [B, T, V]
Losses = Callable[[np.ndarray, np.ndarray], np.ndarray]  # tokens, targets [B, T] -> cross-entropy [B, T]


@dataclass(frozen=True)
class Validation:
    rows: np.ndarray  # int64 [N, T + 1]
    token_bytes: np.ndarray  # int64 [V]

    @property
    def seq_len(self) -> int:
        return int(self.rows.shape[1]) - 1

    @property
    def vocab_size(self) -> int:
        return int(self.token_bytes.shape[0])


@dataclass(frozen=True)
class ProbeResult:
    cuts: int
    failed: int  # cuts where a logit at or before the cut changed by more than the tolerance
    max_change: float
    cross_failed: int = (
        0  # batches where a row's logits changed when the other rows of its batch were replaced
    )


def load_validation(path: Path, max_rows: int | None) -> Validation:
    """The validation rows and token byte lengths, read without pickle and checked."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            rows, token_bytes = archive["rows"], archive["token_bytes"]
    except FileNotFoundError:
        raise EvaluatorError(
            f"the validation file {path} does not exist (prepare it once: see the README)"
        ) from None
    except KeyError as exc:
        raise EvaluatorError(
            f"the validation file {path} has no array {exc} (it needs 'rows' and 'token_bytes')"
        ) from None
    except (OSError, ValueError) as exc:
        raise EvaluatorError(f"the validation file {path} is not a readable .npz archive: {exc}") from None
    if rows.ndim != 2 or rows.shape[0] < 1 or rows.shape[1] < 2 or rows.dtype.kind not in "iu":
        raise EvaluatorError(
            f"'rows' in {path} must be an integer matrix [rows, T + 1]; it is {rows.dtype} {rows.shape}"
        )
    if token_bytes.ndim != 1 or token_bytes.dtype.kind not in "iu" or (token_bytes < 0).any():
        raise EvaluatorError(f"'token_bytes' in {path} must be a vector of byte lengths >= 0")
    rows = rows[:max_rows].astype(np.int64)
    if rows.min() < 0 or rows.max() >= token_bytes.shape[0]:
        raise EvaluatorError(f"'rows' in {path} holds token ids outside 0..{token_bytes.shape[0] - 1}")
    if int(token_bytes[rows[:, 1:]].sum()) == 0:
        raise EvaluatorError(f"the targets in {path} have no bytes (every target is a special token)")
    return Validation(rows, token_bytes.astype(np.int64))


def bits_per_byte(losses_of: Losses, validation: Validation, batch_size: int) -> float:
    """evaluate_bpb: the cross-entropy (nats) summed over the targets whose byte length is > 0, divided by the
    targets' total byte length and by ln 2."""
    total_nats, total_bytes = 0.0, 0
    for start in range(0, len(validation.rows), batch_size):
        batch = validation.rows[start : start + batch_size]
        inputs, targets = batch[:, :-1], batch[:, 1:]
        nbytes = validation.token_bytes[targets]
        total_nats += float(losses_of(inputs, targets).astype(np.float64)[nbytes > 0].sum())
        total_bytes += int(nbytes.sum())
    return total_nats / (math.log(2) * total_bytes)


def evaluation_batch_sizes(rows: int, batch_size: int) -> list[int]:
    """Every batch size the evaluation calls the model with (full batches, then the last, partial one): the probe
    calls it with each, so a model that reads its batch size (Shape is on the allow-list) cannot look ahead only
    at a size the probe never uses."""
    sizes = [min(batch_size, rows)]
    if rows > batch_size and rows % batch_size:
        sizes.append(rows % batch_size)
    return sizes


def probe_causality(
    logits_of: Logits, validation: Validation, batch_size: int, cuts: int, tolerance: float
) -> ProbeResult:
    """Change every token after a random cut (other rows' tokens, drawn afresh each evaluation, so a model cannot
    know where the probe looks); the logits at and before the cut must stay within `tolerance`. Every batch size
    of the evaluation is probed at least once (so a few more than `cuts` probes may run)."""
    rng = np.random.default_rng(secrets.randbits(128))
    inputs = validation.rows[:, :-1]
    sizes = evaluation_batch_sizes(len(inputs), batch_size)
    seq_len, failed, max_change, done, call, cross_failed = validation.seq_len, 0, 0.0, 0, 0, 0
    while (done < cuts or call < len(sizes)) and seq_len >= 2:
        count = sizes[call % len(sizes)] if call < len(sizes) else min(sizes[call % len(sizes)], cuts - done)
        call += 1
        original = inputs[rng.integers(0, len(inputs), count)]
        donors = inputs[rng.integers(0, len(inputs), count)]
        cut_at = rng.integers(0, seq_len - 1, count)  # the last position kept; at least one token after it
        after = np.arange(seq_len)[None, :] > cut_at[:, None]
        changed = np.where(after, donors, original)
        same = after & (changed == original)
        changed[same] = (changed[same] + 1) % validation.vocab_size  # every token after the cut differs
        before, probed = logits_of(original), logits_of(changed)
        for row in range(count):
            change = float(np.abs(before[row, : cut_at[row] + 1] - probed[row, : cut_at[row] + 1]).max())
            max_change = max(max_change, change)
            failed += change > tolerance
        across = cross_row_change(logits_of, before, original, inputs, rng)
        max_change = max(max_change, across)
        cross_failed += across > tolerance
        done += count
    return ProbeResult(done, failed, max_change, cross_failed)


def cross_row_change(
    logits_of: Logits, before: np.ndarray, original: np.ndarray, inputs: np.ndarray, rng: np.random.Generator
) -> float:
    """How far the logits of some rows move when the other rows of their batch are replaced by other rows: a
    row's logits must not depend on its neighbours (the evaluation's batches are consecutive rows, often
    consecutive text, so a neighbour can hold a row's future). 0 for a batch of one row."""
    count = len(original)
    if count < 2:
        return 0.0
    keep = rng.random(count) < 0.5
    keep[rng.integers(0, count)] = True
    if keep.all():
        keep[rng.integers(0, count)] = False
    neighbours = np.where(keep[:, None], original, inputs[rng.integers(0, len(inputs), count)])
    return float(np.abs(before[keep] - logits_of(neighbours)[keep]).max())


def check_shapes(model: CheckedModel, validation: Validation) -> None:
    fixed_len = model.input_shape[1]
    if fixed_len is not None and fixed_len != validation.seq_len:
        raise ArtifactRefused(
            "refused-artifact",
            f"the model takes sequences of {fixed_len} tokens; the validation rows have {validation.seq_len}",
            "export it with the sequence length of prepare.py (MAX_SEQ_LEN)",
        )


def evaluate(args: argparse.Namespace) -> float:
    started = time.monotonic()
    validation = load_validation(args.data.expanduser(), args.rows)  # "~/..." also when no shell expanded it
    model = check_artifact(read_artifact(args.model, args.max_model_bytes))
    check_shapes(model, validation)
    log(
        f"model: {len(model.data)} bytes, checked; validation: {len(validation.rows)} rows of {validation.seq_len}"
    )
    run = ModelRun(model, validation.vocab_size, args.device, args.threads)
    log(f"onnxruntime: {run.provider}")
    probe = probe_causality(run.logits, validation, args.batch_size, args.probe_cuts, args.causal_tolerance)
    log(
        f"causality probe: {probe.cuts} cuts, {probe.failed} failed, {probe.cross_failed} batches that read other rows,"
        f" largest change at or before a cut {probe.max_change:.3g}"
    )
    if probe.cross_failed:
        raise ArtifactRefused(
            "non-causal",
            f"replacing the other rows of a batch changed a row's logits by up to {probe.max_change:.6g}"
            f" (in {probe.cross_failed} probed batches; tolerance {args.causal_tolerance:g})",
            "the model reads across the rows of its batch",
        )
    if probe.failed:
        raise ArtifactRefused(
            "non-causal",
            f"changing the tokens after a position changed the logits at or before it by up to {probe.max_change:.6g}"
            f" (in {probe.failed} of {probe.cuts} probes; tolerance {args.causal_tolerance:g})",
            "the model looks at tokens after the one it predicts",
        )
    value = bits_per_byte(run.losses, validation, args.batch_size)
    log(f"evaluated {len(validation.rows)} rows in {time.monotonic() - started:.1f} s")
    return value


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="python -m mcp_autoresearch.evaluate",
        description="Compute val_bpb of an exported ONNX language model, outside the run that trained it.",
    )
    cli.add_argument(
        "model", type=Path, help="the ONNX file the run wrote (tokens [B, T] -> logits [B, T, V])"
    )
    cli.add_argument("--data", type=Path, required=True, help="the validation .npz file (rows, token_bytes)")
    cli.add_argument("--batch-size", type=positive_int, default=8, help="rows per model call (default 8)")
    cli.add_argument("--rows", type=positive_int, default=None, help="evaluate only the first N rows")
    cli.add_argument("--probe-cuts", type=positive_int, default=DEFAULT_PROBE_CUTS, help="causality probes")
    cli.add_argument("--causal-tolerance", type=float, default=DEFAULT_CAUSAL_TOLERANCE)
    cli.add_argument("--max-model-bytes", type=positive_int, default=DEFAULT_MAX_MODEL_BYTES)
    cli.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    cli.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: its default)")
    return cli


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        value = evaluate(args)
    except ArtifactRefused as exc:
        # The detail may quote the runtime's message, which names the model's nodes: one escaped line.
        log(f"refused ({exc.reason}): {exc.summary}: {exc.detail.encode('unicode_escape').decode('ascii')}")
        print(f"metric_error: {exc.reason}: {exc.summary}", flush=True)
        return EXIT_REFUSED
    except EvaluatorError as exc:
        log(f"evaluator error: {exc}")
        print(f"metric_error: evaluator-error: {exc}", flush=True)
        return EXIT_EVALUATOR
    except (MemoryError, OSError, ValueError) as exc:  # e.g. a model whose outputs do not fit in memory
        log(
            f"evaluator error: {type(exc).__name__}: {str(exc).encode('unicode_escape').decode('ascii')[:500]}"
        )
        print(
            f"metric_error: evaluator-error: the evaluation failed ({type(exc).__name__}; see its log)",
            flush=True,
        )
        return EXIT_EVALUATOR
    print(f"val_bpb: {value:.9f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
