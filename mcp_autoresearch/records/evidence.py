"""What the keep rule saw for one experiment, as the journal logs it (issue 13).

Every run of the candidate and of the best it was judged against, the estimated improvement with its interval
and probability, the rule, and the content that ran. Keys absent from the JSONL read back empty, so rows logged
before them load unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Evidence:
    values: list[float] = field(default_factory=list)  # every run of the candidate (value: their median)
    best_values: list[float] = field(default_factory=list)  # the best's runs it was judged against
    estimate: float | None = None  # the improvement over the best the rule saw (positive = better)
    interval: tuple[float, float] | None = None  # the sequential test's interval of the improvement
    probability: float | None = None  # the sequential test's P(better by more than min_delta)
    keep_rule: str = ""  # greedy | sequential
    target_sha256: str = ""  # the target's content that ran
    rerun_of: str | None = None  # the run that measured the same content before (rerun=true)
    slot: int | None = None  # with slots: the slot that measured it
    rebases: int = 0  # with slots: times its change was merged onto a newer best and run again
    remeasured: list[float] = field(default_factory=list)  # its runs after the rule kept it
    regression: str | None = None  # why those runs showed it worse than when judged
    best_regression: str | None = None  # why the best's runs added for it showed the best worse than before

    def details(self) -> dict[str, Any]:
        """The JSONL keys: `values` always, the others when known."""
        known = {
            "best_values": self.best_values or None,
            "estimate": self.estimate,
            "interval": list(self.interval) if self.interval else None,
            "probability": self.probability,
            "keep_rule": self.keep_rule or None,
            "target_sha256": self.target_sha256 or None,
            "rerun_of": self.rerun_of,
            "slot": self.slot,
            "rebases": self.rebases or None,
            "remeasured": self.remeasured or None,
            "regression": self.regression,
            "best_regression": self.best_regression,
        }
        return {"values": self.values, **{key: value for key, value in known.items() if value is not None}}

    @classmethod
    def from_details(cls, details: dict[str, Any]) -> Evidence:
        interval = _floats(details.get("interval"))
        rerun_of = details.get("rerun_of")
        return cls(
            values=_floats(details.get("values")),
            best_values=_floats(details.get("best_values")),
            estimate=_finite(details.get("estimate")),
            interval=(interval[0], interval[1]) if len(interval) == 2 else None,
            probability=_finite(details.get("probability")),
            keep_rule=str(details.get("keep_rule") or ""),
            target_sha256=str(details.get("target_sha256") or ""),
            rerun_of=rerun_of if isinstance(rerun_of, str) else None,
            slot=_int(details.get("slot")),
            rebases=_int(details.get("rebases")) or 0,
            remeasured=_floats(details.get("remeasured")),
            regression=str(details["regression"]) if details.get("regression") else None,
            best_regression=str(details["best_regression"]) if details.get("best_regression") else None,
        )


def _finite(value: Any) -> float | None:
    return value if isinstance(value, int | float) and math.isfinite(value) else None


def _floats(value: Any) -> list[float]:
    if not isinstance(value, list):
        return []
    return [v for v in (_finite(item) for item in value) if v is not None]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
