"""The two shapes of `results.tsv`: the original tool's (the default) and karpathy/autoresearch's, which its
`analysis.ipynb` reads. Both are views of the JSONL rows; `journal.py` writes and rebuilds the file in one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

ResultsFormat = Literal["autoresearch", "karpathy"]
RESULTS_FORMATS: tuple[str, ...] = ("autoresearch", "karpathy")
AUTORESEARCH_HEADER = "commit\tmetric\tvalue\tstatus\tdescription\n"


class TsvRow(Protocol):
    """What a row of the journal (`journal.Row`) offers; a protocol, so that this module does not import it."""

    @property
    def commit(self) -> str: ...
    @property
    def value(self) -> float | None: ...
    @property
    def status(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def memory_gb(self) -> float | None: ...
    def tsv_line(self) -> str: ...


@dataclass(frozen=True)
class TsvFormat:
    """`autoresearch`: commit, metric, value, status, description. `karpathy`: commit, <metric name>, memory_gb,
    status, description (values with 6 decimals, memory in GB with 1; 0.000000 and 0.0 for a crash)."""

    kind: str = "autoresearch"
    metric: str | None = None

    def header(self) -> str:
        if self.kind == "karpathy":
            return f"commit\t{self.metric or 'metric'}\tmemory_gb\tstatus\tdescription\n"
        return AUTORESEARCH_HEADER

    def line(self, row: TsvRow) -> str:
        if self.kind != "karpathy":
            return row.tsv_line()
        crashed = row.status == "crash" or row.value is None
        value = "0.000000" if crashed else f"{row.value:.6f}"
        memory = "0.0" if crashed or row.memory_gb is None else f"{row.memory_gb:.1f}"
        return f"{row.commit[:7]}\t{value}\t{memory}\t{row.status}\t{_field(row.description)}\n"


def _field(text: str) -> str:
    """One TSV field as pandas and csv read it: a quote inside is escaped by quoting the field."""
    flat = " ".join(text.replace("\t", " ").split())
    return '"' + flat.replace('"', '""') + '"' if '"' in flat else flat
