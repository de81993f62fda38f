"""The session's budgets: `max_experiments` and `max_hours` (wall-clock, from the session's start, across
restarts), how much of each is used and left, and the refusal of a new run past either.

Only a run's admission is refused: a run started before the end is measured, decided and logged as usual. The
budgets in force are kept in the session's state (`settle_budget`), so every view reads them from the state file
alone. A budget is the person's limit on the agent: start_session's arguments may set one where none is in force
or lower one, never raise it; a person raises it in the configuration (or `serve --max-hours`), and a configured
value that changed since the session last read it always applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..errors import RuleViolation
from .state import SessionState

BUDGET_KEYS = ("max_experiments", "max_hours")
NEAR_SHARE = 0.1  # a budget is near its end with this share of it left (and at most NEAR_EXPERIMENTS runs)
NEAR_EXPERIMENTS = 5
HOW_TO_GO_ON = (
    "To go on, a person raises it: {key} in the configuration (or `mcp-autoresearch serve --{flag} ...`), read "
    "when the server starts; the agent cannot raise it. When you are done, land the kept work "
    "(`mcp-autoresearch finish --land BRANCH`)"
)


def how_to_go_on(key: str) -> str:
    return HOW_TO_GO_ON.format(key=key, flag=key.replace("_", "-"))


def hours_since(created_at: str, now: datetime | None = None) -> float:
    """Hours from a state's `created_at` to `now` (aware). The server writes it with its UTC offset, so a
    restart in another time zone counts the same hours; a state written before that (naive) is local time."""
    try:
        start = datetime.fromisoformat(created_at).astimezone()  # a naive time is the machine's local time
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, ((now or datetime.now(UTC)) - start).total_seconds() / 3600)


def _hours(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") + " h"


@dataclass(frozen=True)
class BudgetUse:
    """How much of each budget a session has used (`experiments`: logged plus in flight)."""

    max_experiments: int | None
    experiments: int
    max_hours: float | None
    hours: float

    @property
    def experiments_left(self) -> int | None:
        return None if self.max_experiments is None else max(0, self.max_experiments - self.experiments)

    @property
    def hours_left(self) -> float | None:
        return None if self.max_hours is None else max(0.0, self.max_hours - self.hours)

    @property
    def limited(self) -> bool:
        return self.max_experiments is not None or self.max_hours is not None

    def spent(self) -> str | None:
        """Which budget is spent, with what was used, or None while both allow a new run."""
        if self.experiments_left == 0:
            return f"max_experiments ({self.max_experiments}) reached: {self.experiments} experiments"
        if self.hours_left == 0 and self.max_hours is not None:
            return (
                f"max_hours ({_hours(self.max_hours)}) reached: {_hours(self.hours)} have passed since the "
                "session started"
            )
        return None

    def line(self) -> str | None:
        """Used and left, in one line (None without a budget): 'budget: 12 of 100 experiments (88 left); ...'."""
        parts = []
        if self.max_experiments is not None:
            parts.append(
                f"{self.experiments} of {self.max_experiments} experiments ({self.experiments_left} left)"
            )
        if self.max_hours is not None:
            parts.append(
                f"{_hours(self.hours)} of {_hours(self.max_hours)} ({_hours(self.hours_left or 0.0)} left)"
            )
        return "budget: " + "; ".join(parts) if parts else None

    def near(self) -> str | None:
        """A short warning when a budget is spent or close to it ('2 of 100 experiments left'), else None."""
        spent = self.spent()
        if spent is not None:
            key = spent.split(" ", 1)[0]
            return f"the session's budget is spent ({spent}): no new run starts. " + how_to_go_on(key)
        warnings = []
        left = self.experiments_left
        if left is not None and self.max_experiments is not None and left <= self._near_experiments():
            warnings.append(f"{left} of {self.max_experiments} experiments left")
        hours_left = self.hours_left
        if (
            hours_left is not None
            and self.max_hours is not None
            and hours_left <= self.max_hours * NEAR_SHARE
        ):
            warnings.append(f"{_hours(hours_left)} of {_hours(self.max_hours)} left")
        return "budget: " + " and ".join(warnings) if warnings else None

    def _near_experiments(self) -> int:
        """Experiments left that count as near the end: a tenth of the budget, at least 1, at most 5."""
        assert self.max_experiments is not None
        return min(NEAR_EXPERIMENTS, max(1, round(self.max_experiments * NEAR_SHARE)))

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_experiments": self.max_experiments,
            "experiments": self.experiments,
            "experiments_left": self.experiments_left,
            "max_hours": self.max_hours,
            "hours": round(self.hours, 4),
            "hours_left": None if self.hours_left is None else round(self.hours_left, 4),
            "spent": self.spent(),
        }


def budget_use(state: SessionState, experiments: int, now: datetime | None = None) -> BudgetUse:
    """The state's budgets against `experiments` (logged plus in flight) and the hours since its start."""
    return BudgetUse(state.max_experiments, experiments, state.max_hours, hours_since(state.created_at, now))


