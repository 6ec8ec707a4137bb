"""Triton kernels for the pointwise kinds (DyT, Derf): ``y = act(w * f(alpha * x + s) + b + r)``
with ``f`` = tanh (DyT) or erf (Derf), one read of x and one write of y.

The input's memory is read as ``(OUTER, PERIOD, INNER)`` (``spec.Kernel`` family ELEMENT): the
``PERIOD`` affine elements (the flattened ``normalized_shape`` block) sit in the middle, so the
element at memory offset ``o`` uses ``w[(o // INNER) % PERIOD]``. Rows of a (M, L) layer
(``channel_axis=-1``) are ``(M, L, 1)``; a channels-first (N, C, H, W) input normalized over C is
``(N, C, H*W)``; its channels_last memory is ``(N*H*W, C, 1)``. No layout is copied.

Backward, with ``u = alpha * x + s``, ``t = f(u)``, ``dz = dy * act'(z)`` (z recomputed from x:
nothing but the inputs is kept from the forward) and ``g = dz * w * f'(u)`` (``f' = 1 - t^2``
for tanh, ``2/sqrt(pi) * exp(-u^2)`` for erf): ``dx = g * alpha``, ``dr = dz`` per element;
``dw = sum dz * t``, ``db = sum dz`` per affine element; ``dalpha = sum g * x``, ``ds = sum g``.
One program owns a block of ``BLOCK_J`` affine elements and a strided share of the ``(OUTER,
INNER-tile)`` tasks; it accumulates its sums in registers and writes one partial per affine
element and split (no atomics: the launcher adds the ``splits`` partials, deterministically).

Device code only: no autograd.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from normlab.kernels.triton.norm import ACTIVATIONS, _act, _act_grad
from normlab.reference import stat_dtype

__all__ = ["FUNCTIONS", "backward", "forward"]

FUNCTIONS = {"dyt": 0, "derf": 1}  # the kernels' FN numbers
_TWO_OVER_SQRT_PI = 1.1283791670955126

# Elements per program in forward and per tile in backward; the number of backward programs
# that fills a device. Tests shrink them to drive the looped and split paths on small shapes.
_BLOCK = 1024
_TILE = 4096
_TARGET_PROGRAMS = 512

# allocation of every buffer a kernel writes in full (tests replace these to poison outputs)
_empty_like = torch.empty_like
_empty = torch.empty


@triton.jit
def _squash(u, FN: tl.constexpr):
    """tanh(u) (FN 0) or erf(u) (FN 1); tanh from exp(-2|u|), which never overflows."""
    if FN == 0:
        e = tl.exp(-2.0 * tl.abs(u))
        t = (1.0 - e) / (1.0 + e)
        return tl.where(u < 0.0, -t, t)
    else:
        return tl.math.erf(u)


@triton.jit
def _squash_grad(u, t, FN: tl.constexpr):
    if FN == 0:
        return 1.0 - t * t
    else:
        return _TWO_OVER_SQRT_PI * tl.exp(-u * u)


@triton.jit
def _pw_fwd(
    X, Y,  # input and output, dense, read as (OUTER, PERIOD, INNER)
    A, S,  # alpha and shift: one element each (S a dummy without HAS_S)
    W, B,  # (PERIOD,) affine or dummies
    R,  # residual in x's layout, or a dummy
    N, PERIOD, INNER,
    HAS_S: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_R: tl.constexpr,
    FN: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    off = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = off < N
    x = tl.load(X + off, mask=inside, other=0.0).to(ACC)
    u = x * tl.load(A).to(ACC)
    if HAS_S:
        u += tl.load(S).to(ACC)
    z = _squash(u, FN)
    j = (off // INNER) % PERIOD
    if HAS_W:
        z = z * tl.load(W + j, mask=inside, other=0.0).to(ACC)
    if HAS_B:
        z += tl.load(B + j, mask=inside, other=0.0).to(ACC)
    if HAS_R:
        z += tl.load(R + off, mask=inside, other=0.0).to(ACC)
    tl.store(Y + off, _act(z, ACT).to(Y.dtype.element_ty), mask=inside)


@triton.jit
def _pw_bwd(
    X, DY, DX, DR,  # x's layout; DR (dresidual) only with HAS_R
    A, S, W, B, R,  # as in _pw_fwd
    PW, PB, PA, PS,  # (splits, PERIOD) partial sums of dz*t, dz, g*x, g (float32/64)
    OUTER, PERIOD, INNER, NIT,  # NIT: INNER tiles per outer index
    HAS_S: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_R: tl.constexpr,
    FN: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr, BLOCK_J: tl.constexpr,
    BLOCK_I: tl.constexpr,
):
    pj = tl.program_id(0)
    split = tl.program_id(1)
    splits = tl.num_programs(1)
    j = pj * BLOCK_J + tl.arange(0, BLOCK_J)  # affine elements of this program
    jm = j < PERIOD
    alpha = tl.load(A).to(ACC)
    shift = tl.zeros((), ACC)
    if HAS_S:
        shift = tl.load(S).to(ACC)
    w = tl.full((BLOCK_J,), 1.0, ACC)
    if HAS_W:
        w = tl.load(W + j, mask=jm, other=0.0).to(ACC)
    b = tl.zeros((BLOCK_J,), ACC)
    if HAS_B:
        b = tl.load(B + j, mask=jm, other=0.0).to(ACC)
    s_wt = tl.zeros((BLOCK_J, BLOCK_I), ACC)  # sum dz * t
    s_b = tl.zeros((BLOCK_J, BLOCK_I), ACC)  # sum dz
    s_a = tl.zeros((BLOCK_J, BLOCK_I), ACC)  # sum g * x
    s_s = tl.zeros((BLOCK_J, BLOCK_I), ACC)  # sum g
    for task in range(split, OUTER * NIT, splits):
        o = (task // NIT).to(tl.int64)
        i = (task % NIT) * BLOCK_I + tl.arange(0, BLOCK_I)
        m = jm[:, None] & (i < INNER)[None, :]
        off = (o * PERIOD + j[:, None]) * INNER + i[None, :]
        x = tl.load(X + off, mask=m, other=0.0).to(ACC)
        dz = tl.load(DY + off, mask=m, other=0.0).to(ACC)
        u = x * alpha + shift
        t = _squash(u, FN)
        if ACT != 0:
            z = t * w[:, None] + b[:, None]
            if HAS_R:
                z += tl.load(R + off, mask=m, other=0.0).to(ACC)
            dz = dz * _act_grad(z, ACT)
        g = dz * w[:, None] * _squash_grad(u, t, FN)
        tl.store(DX + off, (g * alpha).to(DX.dtype.element_ty), mask=m)
        if HAS_R:
            tl.store(DR + off, dz.to(DR.dtype.element_ty), mask=m)
        # outside the tile dy was loaded as 0, so dz, g and every term below are 0 there
        s_wt += dz * t
        s_b += dz
        s_a += g * x
        s_s += g
    p = split.to(tl.int64) * PERIOD + j
    tl.store(PW + p, tl.sum(s_wt, axis=1), mask=jm)
    tl.store(PB + p, tl.sum(s_b, axis=1), mask=jm)
    tl.store(PA + p, tl.sum(s_a, axis=1), mask=jm)
    tl.store(PS + p, tl.sum(s_s, axis=1), mask=jm)


def _acc(x):
    return stat_dtype(x.dtype)


def _tl_acc(x):
    return tl.float64 if _acc(x) == torch.float64 else tl.float32


def _pow2(n: int, cap: int) -> int:
    return max(1, min(triton.next_power_of_2(max(int(n), 1)), cap))


def _flags(kind, shift, weight, bias, residual, activation, x):
    return dict(HAS_S=shift is not None, HAS_W=weight is not None, HAS_B=bias is not None,
                HAS_R=residual is not None, FN=FUNCTIONS[kind], ACT=ACTIVATIONS[activation],
                ACC=_tl_acc(x))


def forward(x, alpha, shift, weight, bias, residual, *, kind, dims, activation):
    """-> y in x's layout. ``x`` (and ``residual``) dense, read as ``dims = (OUTER, PERIOD,
    INNER, 1)``; ``weight``/``bias`` dense (PERIOD,) or None; alpha/shift one element."""
    _, period, inner, _ = (int(v) for v in dims)
    y = _empty_like(x)
    n = x.numel()
    if n == 0:
        return y
    dummy = alpha
    grid = (triton.cdiv(n, _BLOCK),)
    _pw_fwd[grid](x, y, alpha, shift if shift is not None else dummy,
                  weight if weight is not None else dummy, bias if bias is not None else dummy,
                  residual if residual is not None else dummy, n, period, inner,
                  BLOCK=_BLOCK, **_flags(kind, shift, weight, bias, residual, activation, x))
    return y


def _bwd_plan(outer: int, period: int, inner: int):
    """-> (BLOCK_J, BLOCK_I, INNER tiles, splits) for the backward launch."""
    bi = _pow2(inner, _TILE)
    bj = _pow2(period, max(1, _TILE // bi))
    nit = triton.cdiv(inner, bi)
    blocks = triton.cdiv(period, bj)
    splits = max(1, min(outer * nit, triton.cdiv(_TARGET_PROGRAMS, blocks)))
    return bj, bi, nit, splits


def backward(dy, x, alpha, shift, weight, bias, residual, *, kind, dims, activation):
    """-> (dx, dalpha, dshift or None, dweight or None, dbias or None, dresidual or None); the
    reductions in float32 (float64 for float64 input); ``dy`` in x's layout."""
    outer, period, inner, _ = (int(v) for v in dims)
    dx = _empty_like(x)
    dr = _empty_like(x) if residual is not None else None
    acc = _acc(x)
    bj, bi, nit, splits = _bwd_plan(outer, period, inner)
    if x.numel() == 0:
        zeros = torch.zeros(period, dtype=acc, device=x.device)
        return (dx, zeros.sum(), None if shift is None else zeros.sum(),
                None if weight is None else zeros, None if bias is None else zeros.clone(), dr)
    parts = [_empty(splits, period, dtype=acc, device=x.device) for _ in range(4)]
    dummy = alpha
    grid = (triton.cdiv(period, bj), splits)
    _pw_bwd[grid](x, dy, dx, dr if dr is not None else dx, alpha,
                  shift if shift is not None else dummy, weight if weight is not None else dummy,
                  bias if bias is not None else dummy,
                  residual if residual is not None else dummy, *parts, outer, period, inner,
                  nit, BLOCK_J=bj, BLOCK_I=bi,
                  **_flags(kind, shift, weight, bias, residual, activation, x))
    pw, pb, pa, ps = parts
    return (dx, pa.sum(), ps.sum() if shift is not None else None,
            pw.sum(0) if weight is not None else None, pb.sum(0) if bias is not None else None,
            dr)
