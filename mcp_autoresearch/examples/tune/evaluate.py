"""The fixed evaluation (read-only), the evaluation stage: root-mean-square error of the run's samples of
approx_sin (out/samples.txt, written by tabulate.py) against math.sin on [0, pi/2]. It reads only that file."""

import math
import sys
import time

POINTS = 20_000

started = time.perf_counter()
with open(sys.argv[1] if len(sys.argv) > 1 else "out/samples.txt") as handle:
    values = [float(line) for line in handle]
if len(values) != POINTS + 1:
    sys.exit(f"expected {POINTS + 1} samples, got {len(values)}")
total = 0.0
worst = 0.0
for i, value in enumerate(values):
    err = value - math.sin((math.pi / 2) * i / POINTS)
    if not math.isfinite(err):
        sys.exit(f"sample {i} is not a finite number")
    total += err * err
    worst = max(worst, abs(err))
rms = math.sqrt(total / (POINTS + 1))
print("---")
print(f"error:            {rms:.9f}")
print(f"METRIC max_error={worst:.9f}")
print(f"eval_seconds:     {time.perf_counter() - started:.3f}")
