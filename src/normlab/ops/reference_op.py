"""The reference path as an autograd Function with the hand-derived (closed-form) backward."""

from __future__ import annotations

import torch

from normlab import reference
from normlab.spec import Plan

__all__ = ["reference_norm"]


class _NormFunction(torch.autograd.Function):
    """y, mean, var = norm(x); mean and var are statistics outputs, not differentiable."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, running_mean, running_var, plan, eps, activation,
                forward_impl):
        if forward_impl is not None:
            # a faster forward with the same statistics (see reference_norm's docstring)
            y, mean, rstd = forward_impl(x, weight, bias, eps)
            mean, rstd = mean.reshape(plan.stats_shape), rstd.reshape(plan.stats_shape)
            cache = dict(mean=mean, rstd=rstd, var=rstd.pow(-2) - eps, z=None)
        else:
            y, cache = reference.forward(
                x, plan, eps=eps, weight=weight, bias=bias, residual=residual,
                activation=activation, running_mean=running_mean, running_var=running_var)
        ctx.save_for_backward(x, weight, bias, residual, running_mean, running_var,
                              cache["mean"], cache["rstd"], cache["z"])
        ctx.plan, ctx.eps, ctx.activation = plan, eps, activation
        mean, var = cache["mean"].contiguous(), cache["var"]
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        x, weight, bias, residual, rmean, rvar, mean, rstd, z = ctx.saved_tensors
        if torch.is_grad_enabled():
            # A graph of the backward is requested (double backward): recompute the statistics
            # from x with differentiable ops so that the closed form below is differentiable
            # with respect to x through mean and rstd too.
            _, cache = reference.forward(
                x, ctx.plan, eps=ctx.eps, weight=weight, bias=bias, residual=residual,
                activation=ctx.activation, running_mean=rmean, running_var=rvar)
        else:
            cache = dict(x=x, plan=ctx.plan, mean=mean, rstd=rstd, weight=weight, bias=bias,
                         residual=residual, activation=ctx.activation, z=z,
                         running=rmean is not None)
        dx, dweight, dbias, dresidual = reference.backward(dy, cache)
        needs = ctx.needs_input_grad
        return (dx if needs[0] else None, dweight if needs[1] else None,
                dbias if needs[2] else None, dresidual if needs[3] else None,
                None, None, None, None, None, None)


def reference_norm(
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
    forward_impl=None,
):
    """Normalize with the reference math; returns ``(y, mean, var)`` (statistics in
    ``plan.stats_shape``, float32 or float64, var biased). ``weight``, ``bias`` and the running
    statistics must broadcast against ``x``.

    ``forward_impl(x, weight, bias, eps) -> (y, mean, rstd)`` replaces the reference forward
    where a native kernel computes the same statistics faster; the backward stays the closed
    form. It is used without residual, activation or running statistics (the caller composes
    those) and its mean/rstd must reshape to ``plan.stats_shape``.
    """
    return _NormFunction.apply(x, weight, bias, residual, running_mean, running_var, plan,
                               float(eps), activation, forward_impl)
