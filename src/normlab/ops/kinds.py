"""One op per kind: chooses the backend for this call and keeps the running statistics.

Inputs arrive validated (``normlab.functional`` checks them); nothing here raises for bad input.
Backends: ``"native"`` (torch's kernels, see ``native.py``), ``"reference"`` (the closed-form
autograd Function) and ``"triton"`` (``triton_op.py``: the fused kernels, training statistics;
eval-mode running statistics and layouts the kernels do not read in place take the native
path). ``backend=None`` picks per call: ``"triton"`` for CUDA tensors when Triton is installed,
``"native"`` otherwise (the fastest correct path on CPU).
"""

from __future__ import annotations

import functools

import torch

from normlab import spec
from normlab.ops import native, triton_op
from normlab.ops.masked import FAST_KINDS, masked_norm
from normlab.ops.reference_op import reference_norm
from normlab.reference import apply_activation, like_input, masked_forward, stat_dtype

__all__ = ["BACKENDS", "adaptive_instance_norm", "batch_norm", "group_norm", "instance_norm",
           "layer_norm", "resolve_backend", "rms_norm"]

BACKENDS = ("native", "reference", "triton")


def resolve_backend(backend: str | None, x: torch.Tensor) -> str:
    """The backend a call with ``backend`` on ``x`` runs on."""
    if backend is None:
        return "triton" if x.is_cuda and triton_op.available() else "native"
    return backend


def _without_triton(backend, x):
    """The backend for a call the kernels did not take (eval mode, an empty batch, a layout
    they do not read in place): native where triton was chosen."""
    return "native" if resolve_backend(backend, x) == "triton" else backend


def _triton(kind, x, backend, **kw):
    """``(y, mean, var)`` from the Triton kernels when this call runs on them, else None."""
    if x.numel() == 0 or resolve_backend(backend, x) != "triton":
        return None
    out = triton_op.triton_norm(kind, x, **kw)
    return None if out is None else out[:3]


def _affine(t: torch.Tensor | None, plan: spec.Plan):
    return None if t is None else t.reshape(plan.affine_shape)


def _update_running(running_mean, running_var, mean, var, group_size, factor):
    """running = (1 - factor) * running + factor * batch value, with the unbiased variance.

    ``mean``/``var`` are (M, C): M per-sample rows (instance norm) are averaged, as torch does.
    """
    if running_mean is None:
        return
    with torch.no_grad():
        unbiased = var * (group_size / max(group_size - 1, 1))
        running_mean.mul_(1.0 - factor).add_(mean.mean(0).to(running_mean.dtype), alpha=factor)
        running_var.mul_(1.0 - factor).add_(unbiased.mean(0).to(running_var.dtype), alpha=factor)


def _mask_for(x: torch.Tensor, mask: torch.Tensor, channel_axis: int) -> torch.Tensor:
    """The (N, positions) mask as a view that broadcasts against ``x``."""
    return mask.unsqueeze(channel_axis % x.dim())


def _masked(kind, x, mask, weight, bias, eps, channel_axis, residual, activation,
            backend=None, **plan_kw):
    plan = spec.plan(kind, tuple(x.shape), channel_axis=channel_axis, **plan_kw)
    m = _mask_for(x, mask, channel_axis)
    if x.numel() > 0 and resolve_backend(backend, x) == "triton":  # the mask fused
        out = triton_op.triton_norm(kind, x, eps=eps, weight=weight, bias=bias,
                                    residual=residual, activation=activation,
                                    channel_axis=channel_axis, mask=mask, **plan_kw)
        if out is not None:
            return plan, out
    if kind in FAST_KINDS and x.dim() > 2 and not torch.compiler.is_compiling():
        out = masked_norm(x, plan, m, eps=eps, weight=weight, bias=bias,
                          channel_last=channel_axis % x.dim() == x.dim() - 1,
                          groups=plan_kw.get("num_groups", 1))
        if out is not None:
            y, mean, var, count = out
            if residual is not None:
                y = y + torch.where(m, residual, 0.0)
            y = like_input(apply_activation(y, activation), x)
            return plan, (y, mean, var, count)
    return plan, masked_forward(x, plan, m, eps=eps,
                                weight=_affine(weight, plan), bias=_affine(bias, plan),
                                residual=residual, activation=activation)


