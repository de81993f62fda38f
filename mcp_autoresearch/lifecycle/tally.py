"""What one experiment measured: the repeats of its command added up (`Tally`) into its result
(`ExperimentResult`), with the tail of its logs (the run's, then the evaluation's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..measure.metrics import Secondary
from ..records.logtail import tail
from ..statuses import RunStatus
from .evaluation import EVAL_SUFFIX


@dataclass
class ExperimentResult:
    status: RunStatus
    value: float | None
    values: list[float]
    spread: float | None
    duration_s: float
    memory_gb: float | None
    exit_code: int | None
    log_path: str
    log_tail: str
    error: str | None = None
    secondary: dict[str, float] = field(default_factory=dict)
    leftovers_killed: int = 0
    output_cut: str | None = None  # what the bounded logs left out of the output (`records/run_log.py`)


@dataclass
class Tally:
    """What the repeats of one experiment add up to, until it ends in a result."""

    values: list[float] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    peak_rss: int = 0
    memory_mb: float | None = None
    secondary: dict[str, float] = field(default_factory=dict)
    leftovers: int = 0
    exit_code: int | None = None
    eval_log: Path | None = None  # the last evaluation's log (with eval_command)
    output_cuts: list[str] = field(default_factory=list)  # what bounded logs left out, stage by stage

    def note_output(self, cut: str | None, stage: str) -> None:
        """A command's output that its log did not keep whole (`ProcessResult.output_cut`), in `stage`."""
        if cut:
            self.output_cuts.append(f"{stage}: {cut}")

    def add_run(self, duration_s: float, peak_rss: int, leftovers: int, exit_code: int | None) -> None:
        self.durations.append(duration_s)
        self.peak_rss = max(self.peak_rss, peak_rss)
        self.leftovers += leftovers
        self.exit_code = exit_code

    def add_figures(self, figures: Secondary) -> None:
        if figures.memory_mb is not None:
            self.memory_mb = max(self.memory_mb or 0.0, figures.memory_mb)
        self.secondary.update(figures.metrics)

    def _tail(self, log_path: Path) -> str:
        """The log's last lines; with an evaluation stage, the run's and then the evaluation's."""
        if self.eval_log is None or not self.eval_log.exists():
            return tail(log_path)
        run_log = self.eval_log.with_name(self.eval_log.name.removesuffix(EVAL_SUFFIX + ".log") + ".log")
        evaluation = tail(self.eval_log, 15, 1000)
        return f"{tail(run_log, 15, 1000)}\n--- evaluation stage ({self.eval_log.name}) ---\n{evaluation}"

    def result(
        self, status: RunStatus, value: float | None, log_path: Path, error: str | None
    ) -> ExperimentResult:
        # A memory figure the run printed (peak_vram_mb) beats the sampled RSS of the process tree.
        sampled = self.peak_rss / (1024**3) if self.peak_rss else None
        memory_gb = self.memory_mb / 1024 if self.memory_mb is not None else sampled
        return ExperimentResult(
            status=status,
            value=value,
            values=list(self.values),
            spread=(max(self.values) - min(self.values)) if len(self.values) > 1 else None,
            duration_s=round(sum(self.durations), 3),
            memory_gb=round(memory_gb, 3) if memory_gb is not None else None,
            exit_code=self.exit_code,
            log_path=str(log_path),
            log_tail=self._tail(log_path),
            error=error,
            secondary=self.secondary,
            leftovers_killed=self.leftovers,
            output_cut="; ".join(self.output_cuts) or None,
        )
