"""Triton kernels for every normalization kind: the two families of DESIGN.md.

Every (kind, layout) is described by a 4-D view of the input's *memory* (dense, in this
order): ``(NB, D0, D1, D2)``. A statistics group is one ``(b, d1)``; it is reduced over
``(d0, d2)``. The host op (``normlab.ops.triton_op``) computes the view; for example

=====================================  =======================  ======================
kind / memory layout                    view (NB, D0, D1, D2)    family
=====================================  =======================  ======================
layer, rms over the last L elements     (M, 1, 1, L)             row
instance, channels first (N, C, P)      (N*C, 1, 1, P)           row
group, channels first (N, C, P)         (N*G, C/G, 1, P)         row
group, channels last (N, P, C)          (N, P, G, C/G)           row
batch, channels first (N, C, P)         (1, N, C, P)             row
batch, channels last (N*P, C)           (1, N*P, C, 1)           column
instance, channels last (N, P, C)       (N, P, C, 1)             column
=====================================  =======================  ======================

* **row**: one program per group; the group is a [D0 x D2] tile stream (D2 contiguous).
* **column** (D2 == 1): one program per sample and block of BLOCK_C adjacent groups; each
  row of the tile is BLOCK_C contiguous elements, one per group (coalesced).

Three paths, chosen by size (``_plan``):

* one tile (MODE 0, SINGLE): the whole group is loaded once and kept in registers: the
  minimal traffic (forward: read x, write y; backward: read x and dy, write dx);
* looped (MODE 0): one program per group streams it in tiles (no cap on the group size);
* split (MODE 1 then MODE 2): when the groups are too few to fill the device (batch norm:
  C groups of N x positions elements), the D0 rows of every group are split over S programs
  that write partial sums (MODE 1); the launcher merges them (Chan's formula for the
  variance, float32/float64 arithmetic on S x groups numbers) and S programs per group write
  the output (MODE 2).

The affine parameters are indexed per element by ``(b % MOD_B) * SB + d0 * S0 + d1 * S1 +
d2 * S2`` (layer norm: d2; batch norm: d1; instance norm channels first: b % C; group norm
channels first: (b % G) * C/G + d0; ...), so no layout is copied. Statistics and all sums are
float32 (float64 for float64 input); offsets are 64-bit (inputs above 2^31 elements index
correctly). Streaming paths read the group three times in forward (mean, centred second
moment, write) and twice in backward (sums, write): numerically the reference's two-pass
variance.

Backward, with ``dz = dy * act'(z)`` (z the pre-activation), ``g = dz * gamma`` and means
over the group:  ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))`` (rms: no ``mean(g)``
term); ``dgamma = sum dz * xhat``, ``dbeta = sum dz`` over every element of a channel, added
with float32 atomics, one per program and parameter (never two lanes on one address);
``dresidual = dz``.

Device code only: no autograd; the launchers allocate and merge the split paths' partial
sums.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from normlab.reference import stat_dtype
from normlab.spec import ACTIVATIONS as _NAMES

__all__ = ["ACTIVATIONS", "backward", "forward"]

# the ACT numbers of _act below: 1, 2, 3 in normlab.spec.ACTIVATIONS' order (relu, gelu, silu)
ACTIVATIONS = {None: 0, **{a: i + 1 for i, a in enumerate(_NAMES)}}
ROW, COLUMN = 0, 1
_TILE = 4096  # elements per tile in the row family
_INV_SQRT2 = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


@triton.jit
def _act(z, ACT: tl.constexpr):
    if ACT == 1:
        return tl.maximum(z, 0.0)
    elif ACT == 2:  # exact (erf) GELU
        return 0.5 * z * (1.0 + tl.math.erf(z * _INV_SQRT2))
    elif ACT == 3:
        return z * tl.sigmoid(z)
    else:
        return z


@triton.jit
def _act_grad(z, ACT: tl.constexpr):
    if ACT == 1:
        return tl.where(z > 0.0, 1.0, 0.0)
    elif ACT == 2:
        return 0.5 * (1.0 + tl.math.erf(z * _INV_SQRT2)) + z * tl.exp(-0.5 * z * z) * _INV_SQRT_2PI
    elif ACT == 3:
        s = tl.sigmoid(z)
        return s * (1.0 + z * (1.0 - s))
    else:
        return tl.full(z.shape, 1.0, z.dtype)


@triton.jit
def _row_program(D0, D1, D2, RS, MOD_B, SB, S1, MB_DIV, MB_MUL):
    """This row program's group (b, d1) and rows [r_lo, r_hi): its id, split, the number of
    groups, the group's base offset and row stride, and the affine and mask index bases."""
    pid = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    groups = tl.num_programs(0).to(tl.int64)
    b = pid // D1
    d1 = pid % D1
    r_lo = split * RS
    r_hi = tl.minimum(r_lo + RS, D0)
    return (pid, split, groups, b * D0 * D1 * D2 + d1 * D2, D1 * D2, r_lo, r_hi,
            (b % MOD_B) * SB + d1 * S1, (b // MB_DIV) * MB_MUL)


@triton.jit
def _col_program(D0, D1, RS, MB_DIV, MB_MUL, BLOCK_C: tl.constexpr):
    """This column program's sample b, its BLOCK_C groups (columns) and rows [r_lo, r_hi): the
    split, the columns and their bound, base offset, rows, statistics and mask index bases, and
    the stride of one split's row of partial sums."""
    pid = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    nblk = tl.cdiv(D1, BLOCK_C)
    b = pid // nblk
    col = (pid % nblk) * BLOCK_C + tl.arange(0, BLOCK_C)
    r_lo = split * RS
    r_hi = tl.minimum(r_lo + RS, D0)
    pstride = (tl.num_programs(0).to(tl.int64) // nblk) * D1
    return (split, col, col < D1, b * D0 * D1, r_lo, r_hi, b * D1 + col,
            (b // MB_DIV) * MB_MUL, pstride)


@triton.jit
def _row_fwd(
    X,  # input memory, viewed (NB, D0, D1, D2)
    Y,  # output, same layout as X
    W, B,  # affine (indexed as in the module docstring) or dummies
    R,  # residual, same layout as X, or a dummy
    MEAN, RSTD,  # (NB * D1,): group (b, d1) at b * D1 + d1; read in MODE 2
    PSUM, PM2, PCNT,  # (S, NB * D1) partial sums, centred second moments, counts (MODE 1)
    MASK, CNT,  # padding mask (uint8, 1 = real) or a dummy; (NB * D1,) real elements per group
    D0, D1, D2, RS, MOD_B, SB, S0, S1, S2, MB_DIV, MB_MUL, M0, M2, eps,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_R: tl.constexpr, HAS_M: tl.constexpr,
    CENTERED: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr, MODE: tl.constexpr,
    SINGLE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid, split, groups, base, rstride, r_lo, r_hi, wbase, mbase = _row_program(
        D0, D1, D2, RS, MOD_B, SB, S1, MB_DIV, MB_MUL)
    rows = tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    if SINGLE:  # the whole group in one tile, loaded once
        r = rows.to(tl.int64)
        c = cols
        m = _real(MASK, (r[:, None] < D0) & (c[None, :] < D2),
                  mbase + r[:, None] * M0 + c[None, :] * M2, HAS_M)
        off = base + r[:, None] * rstride + c[None, :]
        x = tl.load(X + off, mask=m, other=0.0).to(ACC)
        n = (D0 * D2).to(ACC)
        if HAS_M:
            n = tl.sum(tl.sum(m.to(ACC), axis=1), axis=0)
        tl.store(CNT + pid, n)
        n = tl.maximum(n, 1.0)
        mean = 0.0
        if CENTERED:
            mean = tl.sum(tl.sum(x, axis=1), axis=0) / n
        xc = tl.where(m, x - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(xc * xc, axis=1), axis=0) / n + eps)
        tl.store(MEAN + pid, mean)
        tl.store(RSTD + pid, rstd)
        z = xc * rstd
        widx = wbase + r[:, None] * S0 + c[None, :] * S2
        if HAS_W:
            z = z * tl.load(W + widx, mask=m, other=0.0).to(ACC)
        if HAS_B:
            z = z + tl.load(B + widx, mask=m, other=0.0).to(ACC)
        if HAS_R:
            z = z + tl.load(R + off, mask=m, other=0.0).to(ACC)
        tl.store(Y + off, tl.where(m, _act(z, ACT), 0.0).to(Y.dtype.element_ty),
                 mask=(r[:, None] < D0) & (c[None, :] < D2))
    else:
        if MODE == 2:
            mean = tl.load(MEAN + pid)
            rstd = tl.load(RSTD + pid)
        else:
            n = ((r_hi - r_lo) * D2).to(ACC)
            if HAS_M:
                accn = tl.zeros([BLOCK_R, BLOCK_C], ACC)
                for r0 in range(r_lo, r_hi, BLOCK_R):
                    r = r0 + rows
                    for c0 in range(0, D2, BLOCK_C):
                        c = c0 + cols
                        m = _real(MASK, (r[:, None] < r_hi) & (c[None, :] < D2),
                                  mbase + r[:, None] * M0 + c[None, :] * M2, HAS_M)
                        accn += m.to(ACC)
                n = tl.sum(tl.sum(accn, axis=1), axis=0)
            if MODE == 1:
                tl.store(PCNT + split * groups + pid, n)
            else:
                tl.store(CNT + pid, n)
            n = tl.maximum(n, 1.0)
            mean = 0.0
            if CENTERED:
                acc = tl.zeros([BLOCK_R, BLOCK_C], ACC)
                for r0 in range(r_lo, r_hi, BLOCK_R):
                    r = r0 + rows
                    for c0 in range(0, D2, BLOCK_C):
                        c = c0 + cols
                        m = _real(MASK, (r[:, None] < r_hi) & (c[None, :] < D2),
                                  mbase + r[:, None] * M0 + c[None, :] * M2, HAS_M)
                        off = base + r[:, None] * rstride + c[None, :]
                        acc += tl.load(X + off, mask=m, other=0.0).to(ACC)
                mean = tl.sum(tl.sum(acc, axis=1), axis=0) / n
            acc2 = tl.zeros([BLOCK_R, BLOCK_C], ACC)
            for r0 in range(r_lo, r_hi, BLOCK_R):
                r = r0 + rows
                for c0 in range(0, D2, BLOCK_C):
                    c = c0 + cols
                    m = _real(MASK, (r[:, None] < r_hi) & (c[None, :] < D2),
                              mbase + r[:, None] * M0 + c[None, :] * M2, HAS_M)
                    off = base + r[:, None] * rstride + c[None, :]
                    xc = tl.where(m, tl.load(X + off, mask=m, other=0.0).to(ACC) - mean, 0.0)
                    acc2 += xc * xc
            m2 = tl.sum(tl.sum(acc2, axis=1), axis=0)
            if MODE == 1:
                tl.store(PSUM + split * groups + pid, mean * n)
                tl.store(PM2 + split * groups + pid, m2)
            rstd = 1.0 / tl.sqrt(m2 / n + eps)
            if MODE == 0:
                tl.store(MEAN + pid, mean)
                tl.store(RSTD + pid, rstd)
        if MODE != 1:
            for r0 in range(r_lo, r_hi, BLOCK_R):
                r = r0 + rows
                for c0 in range(0, D2, BLOCK_C):
                    c = c0 + cols
                    inside = (r[:, None] < r_hi) & (c[None, :] < D2)
                    m = _real(MASK, inside, mbase + r[:, None] * M0 + c[None, :] * M2, HAS_M)
                    off = base + r[:, None] * rstride + c[None, :]
                    z = (tl.load(X + off, mask=m, other=0.0).to(ACC) - mean) * rstd
                    widx = wbase + r[:, None] * S0 + c[None, :] * S2
                    if HAS_W:
                        z = z * tl.load(W + widx, mask=m, other=0.0).to(ACC)
                    if HAS_B:
                        z = z + tl.load(B + widx, mask=m, other=0.0).to(ACC)
                    if HAS_R:
                        z = z + tl.load(R + off, mask=m, other=0.0).to(ACC)
                    tl.store(Y + off, tl.where(m, _act(z, ACT), 0.0).to(Y.dtype.element_ty),
                             mask=inside)


@triton.jit
def _real(MASK, inside, midx, HAS_M: tl.constexpr):
    """The tile's elements that are inside the group and, with a padding mask, real."""
    if HAS_M:
        return inside & (tl.load(MASK + midx, mask=inside, other=0) != 0)
    else:
        return inside


@triton.jit
def _row_grad_tile(X, DY, DR, W, B, R, DW, DB, off, widx, m, inside, r, c, r_hi, D2, S0, S2,
                   wbase,
                   mean, rstd, HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_R: tl.constexpr,
                   ACT: tl.constexpr, ACC: tl.constexpr, WRED: tl.constexpr,
                   NEED_DW: tl.constexpr, NEED_DB: tl.constexpr, BLOCK_R: tl.constexpr,
                   BLOCK_C: tl.constexpr, STORE_DR: tl.constexpr):
    """One tile's xhat, dz = dy * act'(z) and g = dz * w; stores dresidual and adds the tile's
    dgamma/dbeta (WRED 0/1: per column/row of the tile; 2: returned for the caller to sum)."""
    xhat = tl.where(m, (tl.load(X + off, mask=m, other=0.0).to(ACC) - mean) * rstd, 0.0)
    dz = tl.load(DY + off, mask=m, other=0.0).to(ACC)
    w = tl.full([BLOCK_R, BLOCK_C], 1.0, ACC)
    if HAS_W:
        w = tl.load(W + widx, mask=m, other=0.0).to(ACC)
    if ACT != 0:
        z = xhat * w
        if HAS_B:
            z = z + tl.load(B + widx, mask=m, other=0.0).to(ACC)
        if HAS_R:
            z = z + tl.load(R + off, mask=m, other=0.0).to(ACC)
        dz = dz * _act_grad(z, ACT)
    if STORE_DR:  # zero at padding (dz was loaded as 0 there)
        tl.store(DR + off, dz.to(DR.dtype.element_ty), mask=inside)
    if WRED == 0:
        if NEED_DW:
            tl.atomic_add(DW + wbase + c * S2, tl.sum(dz * xhat, axis=0), mask=c < D2)
        if NEED_DB:
            tl.atomic_add(DB + wbase + c * S2, tl.sum(dz, axis=0), mask=c < D2)
    elif WRED == 1:
        if NEED_DW:
            tl.atomic_add(DW + wbase + r * S0, tl.sum(dz * xhat, axis=1), mask=r < r_hi)
        if NEED_DB:
            tl.atomic_add(DB + wbase + r * S0, tl.sum(dz, axis=1), mask=r < r_hi)
    return xhat, dz, w


@triton.jit
def _row_bwd(
    X, DY,  # input and output gradient, viewed (NB, D0, D1, D2)
    DX, DR,  # input and residual gradients (same layout), DR a dummy without residual
    W, B, R,  # as in the forward (needed to recompute z when there is an activation)
    MEAN, RSTD,  # (NB * D1,)
    DW, DB,  # accumulators shaped like the affine parameters (ACC dtype)
    PG, PGX,  # (S, NB * D1): partial sums of g and g * xhat (MODE 1; MODE 2 reads row 0)
    MASK, CNT,  # padding mask or a dummy; (NB * D1,) real elements per group (from forward)
    D0, D1, D2, RS, MOD_B, SB, S0, S1, S2, MB_DIV, MB_MUL, M0, M2,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_R: tl.constexpr, HAS_M: tl.constexpr,
    CENTERED: tl.constexpr, ACT: tl.constexpr, WRED: tl.constexpr, NEED_DW: tl.constexpr,
    NEED_DB: tl.constexpr, ACC: tl.constexpr, MODE: tl.constexpr, SINGLE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # WRED says which tile axis the affine index does not depend on: 0 -> it depends on the
    # column only (sum the tile's rows), 1 -> on the row only (sum its columns), 2 -> neither
    # (one scalar per program, summed over its tiles).
    pid, split, groups, base, rstride, r_lo, r_hi, wbase, mbase = _row_program(
        D0, D1, D2, RS, MOD_B, SB, S1, MB_DIV, MB_MUL)
    rows = tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    n = tl.maximum(tl.load(CNT + pid), 1.0)
    mean = tl.load(MEAN + pid)
    rstd = tl.load(RSTD + pid)
    if SINGLE:
        r = rows.to(tl.int64)
        c = cols
        inside = (r[:, None] < D0) & (c[None, :] < D2)
        m = _real(MASK, inside, mbase + r[:, None] * M0 + c[None, :] * M2, HAS_M)
        off = base + r[:, None] * rstride + c[None, :]
        widx = wbase + r[:, None] * S0 + c[None, :] * S2
        xhat, dz, w = _row_grad_tile(X, DY, DR, W, B, R, DW, DB, off, widx, m, inside, r, c,
                                     D0, D2, S0, S2, wbase, mean, rstd, HAS_W, HAS_B, HAS_R,
                                     ACT, ACC, WRED, NEED_DW, NEED_DB, BLOCK_R, BLOCK_C, HAS_R)
        if WRED == 2:
            if NEED_DW:
                tl.atomic_add(DW + wbase, tl.sum(tl.sum(dz * xhat, axis=1), axis=0))
            if NEED_DB:
                tl.atomic_add(DB + wbase, tl.sum(tl.sum(dz, axis=1), axis=0))
        g = dz * w
        mg = tl.sum(tl.sum(g, axis=1), axis=0) / n
        mgx = tl.sum(tl.sum(g * xhat, axis=1), axis=0) / n
        if not CENTERED:
            mg = 0.0
        dx = tl.where(m, rstd * (g - mg - xhat * mgx), 0.0)
        tl.store(DX + off, dx.to(DX.dtype.element_ty), mask=inside)
    else:
        if MODE == 2:
            mg = tl.load(PG + pid) / n
            mgx = tl.load(PGX + pid) / n
        else:
            acc_g = tl.zeros([BLOCK_R, BLOCK_C], ACC)
            acc_gx = tl.zeros([BLOCK_R, BLOCK_C], ACC)
            sdw = tl.zeros([BLOCK_R, BLOCK_C], ACC)
            sdb = tl.zeros([BLOCK_R, BLOCK_C], ACC)
            for r0 in range(r_lo, r_hi, BLOCK_R):
                r = r0 + rows
                for c0 in range(0, D2, BLOCK_C):
                    c = c0 + cols
                    inside = (r[:, None] < r_hi) & (c[None, :] < D2)
                    m = _real(MASK, inside, mbase + r[:, None] * M0 + c[None, :] * M2, HAS_M)
                    off = base + r[:, None] * rstride + c[None, :]
                    widx = wbase + r[:, None] * S0 + c[None, :] * S2
                    xhat, dz, w = _row_grad_tile(
                        X, DY, DR, W, B, R, DW, DB, off, widx, m, inside, r, c, r_hi, D2, S0,
                        S2, wbase, mean, rstd, HAS_W, HAS_B, HAS_R, ACT, ACC, WRED, NEED_DW,
                        NEED_DB, BLOCK_R, BLOCK_C, HAS_R)
                    g = dz * w
                    acc_g += g
                    acc_gx += g * xhat
                    if WRED == 2:
                        sdw += dz * xhat
                        sdb += dz
            if WRED == 2:
                if NEED_DW:
                    tl.atomic_add(DW + wbase, tl.sum(tl.sum(sdw, axis=1), axis=0))
                if NEED_DB:
                    tl.atomic_add(DB + wbase, tl.sum(tl.sum(sdb, axis=1), axis=0))
            sg = tl.sum(tl.sum(acc_g, axis=1), axis=0)
            sgx = tl.sum(tl.sum(acc_gx, axis=1), axis=0)
            if MODE == 1:
                tl.store(PG + split * groups + pid, sg)
                tl.store(PGX + split * groups + pid, sgx)
            mg = sg / n
            mgx = sgx / n
        if not CENTERED:
            mg = 0.0
        if MODE != 1:
            for r0 in range(r_lo, r_hi, BLOCK_R):
                r = r0 + rows
                for c0 in range(0, D2, BLOCK_C):
                    c = c0 + cols
                    inside = (r[:, None] < r_hi) & (c[None, :] < D2)
                    m = _real(MASK, inside, mbase + r[:, None] * M0 + c[None, :] * M2, HAS_M)
                    off = base + r[:, None] * rstride + c[None, :]
                    widx = wbase + r[:, None] * S0 + c[None, :] * S2
                    xhat, dz, w = _row_grad_tile(
                        X, DY, DR, W, B, R, DW, DB, off, widx, m, inside, r, c, r_hi, D2, S0,
                        S2, wbase, mean, rstd, HAS_W, HAS_B, HAS_R, ACT, ACC, 3, False, False,
                        BLOCK_R, BLOCK_C, False)
                    dx = tl.where(m, rstd * (dz * w - mg - xhat * mgx), 0.0)
                    tl.store(DX + off, dx.to(DX.dtype.element_ty), mask=inside)


@triton.jit
def _col_fwd(
    X, Y,  # (NB, D0, D1) in memory (D2 == 1): group (b, d1) is a strided column
    W, B, R,  # affine per d1 (channel), residual like X
    MEAN, RSTD,  # (NB * D1,)
    PSUM, PM2, PCNT,  # (S, NB * D1) partials (MODE 1)
    MASK, CNT,  # padding mask or a dummy; (NB * D1,) real elements per group
    D0, D1, RS, MB_DIV, MB_MUL, M0, eps,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_R: tl.constexpr, HAS_M: tl.constexpr,
    CENTERED: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr, MODE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    split, col, cm, base, r_lo, r_hi, sidx, mbase, pstride = _col_program(
        D0, D1, RS, MB_DIV, MB_MUL, BLOCK_C)
    rows = tl.arange(0, BLOCK_R)
    if MODE == 2:
        mean = tl.load(MEAN + sidx, mask=cm, other=0.0)
        rstd = tl.load(RSTD + sidx, mask=cm, other=0.0)
    else:
        accn = tl.zeros([BLOCK_R, BLOCK_C], ACC)
        acc = tl.zeros([BLOCK_R, BLOCK_C], ACC)
        for r0 in range(r_lo, r_hi, BLOCK_R):
            r = r0 + rows
            m = _real(MASK, (r[:, None] < r_hi) & cm[None, :],
                      mbase + r[:, None] * M0 + col[None, :] * 0, HAS_M)
            accn += m.to(ACC)
            if CENTERED:
                acc += tl.load(X + base + r[:, None] * D1 + col[None, :], mask=m,
                               other=0.0).to(ACC)
        n = tl.sum(accn, axis=0)
        if MODE == 1:
            tl.store(PCNT + split * pstride + sidx, n, mask=cm)
        else:
            tl.store(CNT + sidx, n, mask=cm)
        n = tl.maximum(n, 1.0)
        mean = tl.sum(acc, axis=0) / n
        acc2 = tl.zeros([BLOCK_R, BLOCK_C], ACC)
        for r0 in range(r_lo, r_hi, BLOCK_R):
            r = r0 + rows
            m = _real(MASK, (r[:, None] < r_hi) & cm[None, :],
                      mbase + r[:, None] * M0 + col[None, :] * 0, HAS_M)
            x = tl.load(X + base + r[:, None] * D1 + col[None, :], mask=m, other=0.0)
            xc = tl.where(m, x.to(ACC) - mean[None, :], 0.0)
            acc2 += xc * xc
        m2 = tl.sum(acc2, axis=0)
        if MODE == 1:
            tl.store(PSUM + split * pstride + sidx, mean * n, mask=cm)
            tl.store(PM2 + split * pstride + sidx, m2, mask=cm)
        rstd = 1.0 / tl.sqrt(m2 / n + eps)
        if MODE == 0:
            tl.store(MEAN + sidx, mean, mask=cm)
            tl.store(RSTD + sidx, rstd, mask=cm)
    if MODE != 1:
        w = tl.full([BLOCK_C], 1.0, ACC)
        bias = tl.zeros([BLOCK_C], ACC)
        if HAS_W:
            w = tl.load(W + col, mask=cm, other=0.0).to(ACC)
        if HAS_B:
            bias = tl.load(B + col, mask=cm, other=0.0).to(ACC)
        for r0 in range(r_lo, r_hi, BLOCK_R):
            r = r0 + rows
            inside = (r[:, None] < r_hi) & cm[None, :]
            m = _real(MASK, inside, mbase + r[:, None] * M0 + col[None, :] * 0, HAS_M)
            off = base + r[:, None] * D1 + col[None, :]
            x = tl.load(X + off, mask=m, other=0.0).to(ACC)
            z = (x - mean[None, :]) * (rstd * w)[None, :] + bias[None, :]
            if HAS_R:
                z = z + tl.load(R + off, mask=m, other=0.0).to(ACC)
            tl.store(Y + off, tl.where(m, _act(z, ACT), 0.0).to(Y.dtype.element_ty),
                     mask=inside)


@triton.jit
def _col_grad_tile(X, DY, R, off, m, mean, rstd, w, bias, HAS_R: tl.constexpr,
                   ACT: tl.constexpr, ACC: tl.constexpr):
    """One column tile's xhat and dz = dy * act'(z), both zero outside the real elements."""
    xhat = tl.where(m, (tl.load(X + off, mask=m, other=0.0).to(ACC) - mean[None, :])
                    * rstd[None, :], 0.0)
    dz = tl.load(DY + off, mask=m, other=0.0).to(ACC)
    if ACT != 0:
        z = xhat * w[None, :] + bias[None, :]
        if HAS_R:
            z = z + tl.load(R + off, mask=m, other=0.0).to(ACC)
        dz = dz * _act_grad(z, ACT)
    return xhat, dz


@triton.jit
def _col_bwd(
    X, DY, DX, DR,  # (NB, D0, D1) in memory
    W, B, R,
    MEAN, RSTD,  # (NB * D1,)
    DW, DB,  # (D1,) accumulators
    PG, PGX,  # (S, NB * D1): partial sums of dz and dz * xhat (MODE 1; MODE 2 reads row 0)
    MASK, CNT,  # padding mask or a dummy; (NB * D1,) real elements per group
    D0, D1, RS, MB_DIV, MB_MUL, M0,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_R: tl.constexpr, HAS_M: tl.constexpr,
    CENTERED: tl.constexpr, ACT: tl.constexpr, NEED_DW: tl.constexpr, NEED_DB: tl.constexpr,
    ACC: tl.constexpr, MODE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    split, col, cm, base, r_lo, r_hi, sidx, mbase, pstride = _col_program(
        D0, D1, RS, MB_DIV, MB_MUL, BLOCK_C)
    rows = tl.arange(0, BLOCK_R)
    n = tl.maximum(tl.load(CNT + sidx, mask=cm, other=1.0), 1.0)
    mean = tl.load(MEAN + sidx, mask=cm, other=0.0)
    rstd = tl.load(RSTD + sidx, mask=cm, other=0.0)
    w = tl.full([BLOCK_C], 1.0, ACC)
    bias = tl.zeros([BLOCK_C], ACC)
    if HAS_W:
        w = tl.load(W + col, mask=cm, other=0.0).to(ACC)
    if HAS_B:
        bias = tl.load(B + col, mask=cm, other=0.0).to(ACC)
    if MODE == 2:
        s_dz = tl.load(PG + sidx, mask=cm, other=0.0)
        s_dzx = tl.load(PGX + sidx, mask=cm, other=0.0)
    else:
        acc_dz = tl.zeros([BLOCK_R, BLOCK_C], ACC)
        acc_dzx = tl.zeros([BLOCK_R, BLOCK_C], ACC)
        for r0 in range(r_lo, r_hi, BLOCK_R):
            r = r0 + rows
            inside = (r[:, None] < r_hi) & cm[None, :]
            m = _real(MASK, inside, mbase + r[:, None] * M0 + col[None, :] * 0, HAS_M)
            off = base + r[:, None] * D1 + col[None, :]
            xhat, dz = _col_grad_tile(X, DY, R, off, m, mean, rstd, w, bias, HAS_R, ACT, ACC)
            if HAS_R:  # zero at padding (dz was loaded as 0 there)
                tl.store(DR + off, dz.to(DR.dtype.element_ty), mask=inside)
            acc_dz += dz
            acc_dzx += dz * xhat
        s_dz = tl.sum(acc_dz, axis=0)  # per column: sum dz, and sum dz * xhat
        s_dzx = tl.sum(acc_dzx, axis=0)
        if NEED_DW:
            tl.atomic_add(DW + col, s_dzx, mask=cm)
        if NEED_DB:
            tl.atomic_add(DB + col, s_dz, mask=cm)
        if MODE == 1:
            tl.store(PG + split * pstride + sidx, s_dz, mask=cm)
            tl.store(PGX + split * pstride + sidx, s_dzx, mask=cm)
    if MODE != 1:
        # the weight is constant over a column's group: mean(g) = w mean(dz), etc.
        mg = w * s_dz / n
        mgx = w * s_dzx / n
        if not CENTERED:
            mg = tl.zeros([BLOCK_C], ACC)
        for r0 in range(r_lo, r_hi, BLOCK_R):
            r = r0 + rows
            inside = (r[:, None] < r_hi) & cm[None, :]
            m = _real(MASK, inside, mbase + r[:, None] * M0 + col[None, :] * 0, HAS_M)
            off = base + r[:, None] * D1 + col[None, :]
            xhat, dz = _col_grad_tile(X, DY, R, off, m, mean, rstd, w, bias, HAS_R, ACT, ACC)
            dx = tl.where(m, rstd[None, :] * (dz * w[None, :] - mg[None, :]
                                              - xhat * mgx[None, :]), 0.0)
            tl.store(DX + off, dx.to(DX.dtype.element_ty), mask=inside)


def _acc(x: torch.Tensor) -> torch.dtype:
    """Statistics and sums: the dtype of ``normlab.spec.STAT_DTYPES``' rule."""
    return stat_dtype(x.dtype)


def _tl_acc(x: torch.Tensor):
    return tl.float64 if _acc(x) == torch.float64 else tl.float32


def _pow2(n: int, cap: int) -> int:
    return max(1, min(triton.next_power_of_2(max(int(n), 1)), cap))


# Tile size (elements) and the number of programs that fills a device several times over;
# tests shrink _TILE to drive the looped and split paths on small shapes.
_TILE = 4096
_TARGET_PROGRAMS = 1024


def _plan(family: int, d0: int, d1: int, d2: int, nb: int):
    """-> (BLOCK_R, BLOCK_C, single, splits, rows per split) for one launch."""
    if family == ROW:
        bc = _pow2(d2, _TILE)
        br = _pow2(d0, max(1, _TILE // bc))
        programs = nb * d1
    else:
        bc = _pow2(d1, 64)
        br = _pow2(d0, max(1, _TILE // bc))
        programs = nb * triton.cdiv(d1, bc)
    single = family == ROW and d0 <= br and d2 <= bc
    splits = 1
    if not single and programs < _TARGET_PROGRAMS and d0 > 2 * br:
        splits = min(triton.cdiv(_TARGET_PROGRAMS, programs), triton.cdiv(d0, br))
    rows = triton.cdiv(triton.cdiv(d0, splits), br) * br  # whole tiles per split
    return br, bc, single, triton.cdiv(d0, rows), rows


# allocation of every buffer a kernel writes in full (tests replace these to poison outputs)
_empty_like = torch.empty_like
_empty = torch.empty


def _grid(family, nb, d1, bc, splits):
    return (nb * d1 if family == ROW else nb * triton.cdiv(d1, bc), splits)


def forward(x, weight, bias, residual, mask, *, family, dims, affine, mask_index, centered,
            eps, activation):
    """-> (y, mean, rstd, count). ``x`` (and ``residual``) dense in the order of ``dims`` =
    (NB, D0, D1, D2); ``affine`` = (MOD_B, SB, S0, S1, S2); ``mask`` (uint8, 1 = real) or None,
    indexed by ``mask_index`` = (MB_DIV, MB_MUL, M0, M2): ``(b // MB_DIV) * MB_MUL + d0 * M0 +
    d2 * M2``; y has x's strides, zero at padding; count = real elements per group."""
    nb, d0, d1, d2 = (int(v) for v in dims)
    y = _empty_like(x)
    acc = _acc(x)
    mean = _empty(nb * d1, dtype=acc, device=x.device)
    rstd = _empty_like(mean)
    cnt = _empty_like(mean)
    if x.numel() == 0:
        return y, mean.fill_(0.0), rstd.fill_(0.0), cnt.fill_(0.0)
    dummy = mean
    w = weight if weight is not None else dummy
    b = bias if bias is not None else dummy
    r = residual if residual is not None else dummy
    msk = mask if mask is not None else dummy
    mb_div, mb_mul, m0, m2 = mask_index
    br, bc, single, splits, rows = _plan(family, d0, d1, d2, nb)
    flags = dict(HAS_W=weight is not None, HAS_B=bias is not None, HAS_R=residual is not None,
                 HAS_M=mask is not None, CENTERED=centered, ACT=ACTIVATIONS[activation],
                 ACC=_tl_acc(x), BLOCK_R=br, BLOCK_C=bc)
    if family == ROW:
        def launch(mode, grid, psum, pm2, pcnt):
            _row_fwd[grid](x, y, w, b, r, mean, rstd, psum, pm2, pcnt, msk, cnt, d0, d1, d2,
                           rows, *affine, mb_div, mb_mul, m0, m2, float(eps), MODE=mode,
                           SINGLE=single, **flags)
    else:
        def launch(mode, grid, psum, pm2, pcnt):
            _col_fwd[grid](x, y, w, b, r, mean, rstd, psum, pm2, pcnt, msk, cnt, d0, d1, rows,
                           mb_div, mb_mul, m0, float(eps), MODE=mode, **flags)
    if splits == 1:
        launch(0, _grid(family, nb, d1, bc, 1), dummy, dummy, dummy)
        return y, mean, rstd, cnt
    psum = _empty(splits, nb * d1, dtype=acc, device=x.device)
    pm2 = _empty_like(psum)
    pcnt = _empty_like(psum)
    launch(1, _grid(family, nb, d1, bc, splits), psum, pm2, pcnt)
    # merge the splits (Chan et al.): counts, mean and centred second moment per group
    total = pcnt.sum(0)
    safe = total.clamp_min(1.0)
    mu = psum.sum(0) / safe
    part_mean = psum / pcnt.clamp_min(1.0)
    m2_all = (pm2 + pcnt * (part_mean - mu) ** 2).sum(0)
    cnt.copy_(total)
    mean.copy_(mu)
    rstd.copy_(torch.rsqrt(m2_all / safe + eps))
    launch(2, _grid(family, nb, d1, bc, splits), psum, pm2, pcnt)
    return y, mean, rstd, cnt


def backward(dy, x, weight, bias, residual, mask, mean, rstd, cnt, *, family, dims, affine,
             mask_index, centered, activation, need_dw, need_db):
    """-> (dx, dweight (float32/64, or None), dbias (or None), dresidual or None); dx and
    dresidual are zero at padding."""
    nb, d0, d1, d2 = (int(v) for v in dims)
    dx = _empty_like(x)
    dr = _empty_like(x) if residual is not None else None
    acc = _acc(x)
    dw = torch.zeros(weight.shape, dtype=acc, device=x.device) \
        if need_dw and weight is not None else None
    db = torch.zeros(bias.shape, dtype=acc, device=x.device) \
        if need_db and bias is not None else None
    if x.numel() == 0:
        return dx, dw, db, dr
    dummy = mean
    mb_div, mb_mul, m0, m2 = mask_index
    br, bc, single, splits, rows = _plan(family, d0, d1, d2, nb)
    pg = _empty(splits, nb * d1, dtype=acc, device=x.device) if splits > 1 else dummy
    pgx = _empty_like(pg) if splits > 1 else dummy
    args = [weight if weight is not None else dummy, bias if bias is not None else dummy,
            residual if residual is not None else dummy, mean, rstd,
            dw if dw is not None else dummy, db if db is not None else dummy, pg, pgx,
            mask if mask is not None else dummy, cnt]
    flags = dict(HAS_W=weight is not None, HAS_B=bias is not None, HAS_R=residual is not None,
                 HAS_M=mask is not None, CENTERED=centered, ACT=ACTIVATIONS[activation],
                 NEED_DW=dw is not None, NEED_DB=db is not None, ACC=_tl_acc(x), BLOCK_R=br,
                 BLOCK_C=bc)
    dr_arg = dr if dr is not None else dx
    if family == ROW:
        _mod_b, _sb, s0, _s1, s2 = affine
        if s0 != 0 and s2 != 0:
            raise ValueError("affine index may depend on d0 or d2, not both")
        wred = 2 if (s0 == 0 and s2 == 0) else (0 if s0 == 0 else 1)

        def launch(mode, need_dw_db=True):
            f = dict(flags)
            if not need_dw_db:
                f.update(NEED_DW=False, NEED_DB=False)
            _row_bwd[_grid(family, nb, d1, bc, splits)](
                x, dy, dx, dr_arg, *args, d0, d1, d2, rows, *affine, mb_div, mb_mul, m0, m2,
                WRED=wred, MODE=mode, SINGLE=single, **f)
    else:
        def launch(mode, need_dw_db=True):
            f = dict(flags)
            if not need_dw_db:
                f.update(NEED_DW=False, NEED_DB=False)
            _col_bwd[_grid(family, nb, d1, bc, splits)](x, dy, dx, dr_arg, *args, d0, d1,
                                                        rows, mb_div, mb_mul, m0, MODE=mode,
                                                        **f)
    if splits == 1:
        launch(0)
        return dx, dw, db, dr
    launch(1)
    pg[0] = pg.sum(0)  # MODE 2 reads the merged sums from row 0
    pgx[0] = pgx.sum(0)
    launch(2, need_dw_db=False)
    return dx, dw, db, dr
