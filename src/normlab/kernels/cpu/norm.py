"""CPU kernels compiled by numba: the statistics and per-element passes of every kind, float32
and float64 (the channels' also bfloat16, as its bits: ``_load``/``_store``), on numpy views
of the input's memory (``normlab.ops.cpu_op`` makes the views, merges partial statistics and
computes the per-line coefficients; nothing here allocates
an activation-sized buffer or knows about autograd).

The input's memory is read in one of three shapes (``spec.Kernel``'s 4-D view ``(NB, D0, D1,
D2)``, a group being one ``(b, d1)`` reduced over ``(d0, d2)``):

* **rows** (layer, rms): ``(R, L)``, one group per row; forward and backward fused, one row in
  cache: the forward reads x once and writes y, the backward reads x and dy once and writes dx
  (both streamed, one fence per block of rows).
* **lines** (batch, instance, group norm with the channel outermost): ``(NB, D0, D1, P)``,
  each line ``P`` positions sharing one weight, a group the ``D0`` lines of one ``(b, d1)``
  (batch norm: a channel's N lines, one per sample); one unit per group: each line's
  statistics in L1, merged by Chan's formula, then the output over the group's lines in
  reverse order (the last read still in cache); the backward likewise (sums, then dx).
* **columns** (the channel innermost): ``(NB, R, W)``, per-column statistics in one pass
  (a sample per unit, or chunks of rows), merged in the kernel, then a per-column affine pass;
  the backward likewise.
* **channels** (layer and RMS norm over the channel of channels-first memory, timm's
  LayerNorm2d): ``(NB, R, W)`` with a group per column and a weight per row (``chan_fwd``,
  ``chan_bwd``): the columns' statistics over a sample (or, with fewer samples than threads,
  a block of its columns), then the output with the row's weight, the rows walked back.

The rows' and the lines' forward statistics sum each row or line in one pass about a shift
within one standard deviation of its mean (at most one bit cancels; a row's shift is the mean
of its first values, a line's the group's mean so far) and in two passes (the mean, then the
squared deviations from it) where it is not (``rows_fwd``, ``lines_fwd_fused``); the lines are
merged by Chan's formula in float64; the columns' are a shifted one-pass per block of 64 rows
(see the columns section); so no ``E[x^2] - E[x]^2``. The rows' and lines' sums, forward and
backward, add blocks of 2048 elements summed in the input's precision (vectorized) in float64,
the columns' blocks of 64 rows, so no long float32 sums; the rows' weight and bias gradients
are summed in the input's precision over a block of rows (``_ROWS_BLOCK`` elements: 16 rows of
1024; at most ``_BLOCK`` rows) and added in float64.
The fast-math flags allow reassociation (vectorized reductions) but keep NaN and Inf semantics.

Every kernel exists twice: compiled with ``parallel=True`` (its ``prange`` split over numba's
threads) and, in :data:`SERIAL`, compiled without (``prange`` is a plain loop), for calls on
one thread. The serial twin is not only faster there: it is reproducible. numba compiles a
parallel kernel's loop body as a function of its own and links a copy of it into the kernel;
a process that compiled the kernel runs the first, a process that loaded the kernel from the
disk cache runs the copy, which LLVM optimized a second time in another context (it fuses
other multiply-adds, reassociates other sums), so the two give results a few ulps apart. A
serial kernel is one piece of machine code, the same whether compiled here or loaded.
"""

from __future__ import annotations

from types import FunctionType, SimpleNamespace

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from normlab.kernels.cpu.pointwise import _narrow, _widen

__all__ = ["SERIAL", "chan_bwd", "chan_fwd", "cols_bwd_chunked", "cols_bwd_fused",
           "cols_fwd_chunked", "cols_fwd_fused", "lines_bwd_fused", "lines_fwd_fused", "rows_bwd",
           "rows_fwd"]

_FAST = {"reassoc", "contract", "nsz", "arcp"}  # no "nnan"/"ninf": NaN input gives NaN output
_JIT = dict(parallel=True, fastmath=_FAST, cache=True, nogil=True)
_JIT_SERIAL = dict(fastmath=_FAST, cache=True, nogil=True)


_BLOCK = 2048  # elements summed in the input's precision before adding into float64


@njit(fastmath=_FAST, inline="always")
def _sq_dev(x, m, zero):
    """sum((x - m)^2) of a 1-D array: blocks of _BLOCK in x's precision (vectorized), added in
    float64."""
    s = 0.0
    for j0 in range(0, x.shape[0], _BLOCK):
        a = zero
        for j in range(j0, min(x.shape[0], j0 + _BLOCK)):
            e = x[j] - m
            a += e * e
        s += a
    return s


@njit(fastmath=_FAST, inline="always")
def _shifted_sums(x, k, zero):
    """(sum(x - k), sum((x - k)^2)) of a 1-D array in one pass, blocked as ``_sq_dev``. With
    the shift ``k`` (a value near the data's mean) the block sums stay at the scale of the
    spread, not of the mean: float32 blocks of values ~1e4 would lose ~1e-3."""
    s1 = 0.0
    s2 = 0.0
    for j0 in range(0, x.shape[0], _BLOCK):
        a1 = zero
        a2 = zero
        for j in range(j0, min(x.shape[0], j0 + _BLOCK)):
            e = x[j] - k
            a1 += e
            a2 += e * e
        s1 += a1
        s2 += a2
    return s1, s2


@njit(fastmath=_FAST, inline="always")
def _sums_dy(dy, x, m, r, zero):
    """(sum(dy), sum(dy * xhat)) of 1-D arrays, xhat = (x - m) * r, blocked as ``_sq_dev``."""
    s1 = 0.0
    s2 = 0.0
    for j0 in range(0, x.shape[0], _BLOCK):
        a1 = zero
        a2 = zero
        for j in range(j0, min(x.shape[0], j0 + _BLOCK)):
            a1 += dy[j]
            a2 += dy[j] * ((x[j] - m) * r)
        s1 += a1
        s2 += a2
    return s1, s2


# ---- streaming stores: the output written without reading its lines into the cache first ----
#
# A plain store to memory not in cache first reads the line it writes (write-allocate): writing
# y costs about as much as copying into it (measured: an affine pass over (2048, 3136) float32
# 3.1-3.5 ms with plain stores, 2.3-2.8 ms with streaming ones, copy_ 3.0-3.5). LLVM's loop
# vectorizer does not emit non-temporal stores for arrays of unknown alignment, so the output
# passes that write a whole activation (the lines' y and dx, the rows' y and dx; the columns' y
# and dx through ``_ostrips``, below) store 32-byte vectors through these intrinsics (a store
# with LLVM's !nontemporal metadata, aligned: the loops do the unaligned head and the tail with
# plain stores); ``_fence`` orders them before the kernel returns. A fence costs: one per
# thread's range of groups of lines in the forward (a fence per group of ~400 KiB cost
# 2-2.5%), per group in the backward, per block of rows (64 KiB), forward and backward, not per
# 4 KiB row (RMS (8192, 1024) forward: streamed with a fence per row 0.73 of copy_'s bandwidth,
# the plain stores 0.70, streamed with one fence per kernel 0.87).

def _vector(context, builder, arrty, arr, idx):
    """(pointer to 32 bytes of ``arr`` from element ``idx``, the vector type, its width)."""
    lt = context.get_value_type(arrty.dtype)
    w = 32 // (arrty.dtype.bitwidth // 8)
    vt = ir.VectorType(lt, w)
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [idx]), vt.as_pointer()), vt, w


def _scalars(context, builder, sig, args, first):
    """``args[first:]`` cast to the output array's dtype (the vector's element type)."""
    dt = sig.args[0].dtype
    return [context.cast(builder, v, t, dt)
            for v, t in zip(args[first:], sig.args[first:], strict=True)]


def _splat(builder, vt, w, v):
    u = builder.insert_element(ir.Constant(vt, ir.Undefined), v, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(u, u, ir.Constant(ir.VectorType(ir.IntType(32), w), [0] * w))


def _stream(builder, value, ptr):
    st = builder.store(value, ptr, align=32)
    st.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))


