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
relative error -- for erf's upper piece by erf's absolute error -- on Chebyshev-spaced points,
reweighted towards minimax: ``benchmarks/fit_pointwise.py`` refits them);
``tests/test_cpu_kernels.py`` measures the float32 result over every bfloat16 value and a dense
float32 sweep of [-12, 12]: tanh within 0.93 / 1.33 float32 ulps, erf 0.99 / 1.23:

* ``exp(r)`` (tanh) for ``|r| <= ln 2 / 2``: ``1 + r P(r)``, P of degree 5 (fit: 2.2e-9
  relative), evaluated in Estrin's order (shorter dependency chains than Horner's, the same
  accuracy here; measured 4% faster than Horner's); ``exp(v) = 2^n exp(v - n ln 2)``:
  ``n = round(v / ln 2)`` by adding ``1.5 * 2^23 + 127`` (the sum's low mantissa bits then
  hold ``n + 127``, shifted into the exponent field they are ``2^n``: no round or convert
  instructions). One float32 constant for ln 2: its error times ``n`` stays below half an ulp
  for tanh's arguments. ``2^v`` (erf, its derivative): the same with ``f = v - n`` exact and
  ``2^f = 1 + f P(f)``, P of degree 4 (fit: 9.2e-8 relative, Horner's order).
* ``tanh(x)``: ``|x| < 0.625``: ``x + x^3 P(x^2)``, P of degree 4 (fit: 4.4e-9 relative; the
  piece's worst 0.67 ulps, tanh's worst 1.33 is the other piece's, just above 0.625);
  else ``1 - 2 / (exp(2|x|) + 1)`` with ``|x|`` clamped to 10 (tanh is 1 in float32 from 9.01),
  ``exp(2c) = 2^n exp(2h)`` with ``h = c - n ln2/2`` and exp's coefficients times powers of 2
  (the same roundings as ``exp(r)`` at ``r = 2h``, one addition fewer); the sign put back by
  OR-ing in x's sign bit (``x ^ |x|``); NaN passes through. (A single odd rational
  ``x P(x^2) / Q(x^2)`` on [0, 9], fitted to 1.3e-9, measured 3-6 float32 ulps: P, Q and the
  quotient each round near 1, and near tanh = 1 nothing is small enough to absorb it. Also
  tried: ``E / (E + 1)`` with ``E = expm1(2|x|) / 2`` for every x, no second piece: 2.07 ulps
  near 0.2 with expm1 fitted to 2.4e-10, the roundings of ``E + 1`` and of the quotient add up;
  with a correction step as many instructions as the two pieces, and 4.8 ulps near 9.)
* ``erf(x)``: ``|x| < 1``: ``x Q(x^2)``, Q of degree 6 (fit: 1.2e-9 relative); else
  ``1 - 2^G(|x| - 1)``, G of degree 5 fitted on [1, 4] to ``log2(erfc(x))`` (erf's absolute error
  1.6e-8, a quarter ulp near erf(1); ``x^2`` and ``1 / ln 2`` are in G, so ``2^G`` needs no ln 2
  constant; 2^v's 9.2e-8 is scaled by erfc <= 0.16). This piece's worst 1.08 ulps, erf's worst
  1.23 is the lower piece's; erf is 1 in float32 from 3.92, ``|x|`` clamped to 4; centred at 1,
  where erfc is largest, so G's rounding is smallest there -- centred at 2.5 it read 1.96 ulps;
  no division (the previous form's ``t = 1 / (1 + |x|/2)`` is gone). Q's constant term is split
  in two float32s (``a * c_hi + a * (c_lo + ...)``) so the leading product is rounded once
  (without it erf read 2.4 ulps).

The polynomials' degrees are the lowest that keep these bounds (measured per piece; the
2026-12-03 round lowered tanh's lower piece from 5 to 4 and erf's G from 6 to 5 and its exp
from 5 to 4: the Derf forward's loop from 60 to 49 instructions per 8 elements, DyT's from 50
to 44 with the shift dropped for DyT, below). erf's pieces are selected by the sign of
``|x| - 1`` (``_if_negative``: a blend reads the sign bit, no compare).

**Constants from an array.** The approximations read their constants from ``CONSTS``, a
float32 array every kernel takes as its last argument (``kc``), not as literals: numba's code
model addresses a literal by a 64-bit immediate, so each use in the loop cost two instructions
(~20 constants x 8 lanes do not fit AVX2's 16 registers); loaded from an argument, LLVM hoists
them (spilled once, then folded into the FMAs as memory operands). Measured on one thread, the
serial rows kernels (8192 x 1024 float32, time per element, this and the previous version
alternating in one process): DyT forward -25%, backward -15%; Derf forward -30%, backward -20%
to -25%. ``rows_bwd`` of Derf loads them into a tuple of scalars before its loop (``_unpacker``):
with loads from the array its loop needed more run-time alias checks than LLVM allows and was
not vectorized. A load inside one branch of a conditional expression has the same effect (it
cannot become a select), hence the unconditional loads in ``_derf``.

The kernels' layouts (``spec.Kernel``'s ELEMENT view ``(OUTER, PERIOD, INNER)``): **rows**
(``INNER == 1``: the memory is ``(OUTER, PERIOD)`` rows, one weight per column) and **lines**
(``INNER > 1``: ``(OUTER * PERIOD, INNER)`` lines, one weight per line). The backward recomputes
``t`` from ``x`` (no activation-sized buffer is kept) and writes ``dx`` (and with ReLU and a
residual ``dresidual``); its per-weight sums (``sum(dz * t)``, ``sum(dz)``) and the scalars'
(``sum(g * x)``, ``sum(g)``) are float32 over short runs (per column 32 rows of a block, the
scalars' along a row, in registers; a line) added in float64, per block of rows (a fixed
number of blocks, whatever the thread count, so the sums do not depend on it) or per line; the
caller adds the blocks.

Every kernel also exists as a serial twin (:data:`SERIAL`, as in ``normlab.kernels.cpu.norm``)
for calls on one thread, and per kind (``_dyt``/``_derf`` suffixes: the squash is chosen when
the kernel is compiled, not per element; so is the squash's argument, ``a * x`` for DyT and
``a * x + s`` for Derf: the shift DyT does not have held a register, and without it the DyT
forward's loop went from 49 to 44 instructions per 8 elements, 4% faster).
"""

from __future__ import annotations

import math
from types import FunctionType, SimpleNamespace

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

__all__ = ["BLOCKS", "CONSTS", "KERNELS", "squash_f32"]

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
def _pow2_bits(typingctx, m):
    """2^n from ``m = MAGIC + n`` (a float32 whose low mantissa bits hold n + 127, n in [-126,
    127]): those bits shifted into the exponent field."""
    def codegen(context, builder, sig, args):
        b = builder.bitcast(args[0], _I32)
        return builder.bitcast(builder.shl(b, ir.Constant(_I32, 23)), ir.FloatType())
    return types.float32(types.float32), codegen


@intrinsic
def _signed(typingctx, t, x, a):
    """``t`` (sign bit clear) with the sign bit of ``x``, ``a = |x|``: ``t | (x ^ a)`` (x ^ a is
    x's sign bit alone), two instructions and no mask constant (and-ing x with a sign mask
    re-broadcast the mask in every iteration of the loop: one instruction more)."""
    def codegen(context, builder, sig, args):
        tb = builder.bitcast(args[0], _I32)
        sign = builder.xor(builder.bitcast(args[1], _I32), builder.bitcast(args[2], _I32))
        return builder.bitcast(builder.or_(tb, sign), ir.FloatType())
    return types.float32(types.float32, types.float32, types.float32), codegen



@intrinsic
def _if_negative(typingctx, c, t, f):
    """``t`` where ``c``'s sign bit is set, else ``f``: a select on the sign bit, which AVX's
    blend reads directly (no compare instruction; ``t if c < 0 else f`` compares, since -0.0
    is not below 0)."""
    def codegen(context, builder, sig, args):
        neg = builder.icmp_signed("<", builder.bitcast(args[0], _I32), ir.Constant(_I32, 0))
        return builder.select(neg, args[1], args[2])
    return types.float32(types.float32, types.float32, types.float32), codegen


def _unpacker(n):
    """An intrinsic: a float32 array's first ``n`` elements as a tuple of scalars (loaded once,
    before the loop, where loads from the array in the loop would need run-time alias checks
    against each stored array: ``rows_bwd`` has too many for LLVM to vectorize Derf's loop)."""
    @intrinsic
    def unpack(typingctx, arr):
        tup = types.UniTuple(types.float32, n)

        def codegen(context, builder, sig, args):
            data = context.make_array(sig.args[0])(context, builder, args[0]).data
            vals = [builder.load(builder.gep(data, [ir.Constant(ir.IntType(64), i)]))
                    for i in range(n)]
            return context.make_tuple(builder, tup, vals)
        return tup(arr), codegen
    return unpack


@njit
def _same(kc):
    return kc


# ---- exp, tanh, erf in float32 (module doc) ----

_LOG2E, _LN2 = 1.0 / math.log(2.0), math.log(2.0)
# (name, value): the constants of the approximations, read from one float32 array that the
# kernels take as an argument (``CONSTS``): a constant folded into the code costs two
# instructions per use in the loop (numba's code model addresses the constant pool by a 64-bit
# immediate, and 8 lanes x ~20 constants do not fit AVX2's 16 registers), a load from an
# argument one (measured: 15-20% of the tanh kernel's time)
_CONST_TABLE = (
    ("ONE", 1.0), ("TWO", 2.0),
    # 1.5 * 2^23 + 127: v + MAGIC rounds v to an integer n held, plus 127, in the low bits of
    # the float32 (so 2^n is those bits shifted into the exponent field)
    ("MAGIC", 1.5 * 2.0 ** 23 + 127.0),
    # tanh's exp(2h) = 1 + h P(h) for |h| <= ln2/4, P of degree 5: exp(r) = 1 + r E(r) on
    # |r| <= ln2/2 (fit: 2.2e-9 relative) with E's coefficients times 2, 4, .., 64 (exact in
    # float32: the same roundings as exp(r) at r = 2h, without computing 2c)
    ("TWO_LOG2E", 2.0 * _LOG2E), ("HALF_LN2", _LN2 / 2),
    ("T1", 2 * 1.0000000360921264), ("T2", 4 * 0.4999999535099423),
    ("T3", 8 * 0.16666420945132124), ("T4", 16 * 0.04166772432091816),
    ("T5", 32 * 0.008374763974937777), ("T6", 64 * 0.001385929107743003),
    # tanh(x) = x + x^3 P(x^2) on |x| < 0.625 (fit: 4.4e-9 relative)
    ("TANH_CUT", 0.625), ("TANH_CLAMP", 10.0),
    ("TP0", -0.33333281942774534), ("TP1", 0.13331442214838113), ("TP2", -0.053739716265600715),
    ("TP3", 0.020639090618031618), ("TP4", -0.005704990370651697),
    # erf(x) = x Q(x^2) on |x| < 1 (fit: 1.2e-9 relative), Q(0) = 2/sqrt(pi) = EQ0_HI + EQ0_LO
    ("ERF_CLAMP", 4.0),  # the pieces meet at 1: the sign of |x| - 1 selects
    ("EQ0_HI", float(np.float32(1.1283791656893205))),
    ("EQ0_LO", 1.1283791656893205 - float(np.float32(1.1283791656893205))),
    ("EQ1", -0.3761262556739591), ("EQ2", 0.112835822479671), ("EQ3", -0.02685369109884783),
    ("EQ4", 0.005188098887977069), ("EQ5", -0.0008008189311902308), ("EQ6", 7.847259092570724e-05),
    # log2(erfc(x)) = G(x - 1) on [1, 4], G of degree 5 (fit: erf's absolute error 1.6e-8)
    ("G0", -2.6684168388357463), ("G1", -3.8072123843672694), ("G2", -1.216519367560803),
    ("G3", -0.059187890080908245), ("G4", 0.013021786015465109), ("G5", -0.001659711173687281),
    # 2^f = 1 + f P(f) on |f| <= 1/2, P of degree 4 (fit: 9.2e-8 relative): erf, erf'
    ("Y1", 0.6931469775914955), ("Y2", 0.24022242080363457), ("Y3", 0.05550733754247175),
    ("Y4", 0.009671512869549648), ("Y5", 0.0013264723893084904),
    ("NEG_LOG2E", -_LOG2E), ("EXP2_LO", -126.0),
    ("TWO_OVER_SQRTPI", 2.0 / math.sqrt(math.pi)),
)
CONSTS = np.array([v for _, v in _CONST_TABLE], dtype=np.float32)
CONSTS.setflags(write=False)
_unpack = _unpacker(len(CONSTS))
# the index of each constant in ``CONSTS`` (compile-time integers in the kernels)
(ONE, TWO, MAGIC, TWO_LOG2E, HALF_LN2, T1, T2, T3, T4, T5, T6, TANH_CUT, TANH_CLAMP,
 TP0, TP1, TP2, TP3, TP4, ERF_CLAMP, EQ0_HI, EQ0_LO, EQ1, EQ2, EQ3, EQ4, EQ5, EQ6,
 G0, G1, G2, G3, G4, G5, Y1, Y2, Y3, Y4, Y5,
 NEG_LOG2E, EXP2_LO, TWO_OVER_SQRTPI) = range(len(_CONST_TABLE))
assert all(globals()[n] == i for i, (n, _) in enumerate(_CONST_TABLE))  # names in order
_ZERO = F(0.0)


@njit(**_APPROX)
def _exp2(v, k):
    """2^v to 9.2e-8 relative for v in [-126, 0]: ``2^n (1 + f P(f))``, ``n = round(v)`` (by
    adding MAGIC), ``f = v - n`` exact, P of degree 4."""
    m = v + k[MAGIC]
    n = m - k[MAGIC]
    f = v - n
    p = k[Y5]
    p = p * f + k[Y4]
    p = p * f + k[Y3]
    p = p * f + k[Y2]
    p = p * f + k[Y1]
    return (f * p + k[ONE]) * _pow2_bits(m)


@njit(**_APPROX)
def _tanh(x, k):
    a = abs(x)
    s = a * a
    p = k[TP4]
    p = p * s + k[TP3]
    p = p * s + k[TP2]
    p = p * s + k[TP1]
    p = p * s + k[TP0]
    small = a + (a * s) * p
    c = k[TANH_CLAMP] if a > k[TANH_CLAMP] else a  # NaN stays NaN (and ends NaN)
    m = c * k[TWO_LOG2E] + k[MAGIC]  # n = round(2c / ln2), exp(2c) = 2^n exp(2c - n ln2)
    n = m - k[MAGIC]
    h = c - n * k[HALF_LN2]  # exactly half of 2c - n ln2 (float32 ln2 / 2 is exact)
    h2 = h * h
    p = (k[T1] + k[T2] * h) + h2 * ((k[T3] + k[T4] * h) + h2 * (k[T5] + k[T6] * h))
    e = k[ONE] + h * p  # exp(2h)
    big = k[ONE] - k[TWO] / (e * _pow2_bits(m) + k[ONE])
    t = small if a < k[TANH_CUT] else big
    return _signed(t, x, a)


@njit(**_APPROX)
def _erf(x, k):
    a = abs(x)
    s = a * a
    q = k[EQ6]
    q = q * s + k[EQ5]
    q = q * s + k[EQ4]
    q = q * s + k[EQ3]
    q = q * s + k[EQ2]
    q = q * s + k[EQ1]
    # a * Q(s) = a * c_hi + a * (c_lo + s * ...), c_hi + c_lo = Q(0) = 2/sqrt(pi) split in two
    # float32s: the leading term's constant is not rounded, the rest is small
    small = a * k[EQ0_HI] + a * (q * s + k[EQ0_LO])
    c = k[ERF_CLAMP] if a > k[ERF_CLAMP] else a  # NaN stays NaN
    u = c - k[ONE]
    g = k[G5]
    g = g * u + k[G4]
    g = g * u + k[G3]
    g = g * u + k[G2]
    g = g * u + k[G1]
    h = g * u + k[G0]  # log2(erfc(c)), in [-25.8, -2.7]
    big = k[ONE] - _exp2(h, k)  # erfc = 2^h
    e = _if_negative(u, small, big)  # u = c - 1 < 0: |x| < 1 (NaN: either piece is NaN)
    return _signed(e, x, a)


@njit(**_APPROX)
def _dtanh(u, t, k):
    """d tanh(u) / du from t = tanh(u)."""
    return k[ONE] - t * t


@njit(**_APPROX)
def _derf(u, t, k):
    """d erf(u) / du = 2/sqrt(pi) 2^(-u^2 / ln2) (``_exp2``: erf's upper piece's constants, to
    9.2e-8 relative, and ``u^2 / ln2`` rounded twice: the gradients' tolerance, no more);
    ``-u^2 / ln2`` is raised to -126 (2^-126 = 1.2e-38, where the true value is below 1.3e-38:
    no select for the underflow); NaN in, NaN out (the clamp keeps a NaN, and a NaN times
    exp's scale, whatever its bits, is NaN)."""
    v = (u * u) * k[NEG_LOG2E]  # exp(-u^2) = 2^v
    lo = k[EXP2_LO]
    # every load here is unconditional: a load inside a branch of a conditional expression
    # cannot be made a select (numba's arrays are not known to be dereferenceable), and that
    # branch keeps the loop from vectorizing
    return k[TWO_OVER_SQRTPI] * _exp2(lo if v < lo else v, k)


@njit(**_JIT_SERIAL)
def squash_f32(x, kind, out):
    """out = tanh(x) (kind 0) or erf(x) (kind 1) elementwise, float32 -> float32, as the kernels
    compute it (for the accuracy tests)."""
    k = CONSTS
    for i in range(x.shape[0]):
        out[i] = _tanh(x[i], k) if kind == 0 else _erf(x[i], k)


# ---- the kernels' Python source, written once over ``_sq``/``_dsq`` (compiled per kind below) ----

def _sq(u, k):  # placeholder: each kind's copy of a kernel binds its own (``_bind``)
    raise NotImplementedError


_RELU = False  # bound per copy too: a constant, so the ReLU branches cost nothing without it


def _dsq(u, t, k):
    raise NotImplementedError


def _arg(x, a, s):  # the squash's argument, bound per kind too
    raise NotImplementedError


@njit(**_APPROX)
def _scaled(x, a, s):
    """DyT's ``a * x`` (it has no shift: adding ``s = 0`` cost a register in the loop, and with
    it spills)."""
    return x * a


@njit(**_APPROX)
def _shifted(x, a, s):
    """Derf's ``a * x + s``."""
    return x * a + s


def _hoist(kc):
    raise NotImplementedError


def rows_fwd(x, w, b, r, has_r, a, s, oz, y, kc):
    """x, r, y (R, P) (``r``: the residual, or any array of x's shape when ``has_r`` is False);
    w, b (P,) float32; a, s float32 scalars (DyT ignores s); ``oz``: 0 in y's element type;
    ``kc``: ``CONSTS``."""
    R, P = x.shape
    for i in prange(R):
        for j in range(P):
            t = _sq(_arg(_widen(x[i, j]), a, s), kc)
            z = w[j] * t + b[j]
            rv = _widen(r[i, j])
            z = z + rv if has_r else z
            if _RELU:
                z = _ZERO if z < _ZERO else z
            y[i, j] = _narrow(z, oz)


def lines_fwd(x, w, b, r, has_r, a, s, oz, y, kc):
    """x, r, y (U, L): line u uses weight ``w[u % P]``, P = len(w); otherwise as ``rows_fwd``."""
    U, L = x.shape
    P = w.shape[0]
    for u in prange(U):
        wu = w[u % P]
        bu = b[u % P]
        for j in range(L):
            t = _sq(_arg(_widen(x[u, j]), a, s), kc)
            z = wu * t + bu
            rv = _widen(r[u, j])
            z = z + rv if has_r else z
            if _RELU:
                z = _ZERO if z < _ZERO else z
            y[u, j] = _narrow(z, oz)


def rows_bwd(dy, x, w, b, r, has_r, a, s, oz, dx, dr, sums, kc):
    """The backward of ``rows_fwd``: dx = g * a with ``g = dz * w * squash'(u)``, ``dz = dy``
    (times ``z > 0`` with ReLU; then ``dr = dz`` is written too); ``sums`` (BLOCKS, 4, P)
    float64, zeros on entry: per block of rows, per column, sum(dz * t) and sum(dz); the
    scalars' sum(g * x) and sum(g) (only their totals are used) in column 0 of rows 2 and 3,
    summed along each row (float32, as ``lines_bwd``'s, then float64): kept in registers (per
    column they were two more loads and stores an element: 12-16% of the backward's time; a
    loop over runs of columns inside the row, to bound the float32 sums, kept LLVM from
    vectorizing)."""
    R, P = x.shape
    nb = sums.shape[0]
    kh = _hoist(kc)
    for k in prange(nb):
        lo = k * R // nb
        hi = (k + 1) * R // nb
        acc = np.zeros((2, P), dtype=np.float32)
        for i0 in range(lo, hi, _ROWS_PER_RUN):
            for i in range(i0, min(hi, i0 + _ROWS_PER_RUN)):
                s2 = _ZERO
                s3 = _ZERO
                for j in range(P):
                    xv = _widen(x[i, j])
                    u = _arg(xv, a, s)
                    t = _sq(u, kh)
                    dz = _widen(dy[i, j])
                    if _RELU:
                        z = w[j] * t + b[j]
                        rv = _widen(r[i, j])
                        z = z + rv if has_r else z
                        dz = dz if z > _ZERO else _ZERO
                        dr[i, j] = _narrow(dz, oz)
                    g = dz * w[j] * _dsq(u, t, kh)
                    dx[i, j] = _narrow(g * a, oz)
                    acc[0, j] += dz * t
                    acc[1, j] += dz
                    s2 += g * xv
                    s3 += g
                sums[k, 2, 0] += s2
                sums[k, 3, 0] += s3
            for c in range(2):
                for j in range(P):
                    sums[k, c, j] += acc[c, j]
                    acc[c, j] = _ZERO


def lines_bwd(dy, x, w, b, r, has_r, a, s, oz, dx, dr, sums, kc):
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
            v = _arg(xv, a, s)
            t = _sq(v, kc)
            dz = _widen(dy[u, j])
            if _RELU:
                z = wu * t + bu
                rv = _widen(r[u, j])
                z = z + rv if has_r else z
                dz = dz if z > _ZERO else _ZERO
                dr[u, j] = _narrow(dz, oz)
            g = dz * wu * _dsq(v, t, kc)
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
_SQUASH = {"dyt": (_tanh, _dtanh, _scaled), "derf": (_erf, _derf, _shifted)}
# how ``rows_bwd`` reads the constants: from the array (DyT: vectorizes, and measured faster
# than a tuple), or as a tuple of scalars loaded before the loop (Derf: its loop does not
# vectorize with the loads from the array, see ``_unpacker``)
_HOIST = {"dyt": _same, "derf": _unpack}


def _bind(kernel, kind, relu, serial):
    """``kernel``'s Python function with ``_sq``/``_dsq``/``_arg`` bound to ``kind``'s and
    ``_RELU`` to ``relu``, compiled under its own name (``<name>_<kind>[_relu][_serial]``:
    numba's disk cache is named after the function)."""
    f = kernel
    g = dict(f.__globals__)
    g["_sq"], g["_dsq"], g["_arg"] = _SQUASH[kind]
    g["_RELU"] = relu
    g["_hoist"] = _HOIST[kind]
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
