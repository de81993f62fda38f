"""How many runs a measurement takes: the baseline's noise runs, a candidate under the sequential keep rule
(with the best re-measured whenever it has fewer runs than the challenger needs), and a candidate the rule keeps
run again as many times as it was judged (`confirm_keep`): a run cannot tell those runs from the judged ones, so
a candidate fast only while judged shows a regression, which undoes the keep under the sequential rule (unless
the re-measured runs alone still beat its parent) and is reported under the greedy one.

This module decides only when to run again; the runs are `Experiment`s, the statistics are `stats`, and putting
the best's content in place for a re-measurement is the caller's (it knows git and the session state).
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..lifecycle.experiment import Experiment, ExperimentResult
from ..records.state import Best, SessionState
from ..setup.config import Config
from .keep_rule import decide
from .standing import keep_rule_line, noise_beside, session_noise
from .stats import Noise, Step, deterministic, regression, sequential_test, still_better


@dataclass
class Measurement:
    result: ExperimentResult  # the candidate's runs: `value` is their median, `values` every one
    best_values: list[float] = field(default_factory=list)  # runs of the best added while measuring
    step: Step | None = None  # the sequential test's last look (None: not sequential, or a failed run)
    remeasured: list[float] = field(default_factory=list)  # the candidate's runs after the rule kept it
    regression: str | None = None  # why those runs show it worse than when judged
    best_regression: str | None = None  # why the best's runs added while measuring show it worse than before


def noise_is_measured(config: Config) -> bool:
    """The baseline measures the noise unless the configuration chose the greedy rule."""
    return config.keep_rule != "greedy" and config.noise_runs > 1


def resolve_keep_rule(config: Config, baseline_values: list[float]) -> str:
    """The configured rule, or by default: greedy for a deterministic metric, sequential for a noisy one."""
    if config.keep_rule is not None:
        return config.keep_rule
    return "sequential" if len(baseline_values) >= 2 and not deterministic(baseline_values) else "greedy"


def keep_rule_summary(state: SessionState, config: Config) -> str:
    """One line for people: the rule, and the noise it is based on."""
    return keep_rule_line(state, config.confidence, config.max_repeats, config.min_delta)


def measure_baseline(experiment: Experiment, config: Config) -> Measurement:
    """The unmodified baseline, run `noise_runs` times to measure the noise; two equal values show a
    deterministic metric, which needs no more runs."""
    result = experiment.run(checks=False)
    if noise_is_measured(config):
        while (
            result.status == "ok"
            and len(result.values) < config.noise_runs
            and not deterministic(result.values)
        ):
            result = experiment.run(runs=1, checks=False)
    return Measurement(experiment.check(result))


def measure_baseline_under_load(experiments: list[Experiment], config: Config) -> Measurement:
    """The unmodified baseline in every slot at once (one experiment per slot), round after round until the
    noise is measured: slots slow each other, so the best is measured under the load every candidate meets."""
    values: list[float] = []
    while True:
        results: list[ExperimentResult | None] = [None] * len(experiments)

        def one(index: int, results: list[ExperimentResult | None] = results) -> None:
            results[index] = experiments[index].run(runs=1, checks=False)

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(experiments))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for result in results:
            assert result is not None
            if result.status != "ok":
                return Measurement(result)
            assert result.value is not None
            values.append(result.value)
        if not noise_is_measured(config) or len(values) >= config.noise_runs or deterministic(values):
            break
    first = results[0]
    assert first is not None
    first.values = values
    first.value = statistics.median(values)
    first.spread = max(values) - min(values) if len(values) > 1 else None
    return Measurement(experiments[0].check(first))


class Sequential:
    """One candidate under the sequential rule: run it, look, re-measure the best if needed, run again."""

    def __init__(
        self,
        candidate: Experiment,
        best: Experiment,
        swapped: Callable[[Callable[[], ExperimentResult]], ExperimentResult],
        best_values: list[float],
        noise: Noise,
        config: Config,
        direction: str,
    ) -> None:
        self.candidate = candidate
        self.best = best  # an Experiment whose runs are the best's re-measurements
        self.swapped = swapped  # runs a function with the best's content in place of the candidate's
        self.best_values = list(best_values)
        self.noise = noise
        self.config = config
        self.direction = direction

    def cancel(self, reason: str) -> None:
        self.candidate.cancel(reason)
        self.best.cancel(reason)

    def run(self) -> Measurement:
        """The measurement; when the best was re-measured, a regression of the best (its new runs worse than
        its earlier ones, `stats.regression`) is named: a kept candidate fast for exactly as many runs as judging
        and re-measuring took is slow here, and reported."""
        measured = self._run()
        if measured.best_values:
            why = regression(
                self.best_values,
                measured.best_values,
                noise=self.noise,
                direction=self.direction,
                min_delta=self.config.min_delta,
                confidence=self.config.confidence,
            )
            measured.best_regression = why and f"the best, re-measured for this candidate: {why}"
        return measured

    def _run(self) -> Measurement:
        config = self.config
        added: list[float] = []
        result = self.candidate.run(checks=False)
        while result.status == "ok":
            step = sequential_test(
                result.values,
                self.best_values + added,
                noise=self.noise,
                direction=self.direction,
                min_delta=config.min_delta,
                confidence=config.confidence,
                max_repeats=config.max_repeats,
            )
            if step.action != "more":
                return Measurement(result, added, step)
            while len(self.best_values) + len(added) < step.best_runs:
                again = self.swapped(lambda: self.best.run(runs=1, checks=False))
                if again.status == "cancelled":
                    result.status, result.error = "cancelled", again.error
                    return Measurement(result, added, None)
                if again.status != "ok":
                    why = f"the best could not be re-measured ({again.status}: {again.error}), so nothing is shown"
                    step = replace(step, action="discard", rule=f"discard ({why}): {step.rule}")
                    return Measurement(result, added, step)
                added.append(again.values[-1])
            result = self.candidate.run(runs=1, checks=False)
        return Measurement(result, added, None)


def confirm_keep(
    measured: Measurement,
    experiment: Experiment,
    state: SessionState,
    config: Config,
    lines: int,
    intact: Callable[[], bool],
    against: Best | None = None,
) -> Measurement:
    """A candidate the rule would keep is run again as many times as it was judged, exactly as before (same
    command, same kind of seed): the run cannot tell these runs from the judged ones. When they show it worse
    than when judged (`stats.regression`), or fail, the keep is undone under the sequential rule (the step
    becomes a discard) unless none failed and they alone still beat the parent (`_beats_parent`): then the keep
    stands at their median (the judged runs were shown not to be the candidate's), and reported under the
    greedy one. Nothing is run again when `intact` says the judged
    runs changed the target or a read-only file (a FIFO there would hang the next run): the check after the
    measurement calls that tampering."""
    result = measured.result
    if not _would_keep(measured, state, config, lines, against or state.best) or not intact():
        return measured
    judged = list(result.values) or ([result.value] if result.value is not None else [])
    again = experiment.run(runs=len(judged), checks=False)
    measured.remeasured = list(again.values[len(judged) :])
    if again.status == "cancelled":
        result.status, result.error = "cancelled", again.error
        measured.step = None
        return measured
    if again.status != "ok":
        why: str | None = f"its re-measurement after the keep failed ({again.status}: {again.error})"
    else:
        noise = session_noise(state)
        why = regression(
            judged,
            measured.remeasured,
            noise=noise,
            direction=state.metric_direction,
            min_delta=config.min_delta,
            confidence=config.confidence,
        )
        why = why and f"re-measured after the keep: {why}"
    failed = again.status != "ok"  # a failed re-measurement shows nothing, whatever its runs before
    if (
        why is not None
        and measured.step is not None
        and not failed
        and _beats_parent(measured, state, config, against)
    ):
        why += "; its re-measured runs alone still show it better than its parent: the keep stands"
        result.value = statistics.median(measured.remeasured)  # the judged runs were shown not to be its own
    elif why is not None and measured.step is not None:
        measured.step = replace(
            measured.step, action="discard", rule=f"discard ({why}): {measured.step.rule}"
        )
    measured.regression = why
    return measured


def kept_runs(
    values: list[float], remeasured: list[float], regression: str | None, keep_rule: str
) -> list[float]:
    """The runs that stand for a kept candidate: its judged and re-measured runs, or under the sequential rule,
    when a regression was reported (the keep stood on them), its re-measured runs alone."""
    if regression and remeasured and keep_rule == "sequential":
        return list(remeasured)
    return list(values) + list(remeasured)


def _beats_parent(measured: Measurement, state: SessionState, config: Config, against: Best | None) -> bool:
    """Under the sequential rule, whether the candidate's re-measured runs alone beat its parent's runs (those
    known before, and those added while judging it): a keep the re-measurement still supports is not undone."""
    parent = against or state.best
    if parent is None or not measured.remeasured:
        return False
    is_best = state.best is not None and parent.run_id == state.best.run_id
    logged = list(parent.values) or [parent.value]
    return still_better(
        measured.remeasured,
        logged + measured.best_values,
        noise=noise_beside(state, logged, is_best),  # its runs are not noise twice
        direction=state.metric_direction,
        min_delta=config.min_delta,
        confidence=config.confidence,
    )


def _would_keep(
    measured: Measurement, state: SessionState, config: Config, lines: int, best: Best | None
) -> bool:
    """What the rule says of a finished measurement, before the decision: the sequential test's last step, or
    the greedy comparison with the node it is judged against (its parent: the best unless branched)."""
    result = measured.result
    if measured.step is not None:
        return measured.step.action == "keep" and result.status == "ok"
    if state.keep_rule == "sequential" or best is None or result.status != "ok" or result.value is None:
        return False
    verdict = decide(
        run_status="ok",
        value=result.value,
        best=best.value,
        direction=state.metric_direction,
        min_delta=config.min_delta,
        is_baseline=False,
        lines=lines,
        best_lines=best.nonblank_lines,
    )
    return verdict.decision == "keep"