@intrinsic
def _stream_affine(typingctx, y, x, i, m, s, b):
    """y[i:i+W] = (x[i:i+W] - m) * s + b, W = 32 bytes of y's dtype, streamed; y[i] 32-byte
    aligned."""
    def codegen(context, builder, sig, args):
        ya, xa, idx = args[:3]
        mv, sv, bv = _scalars(context, builder, sig, args, 3)
        yp, vt, w = _vector(context, builder, sig.args[0], ya, idx)
        xp, _, _ = _vector(context, builder, sig.args[1], xa, idx)
        xv = builder.load(xp, align=sig.args[1].dtype.bitwidth // 8)
        r = builder.fadd(builder.fmul(builder.fsub(xv, _splat(builder, vt, w, mv)),
                                      _splat(builder, vt, w, sv)), _splat(builder, vt, w, bv))
        _stream(builder, r, yp)
        return context.get_dummy_value()
    return types.void(y, x, i, m, s, b), codegen


@intrinsic
def _stream_waffine(typingctx, y, x, w, b, i, j, m, r):
    """y[i, j:j+W] = ((x[i, j:j+W] - m) * r) * w[j:j+W] + b[j:j+W], streamed; x, y (R, L)
    C-contiguous, y[i, j] 32-byte aligned."""
    if not (y.layout == "C" and x.layout == "C" and y.ndim == 2 and x.ndim == 2):
        return None

    def codegen(context, builder, sig, args):
        ya, xa, wa, ba, ii, jj = args[:6]
        mv, rv = _scalars(context, builder, sig, args, 6)
        ii = context.cast(builder, ii, sig.args[4], types.intp)
        jj = context.cast(builder, jj, sig.args[5], types.intp)
        row = builder.extract_value(context.make_array(sig.args[0])(context, builder, ya).shape, 1)
        off = builder.add(builder.mul(ii, row), jj)
        yp, vt, nw = _vector(context, builder, sig.args[0], ya, off)
        al = sig.args[1].dtype.bitwidth // 8
        xv, wv, bv = (builder.load(_vector(context, builder, sig.args[k], a, o)[0], align=al)
                      for k, a, o in ((1, xa, off), (2, wa, jj), (3, ba, jj)))
        t = builder.fmul(builder.fsub(xv, _splat(builder, vt, nw, mv)), _splat(builder, vt, nw, rv))
        _stream(builder, builder.fadd(builder.fmul(t, wv), bv), yp)
        return context.get_dummy_value()
    return types.void(y, x, w, b, i, j, m, r), codegen


@intrinsic
def _stream_dx(typingctx, dx, dy, x, i, a, c1, c2, m):
    """dx[i:i+W] = a * dy[i:i+W] - c1 - c2 * (x[i:i+W] - m), streamed; dx[i] 32-byte aligned."""
    def codegen(context, builder, sig, args):
        da, ga, xa, idx = args[:4]
        av, c1v, c2v, mv = _scalars(context, builder, sig, args, 4)
        dp, vt, w = _vector(context, builder, sig.args[0], da, idx)
        gp, _, _ = _vector(context, builder, sig.args[1], ga, idx)
        xp, _, _ = _vector(context, builder, sig.args[2], xa, idx)
        al = sig.args[1].dtype.bitwidth // 8
        gv, xv = builder.load(gp, align=al), builder.load(xp, align=al)
        t = builder.fsub(builder.fmul(_splat(builder, vt, w, av), gv), _splat(builder, vt, w, c1v))
        u = builder.fmul(_splat(builder, vt, w, c2v),
                         builder.fsub(xv, _splat(builder, vt, w, mv)))
        _stream(builder, builder.fsub(t, u), dp)
        return context.get_dummy_value()
    return types.void(dx, dy, x, i, a, c1, c2, m), codegen


@intrinsic
def _stream_wdx(typingctx, dx, dy, x, w, aw, ab, i, j, a, c1, c2, m):
    """dx[i, j:j+W] = a * (dy[i, j:j+W] * w[j:j+W]) - c1 - c2 * (x[i, j:j+W] - m), streamed;
    aw[j:j+W] += dy * (x - m) * a, ab[j:j+W] += dy (the weight and bias gradients' partial
    sums, ``a`` being the row's rstd); dx, dy, x (R, L) C-contiguous, dx[i, j] 32-byte
    aligned."""
    if not all(t.layout == "C" and t.ndim == 2 for t in (dx, dy, x)):
        return None

    def codegen(context, builder, sig, args):
        da, ga, xa, wa, awa, aba, ii, jj = args[:8]
        scalars = _scalars(context, builder, sig, args, 8)
        ii = context.cast(builder, ii, sig.args[6], types.intp)
        jj = context.cast(builder, jj, sig.args[7], types.intp)
        row = builder.extract_value(context.make_array(sig.args[0])(context, builder, da).shape, 1)
        off = builder.add(builder.mul(ii, row), jj)
        dp, vt, nw = _vector(context, builder, sig.args[0], da, off)
        av, c1v, c2v, mv = (_splat(builder, vt, nw, v) for v in scalars)
        al = sig.args[1].dtype.bitwidth // 8
        awp, abp = (_vector(context, builder, sig.args[k], arr, jj)[0]
                    for k, arr in ((4, awa), (5, aba)))
        gv, xv, wv, awv, abv = (builder.load(p, align=al) for p in (
            _vector(context, builder, sig.args[1], ga, off)[0],
            _vector(context, builder, sig.args[2], xa, off)[0],
            _vector(context, builder, sig.args[3], wa, jj)[0], awp, abp))
        xc = builder.fsub(xv, mv)
        t = builder.fsub(builder.fmul(av, builder.fmul(gv, wv)), c1v)
        _stream(builder, builder.fsub(t, builder.fmul(c2v, xc)), dp)
        builder.store(builder.fadd(awv, builder.fmul(gv, builder.fmul(xc, av))), awp, align=al)
        builder.store(builder.fadd(abv, gv), abp, align=al)
        return context.get_dummy_value()
    return types.void(dx, dy, x, w, aw, ab, i, j, a, c1, c2, m), codegen


@intrinsic
def _fence(typingctx):
    """``sfence`` (x86's fence for non-temporal stores: they are weakly ordered, and LLVM may
    lower a seq_cst fence to a locked instruction, which is not documented to order them on
    every x86 CPU), then a seq_cst fence for the compiler and the other stores."""
    def codegen(context, builder, sig, args):
        sfence = builder.module.declare_intrinsic("llvm.x86.sse.sfence", fnty=ir.FunctionType(
            ir.VoidType(), []))
        builder.call(sfence, [])
        builder.fence("seq_cst")
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def _lanes(typingctx, y):
    """32 bytes in elements of ``y``'s dtype, a constant of the machine code."""
    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, 32 // (sig.args[0].dtype.bitwidth // 8))
    return types.intp(y), codegen


@njit(inline="always")
def _head(y):
    """How many leading elements of the 1-D ``y`` precede its first 32-byte boundary."""
    w = 32 // y.itemsize
    return min(y.shape[0], (32 - y.ctypes.data % 32) // y.itemsize % w)


# Lines shorter than this are written with plain stores: a streamed store fills a write-
# combining buffer, and a line that ends inside a 64-byte cache line leaves it partial, flushed
# as a read-modify-write at memory; with lines of 49 (7x7) or 196 (14x14) positions every
# line did. Instance norm (668, 64, 7, 7), numba/torch.nn at 1 thread: forward 4.66 -> 0.96,
# forward+backward 4.09 -> 1.02; (167, 64, 14, 14) 1.20 -> 0.40 and 1.45 -> 0.61; batch norm
# (668, 64, 7, 7) 2.33 -> 1.34 and 2.90 -> 0.93 (its lines also pay a merge each). Streaming
# from 1024 instead measured no better at 14x14-28x28 (loaded machine).
_SHORT_LINE = 256


@njit(fastmath=_FAST, inline="always")
def _affine_line(y, x, m, s, b):
    """y = (x - m) * s + b over a line, the aligned body streamed."""
    P = x.shape[0]
    if P < _SHORT_LINE:
        for j in range(P):
            y[j] = (x[j] - m) * s + b
        return
    h = _head(y)
    for j in range(h):
        y[j] = (x[j] - m) * s + b
    w = 32 // y.itemsize
    j = h
    while j + w <= P:
        _stream_affine(y, x, j, m, s, b)
        j += w
    for k in range(j, P):
        y[k] = (x[k] - m) * s + b


@njit(fastmath=_FAST, inline="always")
def _dx_line(dx, dy, x, a, c1, c2, m):
    """dx = a * dy - c1 - c2 * (x - m) over a line, the aligned body streamed."""
    P = x.shape[0]
    if P < _SHORT_LINE:
        for j in range(P):
            dx[j] = a * dy[j] - c1 - c2 * (x[j] - m)
        return
    h = _head(dx)
    for j in range(h):
        dx[j] = a * dy[j] - c1 - c2 * (x[j] - m)
    w = 32 // dx.itemsize
    j = h
    while j + w <= P:
        _stream_dx(dx, dy, x, j, a, c1, c2, m)
        j += w
    for k in range(j, P):
        dx[k] = a * dy[k] - c1 - c2 * (x[k] - m)


# ---- rows: layer and rms norm, x (R, L), w and b (L,) (ones / zeros when absent) ----

_ROWS_BLOCK = 1 << 14  # elements of y written between two fences (64 KiB of float32)


@njit(inline="always")
def _streams_rows(y):
    """Whether the rows of the 2-D ``y`` are streamed: rows of whole 64-byte cache lines (a
    streamed row ending inside one leaves a write-combining buffer partial, see
    ``_SHORT_LINE``) and at least ``_SHORT_LINE`` long."""
    return y.shape[1] >= _SHORT_LINE and (y.shape[1] * y.itemsize) % 64 == 0
_SHIFT_N = 16  # a row's first values whose mean is the shift of its one-pass sums


@njit(**_JIT)
def rows_fwd(x, w, b, centered, eps, zero, y, mean, rstd, var):
    """y = (x - mean) * rstd * w + b per row; mean/rstd/var (R,) in the statistics dtype;
    ``zero``: 0 in that dtype (the blocks' accumulator type). y is streamed; the rows go in
    blocks of about ``_ROWS_BLOCK`` elements, one fence per block (a fence per row of 4 KiB
    cost more than the streaming saved)."""
    R, L = x.shape
    rb = max(1, _ROWS_BLOCK // L)
    stream = _streams_rows(y)
    for t in prange((R + rb - 1) // rb):
        for i in range(t * rb, min(R, (t + 1) * rb)):
            if centered:
                # one pass: the sum and the sum of squares of x - k, k near the row's mean
                # (the mean of its first _SHIFT_N values, rounded to x's dtype, which the
                # statistics dtype is here), M2 = sum((x - k)^2) - L (mean - k)^2
                c = 0.0
                for j in range(min(L, _SHIFT_N)):
                    c += x[i, j]
                mean[i] = c / min(L, _SHIFT_N)
                k = mean[i]
                s1, s2 = _shifted_sums(x[i], k, zero)
                e = s1 / L
                m = k + e
                q = s2 - s1 * e
                mean[i] = m
                mi = mean[i]  # in the statistics dtype: the passes below in that precision
                if not L * e * e <= q:
                    # k more than one standard deviation from the mean (the subtraction would
                    # cancel more than one bit), or NaN/Inf: a second pass over the row, in
                    # cache; sum((x - mi)^2) = M2 + L (m - mi)^2
                    q = _sq_dev(x[i], mi, zero) - L * (m - mi) ** 2
            else:
                mean[i] = 0.0
                mi = mean[i]
                q = _sq_dev(x[i], mi, zero)
            q = max(q, 0.0)
            var[i] = q / L
            rstd[i] = 1.0 / np.sqrt(q / L + eps)
            ri = rstd[i]
            if not stream:  # rows not in whole cache lines: plain stores (``_SHORT_LINE``)
                for j in range(L):
                    y[i, j] = (x[i, j] - mi) * ri * w[j] + b[j]
                continue
            # y[i], the aligned body streamed; written out here: the same loop in an inlined
            # helper (as _affine_line) measured as slow as plain stores, for a reason not found
            h = _head(y[i])
            for j in range(h):
                y[i, j] = (x[i, j] - mi) * ri * w[j] + b[j]
            j = h
            while j + _lanes(y) <= L:
                _stream_waffine(y, x, w, b, i, j, mi, ri)
                j += _lanes(y)
            for j2 in range(j, L):
                y[i, j2] = (x[i, j2] - mi) * ri * w[j2] + b[j2]
        _fence()


@njit(fastmath=_FAST, inline="always")
def _row_dsums(dy, x, w, m, r, zero):
    """One row's (sum(g), sum(g * xhat)), g = dy * w, xhat = (x - m) * r, blocks of _BLOCK
    in ``zero``'s precision added in float64. (LLVM vectorizes this loop only without stores
    in it: the weight and bias gradients' sums are the dx pass's.)"""
    s1 = 0.0
    s2 = 0.0
    L = x.shape[0]
    for j0 in range(0, L, _BLOCK):
        a1 = zero
        a2 = zero
        for j in range(j0, min(L, j0 + _BLOCK)):
            g = dy[j] * w[j]
            a1 += g
            a2 += g * ((x[j] - m) * r)
        s1 += a1
        s2 += a2
    return s1, s2


@njit(fastmath=_FAST, inline="always")
def _wdx(dx, dy, x, w, aw, ab, i, j, r, c1, c2, m):
    """Element (i, j) of ``_stream_wdx``."""
    xh = (x[i, j] - m) * r
    dx[i, j] = r * (dy[i, j] * w[j]) - c1 - c2 * (x[i, j] - m)
    aw[j] += dy[i, j] * xh
    ab[j] += dy[i, j]


@njit(**_JIT)
def rows_bwd(dy, x, w, mean, rstd, centered, zero, nth, dx, dwp, dbp):
    """dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w, per row; ``dwp``/``dbp``
    (nth, L) float64: each thread's partial sums of dy * xhat and dy (the caller adds them),
    summed in the input's precision over a block of rows (about ``_ROWS_BLOCK`` elements, at
    most ``_BLOCK`` rows) and added in float64 once a block. Per row: one pass over x and dy
    from memory (the sums), one over the row again, in cache, writing dx, streamed (the
    aligned body), and adding into the partial sums; one fence per block of rows, as the
    forward."""
    R, L = x.shape
    rb = max(1, min(_BLOCK, _ROWS_BLOCK // L))  # rows: at most _BLOCK terms in a float32 sum
    nblk = (R + rb - 1) // rb
    stream = _streams_rows(dx)
    for t in prange(nth):
        aw = np.empty(L, x.dtype)
        ab = np.empty(L, x.dtype)
        cs = np.empty(2, x.dtype)  # the row's coefficients in x's precision (the streamed body's)
        for blk in range(t * nblk // nth, (t + 1) * nblk // nth):
            for j in range(L):
                aw[j] = 0.0
                ab[j] = 0.0
            for i in range(blk * rb, min(R, (blk + 1) * rb)):
                mi, ri = mean[i], rstd[i]
                s1, s2 = _row_dsums(dy[i], x[i], w, mi, ri, zero)
                # dx = r (g - a - xhat c) = r g - r a - r^2 c (x - m), a = mean(g) (0 for rms)
                cs[0] = ri * (s1 / L) if centered else 0.0
                cs[1] = ri * ri * (s2 / L)
                c1, c2 = cs[0], cs[1]
                if not stream:  # rows not in whole cache lines: plain stores
                    for j in range(L):
                        _wdx(dx, dy, x, w, aw, ab, i, j, ri, c1, c2, mi)
                    continue
                h = _head(dx[i])
                for j in range(h):
                    _wdx(dx, dy, x, w, aw, ab, i, j, ri, c1, c2, mi)
                j = h
                while j + _lanes(dx) <= L:
                    _stream_wdx(dx, dy, x, w, aw, ab, i, j, ri, c1, c2, mi)
                    j += _lanes(dx)
                for j2 in range(j, L):
                    _wdx(dx, dy, x, w, aw, ab, i, j2, ri, c1, c2, mi)
            _fence()
            for j in range(L):
                dwp[t, j] += aw[j]
                dbp[t, j] += ab[j]


# ---- lines: (NB, D0, D1, P), one weight per line, group (b, d1) = D0 lines of P ----

@njit(fastmath=_FAST, inline="always")
def _chan(n, m, q, p, lm, lq):
    """Chan's merge of a part (``p`` elements, mean ``lm``, squared deviations ``lq``) into
    the running (n, m, q), float64."""
    t = n + p
    d = lm - m
    return t, m + d * (p / t), q + lq + d * d * (n * (p / t))


@njit(**_JIT)
def lines_fwd_fused(x, w, bias, aff, centered, eps, zero, sc, y, mean, rstd, var, nth):
    """x (NB, D0, D1, P); line (b, d0, d1) has weight ``w[(b % MOD_B) * SB + d0 * S0 + d1 *
    S1]`` (and bias), ``aff = (MOD_B, SB, S0, S1)``, ``w``/``bias`` in the statistics dtype;
    statistics (NB, D1) in that dtype, ``zero``: 0 in it, ``sc`` (NB, D1) scratch in it. Per
    group (b, d1): each line's mean and squared deviations (one pass about a shift near the
    mean, a second pass in L1 where the shift is not), merged in float64 by Chan's formula,
    then the output, the lines in reverse order (the last
    ones read are still in cache: batch norm's group is one channel, N lines, about L2's
    size; so the forward reads x from memory about once, not twice). The groups go in ``nth``
    ranges (one per thread), a fence ending each (a fence per group cost 2-2.5% of batch norm
    NCHW's forward at 1 thread)."""
    NB, D0, D1, P = x.shape
    mod_b, sb, st0, st1 = aff
    U = NB * D1
    for t in prange(nth):  # one range of groups per thread, one fence each
        for u in range(t * U // nth, (t + 1) * U // nth):
            b = u // D1
            g = u % D1
            wg = (b % mod_b) * sb + g * st1  # the weight index of line (b, 0, g)
            n = 0.0
            m = 0.0
            q = 0.0
            for d in range(D0):
                line = x[b, d, g]
                # one pass: the sum and the sum of squares of x - c, c near the line's mean
                # (the group's mean so far, rounded to the statistics dtype; the first line:
                # its first value), M2 = sum((x - c)^2) - P (mean - c)^2
                sc[b, g] = 0.0 if not centered else (line[0] if d == 0 else m)
                c = sc[b, g]
                s1, s2 = _shifted_sums(line, c, zero)
                e = s1 / P
                lm = c + e
                lq = s2 - s1 * e
                if centered and not P * e * e <= lq:
                    # c more than one standard deviation from the line's mean (the
                    # subtraction would cancel more than one bit), or NaN/Inf: two passes over
                    # the line, in L1; the line mean rounded to the statistics dtype, the pass
                    # in that precision
                    sc[b, g] = lm
                    c = sc[b, g]
                    # sum((x - c)^2) = M2 + P (lm - c)^2: the rounding of the centre taken out
                    lq = _sq_dev(line, c, zero) - P * (lm - c) ** 2
                lq = max(lq, 0.0)
                if centered:
                    n, m, q = _chan(n, m, q, float(P), lm, lq)
                else:
                    n, q = n + P, q + lq
            mean[b, g] = m
            var[b, g] = q / n
            rstd[b, g] = 1.0 / np.sqrt(q / n + eps)
            mi, ri = mean[b, g], rstd[b, g]
            for d in range(D0 - 1, -1, -1):
                _affine_line(y[b, d, g], x[b, d, g], mi, ri * w[wg + d * st0],
                             bias[wg + d * st0])
        _fence()


@njit(**_JIT)
def lines_bwd_fused(dy, x, mean, rstd, w, aff, centered, zero, cs, dx, sdy, sdyx):
    """The backward of ``lines_fwd_fused``, one group per unit: each line's sum(dy) and
    sum(dy * xhat) (float64, kept in sdy/sdyx (NB, D0, D1) for the weight and bias gradients),
    then dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w, the lines in reverse
    order; ``w`` and ``aff`` as in ``lines_fwd_fused``; ``cs`` (NB, D1, 2) scratch in the
    statistics dtype."""
    NB, D0, D1, P = x.shape
    mod_b, sb, st0, st1 = aff
    n = D0 * P
    for u in prange(NB * D1):
        b = u // D1
        g = u % D1
        wg = (b % mod_b) * sb + g * st1
        m, r = mean[b, g], rstd[b, g]
        s1 = 0.0
        s2 = 0.0
        for d in range(D0):
            a1, a2 = _sums_dy(dy[b, d, g], x[b, d, g], m, r, zero)
            sdy[b, d, g] = a1
            sdyx[b, d, g] = a2
            s1 += w[wg + d * st0] * a1
            s2 += w[wg + d * st0] * a2
        cs[b, g, 0] = (s1 / n if centered else 0.0) * r
        cs[b, g, 1] = (s2 / n) * r * r
        c1, c2 = cs[b, g, 0], cs[b, g, 1]  # in the statistics dtype: the output pass in it
        for d in range(D0 - 1, -1, -1):
            _dx_line(dx[b, d, g], dy[b, d, g], x[b, d, g], r * w[wg + d * st0], c1, c2, m)
        _fence()


# ---- columns: (NB, R, W), the groups' channels innermost ----
#
# One pass of statistics over the input: blocks of _CBLOCK rows, each summed in the input's
# precision (vectorized across the columns) as deviations d = x - k from the
# block's first row k (per column): S1 = sum(d), S2 = sum(d^2); the block's (mean, squared
# deviations) = (k + S1/n, S2 - S1^2/n) in float64, merged into the running per-column
# statistics by Chan's formula in float64. The shift keeps the float32 sums at the scale of the
# spread (values ~1e4 with spread 1e-2: x - k is exact and small); S2 - S1^2/n cancels only as
# far as the block's mean lies from its first row, at most sqrt(n) spreads, so the block
# variance's relative error is at most ~n eps (n = 64: ~1e-5, an outlier in the first row;
# typically ~1e-7). No E[x^2] - E[x]^2 over large sums. The output and dx passes are register
# strips too (``_ostrips``), streamed where the rows are whole aligned vectors: streamed
# stores in numba's per-element loop had measured slower here (1.8-1.95 of copy_'s time for an
# instance-norm forward, against 1.5-1.7 plain); as strips ~1.0.

_CBLOCK = 64  # rows per block of sums in the input's precision


def _strip_args(context, builder, sig, args, na):
    """The strips' common codegen prelude: the element type ``lt``, its bytes ``al``, lanes
    ``w`` and vector type ``vt`` of a 32-byte vector, i64, ``vptr(base, idx, i)`` (a pointer to
    the i-th vector from element ``idx``), the ``na`` 2-D arrays, their column count, and the
    (lo, hi, j0) arguments that follow them as int64."""
    lt = context.get_value_type(sig.args[0].dtype)
    al = sig.args[0].dtype.bitwidth // 8
    w = 32 // al
    vt = ir.VectorType(lt, w)
    i64 = ir.IntType(64)

    def vptr(base, idx, i):
        idx = builder.add(idx, ir.Constant(i64, i * w))
        return builder.bitcast(builder.gep(base, [idx]), vt.as_pointer())

    mats = [context.make_array(sig.args[i])(context, builder, args[i]) for i in range(na)]
    ncol = cgutils.unpack_tuple(builder, mats[0].shape, 2)[1]
    lo, hi, j0 = (context.cast(builder, args[na + i], sig.args[na + i], types.int64)
                  for i in range(3))
    return lt, al, w, vt, i64, vptr, mats, ncol, lo, hi, j0


def _strips(nv, grad):
    """An intrinsic summing columns [j0, j0 + nv * V) of 2-D C-contiguous arrays over rows
    [lo, hi), V = 32 bytes of the dtype, the 2 * nv vector accumulators in registers (a loop
    written in LLVM IR: numba's loops keep per-column sums in memory, a load and a store per
    vector and row: 0.7-0.9 of copy_'s time for a read-only pass, 0.56 in registers, torch's
    x.sum() 0.5), in the arrays' precision, stored into a1[j0:], a2[j0:]. ``grad`` False:
    ``(xs, lo, hi, j0, k, a1, a2)``, a1 = sum(x - k), a2 = sum((x - k)^2); True: ``(gs, xs,
    lo, hi, j0, m, a1, a2)``, a1 = sum(dy), a2 = sum(dy * (x - m)); k, m per column."""
    na = 2 if grad else 1  # the 2-D arrays read

    def codegen(context, builder, sig, args):
        lt, al, w, vt, i64, vptr, mats, ncol, lo, hi, j0 = _strip_args(context, builder, sig,
                                                                       args, na)
        kd, d1, d2 = (context.make_array(sig.args[na + 3 + i])(context, builder,
                                                                 args[na + 3 + i]).data
                      for i in range(3))
        kv = [builder.load(vptr(kd, j0, i), align=al) for i in range(nv)]
        zero = ir.Constant(vt, [ir.Constant(lt, 0.0)] * w)
        pre = builder.block
        loop = builder.append_basic_block("strip.loop")
        done = builder.append_basic_block("strip.done")
        builder.cbranch(builder.icmp_signed("<", lo, hi), loop, done)
        builder.position_at_end(loop)
        r = builder.phi(i64)
        s1 = [builder.phi(vt) for _ in range(nv)]
        s2 = [builder.phi(vt) for _ in range(nv)]
        base = builder.add(builder.mul(r, ncol), j0)
        n1, n2 = [], []
        for i in range(nv):
            v = [builder.load(vptr(mat.data, base, i), align=al) for mat in mats]
            if grad:
                n1.append(builder.fadd(s1[i], v[0]))
                n2.append(builder.fadd(s2[i], builder.fmul(v[0], builder.fsub(v[1], kv[i]),
                                                           flags=_IR_FAST), flags=_IR_FAST))
            else:
                d = builder.fsub(v[0], kv[i])
                n1.append(builder.fadd(s1[i], d))
                n2.append(builder.fadd(s2[i], builder.fmul(d, d, flags=_IR_FAST),
                                       flags=_IR_FAST))
        rn = builder.add(r, ir.Constant(i64, 1))
        end = builder.block
        builder.cbranch(builder.icmp_signed("<", rn, hi), loop, done)
        r.add_incoming(lo, pre)
        r.add_incoming(rn, end)
        for s, n in zip(s1 + s2, n1 + n2, strict=True):
            s.add_incoming(zero, pre)
            s.add_incoming(n, end)
        builder.position_at_end(done)
        final = []
        for n in n1 + n2:  # the phis first: LLVM wants them at the top of the block
            f = builder.phi(vt)
            f.add_incoming(zero, pre)
            f.add_incoming(n, end)
            final.append(f)
        for i in range(nv):
            builder.store(final[i], vptr(d1, j0, i), align=al)
            builder.store(final[nv + i], vptr(d2, j0, i), align=al)
        return context.get_dummy_value()

    def c_arrays(*arrays):  # the loop indexes row r at r * shape[1]: C-contiguous only
        return all(isinstance(a, types.Array) and a.layout == "C" for a in arrays)

    if grad:
        def typer(typingctx, gs, xs, lo, hi, j0, m, a1, a2):
            if c_arrays(gs, xs):
                return types.void(gs, xs, lo, hi, j0, m, a1, a2), codegen
    else:
        def typer(typingctx, xs, lo, hi, j0, k, a1, a2):
            if c_arrays(xs):
                return types.void(xs, lo, hi, j0, k, a1, a2), codegen
    return intrinsic(typer)


_IR_FAST = ("contract",)  # FMA allowed; no reassociation needed (one chain per register)
_STRIP8, _STRIP4, _STRIP1 = (_strips(n, False) for n in (8, 4, 1))
_DSTRIP8, _DSTRIP4, _DSTRIP1 = (_strips(n, True) for n in (8, 4, 1))


def _ostrips(nv, stream, grad):
    """An intrinsic writing columns [j0, j0 + nv * V) of rows [lo, hi) of the 2-D C-contiguous
    output, the rows walked back (the last rows of the statistics pass still in cache), the
    per-column coefficients loaded once into vectors (numba's loop reloaded them per row and
    checked for aliasing per row: 1.3-1.6 of copy_'s time for an instance-norm forward); the
    stores streamed (``stream``: each row's start 32-byte aligned; the caller fences) or
    plain. ``grad`` False: ``(ys, xs, lo, hi, j0, m, s, c)``, y = (x - m) * s + c; True:
    ``(ds, gs, xs, lo, hi, j0, a, c1, m, c2)``, dx = a * dy + c1 * (x - m) + c2."""
    na = 3 if grad else 2  # the 2-D arrays: output first
    nc = 4 if grad else 3  # the 1-D coefficient arrays

    def codegen(context, builder, sig, args):
        lt, al, w, vt, i64, vptr, mats, ncol, lo, hi, j0 = _strip_args(context, builder, sig,
                                                                       args, na)
        co = [[builder.load(vptr(context.make_array(sig.args[na + 3 + c])(
            context, builder, args[na + 3 + c]).data, j0, i), align=al) for i in range(nv)]
            for c in range(nc)]
        start = builder.sub(hi, ir.Constant(i64, 1))
        pre = builder.block
        loop = builder.append_basic_block("out.loop")
        done = builder.append_basic_block("out.done")
        builder.cbranch(builder.icmp_signed("<", lo, hi), loop, done)
        builder.position_at_end(loop)
        r = builder.phi(i64)
        base = builder.add(builder.mul(r, ncol), j0)
        for i in range(nv):
            v = [builder.load(vptr(mat.data, base, i), align=al) for mat in mats[1:]]
            if grad:  # a * dy + c1 * (x - m) + c2
                t = builder.fmul(co[1][i], builder.fsub(v[1], co[2][i]), flags=_IR_FAST)
                t = builder.fadd(builder.fmul(co[0][i], v[0], flags=_IR_FAST), t,
                                 flags=_IR_FAST)
                out = builder.fadd(t, co[3][i], flags=_IR_FAST)
            else:  # (x - m) * s + c: not x * s + (c - m * s), which cancels when |m| >> std
                t = builder.fmul(builder.fsub(v[0], co[0][i]), co[1][i], flags=_IR_FAST)
                out = builder.fadd(t, co[2][i], flags=_IR_FAST)
            ptr = vptr(mats[0].data, base, i)
            if stream:
                _stream(builder, out, ptr)
            else:
                builder.store(out, ptr, align=al)
        rn = builder.sub(r, ir.Constant(i64, 1))
        end = builder.block
        builder.cbranch(builder.icmp_signed(">=", rn, lo), loop, done)
        r.add_incoming(start, pre)
        r.add_incoming(rn, end)
        builder.position_at_end(done)
        return context.get_dummy_value()

    def c_arrays(*arrays):  # row r at r * shape[1], coefficients from their first element;
        # one dtype: the coefficients are loaded as vectors of the output's elements
        return all(isinstance(a, types.Array) and a.layout == "C"
                   and a.dtype == arrays[0].dtype for a in arrays)

    if grad:
        def typer(typingctx, ds, gs, xs, lo, hi, j0, a, c1, m, c2):
            if c_arrays(ds, gs, xs, a, c1, m, c2):
                return types.void(ds, gs, xs, lo, hi, j0, a, c1, m, c2), codegen
    else:
        def typer(typingctx, ys, xs, lo, hi, j0, m, s, c):
            if c_arrays(ys, xs, m, s, c):
                return types.void(ys, xs, lo, hi, j0, m, s, c), codegen
    return intrinsic(typer)


_OUT = {(nv, st): _ostrips(nv, st, False) for nv in (8, 4, 1) for st in (False, True)}
_DOUT = {(nv, st): _ostrips(nv, st, True) for nv in (8, 4, 1) for st in (False, True)}
_OUT8S, _OUT4S, _OUT1S, _OUT8, _OUT4, _OUT1 = (_OUT[n, st] for st in (True, False)
                                               for n in (8, 4, 1))
_DOUT8S, _DOUT4S, _DOUT1S, _DOUT8, _DOUT4, _DOUT1 = (_DOUT[n, st] for st in (True, False)
                                                     for n in (8, 4, 1))


@njit(inline="always")
def _streams(y):
    """Whether the columns' output ``y`` (C-contiguous, rows of whole 32-byte vectors, its
    start 32-byte aligned) takes streaming stores."""
    return y.ctypes.data % 32 == 0 and (y.shape[-1] * y.itemsize) % 32 == 0


@njit(fastmath=_FAST, inline="always")
def _col_out(ys, xs, lo, hi, m, s, c, stream):
    """ys[r, j] = (xs[r, j] - m[j]) * s[j] + c[j] over rows [lo, hi) walked back (2-D
    C-contiguous, 1-D coefficients in ys's dtype): strips of 8, 4, 1 vectors (``_ostrips``),
    streamed when ``stream`` (``_streams``: then no columns are left over), the last columns
    (fewer than a vector's) in a loop."""
    W = xs.shape[1]
    v = 32 // xs.itemsize
    j0 = 0
    while j0 + 8 * v <= W:
        if stream:
            _OUT8S(ys, xs, lo, hi, j0, m, s, c)
        else:
            _OUT8(ys, xs, lo, hi, j0, m, s, c)
        j0 += 8 * v
    if j0 + 4 * v <= W:
        if stream:
            _OUT4S(ys, xs, lo, hi, j0, m, s, c)
        else:
            _OUT4(ys, xs, lo, hi, j0, m, s, c)
        j0 += 4 * v
    while j0 + v <= W:
        if stream:
            _OUT1S(ys, xs, lo, hi, j0, m, s, c)
        else:
            _OUT1(ys, xs, lo, hi, j0, m, s, c)
        j0 += v
    if j0 < W:
        for r in range(hi - 1, lo - 1, -1):
            for j in range(j0, W):
                ys[r, j] = (xs[r, j] - m[j]) * s[j] + c[j]


@njit(fastmath=_FAST, inline="always")
def _col_dx(ds, gs, xs, lo, hi, a, c1, m, c2, stream):
    """ds[r, j] = a[j] * gs[r, j] + c1[j] * (xs[r, j] - m[j]) + c2[j] over rows [lo, hi)
    walked back, as ``_col_out``."""
    W = xs.shape[1]
    v = 32 // xs.itemsize
    j0 = 0
    while j0 + 8 * v <= W:
        if stream:
            _DOUT8S(ds, gs, xs, lo, hi, j0, a, c1, m, c2)
        else:
            _DOUT8(ds, gs, xs, lo, hi, j0, a, c1, m, c2)
        j0 += 8 * v
    if j0 + 4 * v <= W:
        if stream:
            _DOUT4S(ds, gs, xs, lo, hi, j0, a, c1, m, c2)
        else:
            _DOUT4(ds, gs, xs, lo, hi, j0, a, c1, m, c2)
        j0 += 4 * v
    while j0 + v <= W:
        if stream:
            _DOUT1S(ds, gs, xs, lo, hi, j0, a, c1, m, c2)
        else:
            _DOUT1(ds, gs, xs, lo, hi, j0, a, c1, m, c2)
        j0 += v
    if j0 < W:
        for r in range(hi - 1, lo - 1, -1):
            for j in range(j0, W):
                ds[r, j] = a[j] * gs[r, j] + c1[j] * (xs[r, j] - m[j]) + c2[j]


@njit(fastmath=_FAST, inline="always")
def _col_block(xs, lo, hi, j0, W, centered, k, a1, a2):
    """Rows [lo, hi) and columns [j0, W) of the 2-D C-contiguous ``xs``, per column j: k[j] =
    xs[lo, j] (0 uncentered), a1[j] = sum(d), a2[j] = sum(d^2), d = xs[r, j] - k[j], in xs's
    precision: strips of 8, 4, 1 vectors of columns (``_strips``), the last columns (fewer
    than a vector's) in a loop."""
    for j in range(j0, W):
        k[j] = xs[lo, j] if centered else 0.0
    v = 32 // xs.itemsize
    while j0 + 8 * v <= W:
        _STRIP8(xs, lo, hi, j0, k, a1, a2)
        j0 += 8 * v
    if j0 + 4 * v <= W:
        _STRIP4(xs, lo, hi, j0, k, a1, a2)
        j0 += 4 * v
    while j0 + v <= W:
        _STRIP1(xs, lo, hi, j0, k, a1, a2)
        j0 += v
    if j0 < W:
        for j in range(j0, W):
            a1[j] = 0.0
            a2[j] = 0.0
        for r in range(lo, hi):
            for j in range(j0, W):
                d = xs[r, j] - k[j]
                a1[j] += d
                a2[j] += d * d


@njit(fastmath=_FAST, inline="always")
def _col_stats(xs, lo, hi, centered, k, a1, a2, m, q, j0=0, j1=-1):
    """Per column j of the 2-D ``xs`` over rows [lo, hi) (columns [j0, j1), all by default):
    the mean m[j] and the squared deviations q[j] (float64 arrays), blocks of _CBLOCK rows
    (``_col_block``; k, a1, a2 scratch in xs's dtype) merged by Chan's formula; uncentered:
    m 0, q the sum of squares."""
    W = xs.shape[1] if j1 < 0 else j1
    for j in range(j0, W):
        m[j] = 0.0
        q[j] = 0.0
    n = 0.0
    for b0 in range(lo, hi, _CBLOCK):
        b1 = min(hi, b0 + _CBLOCK)
        _block(xs, b0, b1, j0, W, centered, k, a1, a2)
        p = float(b1 - b0)
        f = p / (n + p)
        if centered:
            for j in range(j0, W):
                s1 = np.float64(a1[j])
                bq = np.float64(a2[j]) - s1 * s1 / p
                if bq < 0.0:  # rounding; NaN stays NaN
                    bq = 0.0
                d = (k[j] + s1 / p) - m[j]
                m[j] += d * f
                q[j] += bq + d * d * (n * f)
        else:
            for j in range(j0, W):
                q[j] += a2[j]
        n += p


@njit(fastmath=_FAST, inline="always")
def _col_dblock(gs, xs, lo, hi, m, a1, a2):
    """Rows [lo, hi) of the 2-D C-contiguous ``gs`` (dy) and ``xs``, per column j: a1[j] =
    sum(dy), a2[j] = sum(dy * (x - m[j])), in xs's precision, strips as ``_col_block``."""
    W = xs.shape[1]
    v = 32 // xs.itemsize
    j0 = 0
    while j0 + 8 * v <= W:
        _DSTRIP8(gs, xs, lo, hi, j0, m, a1, a2)
        j0 += 8 * v
    if j0 + 4 * v <= W:
        _DSTRIP4(gs, xs, lo, hi, j0, m, a1, a2)
        j0 += 4 * v
    while j0 + v <= W:
        _DSTRIP1(gs, xs, lo, hi, j0, m, a1, a2)
        j0 += v
    if j0 < W:
        for j in range(j0, W):
            a1[j] = 0.0
            a2[j] = 0.0
        for r in range(lo, hi):
            for j in range(j0, W):
                a1[j] += gs[r, j]
                a2[j] += gs[r, j] * (xs[r, j] - m[j])


@njit(fastmath=_FAST, inline="always")
def _col_dsums(gs, xs, lo, hi, m, r_, a1, a2, s1, s2):
    """Per column over rows [lo, hi): s1[j] = sum(dy), s2[j] = sum(dy * xhat), xhat = (x -
    m[j]) * r_[j] (float64 arrays), blocks of _CBLOCK rows added in float64."""
    W = xs.shape[1]
    for j in range(W):
        s1[j] = 0.0
        s2[j] = 0.0
    for b0 in range(lo, hi, _CBLOCK):
        _col_dblock(gs, xs, b0, min(hi, b0 + _CBLOCK), m, a1, a2)
        for j in range(W):
            s1[j] += a1[j]
            s2[j] += a2[j]
    for j in range(W):
        s2[j] *= r_[j]


@njit(fastmath=_FAST, inline="always")
def _group_coefs(b, d2, cw, mean, rstd, sc):
    """sc[b, 0, j] = the group mean of column j, sc[b, 1, j] = its rstd * cw[b, j]."""
    for j in range(sc.shape[2]):
        sc[b, 0, j] = mean[b, j // d2]
        sc[b, 1, j] = rstd[b, j // d2] * cw[b, j]


@njit(fastmath=_FAST, inline="always")
def _dx_coefs(b, d2, n, centered, cw, cr, sdy, sdyx, sc):
    """From the columns' sum(dy), sum(dy * xhat) of sample b: per column sc[b, 0..2] = (r w,
    -r^2 mean(g xhat), -r mean(g)) over its group (g = dy w), dx = sc0 dy + sc1 (x - m) + sc2."""
    W = sc.shape[2]
    D1 = W // d2
    s1 = np.zeros(D1)
    s2 = np.zeros(D1)
    for j in range(W):
        s1[j // d2] += cw[b, j] * sdy[b, j]
        s2[j // d2] += cw[b, j] * sdyx[b, j]
    for j in range(W):
        g = j // d2
        r_ = cr[b, j]
        sc[b, 0, j] = r_ * cw[b, j]
        sc[b, 1, j] = -(s2[g] / n) * r_ * r_
        sc[b, 2, j] = -(s1[g] / n) * r_ if centered else 0.0


@njit(**_JIT)
def cols_fwd_chunked(x, d2, cw, cb, centered, eps, rows, nth, pm, pq, sc, y, mean, rstd, var):
    """The columns (NB, R, W) in chunks of ``rows`` rows (samples too large for one unit, or
    one sample: batch norm), W = D1 * d2 columns, group of column j: j // d2. Thread ``th``
    of ``nth`` takes the chunks [th U / nth, (th + 1) U / nth) of the U = NB * T: each
    chunk's per-column statistics in one pass (``_col_stats``, float64 into ``pm``/``pq``
    (NB, T, W)); then (one thread) the groups' by Chan's formula into mean/rstd/var (NB, D1)
    and the per-column coefficients (``sc`` (NB, 3, W) in x's dtype; ``cw``/``cb`` (NB, W)
    weight and bias); then each thread writes y over its chunks, the last read first (streamed,
    the last chunks read are still in L3: 0.78 -> 0.89 of copy_'s bandwidth at 1 thread, loaded,
    even at 2; with plain stores this order had measured ~10% slower)."""
    NB, R, W = x.shape
    D1 = W // d2
    T = pm.shape[1]
    U = NB * T
    for th in prange(nth):
        k = np.empty(W, x.dtype)
        a1 = np.empty(W, x.dtype)
        a2 = np.empty(W, x.dtype)
        for u in range(th * U // nth, (th + 1) * U // nth):
            b = u // T
            t = u % T
            lo = t * rows
            _col_stats(x[b], lo, min(R, lo + rows), centered, k, a1, a2, pm[b, t], pq[b, t])
    cm = np.empty(W)  # a column's merged mean and squared deviations
    cq = np.empty(W)
    for b in range(NB):
        # the chunks into each column, all columns at once (a chunk's count is every
        # column's): vectorized across the columns; merging column by column was a chain of
        # dependent divisions, ~0.3 ms of one thread for batch norm's 392 chunks x 64 columns
        n = 0.0
        for j in range(W):
            cm[j] = 0.0
            cq[j] = 0.0
        for t in range(T):
            p = float(min(R, (t + 1) * rows) - t * rows)
            f = p / (n + p)
            if centered:
                for j in range(W):
                    d = pm[b, t, j] - cm[j]
                    cm[j] += d * f
                    cq[j] += pq[b, t, j] + d * d * (n * f)
            else:
                for j in range(W):
                    cq[j] += pq[b, t, j]
            n += p
        for g in range(D1):  # then the group's d2 columns
            gn = 0.0
            gm = 0.0
            gq = 0.0
            for j in range(g * d2, (g + 1) * d2):
                if centered:
                    gn, gm, gq = _chan(gn, gm, gq, n, cm[j], cq[j])
                else:
                    gn, gq = gn + n, gq + cq[j]
            mean[b, g] = gm
            var[b, g] = gq / gn
            rstd[b, g] = 1.0 / np.sqrt(gq / gn + eps)
        _group_coefs(b, d2, cw, mean, rstd, sc)
    stream = _streams(y)
    for th in prange(nth):
        for u in range((th + 1) * U // nth - 1, th * U // nth - 1, -1):
            b = u // T
            lo = (u % T) * rows
            _col_out(y[b], x[b], lo, min(R, lo + rows), sc[b, 0], sc[b, 1], cb[b], stream)
        if stream:
            _fence()


@njit(**_JIT)
def cols_bwd_chunked(dy, x, d2, cw, cm, cr, centered, rows, nth, pdy, pdyx, sc, dx, sdy,
                     sdyx):
    """The backward of ``cols_fwd_chunked``, its chunks: per (b, chunk, column) sum(dy) and
    sum(dy * xhat) (float64, ``pdy``/``pdyx`` (NB, T, W)) in one pass; then (one thread) the
    columns' sums (sdy/sdyx (NB, W), float64, kept for the weight and bias gradients) and the
    coefficients of dx (``_dx_coefs``); then dx over each thread's chunks.
    cm/cr (NB, W): each column's group mean and rstd, in x's dtype."""
    NB, R, W = x.shape
    T = pdy.shape[1]
    U = NB * T
    for th in prange(nth):
        a1 = np.empty(W, x.dtype)
        a2 = np.empty(W, x.dtype)
        for u in range(th * U // nth, (th + 1) * U // nth):
            b = u // T
            t = u % T
            lo = t * rows
            _col_dsums(dy[b], x[b], lo, min(R, lo + rows), cm[b], cr[b], a1, a2, pdy[b, t],
                       pdyx[b, t])
    for b in range(NB):
        for j in range(W):
            sdy[b, j] = 0.0
            sdyx[b, j] = 0.0
        for t in range(T):
            for j in range(W):
                sdy[b, j] += pdy[b, t, j]
                sdyx[b, j] += pdyx[b, t, j]
        _dx_coefs(b, d2, R * d2, centered, cw, cr, sdy, sdyx, sc)
    stream = _streams(dx)
    for th in prange(nth):
        for u in range(th * U // nth, (th + 1) * U // nth):
            b = u // T
            lo = (u % T) * rows
            _col_dx(dx[b], dy[b], x[b], lo, min(R, lo + rows), sc[b, 0], sc[b, 1], cm[b],
                    sc[b, 2], stream)
        if stream:
            _fence()


@njit(**_JIT)
def cols_fwd_fused(x, d2, cw, cb, centered, eps, sc, y, mean, rstd, var):
    """One sample (NB, R, W) per unit, W = D1 * d2 columns, group of column j: j // d2
    (instance and group norm with the channels innermost): the columns' statistics in one
    pass (``_col_stats``), merged per group by Chan's formula, then the output, the rows
    walked back (the last read still in cache). ``cw``/``cb`` (NB, W) per-column weight
    and bias; ``sc`` (NB, 3, W) scratch in the statistics dtype; mean/rstd/var (NB, D1)."""
    NB, R, W = x.shape
    D1 = W // d2
    stream = _streams(y)
    for b in prange(NB):
        k = np.empty(W, x.dtype)
        a1 = np.empty(W, x.dtype)
        a2 = np.empty(W, x.dtype)
        m = np.empty(W)
        q = np.empty(W)
        _col_stats(x[b], 0, R, centered, k, a1, a2, m, q)
        for g in range(D1):
            n = 0.0
            gm = 0.0
            gq = 0.0
            for j in range(g * d2, (g + 1) * d2):
                if centered:
                    n, gm, gq = _chan(n, gm, gq, float(R), m[j], q[j])
                else:
                    n, gq = n + R, gq + q[j]
            mean[b, g] = gm
            var[b, g] = gq / n
            rstd[b, g] = 1.0 / np.sqrt(gq / n + eps)
        _group_coefs(b, d2, cw, mean, rstd, sc)
        _col_out(y[b], x[b], 0, R, sc[b, 0], sc[b, 1], cb[b], stream)
        if stream:
            _fence()


@njit(**_JIT)
def cols_bwd_fused(dy, x, d2, cw, cm, cr, centered, sc, dx, sdy, sdyx):
    """The backward of ``cols_fwd_fused``, one sample per unit: per column sum(dy) and
    sum(dy * xhat) in one pass (``_col_dsums``; kept in sdy/sdyx (NB, W), float64, for the
    weight and bias gradients), the group sums, then dx, the rows walked back.
    cm/cr (NB, W): each column's group mean and rstd; ``sc`` (NB, 3, W) scratch in the
    statistics dtype."""
    NB, R, W = x.shape
    n = R * d2
    stream = _streams(dx)
    for b in prange(NB):
        a1 = np.empty(W, x.dtype)
        a2 = np.empty(W, x.dtype)
        _col_dsums(dy[b], x[b], 0, R, cm[b], cr[b], a1, a2, sdy[b], sdyx[b])
        _dx_coefs(b, d2, n, centered, cw, cr, sdy, sdyx, sc)
        _col_dx(dx[b], dy[b], x[b], 0, R, sc[b, 0], sc[b, 1], cm[b], sc[b, 2], stream)
        if stream:
            _fence()


# ---- the channels: layer and RMS norm over the channel of channels-first memory ----
#
# ``(NB, R, W)``: R channels of W positions per sample (NCHW), a group per (sample, position),
# reduced over the R rows of its column; row r's weight and bias w[r], b[r] (timm's LayerNorm2d
# and RmsNorm2d; torch.nn has no kernel for it, and its composition copies the input to
# channels-last and the output back). One unit per (sample, block of ``cb`` columns): the
# block (R x cb elements, ~``TILE``) stays in cache for its passes, and the units are
# independent (no merge), so a single sample still uses every thread.

def _load(v):
    """An element of x, dy as the arithmetic's type: bfloat16 bits (uint16) widened to
    float32, float32/float64 as they are (an overload: chosen when the kernel is compiled)."""


@overload(_load, inline="always")
def _load_impl(v):
    if isinstance(v, types.Integer):
        return lambda v: _widen(v)
    return lambda v: v


def _store(z, like):
    """``z`` as the output's element type (``like``: 0 of it): bfloat16 bits rounded to
    nearest-even, else the value (the assignment converts)."""


@overload(_store, inline="always")
def _store_impl(z, like):
    if isinstance(like, types.Integer):
        return lambda z, like: _narrow(np.float32(z), like)
    return lambda z, like: z


@njit(fastmath=_FAST, inline="always")
def _col_block_bits(xs, lo, hi, j0, W, centered, k, a1, a2):
    """``_col_block`` for bfloat16 bits, row by row (the strips load vectors of the array's own
    type): each element widened to float32, the sums in float32."""
    n = W - j0
    kr = k[j0:W]
    s1 = a1[j0:W]
    s2 = a2[j0:W]
    x0 = xs[lo, j0:W]
    for j in range(n):
        kr[j] = _widen(x0[j]) if centered else 0.0
        s1[j] = 0.0
        s2[j] = 0.0
    for r in range(lo, hi):
        xr = xs[r, j0:W]
        for j in range(n):
            d = _widen(xr[j]) - kr[j]
            s1[j] += d
            s2[j] += d * d


def _block(xs, lo, hi, j0, W, centered, k, a1, a2):
    """``_col_block``, or ``_col_block_bits`` for bfloat16 bits (an overload)."""


@overload(_block, inline="always", jit_options={"fastmath": _FAST})
def _block_impl(xs, lo, hi, j0, W, centered, k, a1, a2):
    if isinstance(xs.dtype, types.Integer):
        return lambda xs, lo, hi, j0, W, centered, k, a1, a2: _col_block_bits(
            xs, lo, hi, j0, W, centered, k, a1, a2)
    return lambda xs, lo, hi, j0, W, centered, k, a1, a2: _col_block(
        xs, lo, hi, j0, W, centered, k, a1, a2)


@njit(fastmath={"nsz", "arcp"})
def _gw_minus(g, w, c):
    """g * w - c, the product rounded before the subtraction: not contracted to a fused
    multiply-add (no "contract" flag; inlined into the kernel, each instruction keeps its own
    flags), so that it is 0 when c is that rounded product (over one channel dx is exactly 0,
    not the product's rounding error times rstd = 1 / sqrt(eps))."""
    return g * w - c


@njit(inline="always")
def _chan_unit(u, nblk, cb, W):
    """Unit ``u`` of the channels: (its sample, its first column, the column after its last),
    ``nblk`` units of ``cb`` columns per sample."""
    j0 = (u % nblk) * cb
    return u // nblk, j0, min(W, j0 + cb)


@njit(**_JIT)
def chan_fwd(x, w, b, centered, eps, cb, oz, y, mean, rstd, var):
    """x, y (NB, R, W): float32, float64, or bfloat16 as its bits (uint16; computed in
    float32); w, b (R,), mean, rstd, var (NB, W) in the statistics' dtype (mean 0 when not
    ``centered``); ``cb`` columns per unit; ``oz``: 0 in y's element type. Per unit the block's
    per-column statistics (``_col_stats`` over its columns: a shifted pass per _CBLOCK rows,
    merged by Chan's formula), then y = ((x - m) * rstd) * w[r] + b[r], the rows walked
    back."""
    NB, R, W = x.shape
    nblk = (W + cb - 1) // cb
    for u in prange(NB * nblk):
        bi, j0, j1 = _chan_unit(u, nblk, cb, W)
        n = j1 - j0
        xs = x[bi]
        ys = y[bi]
        k = np.empty(W, mean.dtype)  # the columns' scratch is indexed from column 0
        a1 = np.empty(W, mean.dtype)
        a2 = np.empty(W, mean.dtype)
        m = np.empty(W)
        q = np.empty(W)
        _col_stats(xs, 0, R, centered, k, a1, a2, m, q, j0, j1)
        mm = np.empty(n, mean.dtype)
        rr = np.empty(n, mean.dtype)
        for j in range(n):
            v = q[j0 + j] / R
            r_ = 1.0 / np.sqrt(v + eps)
            mean[bi, j0 + j] = m[j0 + j]
            var[bi, j0 + j] = v
            rstd[bi, j0 + j] = r_
            mm[j] = m[j0 + j]
            rr[j] = r_
        for r in range(R - 1, -1, -1):
            wr = w[r]
            br = b[r]
            yr = ys[r, j0:j1]  # row slices (see chan_bwd)
            xr = xs[r, j0:j1]
            for j in range(n):
                yr[j] = _store(((_load(xr[j]) - mm[j]) * rr[j]) * wr + br, oz)


@njit(**_JIT)
def chan_bwd(dy, x, w, mean, rstd, centered, zero, cb, oz, dx, dwp, dbp):
    """The backward of ``chan_fwd``: per unit, per column sum(g) and sum(g * xhat) over the
    rows (g = dy * w[r], blocks of _CBLOCK rows in the statistics' precision added in
    float64) and per row sum(dy * xhat), sum(dy) over the block's columns (into
    ``dwp``/``dbp`` (units, R), float64: the caller adds the units, in order; ``zero``: 0 in
    the statistics' dtype, ``oz`` in dx's element type; dtypes as ``chan_fwd``); then
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) (no mean(g) when not ``centered``), the
    rows walked back."""
    NB, R, W = x.shape
    nblk = (W + cb - 1) // cb
    for u in prange(NB * nblk):
        bi, j0, j1 = _chan_unit(u, nblk, cb, W)
        n = j1 - j0
        xs = x[bi]
        gs = dy[bi]
        ds = dx[bi]
        m = mean[bi, j0:j1]
        rs = rstd[bi, j0:j1]
        a1 = np.empty(n, mean.dtype)
        a2 = np.empty(n, mean.dtype)
        s1 = np.zeros(n)
        s2 = np.zeros(n)
        for r0 in range(0, R, _CBLOCK):
            for j in range(n):
                a1[j] = 0.0
                a2[j] = 0.0
            for r in range(r0, min(R, r0 + _CBLOCK)):
                wr = w[r]
                gr = gs[r, j0:j1]  # row slices: indexed from 0, the loops vectorize (with
                xr = xs[r, j0:j1]  # xs[r, j0 + j] they ran 1.5x slower)
                t1 = zero
                t2 = zero
                for j in range(n):
                    g = _load(gr[j])
                    xh = (_load(xr[j]) - m[j]) * rs[j]
                    a1[j] += g * wr
                    a2[j] += (g * wr) * xh
                    t1 += g * xh
                    t2 += g
                dwp[u, r] = t1
                dbp[u, r] = t2
            for j in range(n):
                s1[j] += a1[j]
                s2[j] += a2[j]
        c1 = np.empty(n, mean.dtype)
        c2 = np.empty(n, mean.dtype)
        for j in range(n):
            c1[j] = s1[j] / R if centered else 0.0
            c2[j] = s2[j] / R
        for r in range(R - 1, -1, -1):
            wr = w[r]
            dr = ds[r, j0:j1]
            gr = gs[r, j0:j1]
            xr = xs[r, j0:j1]
            for j in range(n):
                xh = (_load(xr[j]) - m[j]) * rs[j]
                dr[j] = _store(rs[j] * (_gw_minus(_load(gr[j]), wr, c1[j]) - xh * c2[j]), oz)


# ---- the serial twins (module doc): the same source compiled without parallel=True ----

def _serial_twin(kernel):
    """``kernel``'s Python function compiled without ``parallel=True``, under its own name
    (``<name>_serial``: numba's disk cache is named after the function, so the twins do not
    share cache files with the parallel kernels)."""
    f = kernel.py_func
    twin = FunctionType(f.__code__, f.__globals__, f"{f.__name__}_serial",
                              f.__defaults__, f.__closure__)
    twin.__qualname__ = f"{f.__qualname__}_serial"
    twin.__doc__ = f.__doc__
    return njit(**_JIT_SERIAL)(twin)


SERIAL = SimpleNamespace(**{name: _serial_twin(globals()[name])
                                  for name in __all__ if name != "SERIAL"})
