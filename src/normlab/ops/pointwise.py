"""The native path of the pointwise kinds (DyT, Derf): an autograd Function over composed torch
ops whose backward recomputes ``tanh(alpha * x)`` (``erf(alpha * x + s)``) from ``x``.

Memory versus compute, decided here: plain autograd of ``w * tanh(a * x) + b`` keeps the
tanh output ``t`` (one activation-sized buffer) besides ``x``. With ``recompute=True`` this
Function keeps only its inputs and recomputes ``t`` in backward: one buffer less, but one more
pass through tanh, which on CPU costs about two multiplies' time; ``normlab bench --quick``
measured the recomputing variant at 1.10x-1.28x plain autograd's forward+backward time on
(2048, 1024) rows and 1.99x on (8, 64, 28, 28) channels first (float32, 2 threads, a heavily
shared 2-core machine: the figures are noisy), so the native backend keeps ``t``
(``recompute=False``: the same memory as plain autograd; in-place squash, one fused
multiply-add, ``tanh_backward`` and a dot product for ``dalpha``: 0.83x-0.99x of plain
autograd's time on the rows, 0.82x-1.19x on the channels-first case in the same runs). The
Triton kernels recompute ``t`` inside the fused backward, where it is free. The bench times
both variants (``saved_mb`` gives the bytes each keeps).

The backward is closed form, with ``u = alpha * x + s``, ``t = squash(u)``, ``dz = dy *
act'(z)`` and ``g = dz * w * squash'(u)``: ``dx = g * alpha``, ``dalpha = sum(g * x)``,
``ds = sum(g)``, ``dw = sum(dz * t)``, ``db = sum(dz)`` (over the non-affine dims),
``dresidual = dz``. It is written in differentiable torch ops, so a double backward works.
"""

from __future__ import annotations

import torch

from normlab.reference import (
    activation_grad,
    apply_activation,
    like_input,
    squash,
    squash_grad,
    stat_dtype,
)

# pointwise(recompute=True) is the memory-saving variant (see the docstring)
__all__ = ["grads_like", "pointwise"]


def _pre(x, alpha, shift, sdt):
    u = x.to(sdt) * alpha.to(sdt).reshape(())
    return u if shift is None else u + shift.to(sdt).reshape(())


def _z(t, weight, bias, residual, sdt):
    if weight is not None and bias is not None:
        z = torch.addcmul(bias.to(sdt), t, weight.to(sdt))  # one pass: b + t * w
    elif weight is not None:
        z = t * weight.to(sdt)
    elif bias is not None:
        z = t + bias.to(sdt)
    else:
        z = t
    return z if residual is None else z + residual.to(sdt)


def _sum_to(t, like):
    return None if like is None else t.sum_to_size(like.shape).to(like.dtype)


def _total(a, b):
    """sum(a * b) over every element: one pass with no product buffer (a dot product) when both
    are dense in the same order, else the product's sum."""
    if a.is_contiguous() and b.is_contiguous() and not torch.is_grad_enabled():
        return torch.dot(a.reshape(-1), b.reshape(-1))
    return (a * b).sum()


class _Pointwise(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, alpha, shift, weight, bias, residual, kind, activation, recompute):
        sdt = stat_dtype(x.dtype)
        u = _pre(x, alpha, shift, sdt)  # a new buffer (x * alpha): squashed in place
        t = u.tanh_() if kind == "dyt" else u.erf_()
        y = apply_activation(_z(t, weight, bias, residual, sdt), activation).to(x.dtype)
        # recompute: keep the inputs only, t is recomputed in backward (see the docstring)
        ctx.save_for_backward(x, alpha, shift, weight, bias, residual,
                              None if recompute else t)
        ctx.kind, ctx.activation = kind, activation
        return like_input(y, x)

    @staticmethod
    def backward(ctx, dy):
        x, alpha, shift, weight, bias, residual, t = ctx.saved_tensors
        kind, activation = ctx.kind, ctx.activation
        sdt = stat_dtype(x.dtype)
        u = None
        if t is None or torch.is_grad_enabled():
            # recompute (or, for a double backward, rebuild t from x with differentiable ops)
            u = _pre(x, alpha, shift, sdt)
            t = squash(u, kind)
        dz = dy.to(sdt)
        if activation is not None:
            dz = dz * activation_grad(_z(t, weight, bias, residual, sdt), activation)
        needs = ctx.needs_input_grad
        g = dz if weight is None else dz * weight.to(sdt)
        if kind == "dyt":  # dL/du = g * (1 - t^2), one fused pass (differentiable)
            g = torch.ops.aten.tanh_backward(g, t)
        else:
            u = _pre(x, alpha, shift, sdt) if u is None else u
            g = g * squash_grad(u, t, kind)
        dx = like_input((g * alpha.to(sdt).reshape(())).to(x.dtype), x) if needs[0] else None
        dalpha = (_total(g, x.to(sdt)).reshape(alpha.shape).to(alpha.dtype) if needs[1]
                  else None)
        dshift = (g.sum().reshape(shift.shape).to(shift.dtype)
                  if shift is not None and needs[2] else None)
        dweight = _sum_to(dz * t, weight) if needs[3] else None
        dbias = _sum_to(dz, bias) if needs[4] else None
        dres = dz.to(residual.dtype) if residual is not None and needs[5] else None
        return dx, dalpha, dshift, dweight, dbias, dres, None, None, None


def pointwise(kind: str, x, alpha, shift=None, weight=None, bias=None, residual=None,
              activation=None, recompute=False):
    """``act(w * squash(alpha * x + s) + b + residual)`` (squash: tanh for ``"dyt"``, erf for
    ``"derf"``), ``weight``/``bias`` already broadcastable against ``x``. ``recompute``: keep
    only the inputs for the backward and recompute the squash there (one activation-sized
    buffer less, one more transcendental pass); the native backend keeps ``t`` (see the
    module docstring for the measurement)."""
    return _Pointwise.apply(x, alpha, shift, weight, bias, residual, kind, activation,
                            recompute)


def grads_like(x, alpha, shift, weight, bias, residual):
    """Empty tensors shaped as the pointwise backward's outputs (dx, dalpha, dshift, dweight,
    dbias, dresidual; an empty tensor for an absent input): the fake implementation of the
    Triton and numba backward custom ops."""
    def like(t):
        return x.new_empty(0) if t is None else torch.empty_like(t)
    return (torch.empty_like(x), torch.empty_like(alpha), like(shift), like(weight), like(bias),
            like(residual))
