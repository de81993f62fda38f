"""The statistics of the sequential keep rule: pure functions, no I/O, no state.

`sequential_test` is the whole rule: from the values measured so far it says keep, discard, or run the candidate
again (and how many runs the best needs first). It never runs anything.

The test: one-sided Student t on the difference of means (candidate minus best, oriented so that positive is
better), the variance pooled over every group of runs of the session (the candidate's, the best's, and the closed
groups passed as `noise`: the baseline's noise runs, earlier candidates, earlier bests). Pooling is sound because
the noise comes from the evaluator (seeds, data order, the machine), not from the idea; it is what lets a first
run be judged at all (Welch's test has no variance for one run), and its degrees of freedom grow with the session.

The error rate: with normally distributed noise of the same spread for every candidate, a candidate that is not
better than the best is kept with probability at most alpha = (1 - confidence) / SESSION_SPLIT, whatever the
number of looks: alpha is split over the looks
(Bonferroni), half at the last look, the rest evenly over the earlier ones, and a keep needs at least
FIRST_KEEP_LOOK runs. Discarding early (futility) can only lower the rate.

Stopping: keep as soon as P(better by more than min_delta) reaches 1 - the look's alpha; discard as soon as the
estimate is below FUTILITY * (n - 1) standard errors (after the first run: not better than the best's mean, the
"clearly worse" case), or at the last look. The winner's curse: before the candidate's next run the best needs
BEST_RUNS times the candidate's runs, so a lucky draw kept earlier is diluted by fresh runs before it judges.

Measured through the server (BENCHMARKS.md, bench/noise.py): 0.15 false keeps per 100 candidates that are no
better (greedy: 4.85), 72% of the candidates 2 sigma better kept, 1.7 to 2.6 runs per candidate.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

# A session judges many candidates and a false keep costs the rest of it (every later idea is judged against
# it): the per-candidate error rate is (1 - confidence) / SESSION_SPLIT. With 10, confidence 0.95 means at most
# 0.5 false keeps per 100 candidates that are truly no better.
SESSION_SPLIT = 10
FIRST_KEEP_LOOK = 2  # a single run never keeps a change on a noisy metric
LAST_SHARE = 0.5  # the share of alpha spent at the last look (the one with the most runs)
FUTILITY = 0.65  # discard when the estimate is below FUTILITY * (runs - 1) standard errors
BEST_RUNS = 3  # the best is re-measured up to this many times the challenger's runs

Action = Literal["keep", "discard", "more"]


@dataclass(frozen=True)
class Noise:
    """A pooled variance: the sum of squared deviations from each group's mean, and its degrees of freedom."""

    ss: float = 0.0
    df: int = 0

    def __add__(self, other: Noise) -> Noise:
        return Noise(self.ss + other.ss, self.df + other.df)

    @property
    def sd(self) -> float | None:
        return math.sqrt(self.ss / self.df) if self.df else None


def noise_of(values: Sequence[float]) -> Noise:
    """One group's contribution to the pooled variance (nothing for fewer than two values)."""
    if len(values) < 2:
        return Noise()
    mean = math.fsum(values) / len(values)
    return Noise(math.fsum((v - mean) ** 2 for v in values), len(values) - 1)


def deterministic(values: Sequence[float]) -> bool:
    """Two or more runs that all gave the same value: the metric has no noise worth testing."""
    return len(values) >= 2 and max(values) == min(values)


@dataclass(frozen=True)
class Step:
    """What the sequential test says after a look: the action and everything that went into it."""

    action: Action
    estimate: float  # improvement of the candidate's mean over the best's mean (positive = better)
    low: float  # the interval of the improvement at this look's level (the first keep look's before it)
    high: float
    probability: float  # P(improvement > min_delta): 1 - the one-sided test's p-value
    needed: float  # the probability a keep needs at this look (1.0: no keep at this look)
    best_runs: int  # runs the best must have before the candidate's next run
    rule: str  # one line a person can check


