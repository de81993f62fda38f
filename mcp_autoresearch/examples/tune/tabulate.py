"""The run (read-only): approx_sin on the evaluation's grid, written as data, one value a line.

`run_command` sends this to out/samples.txt; `evaluate.py` then scores the file in its own process, after this one
is gone, without importing approx.py: nothing the target's code prints or does in-process can change the score.
"""

import math

from approx import approx_sin

POINTS = 20_000

for i in range(POINTS + 1):
    print(repr(approx_sin((math.pi / 2) * i / POINTS)))
