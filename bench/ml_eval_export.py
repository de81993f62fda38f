"""The ML recipe end to end, on a small GPT shaped like karpathy/autoresearch's `train.py` (needs torch, onnx,
onnxscript, onnxruntime; runs on CPU, or on a GPU where there is one).

    python bench/ml_eval_export.py [--depth 2] [--seq 256] [--vocab 512] [--rows 64] [--steps 30]

It trains the model a few steps on synthetic tokens (no data set needed), then:
1. computes val_bpb in-process the way `evaluate_bpb` does (the model's own loss, reduction='none');
2. exports it as README's recipe says (a logits-only wrapper of the un-compiled module, attention through
   scaled_dot_product_attention with the sliding-window band, fp32) to one ONNX file;
3. runs the bundled evaluator on that file in a separate process (`python -m mcp_autoresearch.evaluate`) and
   prints both values, their difference and the times; then the same with a copy of the model whose attention
   is not causal, which the evaluator must refuse.
"""

from __future__ import annotations

import argparse
import copy
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F


def norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def band(seq: int, window: int, device: torch.device) -> torch.Tensor:
    """FA3's window_size=(window, 0): query i sees keys i - window .. i."""
    i = torch.arange(seq, device=device)
    distance = i[:, None] - i[None, :]
    return (distance >= 0) & (distance <= window)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, causal: bool = True) -> None:
        super().__init__()
        self.heads, self.window, self.causal = heads, window, causal
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        shape = (b, t, self.heads, c // self.heads)
        q, k, v = self.q(x).view(shape), self.k(x).view(shape), self.v(x).view(shape)
        q, k = norm(rotary(q, cos, sin)), norm(rotary(k, cos, sin))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        mask = band(t, self.window, x.device) if self.causal else None
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[3] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos], 3)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.attn = Attention(dim, heads, window)
        self.fc, self.out = nn.Linear(dim, 4 * dim, bias=False), nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(norm(x), cos, sin)
        return x + self.out(F.relu(self.fc(norm(x))).square())


class GPT(nn.Module):
    """train.py's shape: tied embedding, value-free blocks with RMS norm, rotary, relu^2, softcapped logits."""

    def __init__(self, vocab: int, seq: int, depth: int, dim: int = 128, heads: int = 2) -> None:
        super().__init__()
        windows = [seq // 2 if i % 2 == 0 else seq for i in range(depth)]
        windows[-1] = seq
        self.wte = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, w) for w in windows)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        freqs = torch.outer(
            torch.arange(seq * 2).float(),
            1.0 / (10000 ** (torch.arange(0, dim // heads, 2) / (dim // heads))),
        )
        self.register_buffer("cos", freqs.cos()[None, :, None, :], persistent=False)
        self.register_buffer("sin", freqs.sin()[None, :, None, :], persistent=False)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean"
    ) -> torch.Tensor:
        t = idx.size(1)
        cos, sin = self.cos[:, :t], self.sin[:, :t]
        x = norm(self.wte(idx))
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.lm_head(norm(x)).float()
        logits = 15 * torch.tanh(logits / 15)
        if targets is None:
            return logits
        return F.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1, reduction=reduction
        )


# --- the recipe: what train.py adds after training (README, "The ML recipe") ---
class LogitsOnly(nn.Module):
    """Tokens in, logits out: the exported model never sees the targets."""

    def __init__(self, gpt: nn.Module) -> None:
        super().__init__()
        self.gpt = gpt

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.gpt(idx)


def export(model: nn.Module, path: Path, seq: int, device: torch.device) -> None:
    plain = copy.deepcopy(getattr(model, "_orig_mod", model)).float().eval()  # un-compiled, fp32
    example = torch.zeros(2, seq, dtype=torch.long, device=device)
    torch.onnx.export(
        LogitsOnly(plain).eval(),
        (example,),
        str(path),
        input_names=["tokens"],
        output_names=["logits"],
        dynamic_shapes={"idx": {0: torch.export.Dim("batch")}},
        external_data=False,
        dynamo=True,
    )


def synthetic_rows(rows: int, seq: int, vocab: int, seed: int) -> np.ndarray:
    """Token rows with learnable structure (a noisy order-2 recurrence), each starting with a special token 0."""
    rng = np.random.default_rng(seed)
    data = np.zeros((rows, seq + 1), dtype=np.int64)
    data[:, 1:3] = rng.integers(1, vocab, (rows, 2))
    for t in range(3, seq + 1):
        data[:, t] = (data[:, t - 1] * 3 + data[:, t - 2] + rng.integers(0, 3, rows)) % (vocab - 1) + 1
    return data


def in_process_bpb(
    model: nn.Module, rows: np.ndarray, token_bytes: torch.Tensor, batch: int, device: torch.device
) -> float:
    """evaluate_bpb's arithmetic: the model's own per-token loss, masked by bytes > 0, over the byte count."""
    total_nats, total_bytes = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch):
            chunk = torch.from_numpy(rows[start : start + batch]).to(device)
            x, y = chunk[:, :-1], chunk[:, 1:]
            loss = model(x, y, reduction="none").view(-1)
            nbytes = token_bytes[y.reshape(-1)]
            total_nats += (loss * (nbytes > 0)).sum().item()
            total_bytes += int(nbytes.sum().item())
    return total_nats / (math.log(2) * total_bytes)


