"""Fits the polynomials of ``normlab.kernels.cpu.pointwise`` (float64 numpy, no other library's
coefficients): weighted least squares on Chebyshev-spaced points, reweighted towards minimax
(Lawson's iteration), printing the coefficients as the constants table holds them and the
fitted error. Run: ``python benchmarks/fit_pointwise.py``.

In use: 2^f's P of degree 4 (erf's upper piece, erf's derivative), tanh's lower piece's P of
degree 4, erf's G of degree 5 (log2(erfc)). tanh's exp (degree 5) keeps the previous round's
coefficients (fit 2.2e-9; this script's ``fit_exp(5)`` reads 2.0e-9). Also printed: the other
degrees, for the choice, and ``expm1(2r) / 2 = r + r^2 Q(r)`` for a one-formula
``tanh = E / (E + 1)`` (tried: 2.07 float32 ulps near 0.2 even with Q to 2.4e-10, the
roundings of ``E + 1`` and of the quotient add up where nothing absorbs them; not used).
"""

from __future__ import annotations

import math

import numpy as np


def lawson(x, f, w, deg, iters=60):
    """min over P of degree ``deg`` of max |w (P(x) - f)|, approximately (Lawson's IRLS);
    -> (coefficients low to high, max weighted error)."""
    V = np.vander(x, deg + 1, increasing=True)
    lam = np.full(len(x), 1.0 / len(x))
    for _ in range(iters):
        sw = np.sqrt(lam) * w
        c = np.linalg.lstsq(V * sw[:, None], f * sw, rcond=None)[0]
        err = np.abs(w * (V @ c - f))
        lam = lam * err
        lam /= lam.sum()
    return c, float(np.abs(w * (V @ c - f)).max())


def cheb(lo, hi, n=4000):
    k = np.arange(n)
    return (lo + hi) / 2 + (hi - lo) / 2 * np.cos(np.pi * (k + 0.5) / n)


def expm1_half_q(r):
    """(expm1(2r)/2 - r) / r^2 by its series (no cancellation near 0)."""
    q = np.zeros_like(r)
    for k in range(30, 1, -1):
        q = q * r + 2.0 ** (k - 1) / math.factorial(k)
    return q


def fit_tanh_expm1(deg):
    h = math.log(2.0) / 4
    r = cheb(-h, h)
    e = np.expm1(2 * r) / 2
    return lawson(r, expm1_half_q(r), r * r / np.abs(e), deg)


def fit_exp(deg):
    """exp(r) = 1 + r P(r) on [-ln2/2, ln2/2], relative error."""
    h = math.log(2.0) / 2
    r = cheb(-h, h)
    return lawson(r, np.expm1(r) / r, np.abs(r) / np.exp(r), deg)


def fit_tanh_small(deg, cut):
    """tanh(x) = x + x^3 P(x^2) on [0, cut], relative error."""
    x = cheb(1e-4, cut)
    t = np.tanh(x)
    return lawson(x * x, (t - x) / x**3, x**3 / t, deg)


def fit_erf_g(deg, lo=1.0, hi=4.0):
    """log2(erfc(x)) = G(x - lo) on [lo, hi] (x^2 and 1 / ln2 included), weighted by erfc (erf's
    absolute error)."""
    x = cheb(lo, hi)
    ec = np.array([math.erfc(v) for v in x])
    return lawson(x - lo, np.log2(ec), ec * math.log(2.0), deg)


def fit_exp2(deg):
    """2^f = 1 + f P(f) on [-1/2, 1/2], relative error."""
    f = cheb(-0.5, 0.5)
    return lawson(f, np.expm1(f * math.log(2.0)) / f, np.abs(f) / np.exp2(f), deg)


if __name__ == "__main__":
    for deg in (4, 5):
        c, err = fit_exp(deg)
        print(f"exp P degree {deg}: relative error {err:.2e}")
        print("  ", ", ".join(repr(float(v)) for v in c))
    for deg in (4, 5):
        c, err = fit_tanh_small(deg, 0.625)
        print(f"tanh small P degree {deg}: relative error {err:.2e}")
        print("  ", ", ".join(repr(float(v)) for v in c))
    for deg in (4, 5):
        c, err = fit_exp2(deg)
        print(f"exp2 P degree {deg}: relative error {err:.2e}")
        print("  ", ", ".join(repr(float(v)) for v in c))
    for deg in (5, 6):
        c, err = fit_erf_g(deg)
        print(f"erf G degree {deg}: erf's absolute error {err:.2e}")
        print("  ", ", ".join(repr(float(v)) for v in c))
    for deg in (3, 4, 5):
        c, err = fit_tanh_expm1(deg)
        print(f"tanh expm1 Q degree {deg}: relative error {err:.2e}")
        print("  ", ", ".join(repr(float(v)) for v in c))
