"""Batch norm's remedies for small batches and for fine-tuning: batch renormalization, ghost
(virtual) batches, frozen statistics, statistics synchronized over processes.

All keep batch norm's parameter and buffer names (weight, bias, running_mean, running_var,
num_batches_tracked), so a BatchNorm state dict loads into them and back.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from normlab import functional as F
from normlab.nn._script import NotScriptable
from normlab.nn.batchnorm import BatchNorm, check_batch_input

__all__ = ["BatchRenorm", "BatchRenorm1d", "BatchRenorm2d", "BatchRenorm3d", "FrozenBatchNorm",
           "FrozenBatchNorm1d", "FrozenBatchNorm2d", "FrozenBatchNorm3d", "GhostBatchNorm",
           "GhostBatchNorm1d", "GhostBatchNorm2d", "SyncBatchNorm"]


class BatchRenorm(BatchNorm):
    """Batch renormalization (Ioffe 2017), any input rank >= 2.

    In training the batch statistics are corrected towards the running ones:
    ``xhat = (x - mu_B) / sigma_B * r + d``, ``r = clip(sigma_B / sigma, 1/r_max, r_max)``,
    ``d = clip((mu_B - mu) / sigma, -d_max, d_max)``, r and d constant in backward; in eval,
    batch norm with the running statistics. ``warmup_steps > 0`` ramps the limits linearly from
    (1, 0) — plain batch norm — to (r_max, d_max) over that many training batches, as the
    paper does. With ``r_max=1, d_max=0`` it is batch norm. The running statistics are always
    tracked (they are part of the method); ``momentum`` defaults to 0.01 as in the paper's
    experiments (a larger one makes sigma follow the batch and r stay near 1).

    ``virtual_batch_size=k`` renormalizes ghost batches, as :class:`GhostBatchNorm` does batch
    norm: in training the batch is split into consecutive chunks of ``k`` samples (the last
    may be smaller), each renormalized with its own statistics against the running ones as they
    stand, which it then updates — exactly this module applied to each chunk in order, so the
    running statistics, the batch count and the warm-up all move once per chunk (Ioffe 2017's
    small-minibatch setting, its "sets of 4", inside one batch). ``None`` (the default): the
    whole batch.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.01, affine=True, r_max=3.0,
                 d_max=5.0, warmup_steps=0, device=None, dtype=None, *, bias=True,
                 channel_axis=1, activation=None, virtual_batch_size=None):
        super().__init__(num_features, eps, momentum, affine, True, device, dtype, bias=bias,
                         channel_axis=channel_axis, activation=activation)
        self.r_max, self.d_max = F.validate_renorm_limits(r_max, d_max)
        self.warmup_steps = F.validate_nonnegative_int(warmup_steps, "warmup_steps")
        self.virtual_batch_size = None if virtual_batch_size is None else \
            F.validate_positive_int(virtual_batch_size, "virtual_batch_size")

    def current_limits(self) -> tuple[float, float]:
        """(r_max, d_max) at this point of the warm-up."""
        if not self.warmup_steps:
            return self.r_max, self.d_max
        t = min(1.0, float(self.num_batches_tracked) / self.warmup_steps)
        return 1.0 + (self.r_max - 1.0) * t, self.d_max * t

    def forward(self, input, residual=None):
        check_batch_input(self, input)
        if self.training and self.virtual_batch_size is not None:
            return _per_chunk(self._renorm, input, residual, self.virtual_batch_size)
        return self._renorm(input, residual)

    def _renorm(self, input, residual):
        r_max, d_max = self.current_limits()
        factor = self._factor(input)
        return F.batch_renorm(input, self.running_mean, self.running_var, self.weight,
                              self.bias, self.training, factor, self.eps, r_max, d_max,
                              channel_axis=self.channel_axis, residual=residual,
                              activation=self.activation)

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", r_max={self.r_max}, d_max={self.d_max}"
        s += f", warmup_steps={self.warmup_steps}" if self.warmup_steps else ""
        return s + (f", virtual_batch_size={self.virtual_batch_size}"
                    if self.virtual_batch_size is not None else "")


def _per_chunk(step, input, residual, size: int):
    """``step(chunk, residual_chunk)`` on consecutive chunks of ``size`` samples of ``input``
    (the last may be smaller), in order, concatenated: ghost batches. A batch of at most
    ``size`` samples, or a residual of another shape (``step`` then raises the functional's
    error), is one call."""
    if input.shape[0] <= size or (residual is not None and residual.shape != input.shape):
        return step(input, residual)
    chunks = input.split(size)
    res = (None,) * len(chunks) if residual is None else residual.split(size)
    return torch.cat([step(x, r) for x, r in zip(chunks, res, strict=True)])


