"""karpathy-style progress plot: discarded points grey, kept points green and labelled, the running best as a
step line. Needs the optional `plot` extra (matplotlib)."""

from __future__ import annotations

import io
import sys
from importlib.util import find_spec
from pathlib import Path

from ..errors import AutoresearchError
from ..records.rows import Row

# The package is installed from a clone (it is not on PyPI): name the command that works there, for the
# interpreter that runs us.
MISSING = (
    "plotting needs matplotlib: from your clone of mcp-autoresearch, run "
    f'{sys.executable} -m pip install ".[plot]" (or: {sys.executable} -m pip install matplotlib)'
)


def plotting_available() -> bool:
    return find_spec("matplotlib") is not None


def render_png(rows: list[Row], metric: str, direction: str, title: str | None = None) -> bytes:
    if not plotting_available():
        raise AutoresearchError(MISSING)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lower = direction == "lower_is_better"
    fig, ax = plt.subplots(figsize=(12, 6), dpi=100)
    try:
        valued = [(i, r, r.value) for i, r in enumerate(rows) if r.value is not None and r.status != "crash"]
        disc = [(i, v) for i, r, v in valued if r.status != "keep"]
        kept = [(i, r, v) for i, r, v in valued if r.status == "keep"]
        if disc:
            ax.scatter(
                [i for i, _ in disc], [v for _, v in disc], c="#bbbbbb", s=14, label="discarded", zorder=2
            )
        if kept:
            ax.scatter(
                [i for i, _, _ in kept],
                [v for _, _, v in kept],
                c="#2ca02c",
                s=36,
                label="kept",
                zorder=3,
                edgecolors="black",
                linewidths=0.4,
            )
            xs: list[int] = []
            ys: list[float] = []
            best: float | None = None
            for i, _, v in kept:
                best = v if best is None else (min(best, v) if lower else max(best, v))
                xs.append(i)
                ys.append(best)
            xs.append(max(len(rows) - 1, xs[-1]))
            ys.append(ys[-1])
            ax.step(xs, ys, where="post", c="#2ca02c", lw=1.5, alpha=0.8, label="running best", zorder=1)
            for i, r, v in kept[-25:]:
                label = r.description if len(r.description) <= 40 else r.description[:39] + "…"
                ax.annotate(
                    label,
                    (i, v),
                    textcoords="offset points",
                    xytext=(4, 6),
                    fontsize=7,
                    rotation=20,
                    color="#1a5e1a",
                )
        crashes = sum(1 for r in rows if r.status == "crash")
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("experiment #")
        ax.set_ylabel(f"{metric} ({'lower' if lower else 'higher'} is better)")
        ax.set_title(
            title or f"autoresearch progress: {len(rows)} experiments, {len(kept)} kept, {crashes} crashed"
        )
        ax.grid(alpha=0.3)
        if valued:
            ax.legend(loc="best", fontsize=8)
        else:
            ax.text(
                0.5, 0.5, "no experiments with a value yet", ha="center", va="center", transform=ax.transAxes
            )
        buffer = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(fig)


def write_png(rows: list[Row], metric: str, direction: str, out: Path) -> Path:
    out.write_bytes(render_png(rows, metric, direction))
    return out
