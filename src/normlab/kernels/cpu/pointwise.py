"""CPU kernels compiled by numba for the pointwise kinds (DyT: ``w * tanh(a * x) + b``, Derf:
``w * erf(a * x + s) + b``, then ``+ residual`` and ReLU when asked), forward and backward
fused, on numpy views of the tensors' memory (``normlab.ops.cpu_pointwise`` makes the views).

**Precision.** Everything is computed in float32 and rounded once to the output's dtype:
bfloat16 arrives and leaves as its raw 16 bits (``uint16`` arrays, numba has no bfloat16),
widened exactly (``bits << 16``) and rounded to nearest-even (``_round_bf16``; NaN stays a quiet
NaN, overflow rounds to Inf as it should). float32 in and out is the same code with plain loads
and stores.

**tanh and erf of our own.** numba here has no SVML (its ``math.tanh``/``math.erf`` are scalar
libm calls, which keep a loop from vectorizing), so both are written here branch-free: each
evaluates its pieces for every element and selects, so the loops vectorize (8 float32 lanes on
AVX2). The coefficients were fitted for this module (least squares in float64, weighted by the
relative error, on Chebyshev-spaced points; ``tests/test_cpu_kernels.py`` measures the
float32 result over every bfloat16 value and a dense float32 sweep: tanh within 0.93 / 1.31
float32 ulps, erf 0.99 / 1.32):

* ``exp(v)`` for ``v`` in about [-87, 88]: ``2^n * (1 + r P(r))``, ``n = round(v / ln 2)``,
  ``r = v - n ln 2`` (one float32 constant for ln 2: its error times ``n`` stays below half
  an ulp for the ``|v| <= 20`` of tanh and erf; the derivative of erf, whose argument goes
  lower, only needs the gradients' tolerance), P of degree 5 on ``|r| <= ln 2 / 2`` (fit:
  2.2e-9 relative), ``2^n`` built from its exponent bits.
* ``tanh(x)``: ``|x| < 0.625``: ``x + x^3 P(x^2)``, P of degree 5 (fit: 6e-10 relative);
  else ``1 - 2 / (exp(2|x|) + 1)`` with ``|x|`` clamped to 10 (tanh is 1 in float32 from 9.01),
  the sign put back by ``copysign``; NaN passes through.
* ``erf(x)``: ``|x| < 1``: ``x Q(x^2)``, Q of degree 6 (fit: 1.2e-9 relative); else
  ``1 - t exp(-x^2 + R(t))``, ``t = 1 / (1 + |x|/2)``, R of degree 5 fitted on [1, 4] (erf's
  absolute error 1.1e-8, a fifth of its float32 ulp there; erf is 1 in float32 from 3.92,
  ``|x|`` clamped to 4); Q's constant term is split in two float32s (``a * c_hi + a * (c_lo +
  ...)``) so the leading product is rounded once (without it erf read 2.4 ulps).

The kernels' layouts (``spec.Kernel``'s ELEMENT view ``(OUTER, PERIOD, INNER)``): **rows**
(``INNER == 1``: the memory is ``(OUTER, PERIOD)`` rows, one weight per column) and **lines**
(``INNER > 1``: ``(OUTER * PERIOD, INNER)`` lines, one weight per line). The backward recomputes
``t`` from ``x`` (no activation-sized buffer is kept) and writes ``dx`` (and with ReLU and a
residual ``dresidual``); its per-weight sums (``sum(dz * t)``, ``sum(dz)``) and the scalars'
(``sum(g * x)``, ``sum(g)``) are float32 over short runs (32 rows of a block; a line) added in
float64, per block of rows (a fixed number of blocks, whatever the thread count, so the sums do
not depend on it) or per line; the caller adds the blocks.

Every kernel also exists as a serial twin (:data:`SERIAL`, as in ``normlab.kernels.cpu.norm``)
for calls on one thread, and per kind (``_dyt``/``_derf`` suffixes: the squash is chosen when
the kernel is compiled, not per element).
"""

from __future__ import annotations

import math
from types import FunctionType, SimpleNamespace

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

__all__ = ["BLOCKS", "KERNELS", "squash_f32"]

# no "nnan"/"ninf": NaN and Inf inputs keep their meaning; the approximations below contain
# no (a + C) - C rounding tricks, so reassociation (for the vectorized sums) cannot break them
_FAST = {"reassoc", "contract", "nsz"}
_NUMPY_ERRORS = "numpy"  # x / 0 gives Inf/NaN, no zero check (a branch that stops vectorizing)
_JIT = dict(parallel=True, fastmath=_FAST, cache=True, nogil=True, error_model=_NUMPY_ERRORS)
_JIT_SERIAL = dict(fastmath=_FAST, cache=True, nogil=True, error_model=_NUMPY_ERRORS)
# the approximations: no reassociation (it could refactor ``a * c_hi + a * rest`` into
# ``a * (c_hi + rest)``, losing the exact leading term); numba compiles them apart and LLVM
# inlines them into the kernels, each instruction keeping its own flags
_APPROX = dict(fastmath={"contract"}, error_model=_NUMPY_ERRORS)

