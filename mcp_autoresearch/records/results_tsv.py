"""The two shapes of `results.tsv`: the original tool's (the default) and karpathy/autoresearch's, which its
`analysis.ipynb` reads. Both are views of the JSONL rows; `journal.py` writes and rebuilds the file in one of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from ..terminal_text import printable
from .atomic import open_regular

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
    flat = printable(" ".join(text.replace("\t", " ").split()))
    return '"' + flat.replace('"', '""') + '"' if '"' in flat else flat


def same_tsv_size(path: Path, lines: Iterable[str]) -> int | None:
    """The file's size when it holds exactly `lines` (compared streaming, never through a symlink, never
    blocking), else None."""
    try:
        handle = os.fdopen(open_regular(path), "rb")
    except OSError:
        return None
    size = 0
    with handle:
        for line in lines:
            data = line.encode("utf-8")
            size += len(data)
            if handle.readline() != data:
                return None
        return size if handle.read(1) == b"" else None


def quick_tsv_size(path: Path, header: str, rows: int, last: str | None) -> int | None:
    """The file's size when its header, number of rows and last row are as expected (what a server killed
    between two appends can leave wrong), else None."""
    try:
        with os.fdopen(open_regular(path), "rb") as handle:
            if handle.readline() != header.encode():
                return None
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            lines = 0
            handle.seek(0)
            while chunk := handle.read(1 << 20):
                lines += chunk.count(b"\n")
            if lines != rows + 1:
                return None
            if last is not None:
                handle.seek(max(0, size - 4096))
                if handle.read().split(b"\n")[-2] + b"\n" != last.encode("utf-8"):
                    return None
    except (OSError, IndexError):
        return None
    return size
