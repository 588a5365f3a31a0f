"""Fit the rational erf of csrc/cpu/activations.h: erf(z) ~ z P(z^2) / Q(z^2) on [0, 3.92]
(P of degree 6, Q of degree 4 with Q(0) = 1), minimax in absolute error.

    python tools/fit_erf.py

Linearised least squares on Chebyshev nodes (z P - erf Q, divided by the previous Q:
Sanathanan-Koerner), reweighted towards the largest errors (Lawson) until the maximum stops
falling. Prints the coefficients and the maximum error in float64 (4.3e-8 for the printed ones).
"""
from __future__ import annotations

import math

import numpy as np

LIMIT = 3.92  # erf(z) rounds to 1 in float32 from about z = 3.83
P_TERMS, Q_TERMS = 7, 5
NODES = 6000
ITERATIONS = 200


def fit():
    z = LIMIT * (1 - np.cos(np.linspace(0, np.pi, NODES))) / 2
    f = np.array([math.erf(v) for v in z])
    t = z * z
    weight, q_prev = np.ones(NODES), np.ones(NODES)
    best_err, best = math.inf, None
    for it in range(ITERATIONS):
        a = np.hstack([np.stack([z * t**i for i in range(P_TERMS)], 1),
                       np.stack([-f * t**j for j in range(1, Q_TERMS)], 1)])
        scale = np.sqrt(weight) / q_prev
        sol, *_ = np.linalg.lstsq(a * scale[:, None], f * scale, rcond=None)
        p, q = sol[:P_TERMS], np.concatenate([[1.0], sol[P_TERMS:]])
        q_val = np.polyval(q[::-1], t)
        err = z * np.polyval(p[::-1], t) / q_val - f
        if np.abs(err).max() < best_err:
            best_err, best = np.abs(err).max(), (p, q)
        q_prev = q_val
        if it >= 5:
            weight = weight * np.abs(err) / np.abs(err).max() + 1e-300
            weight /= weight.sum()
    return best_err, best


if __name__ == "__main__":
    err, (p, q) = fit()
    print(f"max |error| {err:.3e} on [0, {LIMIT}]")
    print("P (z^0, z^2, ...):", ", ".join(f"{v:.9e}f" for v in p))
    print("Q (z^0, z^2, ...):", ", ".join(f"{v:.9e}f" for v in q))