F = np.float32
_I32 = ir.IntType(32)
_ROWS_PER_RUN = 32  # rows summed in float32 before adding into the float64 block sums
BLOCKS = 16  # blocks of rows in the rows backward (fixed: the sums do not depend on threads)


# ---- bits: bfloat16 <-> float32, 2^n ----

@intrinsic
def _widen(typingctx, v):
    """A bfloat16 (its bits, uint16) or a float32 -> float32 (exact)."""
    if isinstance(v, types.Integer):
        def codegen(context, builder, sig, args):
            w = builder.shl(builder.zext(args[0], _I32), ir.Constant(_I32, 16))
            return builder.bitcast(w, ir.FloatType())
    else:
        def codegen(context, builder, sig, args):
            return context.cast(builder, args[0], sig.args[0], types.float32)
    return types.float32(v), codegen


@intrinsic
def _narrow(typingctx, z, like):
    """float32 ``z`` -> the type of ``like``: bfloat16 bits (uint16), rounded to nearest-even
    (a NaN stays a quiet NaN with its sign), or float32."""
    if isinstance(like, types.Integer):
        def codegen(context, builder, sig, args):
            b = builder.bitcast(args[0], _I32)
            hi = builder.lshr(b, ir.Constant(_I32, 16))
            odd = builder.and_(hi, ir.Constant(_I32, 1))
            r = builder.lshr(builder.add(builder.add(b, ir.Constant(_I32, 0x7FFF)), odd),
                             ir.Constant(_I32, 16))
            nan = builder.fcmp_unordered("uno", args[0], args[0])
            q = builder.or_(hi, ir.Constant(_I32, 0x40))
            return builder.trunc(builder.select(nan, q, r), ir.IntType(16))
        return like(types.float32, like), codegen

    def codegen(context, builder, sig, args):
        return context.cast(builder, args[0], types.float32, sig.return_type)
    return like(types.float32, like), codegen


@intrinsic
def _pow2(typingctx, n):
    """2^n for a float32 holding an integer in [-126, 127]."""
    def codegen(context, builder, sig, args):
        i = builder.fptosi(args[0], _I32)
        e = builder.shl(builder.add(i, ir.Constant(_I32, 127)), ir.Constant(_I32, 23))
        return builder.bitcast(e, ir.FloatType())
    return types.float32(types.float32), codegen


# ---- exp, tanh, erf in float32 (module doc) ----

_LOG2E, _LN2 = F(1.0 / math.log(2.0)), F(math.log(2.0))
# exp(r) = 1 + r P(r) on |r| <= ln2/2, P of degree 5 (fit: 2.2e-9 relative)
_E = [F(c) for c in (1.0000000360921264, 0.4999999535099423, 0.16666420945132124,
                     0.04166772432091816, 0.008374763974937777, 0.001385929107743003)]
_TANH_CUT, _TANH_CLAMP = F(0.625), F(10.0)
_TP = [F(c) for c in (-0.3333333316557298, 0.1333330279939945, -0.053959109627172486,
                      0.021767864736986803, -0.00834090297969001, 0.002289659704658456)]
_ERF_CUT, _ERF_CLAMP = F(1.0), F(4.0)
_EQ = [F(c) for c in (1.1283791656893205, -0.3761262556739591, 0.112835822479671,
                      -0.02685369109884783, 0.005188098887977069, -0.0008008189311902308,
                      7.847259092570724e-05)]
_ER = [F(c) for c in (-1.2681596782982163, 1.034795027943149, 0.18827523734115226,
                      0.5986053546855732, -0.8201948286579135, 0.2667472790354835)]
_TWO_OVER_SQRTPI = F(2.0 / math.sqrt(math.pi))
_ONE, _TWO, _HALF, _ZERO = F(1.0), F(2.0), F(0.5), F(0.0)
_EXP_LO, _EXP_HI = F(-87.0), F(88.0)
_TP0, _TP1, _TP2, _TP3, _TP4, _TP5 = _TP
_EQ0, _EQ1, _EQ2, _EQ3, _EQ4, _EQ5, _EQ6 = _EQ
_EQ0_HI = _EQ0
_EQ0_LO = F(1.1283791656893205 - float(_EQ0))
_ER0, _ER1, _ER2, _ER3, _ER4, _ER5 = _ER
_E1, _E2, _E3, _E4, _E5, _E6 = _E