def sequential_test(
    candidate: Sequence[float],
    best: Sequence[float],
    *,
    noise: Noise,
    direction: str,
    min_delta: float,
    confidence: float,
    max_repeats: int,
) -> Step:
    """One look of the sequential keep rule (see the module docstring). `candidate` and `best` are every value
    measured of each; `noise` pools the session's other groups."""
    n, m = len(candidate), len(best)
    assert n >= 1 and m >= 1, "both the candidate and the best need a value"
    sign = -1.0 if direction == "lower_is_better" else 1.0
    estimate = sign * (_mean(candidate) - _mean(best)) + 0.0  # + 0.0: never "-0"
    pooled = noise + noise_of(candidate) + noise_of(best)
    alpha = (1.0 - confidence) / SESSION_SPLIT
    needed = 1.0 - look_alpha(n, max_repeats, alpha)  # 1.0: no keep possible at this look
    if pooled.df == 0 or pooled.ss == 0.0:
        # No variance to judge by (one run each, or identical values): the metric behaves deterministically,
        # the difference is exact, and more runs would say nothing new.
        action: Action = "keep" if estimate > min_delta else "discard"
        rule = f"{action}: improvement {estimate:.6g}, no noise measured (min_delta {min_delta:g})"
        return Step(action, estimate, estimate, estimate, float(estimate > min_delta), needed, m, rule)
    se = math.sqrt(pooled.ss / pooled.df * (1.0 / n + 1.0 / m))
    level = needed if needed < 1.0 else 1.0 - look_alpha(FIRST_KEEP_LOOK, max_repeats, alpha)
    q = t_quantile(level, pooled.df)
    low, high = estimate - q * se, estimate + q * se
    probability = t_cdf((estimate - min_delta) / se, pooled.df)
    shown = (
        f"improvement {estimate:.4g} (interval {low:.4g} .. {high:.4g} at {level:.4g}), "
        f"P(better by more than {min_delta:g}) = {probability:.4g}; {n} run(s) vs the best's {m}"
    )

    def step(action: Action, why: str) -> Step:
        runs = max(m, BEST_RUNS * min(n + 1, max_repeats)) if action == "more" else m
        return Step(action, estimate, low, high, probability, needed, runs, f"{why}: {shown}")

    if needed < 1.0 and probability >= needed:  # 1.0: no keep at this look, even where P rounds to 1
        return step("keep", f"keep (P >= {needed:.4g})")
    if (estimate - min_delta) / se <= FUTILITY * (n - 1):
        return step(
            "discard", "discard (not better than the best)" if n == 1 else "discard (no longer promising)"
        )
    if n >= max_repeats:
        return step("discard", f"discard (not shown better within {max_repeats} runs: P < {needed:.4g})")
    return step("more", "promising: run again")


def regression(
    judged: Sequence[float],
    again: Sequence[float],
    *,
    noise: Noise,
    direction: str,
    min_delta: float,
    confidence: float,
) -> str | None:
    """How the re-measurement of a kept candidate (`again`) shows it worse than its earlier runs, or None.
    Worse means: by more than `min_delta`, with probability at least 1 - (1 - confidence) / SESSION_SPLIT (the
    level a keep needs, so a candidate whose judged runs were merely lucky is rarely undone); without noise to
    judge by, worse by more than `min_delta` at all."""
    sign = -1.0 if direction == "lower_is_better" else 1.0
    drop = sign * (_mean(judged) - _mean(again)) + 0.0  # positive: the re-measurement is worse
    shown = f"mean {_mean(again):.6g} over {len(again)} run(s) vs {_mean(judged):.6g} before"
    pooled = noise + noise_of(judged) + noise_of(again)
    if pooled.df == 0 or pooled.ss == 0.0:
        return f"{shown}, worse by {drop:.6g}" if drop > min_delta else None
    se = math.sqrt(pooled.ss / pooled.df * (1.0 / len(judged) + 1.0 / len(again)))
    probability = t_cdf((drop - min_delta) / se, pooled.df)
    needed = 1.0 - (1.0 - confidence) / SESSION_SPLIT
    if probability < needed:
        return None
    return f"{shown}, worse by {drop:.4g} (P = {probability:.4g} >= {needed:.4g})"


def still_better(
    again: Sequence[float],
    parent: Sequence[float],
    *,
    noise: Noise,
    direction: str,
    min_delta: float,
    confidence: float,
) -> bool:
    """Whether a kept candidate's re-measurement (`again`), alone, still shows it better than its parent's runs
    by more than `min_delta`, at the level a regression needs: then worse runs than when judged undo nothing
    (a candidate no better unless judged fails here; one whose judged runs were merely lucky, or whose
    re-measurement was, passes)."""
    sign = -1.0 if direction == "lower_is_better" else 1.0
    gain = sign * (_mean(again) - _mean(parent)) + 0.0
    pooled = noise + noise_of(again) + noise_of(parent)
    if pooled.df == 0 or pooled.ss == 0.0:
        return gain > min_delta
    se = math.sqrt(pooled.ss / pooled.df * (1.0 / len(again) + 1.0 / len(parent)))
    return t_cdf((gain - min_delta) / se, pooled.df) >= 1.0 - (1.0 - confidence) / SESSION_SPLIT


def look_alpha(n: int, max_repeats: int, alpha: float) -> float:
    """The share of `alpha` spent at look `n` (after n runs). The shares add up to `alpha` (Bonferroni), so
    looking after every run cannot inflate the error rate."""
    first = min(FIRST_KEEP_LOOK, max_repeats)
    if n < first:
        return 0.0
    earlier = max_repeats - first
    if earlier == 0:
        return alpha
    if n >= max_repeats:
        return alpha * LAST_SHARE
    return alpha * (1.0 - LAST_SHARE) / earlier


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


# --------------------------------------------------------------------------------------------------------------
# Student's t distribution, through the regularized incomplete beta function (Numerical Recipes' continued
# fraction, evaluated with Lentz's method). Accurate to ~1e-12, which is far more than a keep rule needs.
# --------------------------------------------------------------------------------------------------------------
def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


@functools.lru_cache(maxsize=1024)
def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (bisection on the CDF; a session asks for few distinct levels, hence the cache)."""
    low, high = -1e3, 1e3
    for _ in range(200):
        mid = (low + high) / 2.0
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-12:
            break
    return (low + high) / 2.0


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result
