"""Whether a kept candidate's re-measured runs alone still beat its parent (`sequential._beats_parent`): the
noise it pools must count every group of runs once. Built from the engine's own records, no runs needed."""

from __future__ import annotations

from mcp_autoresearch.lifecycle.tally import ExperimentResult
from mcp_autoresearch.measure.sequential import Measurement, _beats_parent
from mcp_autoresearch.measure.standing import closed_noise, noise_beside, session_noise
from mcp_autoresearch.measure.stats import Noise, noise_of, still_better
from mcp_autoresearch.records.state import Best, SessionState
from mcp_autoresearch.setup.config import Config

from .test_views import _state as views_state

PARENT = [1.0] * 6  # a node branched from, not the best: its runs closed into the session's noise long ago
OTHERS = Noise(0.05, 5)  # the session's other closed groups: sd 0.1


def _state() -> SessionState:
    """A sequential session whose best (r2) is not the parent, the parent's runs closed into its noise."""
    closed = OTHERS + noise_of(PARENT)
    return views_state("lower_is_better", 0.5, 1.0).model_copy(
        update={"keep_rule": "sequential", "noise_ss": closed.ss, "noise_df": closed.df}
    )


def test_a_branched_parents_runs_count_once_in_the_noise() -> None:
    """A branched parent's runs were closed into the session's noise when it was decided: pooled again as the
    parent's group they counted twice (a strict xfail until this session)."""
    again = [0.85, 0.85]  # 0.15 better than the parent: not shown at the level a regression needs
    result = ExperimentResult("ok", 0.1, [0.1, 0.1], 0.0, 1.0, None, 0, "", "")
    measured = Measurement(result, remeasured=again)
    parent = Best(
        value=1.0, commit="c" * 40, run_id="r3", description="parent", nonblank_lines=3, values=PARENT
    )
    config = Config.model_validate({"target_file": "t.py", "run_command": "true", "metric_name": "m"})
    once = still_better(
        again, PARENT, noise=OTHERS, direction="lower_is_better", min_delta=0.0, confidence=0.95
    )
    assert once is False
    assert _beats_parent(measured, _state(), config, parent) is once


def test_the_noise_beside_a_reference_counts_its_runs_once() -> None:
    """What every test against a node pools besides the node's own runs (`noise_beside`: the sequential test of
    a candidate, whether a branched keep becomes the best, whether a keep stands on its re-measurement): the
    closed groups alone beside the best (its runs are not closed); beside another node, everything the session
    knows but that node's logged runs, which were closed when it was decided."""
    state = _state()
    assert noise_beside(state, [0.5], True) == closed_noise(state)
    fresh = state.model_copy(update={"noise_ss": 0.0, "noise_df": 0})  # runs closed before noise was kept
    assert noise_beside(fresh, [1.0, 5.0, 9.0], False) == Noise(0.0, 0)  # never below nothing
    assert noise_beside(state, PARENT, False) == OTHERS
    best = state.model_copy(update={"best": state.best.model_copy(update={"values": [0.4, 0.6]})})
    assert session_noise(best) == closed_noise(best) + noise_of([0.4, 0.6])
    assert noise_beside(best, [0.4, 0.6], True) == closed_noise(best)  # not noise_of([0.4, 0.6]) twice
    assert noise_beside(best, PARENT, False) == OTHERS + noise_of([0.4, 0.6])