def _count_batch(num_batches_tracked, momentum, moves: bool):
    """Count a batch that moves the running statistics (``moves``) in ``num_batches_tracked``
    and return the running-average factor: ``momentum``, or ``1 / num_batches_tracked`` (the
    cumulative average) when ``momentum`` is None."""
    if num_batches_tracked is None or not moves:
        return 0.0 if momentum is None else momentum
    num_batches_tracked.add_(1)
    return momentum if momentum is not None else 1.0 / float(num_batches_tracked)


def _update_running_masked(running_mean, running_var, mean, var, count, n, c, factor,
                           num_batches_tracked=None):
    """Running statistics from masked groups: groups with fewer than 2 real elements are left
    out; if none is left the running statistics do not move and the batch is not counted.
    Whether a batch moves them depends on the mask's values, so this is tensor arithmetic
    (no host sync, no branch on data: ``torch.compile(fullgraph=True)`` traces it), and with
    ``factor=None`` the cumulative factor ``1 / num_batches_tracked`` is a tensor too."""
    if running_mean is None:
        return
    mean, var, count = mean.reshape(n, c), var.reshape(n, c), count.reshape(n, c)
    ok = count > 1
    with torch.no_grad():
        has = ok.any(0)  # per channel: some group of this channel has 2 real values
        if num_batches_tracked is not None:
            num_batches_tracked.add_(has.any().to(num_batches_tracked.dtype))
            if factor is None:
                factor = 1.0 / num_batches_tracked.clamp_min(1).to(mean.dtype)
        unbiased = var * count / (count - 1).clamp_min(1)
        w = ok.to(mean.dtype)
        per_c = w.sum(0).clamp_min(1)
        new_mean = (mean * w).sum(0) / per_c
        new_var = (unbiased * w).sum(0) / per_c
        rm = (1 - factor) * running_mean + factor * new_mean.to(running_mean.dtype)
        rv = (1 - factor) * running_var + factor * new_var.to(running_var.dtype)
        running_mean.copy_(torch.where(has, rm, running_mean))
        running_var.copy_(torch.where(has, rv, running_var))


def _closed_form_backward_is_faster(x, channel_axis) -> bool:
    """Instance norm with the channel innermost in memory: torch's group-norm backward for that
    layout is slow on CPU (1.6x torch.nn's contiguous-copy path at 32x64x56x56), the closed form
    over the same layout is faster than both (``normlab bench``)."""
    return x.dim() > 2 and x.stride(channel_axis) == 1 and x.shape[channel_axis] > 1


def batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, *,
               channel_axis=1, residual=None, activation=None, backend=None, mask=None,
               num_batches_tracked=None):
    """``num_batches_tracked`` (with the running statistics, in training): incremented when
    this batch moves them; ``momentum=None`` then means the cumulative average."""
    if mask is not None:
        c = x.shape[channel_axis]
        if not training:
            plan = spec.plan("batch", tuple(x.shape), channel_axis=channel_axis)
            y, _, _, _ = masked_forward(
                x, plan, _mask_for(x, mask, channel_axis), eps=eps,
                weight=_affine(weight, plan), bias=_affine(bias, plan), residual=residual,
                activation=activation, running_mean=running_mean.reshape(plan.affine_shape),
                running_var=running_var.reshape(plan.affine_shape))
            return y
        plan, (y, mean, var, count) = _masked("batch", x, mask, weight, bias, eps,
                                              channel_axis, residual, activation, backend)
        _update_running_masked(running_mean, running_var, mean, var, count, 1, c, momentum,
                               num_batches_tracked)
        return y
    empty = x.numel() == 0
    momentum = _count_batch(num_batches_tracked, momentum, training and not empty)
    if training and empty:  # an empty batch leaves the running statistics unchanged
        running_mean = running_var = None
    fused = _triton("batch", x, backend, eps=eps, weight=weight, bias=bias, residual=residual,
                    activation=activation, channel_axis=channel_axis) if training else None
    if fused is not None:
        y, mean, var = fused
        c = x.shape[channel_axis]
        _update_running(running_mean, running_var, mean.reshape(1, c), var.reshape(1, c),
                        x.numel() // c, momentum)
        return y
    backend = _without_triton(backend, x)
    if resolve_backend(backend, x) == "native":
        y = native.batch_norm(x, running_mean, running_var, weight, bias, training, momentum,
                              eps, channel_axis)
        return native.epilogue(y, residual, activation)
    plan = spec.plan("batch", tuple(x.shape), channel_axis=channel_axis)
    w, b = _affine(weight, plan), _affine(bias, plan)
    if not training:
        y, _, _ = reference_norm(x, plan, eps=eps, weight=w, bias=b, residual=residual,
                                 activation=activation,
                                 running_mean=running_mean.reshape(plan.affine_shape),
                                 running_var=running_var.reshape(plan.affine_shape))
        return y
    y, mean, var = reference_norm(x, plan, eps=eps, weight=w, bias=b, residual=residual,
                                  activation=activation)
    c = x.shape[channel_axis]
    _update_running(running_mean, running_var, mean.reshape(1, c), var.reshape(1, c),
                    plan.group_size, momentum)
    return y


def instance_norm(x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps, *,
                  channel_axis=1, residual=None, activation=None, backend=None, mask=None,
                  num_batches_tracked=None):
    """``num_batches_tracked`` as in :func:`batch_norm`."""
    if not use_input_stats:  # per-channel constants: the same computation as eval batch norm
        return batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, eps,
                          channel_axis=channel_axis, residual=residual, activation=activation,
                          backend=backend, mask=mask)
    if mask is not None:
        plan, (y, mean, var, count) = _masked("instance", x, mask, weight, bias, eps,
                                              channel_axis, residual, activation, backend)
        _update_running_masked(running_mean, running_var, mean, var, count, x.shape[0],
                               x.shape[channel_axis], momentum, num_batches_tracked)
        return y
    if x.numel() == 0:
        running_mean = running_var = None
    momentum = _count_batch(num_batches_tracked, momentum, running_mean is not None)
    plan = spec.plan("instance", tuple(x.shape), channel_axis=channel_axis)
    n, c = x.shape[0], x.shape[channel_axis]
    fused = _triton("instance", x, backend, eps=eps, weight=weight, bias=bias,
                    residual=residual, activation=activation, channel_axis=channel_axis)
    if fused is not None:
        y, mean, var = fused
        _update_running(running_mean, running_var, mean.reshape(n, c), var.reshape(n, c),
                        plan.group_size, momentum)
        return y
    backend = _without_triton(backend, x)
    if resolve_backend(backend, x) == "native" and _closed_form_backward_is_faster(x, channel_axis):
        y, mean, var = reference_norm(
            x, plan, eps=eps, weight=_affine(weight, plan), bias=_affine(bias, plan),
            forward_impl=functools.partial(native.instance_norm_with_stats,
                                           channel_axis=channel_axis))
        _update_running(running_mean, running_var, mean.reshape(n, c), var.reshape(n, c),
                        plan.group_size, momentum)
        return native.epilogue(y, residual, activation)
    if resolve_backend(backend, x) == "native":
        y = native.instance_norm(x, weight, bias, eps, channel_axis)
        if running_mean is not None:
            with torch.no_grad():
                var, mean = torch.var_mean(x.to(stat_dtype(x.dtype)), plan.reduce_dims,
                                           correction=0)
            _update_running(running_mean, running_var, mean.reshape(n, c), var.reshape(n, c),
                            plan.group_size, momentum)
        return native.epilogue(y, residual, activation)
    y, mean, var = reference_norm(x, plan, eps=eps, weight=_affine(weight, plan),
                                  bias=_affine(bias, plan), residual=residual,
                                  activation=activation)
    _update_running(running_mean, running_var, mean.reshape(n, c), var.reshape(n, c),
                    plan.group_size, momentum)
    return y


def group_norm(x, num_groups, weight, bias, eps, *, channel_axis=1, residual=None,
               activation=None, backend=None, mask=None):
    if mask is not None:
        return _masked("group", x, mask, weight, bias, eps, channel_axis, residual, activation,
                       backend, num_groups=num_groups)[1][0]
    fused = _triton("group", x, backend, eps=eps, weight=weight, bias=bias, residual=residual,
                    activation=activation, channel_axis=channel_axis, num_groups=num_groups)
    if fused is not None:
        return fused[0]
    backend = _without_triton(backend, x)
    if resolve_backend(backend, x) == "native":
        y = native.group_norm(x, num_groups, weight, bias, eps, channel_axis)
        return native.epilogue(y, residual, activation)
    plan = spec.plan("group", tuple(x.shape), channel_axis=channel_axis, num_groups=num_groups)
    y, _, _ = reference_norm(x, plan, eps=eps, weight=_affine(weight, plan),
                             bias=_affine(bias, plan), residual=residual, activation=activation)
    return y


