"""Readable eager math for every normalization kind: the test oracle and the portable path.

One forward and one backward serve every kind, because every kind is "reduce over the group
dims of a view" (see ``normlab.spec.plan``). ``forward`` returns ``(y, cache)``; ``backward``
takes ``(dy, cache)`` and returns the gradients, llm.c style.

Statistics are computed in float32 for float16/bfloat16/float32 inputs and in float64 for
float64 inputs, with a two-pass variance (mean first, then the mean of squared deviations), never
``E[x^2] - E[x]^2``. Everything here is made of differentiable torch ops, so running
``forward``/``backward`` under grad mode gives a differentiable backward (double backward).
"""

from __future__ import annotations

import math

import torch

from normlab import spec
from normlab.spec import ACTIVATIONS, Plan

__all__ = ["ACTIVATIONS", "activation_grad", "apply_activation", "backward", "forward",
           "masked_forward", "pointwise_forward", "squash", "squash_grad", "stat_dtype"]

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)
_TWO_OVER_SQRTPI = 2.0 / math.sqrt(math.pi)  # erf'(0)


_STAT_DTYPES = {d: getattr(torch, spec.stat_dtype_name(str(d)))
                for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics are kept in, by the rule in ``normlab.spec.STAT_DTYPES``."""
    return _STAT_DTYPES[dtype]


def apply_activation(z: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation is None:
        return z
    if activation == "relu":
        return torch.relu(z)
    if activation == "gelu":  # exact (erf) GELU, as torch.nn.GELU()
        return z * 0.5 * (1.0 + torch.erf(z * _INV_SQRT2))
    if activation == "silu":
        return z * torch.sigmoid(z)
    raise ValueError(f"activation must be one of None, {ACTIVATIONS}, got {activation!r}")


def activation_grad(z: torch.Tensor, activation: str | None) -> torch.Tensor | None:
    """d act(z) / dz, elementwise (None for the identity)."""
    if activation is None:
        return None
    if activation == "relu":
        return (z > 0).to(z.dtype)
    if activation == "gelu":  # Phi(z) + z * phi(z)
        return 0.5 * (1.0 + torch.erf(z * _INV_SQRT2)) + z * _INV_SQRT2PI * torch.exp(-0.5 * z * z)
    if activation == "silu":  # s * (1 + z * (1 - s))
        s = torch.sigmoid(z)
        return s * (1.0 + z * (1.0 - s))
    raise ValueError(f"activation must be one of None, {ACTIVATIONS}, got {activation!r}")


def _affine(xhat, weight, bias, sdt):
    z = xhat
    if weight is not None:
        z = z * weight.to(sdt)
    if bias is not None:
        z = z + bias.to(sdt)
    return z


def like_input(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t`` in the input's memory format (channels_last stays channels_last)."""
    if t.stride() != x.stride() and x.numel() > 0:
        return torch.empty_like(x).copy_(t)
    return t


def forward(
    x: torch.Tensor,
    plan: Plan,
    *,
    eps: float,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    activation: str | None = None,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
):
    """y = act(xhat * weight + bias + residual); returns ``(y, cache)``.

    ``weight``/``bias`` broadcast against ``x`` (usually ``plan.affine_shape``; per sample for
    AdaIN). With ``running_mean``/``running_var`` (broadcastable against ``x``) the statistics
    are those constants (eval mode); otherwise they are computed over each group.
    ``cache["mean"]`` and ``cache["var"]`` have ``plan.stats_shape`` (or the running stats'
    shape); ``var`` is the biased variance (the mean square for rms).
    """
    sdt = stat_dtype(x.dtype)
    xs = x.to(sdt)
    if running_mean is not None:
        mean = running_mean.to(sdt)
        var = running_var.to(sdt)
        rstd = torch.rsqrt(var + eps)
        xhat = (xs - mean) * rstd  # same shape as x
    else:
        xv = xs.reshape(plan.view_shape)  # group dims are plan.reduce_dims
        if plan.centered:
            mean = xv.mean(plan.reduce_dims, keepdim=True)  # stats_shape
            xc = xv - mean
        else:
            mean = torch.zeros((), dtype=sdt, device=x.device).expand(plan.stats_shape)
            xc = xv
        var = (xc * xc).mean(plan.reduce_dims, keepdim=True)  # two-pass variance, stats_shape
        rstd = torch.rsqrt(var + eps)
        xhat = (xc * rstd).reshape(x.shape)
    z = _affine(xhat, weight, bias, sdt)
    if residual is not None:
        z = z + residual.to(sdt)
    y = like_input(apply_activation(z, activation).to(x.dtype), x)
    # recompute xhat in backward from (x, mean, rstd): saves one activation-sized buffer;
    # keep z only when the activation needs it
    cache = dict(x=x, plan=plan, mean=mean, var=var, rstd=rstd, weight=weight, bias=bias,
                 residual=residual, activation=activation, z=z if activation else None,
                 running=running_mean is not None)
    return y, cache


def backward(dy: torch.Tensor, cache: dict):
    """Gradients ``(dx, dweight, dbias, dresidual)`` (``None`` where there is no input).

    With ``g = dz * weight`` and means over the group (DESIGN.md):
    ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``; rms drops ``mean(g)``; with running
    statistics ``dx = g * rstd``.
    """
    x, plan, rstd, weight = cache["x"], cache["plan"], cache["rstd"], cache["weight"]
    sdt = stat_dtype(x.dtype)
    dz = dy.to(sdt)
    act_grad = activation_grad(cache["z"], cache["activation"])
    if act_grad is not None:
        dz = dz * act_grad
    if cache["running"]:
        xhat = (x.to(sdt) - cache["mean"]) * rstd
    else:
        xv = x.to(sdt).reshape(plan.view_shape)
        xhat = ((xv - cache["mean"]) * rstd).reshape(x.shape)
    dweight = dbias = dresidual = None
    if weight is not None:
        dweight = (dz * xhat).sum_to_size(weight.shape).to(weight.dtype)
    if cache["bias"] is not None:
        bias = cache["bias"]
        dbias = dz.sum_to_size(bias.shape).to(bias.dtype)
    if cache["residual"] is not None:
        dresidual = dz.to(cache["residual"].dtype)
    g = dz * weight.to(sdt) if weight is not None else dz
    if cache["running"]:
        dx = g * rstd
    else:
        gv = g.reshape(plan.view_shape)
        hv = xhat.reshape(plan.view_shape)
        dxv = gv - hv * (gv * hv).mean(plan.reduce_dims, keepdim=True)
        if plan.centered:
            dxv = dxv - gv.mean(plan.reduce_dims, keepdim=True)
        dx = (dxv * rstd).reshape(x.shape)
    return like_input(dx.to(x.dtype), x), dweight, dbias, dresidual


def masked_forward(
    x: torch.Tensor,
    plan: Plan,
    mask: torch.Tensor,
    *,
    eps: float,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    activation: str | None = None,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
):
    """Normalization over the real elements only: ``mask`` (bool, broadcastable to ``x``) is
    True where an element is real. Padded elements contribute nothing to the statistics, and
    their output (after the epilogue) is zero; their values never matter (NaN padding is fine).
    A group with no real element gets mean 0 and variance 0 (outputs zero, not NaN).

    Returns ``(y, mean, var, count)``, statistics in ``plan.stats_shape`` with ``count`` the
    number of real elements per group. Plain differentiable ops: autograd gives the backward
    (and the double backward); the gradient at padded elements is zero.
    """
    sdt = stat_dtype(x.dtype)
    m = mask.expand(x.shape)
    xs = torch.where(m, x.to(sdt), 0.0)
    if running_mean is not None:
        mean, var = running_mean.to(sdt), running_var.to(sdt)
        xhat = torch.where(m, (xs - mean) * torch.rsqrt(var + eps), 0.0)
        count = None
    else:
        mv = m.reshape(plan.view_shape)
        xv = xs.reshape(plan.view_shape)
        count = mv.sum(plan.reduce_dims, keepdim=True, dtype=sdt)  # stats_shape
        safe = count.clamp_min(1.0)
        if plan.centered:
            mean = xv.sum(plan.reduce_dims, keepdim=True) / safe
        else:
            mean = torch.zeros(plan.stats_shape, dtype=sdt, device=x.device)
        xc = torch.where(mv, xv - mean, 0.0)
        var = (xc * xc).sum(plan.reduce_dims, keepdim=True) / safe  # two-pass variance
        xhat = (xc * torch.rsqrt(var + eps)).reshape(x.shape)
    z = _affine(xhat, weight, bias, sdt)
    if residual is not None:
        z = z + torch.where(m, residual.to(sdt), 0.0)
    y = like_input(torch.where(m, apply_activation(z, activation), 0.0).to(x.dtype), x)
    return y, mean, var, count


# ---------------------------------------------------------------------------------------------
# the pointwise kinds (no statistics): DyT and Derf


def squash(u: torch.Tensor, kind: str) -> torch.Tensor:
    """The pointwise kinds' bounded function of ``u = alpha * x (+ s)``: tanh (dyt), erf (derf)."""
    return torch.tanh(u) if kind == "dyt" else torch.erf(u)


def squash_grad(u: torch.Tensor, t: torch.Tensor, kind: str) -> torch.Tensor:
    """d squash(u) / du from ``u`` and ``t = squash(u)``: ``1 - t^2`` for tanh,
    ``2 / sqrt(pi) * exp(-u^2)`` for erf."""
    if kind == "dyt":
        return 1.0 - t * t
    return _TWO_OVER_SQRTPI * torch.exp(-u * u)


def pointwise_forward(
    x: torch.Tensor,
    plan: Plan,
    *,
    alpha: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """DyT ``y = act(w * tanh(alpha * x) + b + residual)`` or Derf
    ``y = act(w * erf(alpha * x + s) + b + residual)``, elementwise; ``alpha`` and ``shift``
    are one-element tensors, ``weight``/``bias`` broadcast against ``x`` (``plan.affine_shape``).
    Computed in float32 for half inputs (float64 for float64). Plain differentiable ops:
    autograd gives the backward and the double backward (no cache: nothing to reuse)."""
    sdt = stat_dtype(x.dtype)
    u = x.to(sdt) * alpha.to(sdt).reshape(())  # same shape as x
    if shift is not None:
        u = u + shift.to(sdt).reshape(())
    z = _affine(squash(u, plan.kind), weight, bias, sdt)
    if residual is not None:
        z = z + residual.to(sdt)
    return like_input(apply_activation(z, activation).to(x.dtype), x)