def refuse_past_budget(state: SessionState, logged: int, in_flight: int = 0) -> None:
    """At a run's admission: a spent budget refuses the run, naming the budget, what was used and how to go on.
    Runs in flight count towards max_experiments (each will be logged)."""
    spent = budget_use(state, logged + in_flight).spent()
    if spent is None:
        return
    key = spent.split(" ", 1)[0]
    counted = f" (counting the {in_flight} runs in flight)" if in_flight and key == "max_experiments" else ""
    raise RuleViolation(
        f"the session's budget is spent: {spent}{counted}. No new run starts; a run started before the end is "
        "still decided and logged. " + how_to_go_on(key)
    )


def settle_budget(state: SessionState, configured: dict[str, Any], asked: dict[str, Any]) -> list[str]:
    """Set the budgets in force when a session opens (or start_session is called again). A configured value
    that differs from the one the session last read is a person's change: it applies, up or down. An argument
    of start_session may set a budget where none is in force, or lower one (kept across restarts until the
    configuration changes); raising one is refused. Returns what changed."""
    changed = []
    for key in BUDGET_KEYS:
        before, value, source = getattr(state, key), None, ""
        if key not in state.budget_configured or configured.get(key) != state.budget_configured[key]:
            value, source = configured.get(key), "the configuration"
            state.budget_configured[key] = value
        if asked.get(key) is not None:
            current = value if source else before
            if current is not None and asked[key] > current:
                shown = _hours(current) if key == "max_hours" else _shown(current)
                raise RuleViolation(f"{key} is {shown} for this session. " + how_to_go_on(key))
            value, source = asked[key], "start_session"
        if source and value != before:
            setattr(state, key, value)
            changed.append(f"{key}: {_shown(before)} -> {_shown(value)} (from {source})")
    return changed


def _shown(value: Any) -> str:
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def refuse_escape(
    spent_session: SessionState, experiments: int, configured: dict[str, Any], new_tag: str
) -> None:
    """A new session does not start while the project's last session has spent its budget (in force: a person's
    change in the configuration counts): else the agent would escape the budget by starting session after
    session on the spent one's best."""
    in_force = spent_session.model_copy(deep=True)
    settle_budget(in_force, configured, {})
    spent = budget_use(in_force, experiments).spent()
    if spent is None:
        return
    key = spent.split(" ", 1)[0]
    raise RuleViolation(
        f"session '{spent_session.tag}' has spent its budget ({spent}), so session '{new_tag}' does not start: "
        f"a budget holds across sessions. A person decides what comes next: raises {key} in the configuration "
        f"(or `mcp-autoresearch serve --{key.replace('_', '-')} ...`), or ends that session "
        f"(`mcp-autoresearch finish`, then `mcp-autoresearch clean --tag {spent_session.tag}`)"
    )