def run_evaluator(
    model_path: Path, data_path: Path, batch: int
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    command = [sys.executable, "-m", "mcp_autoresearch.evaluate", str(model_path), "--data", str(data_path)]
    result = subprocess.run([*command, "--batch-size", str(batch)], capture_output=True, text=True)
    return result, time.monotonic() - started


def main() -> None:
    cli = argparse.ArgumentParser()
    cli.add_argument("--depth", type=int, default=2)
    cli.add_argument("--seq", type=int, default=256)
    cli.add_argument("--vocab", type=int, default=512)
    cli.add_argument("--rows", type=int, default=64)
    cli.add_argument("--steps", type=int, default=100)
    cli.add_argument("--batch", type=int, default=8)
    args = cli.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = GPT(args.vocab, args.seq, args.depth).to(device)
    train = torch.from_numpy(synthetic_rows(256, args.seq, args.vocab, seed=1)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    started = time.monotonic()
    for step in range(args.steps):
        chunk = train[(step * 16) % 256 :][:16]
        loss = model(chunk[:, :-1], chunk[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    print(
        f"device {device}; trained {args.steps} steps in {time.monotonic() - started:.1f} s, last loss {loss.item():.3f}"
    )

    rows = synthetic_rows(args.rows, args.seq, args.vocab, seed=2)
    token_bytes = np.ones(args.vocab, dtype=np.int32)
    token_bytes[0] = 0
    model.eval()
    value = in_process_bpb(model, rows, torch.from_numpy(token_bytes).long().to(device), args.batch, device)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        np.savez(out / "val.npz", rows=rows.astype(np.uint16), token_bytes=token_bytes)
        started = time.monotonic()
        export(model, out / "model.onnx", args.seq, device)
        print(
            f"export {time.monotonic() - started:.1f} s, {(out / 'model.onnx').stat().st_size / 1e6:.1f} MB"
        )
        graph = onnx.load(str(out / "model.onnx")).graph
        print("operators:", " ".join(sorted({node.op_type for node in graph.node})))
        result, seconds = run_evaluator(out / "model.onnx", out / "val.npz", args.batch)
        print(result.stderr.strip())
        print(f"evaluator: {result.stdout.strip()} (exit {result.returncode}, {seconds:.1f} s)")
        print(f"in-process val_bpb: {value:.9f}")
        if result.returncode == 0:
            print(f"difference: {abs(float(result.stdout.split(': ')[1]) - value):.3g}")
        for block in model.blocks:
            block.attn.causal = False
        export(model, out / "leaky.onnx", args.seq, device)
        result, seconds = run_evaluator(out / "leaky.onnx", out / "val.npz", args.batch)
        print(f"non-causal copy: {result.stdout.strip()} (exit {result.returncode}, {seconds:.1f} s)")


if __name__ == "__main__":
    main()
