"""karpathy-style progress plot: discarded points grey, kept points green and labelled, the running best as a
step line, crashes as red marks along the bottom. Experiments are numbered as the web page and the tables number
them (1 = the baseline, the log's first row). Needs the optional `plot` extra (matplotlib)."""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass, field
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


@dataclass
class Series:
    """What the plot draws, by experiment number (1 = the baseline, as every other view numbers rows)."""

    discarded: list[tuple[int, float]] = field(default_factory=list)
    kept: list[tuple[int, float, str]] = field(default_factory=list)  # (n, value, description)
    running_best: list[tuple[int, float]] = field(default_factory=list)  # steps, held to the last experiment
    crashed: list[int] = field(default_factory=list)


def series(rows: list[Row], direction: str) -> Series:
    lower = direction == "lower_is_better"
    drawn = Series()
    best: float | None = None
    for n, row in enumerate(rows, start=1):
        if row.status == "crash":
            drawn.crashed.append(n)
        elif row.value is None:
            continue
        elif row.status != "keep":
            drawn.discarded.append((n, row.value))
        else:
            drawn.kept.append((n, row.value, row.description))
            if not row.best:  # a node of the tree kept against its parent, never the session's best
                continue
            best = row.value if best is None else (min(best, row.value) if lower else max(best, row.value))
            drawn.running_best.append((n, best))
    if drawn.running_best:
        drawn.running_best.append((max(len(rows), drawn.running_best[-1][0]), drawn.running_best[-1][1]))
    return drawn


def render_png(rows: list[Row], metric: str, direction: str, title: str | None = None) -> bytes:
    if not plotting_available():
        raise AutoresearchError(MISSING)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    lower = direction == "lower_is_better"
    drawn = series(rows, direction)
    fig, ax = plt.subplots(figsize=(12, 6), dpi=100)
    try:
        if drawn.discarded:
            xs, ys = zip(*drawn.discarded, strict=True)
            ax.scatter(xs, ys, c="#bbbbbb", s=14, label="discarded", zorder=2)
        if drawn.kept:
            xs, ys, _ = zip(*drawn.kept, strict=True)
            ax.scatter(xs, ys, c="#2ca02c", s=36, label="kept", zorder=3, edgecolors="black", linewidths=0.4)
            xs, ys = zip(*drawn.running_best, strict=True)
            ax.step(xs, ys, where="post", c="#2ca02c", lw=1.5, alpha=0.8, label="running best", zorder=1)
            for n, value, description in drawn.kept[-25:]:
                label = description if len(description) <= 40 else description[:39] + "…"
                ax.annotate(
                    label,
                    (n, value),
                    textcoords="offset points",
                    xytext=(4, 6),
                    fontsize=7,
                    rotation=20,
                    color="#1a5e1a",
                    parse_math=False,  # the agent's text: a '$' is a dollar, never TeX (unbalanced TeX raised)
                )
        if drawn.crashed:  # no value to place them by: marks along the bottom edge, in the axes' own height
            ax.scatter(
                drawn.crashed,
                [0.02] * len(drawn.crashed),
                transform=ax.get_xaxis_transform(),
                marker="x",
                c="#d62728",
                s=24,
                label="crashed",
                zorder=3,
            )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("experiment # (1 = the baseline)")
        ax.set_ylabel(f"{metric} ({'lower' if lower else 'higher'} is better)", parse_math=False)
        ax.set_title(
            title
            or f"autoresearch progress: {len(rows)} experiments, {len(drawn.kept)} kept, "
            f"{len(drawn.crashed)} crashed",
            parse_math=False,
        )
        ax.grid(alpha=0.3)
        if drawn.discarded or drawn.kept or drawn.crashed:
            ax.legend(loc="best", fontsize=8)
        if not drawn.discarded and not drawn.kept:
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
