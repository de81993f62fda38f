"""The sequential keep rule's statistics: Student's t against table values, and the test's decisions as a table."""

from __future__ import annotations

import math
import random

import pytest

from mcp_autoresearch.measure.stats import (
    Noise,
    deterministic,
    incomplete_beta,
    look_alpha,
    noise_of,
    regression,
    sequential_test,
    t_cdf,
    t_quantile,
)


@pytest.mark.parametrize(
    ("a", "b", "x", "expected"),
    [
        (1.0, 1.0, 0.3, 0.3),  # I_x(1, 1) = x
        (3.0, 1.0, 0.5, 0.125),  # I_x(a, 1) = x^a
        (1.0, 4.0, 0.2, 1 - 0.8**4),  # I_x(1, b) = 1 - (1 - x)^b
        (7.5, 7.5, 0.5, 0.5),  # symmetric
        (2.0, 3.0, 0.0, 0.0),
        (2.0, 3.0, 1.0, 1.0),
    ],
)
def test_incomplete_beta(a: float, b: float, x: float, expected: float) -> None:
    assert incomplete_beta(a, b, x) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("t", "df", "expected"),
    [
        (0.0, 7, 0.5),
        (1.0, 1, 0.75),  # Cauchy: 1/2 + atan(t)/pi
        (-3.0, 1, 0.5 + math.atan(-3.0) / math.pi),
        (2.0, 2, 0.5 + 2.0 / (2 * math.sqrt(6.0))),  # df 2 has a closed form
        # printed tables (two-sided critical values), 3-4 significant digits
        (12.706, 1, 0.975),
        (2.015, 5, 0.95),
        (2.228, 10, 0.975),
        (2.845, 20, 0.995),
        (3.385, 30, 0.999),
        (-2.228, 10, 0.025),
        (1.645, 1e7, 0.95),  # the normal distribution in the limit
        (math.inf, 3, 1.0),
    ],
)
def test_t_cdf_matches_tables(t: float, df: float, expected: float) -> None:
    assert t_cdf(t, df) == pytest.approx(expected, abs=2e-4)


@pytest.mark.parametrize(
    ("p", "df", "expected"), [(0.975, 10, 2.228), (0.95, 5, 2.015), (0.995, 20, 2.845), (0.5, 4, 0.0)]
)
def test_t_quantile_inverts_the_cdf(p: float, df: float, expected: float) -> None:
    assert t_quantile(p, df) == pytest.approx(expected, abs=1e-3)
    assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-10)


def test_noise_pools_groups_and_detects_a_deterministic_metric() -> None:
    assert noise_of([1.0]) == Noise() and deterministic([4.0, 4.0]) and not deterministic([4.0])
    pooled = noise_of([1.0, 3.0]) + noise_of([10.0, 10.0, 13.0])
    assert (
        pooled.df == 3
        and pooled.ss == pytest.approx(2.0 + 6.0)
        and pooled.sd == pytest.approx(math.sqrt(8 / 3))
    )


def test_alpha_is_split_over_the_looks() -> None:
    assert look_alpha(1, 5, 0.005) == 0.0  # one run never keeps
    assert sum(look_alpha(n, 5, 0.005) for n in range(1, 6)) == pytest.approx(0.005)
    assert look_alpha(5, 5, 0.005) == pytest.approx(0.0025)
    assert look_alpha(1, 1, 0.005) == 0.005  # max_repeats 1: the only look may keep


BEST6 = [0.95, 1.05, 1.0, 0.9, 1.1, 1.0]  # mean 1.0
SD01 = Noise(30 * 0.01, 30)  # the session's other runs: sd 0.1 over 30 degrees of freedom
SD003 = Noise(30 * 0.001, 30)  # sd 0.032


