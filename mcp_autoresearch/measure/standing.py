"""The session's standing: baseline, best and improvement, defined once for every view (briefing, query_results,
`status`, `finish`, the web page, the dashboard).

- The baseline is the unmodified target's value: the median of all its runs, re-measurements included.
- The best is the best kept commit's value (the median of its runs).
- Until something other than the baseline is kept, the best *is* the baseline: the improvement is 0 (comparing
  the baseline with a re-measurement of itself would report noise as progress).
- On a noisy metric the improvement comes with a 95% interval (Student t, the variance pooled over the
  session's runs, as the keep rule pools it).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from ..records.state import SessionState
from .keep_rule import improvement, improvement_pct
from .stats import Noise, noise_of, t_quantile

LEVEL = 0.95  # the interval's two-sided confidence


@dataclass(frozen=True)
class Standing:
    baseline: float
    best: float
    improvement: float  # best over baseline, > 0 = better, in the metric's unit
    improvement_pct: float | None  # as a percentage of the baseline's magnitude (None for a zero baseline)
    interval: tuple[float, float] | None  # the improvement's LEVEL interval (None: no noise measured)
    best_is_baseline: bool

    def text(self) -> str:
        """One line for people: `improvement 0.2 (+1.5%, 95% interval 0.1 .. 0.3)`."""
        details = [f"{self.improvement_pct:+.2f}%"] if self.improvement_pct is not None else []
        if self.interval is not None:
            details.append(f"{LEVEL:.0%} interval {self.interval[0]:.6g} .. {self.interval[1]:.6g}")
        if self.best_is_baseline:
            details.append("nothing kept beyond the baseline")
        return f"improvement {self.improvement:.6g}" + (f" ({', '.join(details)})" if details else "")


def baseline_runs(state: SessionState) -> list[float]:
    """Every run of the unmodified baseline: the best's runs while the best is the baseline."""
    if is_baseline_best(state):
        return best_values(state)
    if state.baseline_values:
        return list(state.baseline_values)
    return [state.baseline_value] if state.baseline_value is not None else []


def best_values(state: SessionState) -> list[float]:
    """The best's runs (a state written before issue 13 knows only its value)."""
    best = state.best
    return [] if best is None else (list(best.values) or [best.value])


def closed_noise(state: SessionState) -> Noise:
    """The noise of the session's groups of runs that can no longer grow (not the best's own runs)."""
    return Noise(state.noise_ss, state.noise_df)


def session_noise(state: SessionState) -> Noise:
    """Everything the session knows of the metric's noise: the closed groups and the best's runs (here, not in
    sequential.py, so that the readers judge near-misses with it too)."""
    return closed_noise(state) + noise_of(best_values(state))


def noise_beside(state: SessionState, reference: list[float], is_best: bool) -> Noise:
    """The session's noise for a test that pools the runs of the node a candidate is judged against
    (`reference`) itself, so that every group of runs counts once: the best's runs are not closed yet (the
    closed groups alone); another node's logged runs were closed when it was decided, or when it stopped being
    the best (taken back out of everything the session knows; runs of it closed with them, a best's
    re-measurements, stay)."""
    if is_best:
        return closed_noise(state)
    known, own = session_noise(state), noise_of(reference)
    return Noise(max(0.0, known.ss - own.ss), max(0, known.df - own.df))


def noise_sd(state: SessionState | None) -> float:
    """The metric's noise as one standard deviation (0.0 while none is measured): a near-miss is a discard
    within it of its parent, for the server and every reader alike."""
    if state is None:
        return 0.0
    noise = session_noise(state)
    return noise.sd if noise.df and noise.sd else 0.0


def is_baseline_best(state: SessionState) -> bool:
    return state.best is not None and state.best.commit == state.baseline_commit


def standing(state: SessionState | None) -> Standing | None:
    """Baseline, best and improvement; None before the baseline is kept."""
    if state is None or state.best is None or state.baseline_value is None:
        return None
    base_runs = baseline_runs(state)
    baseline = statistics.median(base_runs) if base_runs else state.baseline_value
    if is_baseline_best(state):
        return Standing(baseline, baseline, 0.0, 0.0 if baseline else None, None, True)
    best = state.best.value
    gain = improvement(best, baseline, state.metric_direction)
    return Standing(
        baseline, best, gain, improvement_pct(gain, baseline), _interval(state, gain, len(base_runs)), False
    )


def _interval(state: SessionState, gain: float, baseline_n: int) -> tuple[float, float] | None:
    noise = Noise(state.noise_ss, state.noise_df) + noise_of(best_values(state))  # as the keep rule pools it
    best_n = len(best_values(state))
    if not noise.df or not noise.ss or not baseline_n or not best_n:
        return None  # a deterministic metric, or no noise measured: the improvement is exact as far as known
    assert noise.sd is not None
    half = t_quantile(0.5 + LEVEL / 2, noise.df) * noise.sd * math.sqrt(1 / baseline_n + 1 / best_n)
    return round(gain - half, 12), round(gain + half, 12)


def keep_rule_line(state: SessionState, confidence: float, max_repeats: int, min_delta: float) -> str:
    """One line for people: the session's keep rule, and the noise it is based on."""
    noise = session_noise(state)
    sd = f"noise sd {noise.sd:.4g} over {noise.df} degrees of freedom" if noise.df else "noise not measured"
    if state.keep_rule == "sequential":
        return (
            f"keep rule: sequential (a change is kept when better with confidence {confidence:g}; up to "
            f"{max_repeats} runs per candidate; {sd})"
        )
    if state.keep_rule == "greedy":
        deterministic_metric = noise.df > 0 and noise.ss == 0
        why = "the metric is deterministic" if deterministic_metric else sd
        return f"keep rule: greedy (kept when better by more than min_delta {min_delta:g}; {why})"
    return "keep rule: decided by the baseline's noise runs"


def stored_keep_rule_line(state: SessionState) -> str | None:
    """keep_rule_line from the settings the session froze (for a reader without the server's configuration);
    None before the baseline chose the rule."""
    rules = state.rules
    if state.keep_rule is None:
        return None
    confidence, repeats, delta = rules.get("confidence"), rules.get("max_repeats"), rules.get("min_delta")
    if (
        not isinstance(confidence, float | int)
        or not isinstance(repeats, int)
        or not isinstance(delta, float | int)
    ):
        return None  # a state written before these were frozen: say nothing rather than guess
    return keep_rule_line(state, float(confidence), repeats, float(delta))
