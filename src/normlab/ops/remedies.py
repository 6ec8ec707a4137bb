"""Batch norm's remedies for small batches: batch renormalization and synchronized statistics.

Inputs arrive validated (``normlab.functional``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from normlab import spec
from normlab.ops import native
from normlab.ops.dispatch import update_running
from normlab.reference import stat_dtype

__all__ = ["batch_renorm", "sync_batch_norm"]


def _plan(x: torch.Tensor, channel_axis: int) -> spec.Plan:
    return spec.plan("batch", tuple(x.shape), channel_axis=channel_axis)


def batch_renorm(x, running_mean, running_var, weight, bias, training, momentum, eps, r_max,
                 d_max, *, channel_axis=1, residual=None, activation=None):
    """Batch renormalization (Ioffe 2017) in training; batch norm with running statistics out
    of training.

    ``xhat = (x - mu_B) / sigma_B * r + d`` with ``r = clip(sigma_B / sigma, 1/r_max, r_max)``
    and ``d = clip((mu_B - mu) / sigma, -d_max, d_max)`` treated as constants in backward
    (sigma = sqrt(running_var + eps), sigma_B = sqrt(biased batch var + eps)). Built from
    differentiable ops: the gradient through mu_B and sigma_B is autograd's.
    """
    if not training or x.numel() == 0:  # an empty batch leaves the running stats unchanged
        y = native.batch_norm(x, running_mean if not training else None,
                              running_var if not training else None, weight, bias, training,
                              0.0, eps, channel_axis)
        return native.epilogue(y, residual, activation)
    sdt = stat_dtype(x.dtype)
    xs = x.to(sdt)
    plan = _plan(x, channel_axis)
    var_b, mu_b = torch.var_mean(xs, plan.reduce_dims, correction=0)  # C
    sigma_b = torch.sqrt(var_b + eps)
    with torch.no_grad():
        sigma = torch.sqrt(running_var.to(sdt) + eps)
        r = (sigma_b / sigma).clamp(1.0 / r_max, r_max)
        d = ((mu_b - running_mean.to(sdt)) / sigma).clamp(-d_max, d_max)
    update_running(running_mean, running_var, mu_b.detach(), var_b.detach(), None, 1,
                   plan.channels, plan.group_size, momentum)
    scale = r / sigma_b
    shift = d - mu_b * scale
    if weight is not None:
        scale = scale * weight.to(sdt)
        shift = shift * weight.to(sdt)
    if bias is not None:
        shift = shift + bias.to(sdt)
    y = (xs * scale.reshape(plan.affine_shape) + shift.reshape(plan.affine_shape)).to(x.dtype)
    return native.epilogue(y, residual, activation)


def _as_channels_first(x: torch.Tensor, channel_axis: int) -> torch.Tensor:
    """A view with the channel at axis 1 that torch's batch-norm kernels take as it is."""
    if channel_axis == -1 and x.dim() > 2:
        return x.reshape(-1, x.shape[-1])  # every position of every sample is one row
    return x


