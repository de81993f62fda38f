"""The fixed evaluation (read-only): root-mean-square error of approx_sin against math.sin on [0, pi/2]."""

import math
import time

from approx import approx_sin

POINTS = 20_000

started = time.perf_counter()
total = 0.0
worst = 0.0
for i in range(POINTS + 1):
    x = (math.pi / 2) * i / POINTS
    err = approx_sin(x) - math.sin(x)
    total += err * err
    worst = max(worst, abs(err))
rms = math.sqrt(total / (POINTS + 1))
print("---")
print(f"error:            {rms:.9f}")
print(f"METRIC max_error={worst:.9f}")
print(f"eval_seconds:     {time.perf_counter() - started:.3f}")
