"""Keep or discard: decided from the server's own measurement, never from a number the agent supplies."""

from __future__ import annotations

from dataclasses import dataclass

from ..statuses import Decision, RunStatus
from .stats import Step


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reason: str
    delta: float | None  # value - best (None without both)


def improvement(value: float, best: float, direction: str) -> float:
    """How much better `value` is than `best` (positive = better) in the configured direction."""
    gain = best - value if direction == "lower_is_better" else value - best
    return round(gain, 12)  # no float noise like 0.19999999999999996 in logs


def decide(
    *,
    run_status: RunStatus,
    value: float | None,
    best: float | None,
    direction: str,
    min_delta: float,
    is_baseline: bool,
    lines: int,
    best_lines: int | None,
    discard_requested: bool = False,
    error: str | None = None,
    test: Step | None = None,
) -> Verdict:
    """The loop's rule. Keep when better than the best kept value by more than `min_delta`, or equal within
    `min_delta` with a simpler target (fewer non-blank lines). The baseline is kept. Everything else, and every
    failed run, is discarded. The agent may ask to discard; it can never force a keep.
    Under the sequential rule, `test` (the sequential test's last look) decides instead of the comparison."""
    if run_status != "ok" or value is None:
        detail = f" ({error})" if error else ""
        return Verdict("crash", f"{run_status}{detail}: nothing to keep", None)
    if is_baseline:
        if discard_requested:
            return Verdict("discard", "baseline discarded on request; run the baseline again", None)
        return Verdict("keep", "baseline", None)
    assert best is not None
    delta = round(value - best, 12)
    if discard_requested:
        return Verdict("discard", "discarded on request", delta)
    if test is not None:
        return Verdict("keep" if test.action == "keep" else "discard", test.rule, delta)
    gain = improvement(value, best, direction)
    if gain > min_delta:
        return Verdict("keep", f"improved by {gain:.6g} (more than min_delta {min_delta:g})", delta)
    if abs(gain) <= min_delta and best_lines is not None and lines < best_lines:
        return Verdict(
            "keep", f"equal within min_delta and simpler ({lines} vs {best_lines} non-blank lines)", delta
        )
    if gain > 0:
        return Verdict(
            "discard", f"improved by only {gain:.6g}, not more than min_delta {min_delta:g}", delta
        )
    if abs(gain) <= min_delta:
        return Verdict("discard", "no improvement (equal, and not simpler)", delta)
    return Verdict("discard", f"worse by {-gain:.6g}", delta)


def improvement_pct(gain: float, baseline: float) -> float | None:
    """The improvement as a percentage of the baseline's magnitude (None for a zero baseline)."""
    return gain / abs(baseline) * 100 if baseline else None


def nonblank_lines(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.strip())
