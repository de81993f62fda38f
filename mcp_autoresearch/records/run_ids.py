"""The run ids of a journal's rows, by row index and back: ids of the server's shape (`r<n>`, increasing) in a
compact array searched by bisection, any other in two dicts."""

from __future__ import annotations

import bisect
from array import array


class RunIds:
    def __init__(self) -> None:
        self._numbers = array("q")  # n of run id "r<n>", increasing (a row of another shape repeats the last)
        self._other_ids: dict[str, int] = {}  # run ids of another shape
        self._other_names: dict[int, str] = {}  # ... and the other way round

    def add(self, run_id: str) -> None:
        """The id of the next row."""
        index = len(self._numbers)
        number = run_number(run_id)
        canonical = number is not None and run_id == f"r{number}"  # so `at` can spell it back
        if canonical and number is not None and (not self._numbers or number > self._numbers[-1]):
            self._numbers.append(number)
        else:
            self._numbers.append(self._numbers[-1] if self._numbers else -1)
            self._other_ids[run_id] = index
            self._other_names[index] = run_id

    def index_of(self, run_id: str) -> int | None:
        if run_id in self._other_ids:
            return self._other_ids[run_id]
        number = run_number(run_id)
        if number is None:
            return None
        position = bisect.bisect_left(self._numbers, number)
        if position < len(self._numbers) and self._numbers[position] == number:
            return position
        return None

    def at(self, index: int) -> str:
        """The run id of row `index`."""
        name = self._other_names.get(index)
        return name if name is not None else f"r{self._numbers[index]}"


def run_number(run_id: str) -> int | None:
    """n of a run id `r<n>`, else None."""
    if len(run_id) > 1 and run_id[0] == "r" and run_id[1:].isascii() and run_id[1:].isdigit():  # not "²", "١"
        return int(run_id[1:])
    return None