class _SyncBatchNorm(torch.autograd.Function):
    """Batch norm whose statistics are those of the batch concatenated over the processes of
    ``group``: one all_gather of (count, mean, M2) per channel in forward, merged with Chan et
    al.'s formula in float64; one all_reduce of (sum dy, sum dy * xhat) in backward. The
    per-element passes are torch's fused batch-norm kernels (local statistics, the affine
    output, the local sums of the backward)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, channel_axis,
                group, world):
        sdt = stat_dtype(x.dtype)
        c = x.shape[channel_axis]
        xin = _as_channels_first(x.to(sdt), channel_axis)
        n_local = x.numel() // c
        if n_local > 0:
            _, mean_l, rstd_l = torch.native_batch_norm(xin, None, None, None, None, True,
                                                        0.0, eps)
            var_l = (rstd_l.double().pow(-2) - eps).clamp_min(0)
        else:  # an empty rank still joins the collective, contributing nothing
            mean_l = var_l = torch.zeros(c, dtype=torch.float64, device=x.device)
        packed = torch.cat([torch.tensor([float(n_local)], dtype=torch.float64,
                                         device=x.device),
                            mean_l.double(), var_l.double() * n_local])  # 1 + 2C
        gathered = [torch.empty_like(packed) for _ in range(world)]
        dist.all_gather(gathered, packed, group=group)
        allp = torch.stack(gathered)  # W, 1 + 2C
        counts, means, m2s = allp[:, :1], allp[:, 1:1 + c], allp[:, 1 + c:]
        n = counts.sum()
        if n <= 1:
            raise ValueError("Expected more than 1 value per channel when training, got "
                             f"{int(n.item())} value(s) per channel over all processes")
        mean = (counts * means).sum(0) / n
        var = (m2s.sum(0) + (counts * (means - mean) ** 2).sum(0)) / n  # Chan et al.'s merge
        update_running(running_mean, running_var, mean, var, None, 1, c, float(n), momentum)
        mean_s, var_s = mean.to(sdt), var.to(sdt)
        w = None if weight is None else weight.to(sdt)
        b = None if bias is None else bias.to(sdt)
        y = torch.nn.functional.batch_norm(xin, mean_s, var_s, w, b, False, 0.0, eps)
        rstd = torch.rsqrt(var_s + eps)
        ctx.save_for_backward(x, weight, mean_s, rstd)
        ctx.n, ctx.channel_axis, ctx.group = n.item(), channel_axis, group
        ctx.bias_dtype, ctx.eps = None if bias is None else bias.dtype, eps
        return y.reshape(x.shape).to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensors
        sdt = stat_dtype(x.dtype)
        c = mean.numel()
        xin = _as_channels_first(x.to(sdt), ctx.channel_axis)
        dyin = _as_channels_first(dy.to(sdt), ctx.channel_axis)
        w = torch.ones(c, dtype=sdt, device=x.device) if weight is None else weight.to(sdt)
        if x.numel() > 0:
            # local sum(dy * xhat) and sum(dy), xhat from the global statistics
            _, s2, s1 = torch.ops.aten.native_batch_norm_backward(
                dyin, xin, w, None, None, mean, rstd, True, ctx.eps, [False, True, True])
        else:
            s1 = s2 = torch.zeros(c, dtype=sdt, device=x.device)
        sums = torch.cat([s1, s2]).double()  # 2C
        dist.all_reduce(sums, group=ctx.group)
        g1, g2 = sums[:c].to(sdt), sums[c:].to(sdt)
        # dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * w, i.e. per channel
        # dx = a * dy + b * x + c0
        a = rstd * w
        b = -rstd * rstd * w * g2 / ctx.n
        c0 = -a * g1 / ctx.n - mean * b
        shape = [1] * xin.dim()
        shape[1] = c
        dx = xin * b.reshape(shape)
        dx.add_(c0.reshape(shape)).addcmul_(dyin, a.reshape(shape))
        dx = dx.reshape(x.shape).to(x.dtype)
        dweight = s2.to(weight.dtype) if weight is not None else None
        dbias = s1.to(ctx.bias_dtype) if ctx.bias_dtype is not None else None
        return dx, dweight, dbias, None, None, None, None, None, None, None


def sync_batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, *,
                    channel_axis=1, process_group=None, residual=None, activation=None):
    """Batch norm with statistics synchronized over ``process_group`` in training. Out of
    training, or with one process (or torch.distributed not initialized), it is plain batch
    norm and nothing is communicated."""
    world = (dist.get_world_size(process_group)
             if dist.is_available() and dist.is_initialized() else 1)
    if not training or world == 1:
        if training and x.numel() == 0:
            running_mean = running_var = None
        y = native.batch_norm(x, running_mean, running_var, weight, bias, training, momentum,
                              eps, channel_axis)
        return native.epilogue(y, residual, activation)
    y = _SyncBatchNorm.apply(x, weight, bias, running_mean, running_var, momentum, eps,
                             channel_axis, process_group, world)
    return native.epilogue(y, residual, activation)
