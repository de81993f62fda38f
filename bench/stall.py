"""How long a streak without a keep says the loop is stuck (issue 23: the default of `stall_after`).

The scripted agent's own proposal policy (`adapters/scripted_agent.py` `propose`: scale one numeric constant, or
now and then delete a line) and the server's own keep rule (`measure/keep_rule.py` `decide`, greedy), run in
process on three targets, without the server (thousands of experiments a second):
- tune: the bundled `tune` example's `approx.py` (an odd polynomial for sin; RMS error on 2,001 points);
- rastrigin: three constants in a Rastrigin function (many local optima);
- ridge: two integer constants on a narrow curved valley.

Figures per target: the keep rate; the gaps (experiments without a keep before each keep: the streaks that did
end in a keep) at their median, 80th and 90th percentiles; and, for a streak of k experiments without a keep,
the chance that the next one is kept (the hazard: it falls where the loop is stuck at a local optimum) and
that a keep comes within the next k. Where the hazard has fallen to half its value right after a keep,
going on from the best has become a poor bet: the default `stall_after` is the median of that k over the
targets (a k is counted only with at least MIN_STREAKS streaks reaching it). A smooth target (tune) halves
late, targets with local optima early; a proposal is advice, so an early one costs little.

    python bench/stall.py [--sessions 40] [--experiments 200] [--seed 1]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_autoresearch.adapters.scripted_agent import propose  # noqa: E402
from mcp_autoresearch.measure.keep_rule import decide, nonblank_lines  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "mcp_autoresearch" / "examples" / "tune" / "approx.py"
MAX_K = 30
MIN_STREAKS = 30


def tune_score(namespace: dict[str, object]) -> float:
    approx = namespace["approx_sin"]
    assert callable(approx)
    total = sum(
        (approx((math.pi / 2) * i / 2000) - math.sin((math.pi / 2) * i / 2000)) ** 2 for i in range(2001)
    )
    return math.sqrt(total / 2001)


def rastrigin_score(namespace: dict[str, object]) -> float:
    xs = [float(namespace[name]) for name in ("A", "B", "C")]  # type: ignore[arg-type]
    return 10 * len(xs) + sum(x * x - 10 * math.cos(2 * math.pi * x) for x in xs)


def ridge_score(namespace: dict[str, object]) -> float:
    x, y = (int(namespace[name]) for name in ("X", "Y"))  # type: ignore[call-overload]
    return abs(y - (x * x) // 20) + abs(x - 37) / 2


TARGETS: dict[str, tuple[str, Callable[[dict[str, object]], float]]] = {
    "tune": (EXAMPLE.read_text(), tune_score),
    "rastrigin": ("A = 2.7\nB = -1.9\nC = 0.6\n", rastrigin_score),
    "ridge": ("X = 3\nY = 50\n", ridge_score),
}


def measure(content: str, score: Callable[[dict[str, object]], float]) -> float | None:
    """The target's value, or None for a crash (a deleted line the evaluation needs)."""
    namespace: dict[str, object] = {}
    try:
        exec(compile(content, "target", "exec"), namespace)  # noqa: S102 (the bench's own targets)
        value = score(namespace)
    except Exception:  # noqa: BLE001 (any failure of the candidate is a crash, as in a real run)
        return None
    return value if math.isfinite(value) else None


def session(
    content: str, score: Callable[[dict[str, object]], float], experiments: int, seed: int
) -> list[bool]:
    """One session of the scripted policy under the greedy rule: whether each experiment was kept."""
    rng = random.Random(seed)
    best_value = measure(content, score)
    assert best_value is not None
    kept: list[bool] = []
    for _ in range(experiments):
        proposal = propose(content, rng)
        if proposal is None:
            break
        candidate = content.replace(proposal.old, proposal.new, 1)
        value = measure(candidate, score)
        verdict = decide(
            run_status="ok" if value is not None else "crash",
            value=value,
            best=best_value,
            direction="lower_is_better",
            min_delta=0.0,
            is_baseline=False,
            lines=nonblank_lines(candidate),
            best_lines=nonblank_lines(content),
        )
        kept.append(verdict.decision == "keep")
        if verdict.decision == "keep":
            content, best_value = candidate, value
    return kept


def streak_figures(sessions: list[list[bool]]) -> dict[int, tuple[int, float, float]]:
    """For each k: (streaks that reached k, share with the next one kept, share with a keep within the next k)."""
    figures = {}
    for k in range(1, MAX_K + 1):
        reached = more = nxt = 0
        for kept in sessions:
            since = 0
            for index, was_kept in enumerate(kept):
                since = 0 if was_kept else since + 1
                if since != k or index + k >= len(kept):  # a streak reaching k, with k experiments after it
                    continue
                reached += 1
                more += any(kept[index + 1 : index + 1 + k])
                nxt += kept[index + 1]
        if reached:
            figures[k] = (reached, nxt / reached, more / reached)
    return figures


def gaps(sessions: list[list[bool]]) -> list[int]:
    """The experiments without a keep before each keep, over every session, sorted."""
    found = []
    for kept in sessions:
        since = 0
        for was_kept in kept:
            if was_kept:
                found.append(since)
            since = 0 if was_kept else since + 1
    return sorted(found)


def percentile(values: list[int], share: float) -> int:
    return values[min(len(values) - 1, int(share * len(values)))] if values else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=40)
    parser.add_argument("--experiments", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    chosen = []
    for name, (content, score) in TARGETS.items():
        runs = [session(content, score, args.experiments, args.seed * 1000 + s) for s in range(args.sessions)]
        keeps = sum(map(sum, runs)) / sum(map(len, runs))
        found = gaps(runs)
        print(f"\n{name}: {args.sessions} sessions x {args.experiments} experiments, keep rate {keeps:.1%}")
        print(
            f"gaps before a keep ({len(found)}): median {percentile(found, 0.5)}, 80th percentile "
            f"{percentile(found, 0.8)}, 90th percentile {percentile(found, 0.9)}"
        )
        print("   k  streaks  next kept  keep within next k")
        for k, (reached, nxt, more) in streak_figures(runs).items():
            if k <= 12 or k % 5 == 0:
                print(f"{k:4d}  {reached:7d}  {nxt:9.1%}  {more:18.1%}")
        figures = streak_figures(runs)
        start = figures[1][1]
        fallen = [k for k, (reached, nxt, _) in figures.items() if reached >= MIN_STREAKS and nxt < start / 2]
        print(
            f"hazard under half of its value at k = 1 ({start:.1%}) from k = {fallen[0] if fallen else 'never'}"
        )
        chosen += fallen[:1]
    print(
        f"\nstall_after = {sorted(chosen)[len(chosen) // 2]} (the median of the k where the hazard has halved)"
    )


if __name__ == "__main__":
    main()
