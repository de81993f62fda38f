"""A fast sine for small embedded targets: an odd polynomial on [0, pi/2].

This is the file the agent edits. The coefficients below are a rough first guess; the experiment loop tunes
them (or the formula) to lower the approximation error measured by evaluate.py.
"""

# Polynomial coefficients: sin(x) ~ x * (C1 + C3 x^2 + C5 x^4)
C1 = 0.9  # linear term (Taylor: 1.0)
C3 = -0.12  # cubic term (Taylor: -1/6)
C5 = 0.004  # quintic term (Taylor: 1/120)


def approx_sin(x: float) -> float:
    x2 = x * x
    return x * (C1 + x2 * (C3 + x2 * C5))