# (case, candidate, best, noise, overrides, action, best_runs, words in the rule)
CASES = [
    ("deterministic better", [1.0], [1.2], Noise(), {}, "keep", 1, "no noise measured"),
    ("deterministic equal", [1.2], [1.2], Noise(), {}, "discard", 1, "improvement 0,"),
    ("deterministic, identical repeats", [1.1, 1.1], [1.2, 1.2, 1.2], Noise(), {}, "keep", 3, "no noise"),
    ("first run worse than the best's mean", [1.5], [1.0, 1.1, 0.9], Noise(), {}, "discard", 3, "not better"),
    (
        "first run better: measure more, best first",
        [0.7],
        [1.0, 1.1, 0.9],
        Noise(),
        {},
        "more",
        6,
        "run again",
    ),
    ("one run never keeps, however good", [0.0], [1.0, 1.1, 0.9], SD01, {}, "more", 6, "run again"),
    # Broke: P came out exactly 1.0, which met the 1.0 that means "no keep at this look" (a cheat fast for two
    # runs was judged on one and re-measured on the other).
    ("one run never keeps, even at P = 1", [-2.0], [1.0, 1.1, 0.9], SD003, {}, "more", 6, "run again"),
    ("two runs, clearly better", [0.5, 0.52], BEST6, SD003, {}, "keep", 6, "keep (P >= 0.9992)"),
    ("two runs, promising", [0.8, 0.85], BEST6, SD01, {}, "more", 9, "P(better by more than 0) = 0.98"),
    ("third run, no longer promising", [0.97, 0.95, 0.96], BEST6 * 2, SD01, {}, "discard", 12, "no longer"),
    (
        "last look, better but not shown",
        [0.85, 0.9, 0.87, 0.86, 0.87],
        BEST6 * 2,
        SD01,
        {},
        "discard",
        12,
        "not shown better within 5 runs",
    ),
    ("higher is better", [1.5, 1.48], BEST6, SD003, {"direction": "higher_is_better"}, "keep", 6, "keep"),
    (
        "worse when higher is better",
        [0.5, 0.52],
        BEST6,
        SD003,
        {"direction": "higher_is_better"},
        "discard",
        6,
        "",
    ),
    ("better, but not by min_delta", [0.5, 0.52], BEST6, SD003, {"min_delta": 0.5}, "discard", 6, "than 0.5"),
    ("max_repeats 1: one look, keeps", [0.5], BEST6, SD003, {"max_repeats": 1}, "keep", 6, "keep"),
    ("same runs, default confidence", [0.75, 0.77], BEST6, SD01, {}, "more", 9, "run again"),
    ("same runs, lower confidence", [0.75, 0.77], BEST6, SD01, {"confidence": 0.5}, "keep", 6, "P >= 0.9917"),
]


@pytest.mark.parametrize(
    ("candidate", "best", "noise", "overrides", "action", "best_runs", "words"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_sequential_test(
    candidate: list[float],
    best: list[float],
    noise: Noise,
    overrides: dict,
    action: str,
    best_runs: int,
    words: str,
) -> None:
    args = {
        "direction": "lower_is_better",
        "min_delta": 0.0,
        "confidence": 0.95,
        "max_repeats": 5,
        **overrides,
    }
    step = sequential_test(candidate, best, noise=noise, **args)
    assert (step.action, step.best_runs) == (action, best_runs), step.rule
    assert words in step.rule and step.low <= step.estimate <= step.high
    assert 0.0 <= step.probability <= 1.0


def simulate(effect: float, candidates: int, seed: int) -> tuple[float, float]:
    """The rule on candidates `effect` sigmas better than a best that starts with 3 runs (lower is better):
    returns the fraction kept and the mean runs per candidate (the best's re-measurements included)."""
    rng = random.Random(seed)
    kept = runs = 0
    args = {"direction": "lower_is_better", "min_delta": 0.0, "confidence": 0.95, "max_repeats": 5}
    history = Noise(20.0, 20)  # sd 1 over 20 degrees of freedom, as a session that has been running a while
    for _ in range(candidates):
        best = [rng.gauss(0.0, 1.0) for _ in range(3)]
        candidate = [rng.gauss(-effect, 1.0)]
        runs += 1
        while (step := sequential_test(candidate, best, noise=history, **args)).action == "more":
            while len(best) < step.best_runs:
                best.append(rng.gauss(0.0, 1.0))
                runs += 1
            candidate.append(rng.gauss(-effect, 1.0))
            runs += 1
        kept += step.action == "keep"
    return kept / candidates, runs / candidates


def test_the_error_rate_holds_over_repeated_looks() -> None:
    false_keeps, _ = simulate(0.0, 3000, seed=1)
    assert false_keeps <= 0.005  # (1 - confidence) / 10, however many times the candidate was looked at


def test_a_two_sigma_improvement_is_usually_kept() -> None:
    kept, _ = simulate(2.0, 300, seed=2)
    assert kept >= 0.65


def test_a_regression_after_the_keep_needs_the_keep_s_level_and_min_delta() -> None:
    noise = Noise(ss=0.01 * 20, df=20)  # sd 0.1
    lower = {"noise": noise, "direction": "lower_is_better", "min_delta": 0.0, "confidence": 0.95}
    # fast while judged, slow after: many standard errors worse
    why = regression([0.1, 0.2], [0.9, 1.0], **lower)
    assert why is not None and "worse by 0.8" in why and "vs 0.15 before" in why
    # better, equal, or a little worse (regression to the mean of a lucky draw): no regression
    assert regression([0.5, 0.52], [0.48, 0.5], **lower) is None
    assert regression([0.5, 0.5], [0.5, 0.5], **lower) is None
    assert regression([0.5, 0.52], [0.6, 0.62], **lower) is None  # 1 sd worse: P < 0.995
    # the direction counts: higher is better, so lower values are the regression
    assert regression([0.9, 1.0], [0.1, 0.2], **{**lower, "direction": "higher_is_better"}) is not None
    assert regression([0.1, 0.2], [0.9, 1.0], **{**lower, "direction": "higher_is_better"}) is None
    # no noise to judge by (a deterministic metric): worse by more than min_delta at all
    exact = {**lower, "noise": Noise(), "min_delta": 0.05}
    assert regression([1.0], [1.1], **exact) is not None and regression([1.0], [1.04], **exact) is None
