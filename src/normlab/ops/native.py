"""The native path: torch's own kernels where their semantics match normlab's.

Layouts torch does not take directly are turned into ones it does by views, never copies where
a view will do: a channels-last (N, ..., C) input becomes an (N*..., C) matrix for batch norm and
a channels_last (N, C, 1, P) image for group and instance norm, whose CPU kernels have a
channels_last path. Two places where torch's CPU kernels are not what normlab promises are
routed around here:

* float16 batch and group norm accumulate the variance in half precision on CPU and overflow
  for values near 7e4; those run on a float32 copy and are cast back.
* ``instance_norm`` returns contiguous output for channels_last input; normlab computes instance
  norm as group norm with one group per channel (the same statistics), which keeps the layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from normlab.reference import apply_activation

__all__ = ["batch_norm", "epilogue", "group_norm", "instance_norm", "instance_norm_with_stats",
           "layer_norm", "rms_norm"]


def epilogue(y: torch.Tensor, residual: torch.Tensor | None, activation: str | None):
    """act(y + residual), composed from eager ops (the kernels fuse it later)."""
    if residual is not None:
        y = y + residual
    return apply_activation(y, activation)


def _needs_upcast(x: torch.Tensor) -> bool:
    return x.dtype == torch.float16 and x.device.type == "cpu"


def _channels_last_image(x: torch.Tensor) -> torch.Tensor:
    """(N, S..., C) -> an (N, C, 1, P) view in channels_last layout (a copy only if x is not
    contiguous)."""
    n, c = x.shape[0], x.shape[-1]
    return x.reshape(n, 1, -1, c).permute(0, 3, 1, 2)


def _from_channels_last_image(y: torch.Tensor, shape) -> torch.Tensor:
    return y.permute(0, 2, 3, 1).reshape(shape)


def _float(t):
    return t.float() if t is not None and t.dtype in (torch.float16, torch.bfloat16) else t


def _mixed(*ts) -> bool:
    """Whether the given tensors (None skipped) have more than one dtype: normlab accepts a
    half input's parameters in its dtype and float32 mixed, torch's kernels want one dtype (the
    half ones are then cast to float32, which torch takes beside a half input)."""
    d = None
    for t in ts:
        if t is not None:
            if d is None:
                d = t.dtype
            elif t.dtype != d:
                return True
    return False


def batch_norm(x, running_mean, running_var, weight, bias, training, factor, eps, channel_axis):
    """F.batch_norm with the channel at ``channel_axis``; updates the running stats in place."""
    rm, rv = running_mean, running_var
    x_in = x
    if _needs_upcast(x) or _mixed(weight, bias, rm, rv):
        x_in = x.float() if _needs_upcast(x) else x
        weight, bias, rm, rv = _float(weight), _float(bias), _float(rm), _float(rv)
    if channel_axis == -1 and x.dim() > 2:
        # every position of every sample is one row of an (N*..., C) matrix
        y = F.batch_norm(x_in.reshape(-1, x.shape[-1]), rm, rv, weight, bias, training, factor,
                         eps).reshape(x.shape)
    else:
        y = F.batch_norm(x_in, rm, rv, weight, bias, training, factor, eps)
    if training and (rm is not running_mean or rv is not running_var):
        with torch.no_grad():  # half buffers were updated through float32 copies
            running_mean.copy_(rm)
            running_var.copy_(rv)
    return y if x_in is x else y.to(x.dtype)


def _forward_rule_safe(x: torch.Tensor) -> torch.Tensor:
    """``x``, contiguous under forward-mode AD or a torch.func transform: torch's forward-mode
    rule for group norm views its input as (N, G, -1), which raises on a channels-last one
    (torch.nn.GroupNorm raises there too; torch.nn.InstanceNorm, which normlab runs as group
    norm, does not)."""
    if x.is_contiguous() or (torch.autograd.forward_ad._current_level < 0
                             and not torch._C._are_functorch_transforms_active()):
        return x
    return x.contiguous()


def group_norm(x, num_groups, weight, bias, eps, channel_axis):
    xin = x
    if _needs_upcast(x) or _mixed(weight, bias):
        xin = x.float() if _needs_upcast(x) else x
        weight, bias = _float(weight), _float(bias)
    if channel_axis == -1 and x.dim() > 2:
        y = F.group_norm(_forward_rule_safe(_channels_last_image(xin)), num_groups, weight,
                         bias, eps)
        y = _from_channels_last_image(y, x.shape)
    else:
        y = F.group_norm(_forward_rule_safe(xin), num_groups, weight, bias, eps)
    return y if xin is x else y.to(x.dtype)


def instance_norm(x, weight, bias, eps, channel_axis):
    """Instance norm with input statistics, as group norm with one group per channel."""
    c = x.shape[channel_axis]
    return group_norm(x, c, weight, bias, eps, channel_axis)


def _dense_for_native(x: torch.Tensor) -> bool:
    """Whether torch's group-norm kernel takes ``x`` as it is (contiguous or channels_last)."""
    return (x.is_contiguous()
            or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))
            or (x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d)))