@njit(**_APPROX)
def _exp(v):
    """exp(v), float32, for v in [-87, 88] (the caller clamps)."""
    n = np.floor(v * _LOG2E + _HALF)
    r = v - n * _LN2
    p = _E6
    p = p * r + _E5
    p = p * r + _E4
    p = p * r + _E3
    p = p * r + _E2
    p = p * r + _E1
    p = p * r + _ONE
    return p * _pow2(n)


@njit(**_APPROX)
def _tanh(x):
    a = abs(x)
    s = a * a
    p = _TP5
    p = p * s + _TP4
    p = p * s + _TP3
    p = p * s + _TP2
    p = p * s + _TP1
    p = p * s + _TP0
    small = a + a * s * p
    c = a if a < _TANH_CLAMP else _TANH_CLAMP  # NaN -> the clamp: a finite exp argument
    big = _ONE - _TWO / (_exp(c + c) + _ONE)
    t = small if a < _TANH_CUT else big
    t = math.copysign(t, x)
    return x if x != x else t


@njit(**_APPROX)
def _erf(x):
    a = abs(x)
    s = a * a
    q = _EQ6
    q = q * s + _EQ5
    q = q * s + _EQ4
    q = q * s + _EQ3
    q = q * s + _EQ2
    q = q * s + _EQ1
    # a * Q(s) = a * c_hi + a * (c_lo + s * ...), c_hi + c_lo = Q(0) = 2/sqrt(pi) split in two
    # float32s: the leading term's constant is not rounded, the rest is small
    small = a * _EQ0_HI + a * (q * s + _EQ0_LO)
    c = a if a < _ERF_CLAMP else _ERF_CLAMP
    t = _ONE / (_ONE + c * _HALF)
    r = _ER5
    r = r * t + _ER4
    r = r * t + _ER3
    r = r * t + _ER2
    r = r * t + _ER1
    r = r * t + _ER0
    big = _ONE - t * _exp(r - c * c)
    e = small if a < _ERF_CUT else big
    e = math.copysign(e, x)
    return x if x != x else e


@njit(**_APPROX)
def _dtanh(u, t):
    """d tanh(u) / du from t = tanh(u)."""
    return _ONE - t * t


@njit(**_APPROX)
def _derf(u, t):
    """d erf(u) / du = 2/sqrt(pi) exp(-u^2) (0 where exp underflows float32)."""
    v = -(u * u)
    e = _exp(v if v > _EXP_LO else _EXP_LO)  # NaN -> the clamp: a finite exp argument
    d = _ZERO if v < _EXP_LO else _TWO_OVER_SQRTPI * e
    return d if v == v else v  # NaN in, NaN out


@njit(**_JIT_SERIAL)
def squash_f32(x, kind, out):
    """out = tanh(x) (kind 0) or erf(x) (kind 1) elementwise, float32 -> float32, as the kernels
    compute it (for the accuracy tests)."""
    for i in range(x.shape[0]):
        out[i] = _tanh(x[i]) if kind == 0 else _erf(x[i])


# ---- the kernels' Python source, written once over ``_sq``/``_dsq`` (compiled per kind below) ----

def _sq(u):  # placeholder: each kind's copy of a kernel binds its own (``_bind``)
    raise NotImplementedError


_RELU = False  # bound per copy too: a constant, so the ReLU branches cost nothing without it


def _dsq(u, t):
    raise NotImplementedError


def rows_fwd(x, w, b, r, has_r, a, s, oz, y):
    """x, r, y (R, P) (``r``: the residual, or any array of x's shape when ``has_r`` is False);
    w, b (P,) float32; a, s float32 scalars; ``oz``: 0 in y's element type."""
    R, P = x.shape
    for i in prange(R):
        for j in range(P):
            t = _sq(_widen(x[i, j]) * a + s)
            z = w[j] * t + b[j]
            rv = _widen(r[i, j])
            z = z + rv if has_r else z
            if _RELU:
                z = _ZERO if z < _ZERO else z
            y[i, j] = _narrow(z, oz)


def lines_fwd(x, w, b, r, has_r, a, s, oz, y):
    """x, r, y (U, L): line u uses weight ``w[u % P]``, P = len(w); otherwise as ``rows_fwd``."""
    U, L = x.shape
    P = w.shape[0]
    for u in prange(U):
        wu = w[u % P]
        bu = b[u % P]
        for j in range(L):
            t = _sq(_widen(x[u, j]) * a + s)
            z = wu * t + bu
            rv = _widen(r[u, j])
            z = z + rv if has_r else z
            if _RELU:
                z = _ZERO if z < _ZERO else z
            y[u, j] = _narrow(z, oz)