class BatchRenorm1d(BatchRenorm):
    _dims = (2, 3)


class BatchRenorm2d(BatchRenorm):
    _dims = (4,)


class BatchRenorm3d(BatchRenorm):
    _dims = (5,)


class GhostBatchNorm(BatchNorm):
    """Ghost (virtual) batch norm (Hoffer et al. 2017): in training the batch is split into
    consecutive groups of ``virtual_batch_size`` samples (the last one may be smaller), each
    normalized with its own statistics, the running statistics updated once per group in order
    — exactly batch norm applied to each chunk. Eval: batch norm with running statistics."""

    def __init__(self, num_features, virtual_batch_size=32, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, *, bias=True,
                 channel_axis=1, activation=None, backend=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype, bias=bias, channel_axis=channel_axis, activation=activation,
                         backend=backend)
        self.virtual_batch_size = F.validate_positive_int(virtual_batch_size,
                                                          "virtual_batch_size")

    def forward(self, input, residual=None):
        if not self.training:
            return super().forward(input, residual)
        check_batch_input(self, input)
        return _per_chunk(super().forward, input, residual, self.virtual_batch_size)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", virtual_batch_size={self.virtual_batch_size}"


class GhostBatchNorm1d(GhostBatchNorm):
    _dims = (2, 3)


class GhostBatchNorm2d(GhostBatchNorm):
    _dims = (4,)


class FrozenBatchNorm(NotScriptable, nn.Module):
    """Batch norm with everything frozen: weight, bias, running_mean and running_var are
    buffers (no parameters), and the running statistics are used in training too —
    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``. For fine-tuning
    with small batches. Loads a BatchNorm state dict (``num_batches_tracked`` is ignored)."""

    _dims: tuple[int, ...] | None = None

    def __init__(self, num_features, eps=1e-5, device=None, dtype=None, *, channel_axis=1,
                 activation=None):
        super().__init__()
        self.num_features = F.validate_positive_int(num_features, "num_features")
        self.eps = F.validate_eps(eps)
        F.validate_options(channel_axis=channel_axis, activation=activation)
        self.channel_axis, self.activation = channel_axis, activation
        factory = {"device": device, "dtype": dtype}
        self.register_buffer("weight", torch.ones(self.num_features, **factory))
        self.register_buffer("bias", torch.zeros(self.num_features, **factory))
        self.register_buffer("running_mean", torch.zeros(self.num_features, **factory))
        self.register_buffer("running_var", torch.ones(self.num_features, **factory))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def forward(self, input, residual=None):
        check_batch_input(self, input)
        return F.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                            False, 0.0, self.eps, channel_axis=self.channel_axis,
                            residual=residual, activation=self.activation)

    def extra_repr(self) -> str:
        s = f"{self.num_features}, eps={self.eps}"
        if self.channel_axis != 1:
            s += f", channel_axis={self.channel_axis}"
        return s + (f", activation={self.activation!r}" if self.activation else "")


class FrozenBatchNorm1d(FrozenBatchNorm):
    _dims = (2, 3)


class FrozenBatchNorm2d(FrozenBatchNorm):
    _dims = (4,)


class FrozenBatchNorm3d(FrozenBatchNorm):
    _dims = (5,)


class SyncBatchNorm(BatchNorm):
    """Batch norm whose training statistics are those of the batch concatenated over the
    processes of ``process_group`` (default: the world), on any torch.distributed backend (gloo
    on CPU, nccl on GPU). Uneven batches and empty batches give exactly the concatenated
    batch's statistics (every process must call forward and backward, an empty one too).
    Eval mode, or a single process, communicates nothing. Any input rank >= 2."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, process_group=None, device=None, dtype=None, *,
                 bias=True, channel_axis=1, activation=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype, bias=bias, channel_axis=channel_axis, activation=activation)
        self.process_group = process_group

    def forward(self, input, residual=None):
        F.check_num_features(input, self.num_features, self.channel_axis, "SyncBatchNorm")
        factor = 0.0 if self.momentum is None else self.momentum
        distributed = dist.is_available() and dist.is_initialized() \
            and dist.get_world_size(self.process_group) > 1
        if self.training and self.track_running_stats and (distributed or input.numel() > 0):
            # every process counts the batch (an empty local batch is part of a global one);
            # alone, an empty batch moves nothing and is not counted, as in BatchNorm
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        use_buffers = not self.training or self.track_running_stats
        return F.sync_batch_norm(
            input, self.running_mean if use_buffers else None,
            self.running_var if use_buffers else None, self.weight, self.bias, bn_training,
            factor, self.eps, process_group=self.process_group, channel_axis=self.channel_axis,
            residual=residual, activation=self.activation)
