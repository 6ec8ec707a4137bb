"""One op per kind with torch.nn.functional's signature: each builds the call's plan and hands
it to ``dispatch.normalize``, which chooses the backend and keeps the running statistics.

Inputs arrive validated (``normlab.functional`` checks them); nothing here raises for bad input.
"""

from __future__ import annotations

import torch

from normlab import spec
from normlab.ops.dispatch import Running, normalize
from normlab.reference import stat_dtype

__all__ = ["adaptive_instance_norm", "batch_norm", "derf", "dynamic_tanh", "group_norm",
           "instance_norm", "layer_norm", "rms_norm"]


_PLANS: dict = {}  # (kind, shape, strides, dtype, channel_axis, running, extra) -> Plan


def _plan(kind, x, channel_axis, running=False, groups=None, ndim=None):
    """The call's plan, from a dict keyed by what determines it (``spec.plan`` is pure, so the
    cache cannot go stale)."""
    if torch.compiler.is_compiling():  # traced as constants, not looked up
        return spec.plan.__wrapped__(kind, tuple(x.shape), channel_axis=channel_axis,
                                     num_groups=groups, normalized_ndim=ndim,
                                     strides=x.stride(), running=running, dtype=str(x.dtype))
    key = (kind, x.shape, x.stride(), x.dtype, channel_axis, running, groups, ndim)
    p = _PLANS.get(key)
    if p is None:
        if len(_PLANS) > 4096:
            _PLANS.clear()
        p = _PLANS[key] = spec.plan(kind, tuple(x.shape), channel_axis=channel_axis,
                                    num_groups=groups, normalized_ndim=ndim,
                                    strides=x.stride(), running=running, dtype=str(x.dtype))
    return p


def batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, *,
               channel_axis=1, residual=None, activation=None, backend=None, mask=None,
               num_batches_tracked=None, shortcut=None):
    """``num_batches_tracked`` (with the running statistics, in training): incremented when
    this batch moves them; ``momentum=None`` then means the cumulative average."""
    plan = _plan("batch", x, channel_axis, running=not training)
    running = (None if running_mean is None
               else Running(running_mean, running_var, momentum, num_batches_tracked))
    return normalize(plan, x, weight, bias, eps=eps, residual=residual, activation=activation,
                     mask=mask, running=running, channel_axis=channel_axis,
                     backend=backend, shortcut=shortcut)[0]


def instance_norm(x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps, *,
                  channel_axis=1, residual=None, activation=None, backend=None, mask=None,
                  num_batches_tracked=None, shortcut=None):
    """``num_batches_tracked`` as in :func:`batch_norm`."""
    plan = _plan("instance", x, channel_axis, running=not use_input_stats)
    running = (None if running_mean is None
               else Running(running_mean, running_var, momentum, num_batches_tracked))
    return normalize(plan, x, weight, bias, eps=eps, residual=residual, activation=activation,
                     mask=mask, running=running, channel_axis=channel_axis,
                     backend=backend, shortcut=shortcut)[0]


def group_norm(x, num_groups, weight, bias, eps, *, channel_axis=1, residual=None,
               activation=None, backend=None, mask=None, shortcut=None):
    plan = _plan("group", x, channel_axis, groups=num_groups)
    return normalize(plan, x, weight, bias, eps=eps, residual=residual, activation=activation,
                     mask=mask, channel_axis=channel_axis, extra=num_groups,
                     backend=backend, shortcut=shortcut)[0]


def layer_norm(x, normalized_shape, weight, bias, eps, *, channel_axis=-1, residual=None,
               activation=None, backend=None, mask=None, shortcut=None):
    plan = _plan("layer", x, channel_axis, ndim=len(normalized_shape))
    return normalize(plan, x, weight, bias, eps=eps, residual=residual, activation=activation,
                     mask=mask, channel_axis=channel_axis, extra=normalized_shape,
                     backend=backend, shortcut=shortcut)[0]


def rms_norm(x, normalized_shape, weight, eps, *, channel_axis=-1, residual=None,
             activation=None, backend=None, mask=None, shortcut=None):
    plan = _plan("rms", x, channel_axis, ndim=len(normalized_shape))
    return normalize(plan, x, weight, None, eps=eps, residual=residual, activation=activation,
                     mask=mask, channel_axis=channel_axis, extra=normalized_shape,
                     backend=backend, shortcut=shortcut)[0]


def dynamic_tanh(x, normalized_shape, alpha, weight, bias, *, channel_axis=-1, residual=None,
                 activation=None, backend=None):
    """DyT: ``act(weight * tanh(alpha * x) + bias + residual)``, affine over the block."""
    plan = _plan("dyt", x, channel_axis, ndim=len(normalized_shape))
    return normalize(plan, x, weight, bias, eps=0.0, residual=residual, activation=activation,
                     channel_axis=channel_axis, extra=normalized_shape, backend=backend,
                     alpha=alpha)[0]


def derf(x, normalized_shape, alpha, shift, weight, bias, *, channel_axis=-1, residual=None,
         activation=None, backend=None):
    """Derf: ``act(weight * erf(alpha * x + shift) + bias + residual)``."""
    plan = _plan("derf", x, channel_axis, ndim=len(normalized_shape))
    return normalize(plan, x, weight, bias, eps=0.0, residual=residual, activation=activation,
                     channel_axis=channel_axis, extra=normalized_shape, backend=backend,
                     alpha=alpha, shift=shift)[0]


def _style_stats(style, plan, mask, eps):
    """Per-(sample, channel) mean and sqrt(var + eps) of the style over its (real) positions,
    broadcastable against the content (N or 1 samples)."""
    sdt = stat_dtype(style.dtype)
    if mask is None:
        s_var, s_mean = torch.var_mean(style.to(sdt), plan.reduce_dims, correction=0,
                                       keepdim=True)  # N,C,1.. (or N,1..,C)
        return torch.sqrt(s_var + eps), s_mean
    m = mask.expand(style.shape)
    ts = torch.where(m, style.to(sdt), 0.0)
    count = m.sum(plan.reduce_dims, keepdim=True, dtype=sdt).clamp_min(1.0)
    mean = ts.sum(plan.reduce_dims, keepdim=True) / count
    dev = torch.where(m, ts - mean, 0.0)
    var = (dev * dev).sum(plan.reduce_dims, keepdim=True) / count
    return torch.sqrt(var + eps), mean


def adaptive_instance_norm(content, style, eps, *, channel_axis=1, residual=None,
                           activation=None, backend=None, content_mask=None, style_mask=None):
    """sigma(style) * (content - mu(content)) / sigma(content) + mu(style), per sample and
    channel over positions; sigma = sqrt(biased variance + eps), for content and style alike.
    Gradients flow to the style through its statistics (ordinary autograd ops)."""
    plan = _plan("adain", content, channel_axis)
    style_plan = _plan("adain", style, channel_axis)
    sm = None if style_mask is None else style_mask.unsqueeze(channel_axis % style.dim())
    s_std, s_mean = _style_stats(style, style_plan, sm, eps)
    return normalize(plan, content, s_std, s_mean, eps=eps, residual=residual,
                     activation=activation, mask=content_mask, channel_axis=channel_axis,
                     backend=backend)[0]