def instance_norm_with_stats(x, weight, bias, eps, channel_axis):
    """Instance norm by torch's group norm kernel (one group per channel), also returning the
    statistics: ``(y, mean, rstd)``, mean and rstd of shape (N, C) in float32 (float64 for
    float64 input). No autograd: for a Function's forward. Any strides: a channels-innermost
    tensor of any rank is handled as channels-last, anything else is made contiguous."""
    if channel_axis == 1 and not _dense_for_native(x):
        moved = x.movedim(1, -1)
        if moved.is_contiguous():
            y, mean, rstd = instance_norm_with_stats(moved, weight, bias, eps, -1)
            return y.movedim(-1, 1), mean, rstd
        x = x.contiguous()
    n, c = x.shape[0], x.shape[channel_axis]
    xin = x.float() if _needs_upcast(x) else x
    if channel_axis == -1:
        xin = _channels_last_image(xin)
    hxw = xin.numel() // max(n * c, 1)
    w = None if weight is None else weight.reshape(c).to(xin.dtype)
    b = None if bias is None else bias.reshape(c).to(xin.dtype)
    y, mean, rstd = torch.ops.aten.native_group_norm(xin, w, b, n, c, hxw, c, eps)
    if channel_axis == -1:
        y = _from_channels_last_image(y, x.shape)
    return y.to(x.dtype), mean, rstd


def _block_last(x: torch.Tensor, k: int):
    """Permutation moving dims 1..k (the normalized block) to the end, and its inverse."""
    nd = x.dim()
    perm = [0, *range(k + 1, nd), *range(1, k + 1)]
    inv = [perm.index(d) for d in range(nd)]
    return perm, inv


def _restore_layout(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if y.stride() != like.stride() and like.numel() > 0:
        return torch.empty_like(like).copy_(y)
    return y


def layer_norm(x, normalized_shape, weight, bias, eps, channel_axis):
    if _mixed(weight, bias):
        weight, bias = _float(weight), _float(bias)
    if channel_axis == -1:
        return F.layer_norm(x, normalized_shape, weight, bias, eps)
    perm, inv = _block_last(x, len(normalized_shape))
    y = F.layer_norm(x.permute(perm), normalized_shape, weight, bias, eps).permute(inv)
    return _restore_layout(y, x)


def rms_norm(x, normalized_shape, weight, eps, channel_axis):
    if channel_axis == -1:
        xin, inv = x, None
    else:
        perm, inv = _block_last(x, len(normalized_shape))
        xin = x.permute(perm)
    if weight is not None and weight.dtype != x.dtype:
        # torch's fused kernel wants matching dtypes; scale after, in the promoted dtype
        y = (F.rms_norm(xin, normalized_shape, None, eps) * weight).to(x.dtype)
    else:
        y = F.rms_norm(xin, normalized_shape, weight, eps)
    if inv is not None:
        y = _restore_layout(y.permute(inv), x)
    return y