def rows_bwd(dy, x, w, b, r, has_r, a, s, oz, dx, dr, sums):
    """The backward of ``rows_fwd``: dx = g * a with ``g = dz * w * squash'(u)``, ``dz = dy``
    (times ``z > 0`` with ReLU; then ``dr = dz`` is written too); ``sums`` (BLOCKS, 4, P)
    float64: per block of rows, per column, sum(dz * t), sum(dz), sum(g * x), sum(g)."""
    R, P = x.shape
    nb = sums.shape[0]
    for k in prange(nb):
        lo = k * R // nb
        hi = (k + 1) * R // nb
        acc = np.zeros((4, P), dtype=np.float32)
        for i0 in range(lo, hi, _ROWS_PER_RUN):
            for i in range(i0, min(hi, i0 + _ROWS_PER_RUN)):
                for j in range(P):
                    xv = _widen(x[i, j])
                    u = xv * a + s
                    t = _sq(u)
                    dz = _widen(dy[i, j])
                    if _RELU:
                        z = w[j] * t + b[j]
                        rv = _widen(r[i, j])
                        z = z + rv if has_r else z
                        dz = dz if z > _ZERO else _ZERO
                        dr[i, j] = _narrow(dz, oz)
                    g = dz * w[j] * _dsq(u, t)
                    dx[i, j] = _narrow(g * a, oz)
                    acc[0, j] += dz * t
                    acc[1, j] += dz
                    acc[2, j] += g * xv
                    acc[3, j] += g
            for c in range(4):
                for j in range(P):
                    sums[k, c, j] += acc[c, j]
                    acc[c, j] = _ZERO


def lines_bwd(dy, x, w, b, r, has_r, a, s, oz, dx, dr, sums):
    """The backward of ``lines_fwd``; ``sums`` (U, 4) float64: per line, sum(dz * t), sum(dz),
    sum(g * x), sum(g)."""
    U, L = x.shape
    P = w.shape[0]
    for u in prange(U):
        wu = w[u % P]
        bu = b[u % P]
        s0 = _ZERO
        s1 = _ZERO
        s2 = _ZERO
        s3 = _ZERO
        for j in range(L):
            xv = _widen(x[u, j])
            v = xv * a + s
            t = _sq(v)
            dz = _widen(dy[u, j])
            if _RELU:
                z = wu * t + bu
                rv = _widen(r[u, j])
                z = z + rv if has_r else z
                dz = dz if z > _ZERO else _ZERO
                dr[u, j] = _narrow(dz, oz)
            g = dz * wu * _dsq(v, t)
            dx[u, j] = _narrow(g * a, oz)
            s0 += dz * t
            s1 += dz
            s2 += g * xv
            s3 += g
        sums[u, 0] = s0
        sums[u, 1] = s1
        sums[u, 2] = s2
        sums[u, 3] = s3


# ---- per kind, parallel and serial ----

_SOURCES = ("rows_fwd", "lines_fwd", "rows_bwd", "lines_bwd")
_SQUASH = {"dyt": (_tanh, _dtanh), "derf": (_erf, _derf)}


def _bind(kernel, kind, relu, serial):
    """``kernel``'s Python function with ``_sq``/``_dsq`` bound to ``kind``'s and ``_RELU`` to
    ``relu``, compiled under its own name (``<name>_<kind>[_relu][_serial]``: numba's disk
    cache is named after the function)."""
    f = kernel
    g = dict(f.__globals__)
    g["_sq"], g["_dsq"] = _SQUASH[kind]
    g["_RELU"] = relu
    name = f"{f.__name__}_{kind}" + ("_relu" if relu else "") + ("_serial" if serial else "")
    twin = FunctionType(f.__code__, g, name, f.__defaults__, f.__closure__)
    twin.__qualname__ = name
    twin.__doc__ = f.__doc__
    return njit(**(_JIT_SERIAL if serial else _JIT))(twin)


def _variant(kind, relu):
    serial = SimpleNamespace(**{n: _bind(globals()[n], kind, relu, True) for n in _SOURCES})
    return SimpleNamespace(SERIAL=serial,  # what ``cpu_op._launch`` runs on one thread
                           **{n: _bind(globals()[n], kind, relu, False) for n in _SOURCES})


# (kind, relu) -> the kernels (numba compiles each on its first call)
KERNELS = {(kind, relu): _variant(kind, relu) for kind in _SQUASH for relu in (False, True)}