def layer_norm(x, normalized_shape, weight, bias, eps, *, channel_axis=-1, residual=None,
               activation=None, backend=None, mask=None):
    if mask is not None:
        return _masked("layer", x, mask, weight, bias, eps, channel_axis, residual, activation,
                       normalized_ndim=len(normalized_shape))[1][0]
    fused = _triton("layer", x, backend, eps=eps, weight=weight, bias=bias, residual=residual,
                    activation=activation, channel_axis=channel_axis,
                    normalized_ndim=len(normalized_shape))
    if fused is not None:
        return fused[0]
    backend = _without_triton(backend, x)
    if resolve_backend(backend, x) == "native":
        y = native.layer_norm(x, normalized_shape, weight, bias, eps, channel_axis)
        return native.epilogue(y, residual, activation)
    plan = spec.plan("layer", tuple(x.shape), channel_axis=channel_axis,
                     normalized_ndim=len(normalized_shape))
    y, _, _ = reference_norm(x, plan, eps=eps, weight=_affine(weight, plan),
                             bias=_affine(bias, plan), residual=residual, activation=activation)
    return y


def rms_norm(x, normalized_shape, weight, eps, *, channel_axis=-1, residual=None,
             activation=None, backend=None, mask=None):
    if mask is not None:
        return _masked("rms", x, mask, weight, None, eps, channel_axis, residual, activation,
                       normalized_ndim=len(normalized_shape))[1][0]
    fused = _triton("rms", x, backend, eps=eps, weight=weight, residual=residual,
                    activation=activation, channel_axis=channel_axis,
                    normalized_ndim=len(normalized_shape))
    if fused is not None:
        return fused[0]
    backend = _without_triton(backend, x)
    if resolve_backend(backend, x) == "native":
        y = native.rms_norm(x, normalized_shape, weight, eps, channel_axis)
        return native.epilogue(y, residual, activation)
    plan = spec.plan("rms", tuple(x.shape), channel_axis=channel_axis,
                     normalized_ndim=len(normalized_shape))
    y, _, _ = reference_norm(x, plan, eps=eps, weight=_affine(weight, plan), residual=residual,
                             activation=activation)
    return y


def _masked_mean_std(t, plan, mask, eps):
    """Per-(sample, channel) mean and sqrt(var + eps) over the real positions of ``t``."""
    sdt = stat_dtype(t.dtype)
    m = mask.expand(t.shape)
    ts = torch.where(m, t.to(sdt), 0.0)
    count = m.sum(plan.reduce_dims, keepdim=True, dtype=sdt).clamp_min(1.0)
    mean = ts.sum(plan.reduce_dims, keepdim=True) / count
    dev = torch.where(m, ts - mean, 0.0)
    var = (dev * dev).sum(plan.reduce_dims, keepdim=True) / count
    return mean, torch.sqrt(var + eps)


def adaptive_instance_norm(content, style, eps, *, channel_axis=1, residual=None,
                           activation=None, backend=None, content_mask=None, style_mask=None):
    """sigma(style) * (content - mu(content)) / sigma(content) + mu(style), per sample and
    channel over positions; sigma = sqrt(biased variance + eps), for content and style alike.
    Gradients flow to the style through its statistics (ordinary autograd ops)."""
    plan = spec.plan("adain", tuple(content.shape), channel_axis=channel_axis)
    style_plan = spec.plan("adain", tuple(style.shape), channel_axis=channel_axis)
    if content_mask is not None or style_mask is not None:
        if style_mask is None:
            style_mask = torch.ones(1, dtype=torch.bool, device=style.device)
        else:
            style_mask = _mask_for(style, style_mask, channel_axis)
        s_mean, s_std = _masked_mean_std(style, style_plan, style_mask, eps)
        if content_mask is None:
            cm = torch.ones(1, dtype=torch.bool, device=content.device)
        else:
            cm = _mask_for(content, content_mask, channel_axis)
        y, _, _, _ = masked_forward(content, plan, cm, eps=eps, weight=s_std, bias=s_mean,
                                    residual=residual, activation=activation)
        return y
    sdt = stat_dtype(content.dtype)
    s_var, s_mean = torch.var_mean(style.to(sdt), style_plan.reduce_dims, correction=0,
                                   keepdim=True)  # N,C,1.. (or N,1..,C)
    s_std = torch.sqrt(s_var + eps)
    if resolve_backend(backend, content) in ("native", "triton"):  # no AdaIN kernel
        xhat = native.instance_norm(content, None, None, eps, channel_axis)
        y = (xhat.to(sdt) * s_std + s_mean).to(content.dtype)
        return native.epilogue(y, residual, activation)
    y, _, _ = reference_norm(content, plan, eps=eps, weight=s_std, bias=s_mean,
                             residual=residual, activation=activation)
    return y
