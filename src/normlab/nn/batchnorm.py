"""Batch and instance norm modules: torch.nn's constructor arguments, parameter and buffer names.

Beyond torch.nn, every module takes keyword-only ``channel_axis`` (1, or -1 for N x ... x C
inputs), ``activation`` (None, "relu", "gelu", "silu") and ``backend`` (None or a name of
``normlab.ops.BACKENDS``: "triton", "masked", "numba", "hybrid", "native", "reference"; see
``normlab.functional``), and ``forward(input, residual=None)`` computes
``act(norm(input) + residual)``. A call that ran on torch's kernel with nothing around it leaves
the module a shortcut for the next such call (``normlab.nn._shortcut``).
"""

from __future__ import annotations

import torch
from torch import nn

from normlab import functional as F
from normlab.nn._script import NotScriptable
from normlab.nn._shortcut import Shortcuts

__all__ = ["BatchNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm",
           "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"]


class _NormBase(Shortcuts, NotScriptable, nn.Module):
    """State shared by batch and instance norm: affine parameters and running statistics.

    ``bias=False`` (with ``affine=True``) keeps the scale and registers ``bias`` as None, as
    torch.nn does since 2.13.
    """

    _version = 2  # version 2 added num_batches_tracked, as in torch.nn
    _shortcut_buffers = ("running_mean", "running_var", "num_batches_tracked")
    _default_affine = True
    _default_track = True

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, *, bias=True,
                 channel_axis=1, activation=None, backend=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features = F.validate_positive_int(num_features, "num_features")
        self.eps = F.validate_eps(eps)
        self.momentum = F.validate_momentum(momentum)
        F.validate_options(channel_axis=channel_axis, activation=activation, backend=backend)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.channel_axis = channel_axis
        self.activation = activation
        self.backend = backend
        if self.affine:
            self.weight = nn.Parameter(torch.empty(self.num_features, **factory))
            if bias:
                self.bias = nn.Parameter(torch.empty(self.num_features, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            self.register_buffer("running_mean", torch.zeros(self.num_features, **factory))
            self.register_buffer("running_var", torch.ones(self.num_features, **factory))
            self.register_buffer("num_batches_tracked",
                                 torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def _counter(self):
        """``num_batches_tracked`` when this call may move the running statistics (the op
        counts the batch only if it does), else None."""
        if self.training and self.track_running_stats:
            return _read(self, self._buffers, "num_batches_tracked")
        return None

    def _state(self):
        """``(weight, bias, running_mean, running_var)`` as ``self.<name>`` reads them."""
        p, b = self._parameters, self._buffers
        return (_read(self, p, "weight"), _read(self, p, "bias"),
                _read(self, b, "running_mean"), _read(self, b, "running_var"))

    def _momentum(self, counter):
        return self.momentum if counter is not None or self.momentum is not None else 0.0

    def _factor(self, input) -> float:
        """The running-average factor of this training step; counts the batch (for subclasses
        that update the running statistics themselves, without a mask)."""
        factor = 0.0 if self.momentum is None else self.momentum
        if (self.training and self.track_running_stats and self.num_batches_tracked is not None
                and input.numel() > 0):
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        return factor

    def extra_repr(self) -> str:
        s = (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
             f"affine={self.affine}, bias={self.bias is not None}, "
             f"track_running_stats={self.track_running_stats}")
        if self.channel_axis != 1:
            s += f", channel_axis={self.channel_axis}"
        if self.activation is not None:
            s += f", activation={self.activation!r}"
        if self.backend is not None:
            s += f", backend={self.backend!r}"
        return s

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats \
                and key not in state_dict:
            # state dicts saved before num_batches_tracked existed
            state_dict[key] = torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def _read(module, d, name):
    """``module.<name>`` for a parameter or buffer, from its dict ``d`` (``_parameters`` or
    ``_buffers``): a read that falls through to ``nn.Module.__getattr__`` costs ~1-3 us of a
    small numba call, five of them per forward. A name not in ``d`` (a parametrization makes it
    a property) is read as an attribute."""
    return d[name] if name in d else getattr(module, name)


def check_batch_input(module, input) -> None:
    """The rank check of a 1d/2d/3d class (``module._dims``; None: any rank >= 2) and the
    channel count, with the module's name in the messages."""
    name = type(module).__name__
    if module._dims is not None:
        F.check_input_dim(input, module._dims, name)
    F.check_num_features(input, module.num_features, module.channel_axis, name)


class BatchNorm(_NormBase):
    """Batch norm over an (N, C, ...) input of any rank >= 2 (or (N, ..., C) with
    ``channel_axis=-1``): statistics per channel over the batch and all positions.

    As torch.nn: ``momentum=None`` is a cumulative moving average; with
    ``track_running_stats=False`` batch statistics are used in eval mode too. An empty batch
    returns an empty output and leaves every running statistic (and the batch count) unchanged.
    """

    _dims: tuple[int, ...] | None = None  # allowed input ranks; None: any >= 2

    def forward(self, input, residual=None, mask=None):
        """``mask``: bool, the input's shape without the channel axis, True at real positions
        (see ``normlab.functional``)."""
        return self._call(input, residual, mask)

    def _forward(self, input, residual, mask, shortcut=None):
        check_batch_input(self, input)
        counter = self._counter()
        w, b, rm, rv = self._state()
        bn_training = self.training or (rm is None and rv is None)
        if self.training and not self.track_running_stats:  # batch statistics, no buffers
            rm = rv = None
        return F.batch_norm(
            input, rm, rv, w, b, bn_training,
            self._momentum(counter), self.eps, channel_axis=self.channel_axis,
            residual=residual, activation=self.activation, backend=self.backend, mask=mask,
            num_batches_tracked=counter, _shortcut=shortcut)


class BatchNorm1d(BatchNorm):
    """Batch norm over a 2D (N, C) or 3D (N, C, L) input; see :class:`BatchNorm`."""

    _dims = (2, 3)


class BatchNorm2d(BatchNorm):
    """Batch norm over a 4D (N, C, H, W) input; see :class:`BatchNorm`."""

    _dims = (4,)


class BatchNorm3d(BatchNorm):
    """Batch norm over a 5D (N, C, D, H, W) input; see :class:`BatchNorm`."""

    _dims = (5,)


class InstanceNorm(_NormBase):
    """Instance norm over an (N, C, ...) input of rank >= 3: statistics per sample and
    channel over all positions.

    torch.nn's defaults (``affine=False``, ``track_running_stats=False``). With
    ``track_running_stats=True`` the running statistics are used in eval mode; unlike torch.nn,
    ``momentum=None`` then really is a cumulative moving average (torch.nn's InstanceNorm treats
    it as 0, so its running statistics never move) and ``num_batches_tracked`` counts batches.
    The channel count is checked against ``num_features`` even when ``affine=False`` (torch.nn
    only warns).
    """

    _batched_dim: int | None = None  # rank of a batched input; one less means unbatched

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False,
                 track_running_stats=False, device=None, dtype=None, *, bias=True,
                 channel_axis=1, activation=None, backend=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype, bias=bias, channel_axis=channel_axis, activation=activation,
                         backend=backend)

    def forward(self, input, residual=None, mask=None):
        """``mask``: bool, the input's shape without the channel axis, True at real positions
        (see ``normlab.functional``)."""
        return self._call(input, residual, mask)

    def _forward(self, input, residual, mask, shortcut=None):
        name = type(self).__name__
        if self._batched_dim is not None:
            F.check_input_dim(input, (self._batched_dim - 1, self._batched_dim), name)
            if input.dim() == self._batched_dim - 1:  # unbatched: (C, ...)
                residual = None if residual is None else residual.unsqueeze(0)
                mask = None if mask is None else mask.unsqueeze(0)
                return self.forward(input.unsqueeze(0), residual, mask).squeeze(0)
        F.check_num_features(input, self.num_features, self.channel_axis, name)
        counter = self._counter()
        w, b, rm, rv = self._state()
        return F.instance_norm(
            input, rm, rv, w, b,
            self.training or not self.track_running_stats, self._momentum(counter), self.eps,
            channel_axis=self.channel_axis, residual=residual, activation=self.activation,
            backend=self.backend, mask=mask, num_batches_tracked=counter, _shortcut=shortcut)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        if not self.track_running_stats:
            # state dicts of torch.nn before 0.4 carried running stats regardless; drop them
            for name in ("running_mean", "running_var"):
                state_dict.pop(prefix + name, None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


class InstanceNorm1d(InstanceNorm):
    """Instance norm over a 3D (N, C, L) or unbatched 2D (C, L) input; see
    :class:`InstanceNorm`."""

    _batched_dim = 3


class InstanceNorm2d(InstanceNorm):
    """Instance norm over a 4D (N, C, H, W) or unbatched 3D input; see :class:`InstanceNorm`."""

    _batched_dim = 4


class InstanceNorm3d(InstanceNorm):
    """Instance norm over a 5D (N, C, D, H, W) or unbatched 4D input; see
    :class:`InstanceNorm`."""

    _batched_dim = 5
