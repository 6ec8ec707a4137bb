"""Name -> normalization layer, with one constructor convention: the channel count first.

``create_norm_layer(name, num_channels, **kwargs)`` builds any kind from the same call, so one
kind can replace another in a model. Every layer is built for channels at ``channel_axis``
(default 1, i.e. N x C x ...; pass ``channel_axis=-1`` for N x ... x C):

========= ===================================================================================
name      layer built for ``num_channels=C``
========= ===================================================================================
none      ``torch.nn.Identity()`` (the no-normalization baseline; kwargs are ignored)
batch     ``BatchNorm(C)``: any input rank >= 2
instance  ``InstanceNorm(C)``: torch.nn's defaults (affine=False, no running statistics)
group     ``GroupNorm(num_groups, C)``; ``num_groups`` defaults to gcd(32, C), the largest
          power of two <= 32 that divides C (Wu & He's 32 groups where C allows)
layer     ``LayerNorm(C, channel_axis=1)``: over the channels at each position (for a whole-
          sample layer norm over C x H x W use ``group`` with ``num_groups=1``)
rms       ``RMSNorm(C, channel_axis=1)``: as ``layer``, without the mean
adain     ``AdaptiveInstanceNorm(C)``: ``forward(content, style)``
renorm    ``BatchRenorm(C)``: batch renormalization (r_max=3, d_max=5)
ghost     ``GhostBatchNorm(C)``: statistics per virtual batch (``virtual_batch_size=32``)
frozen    ``FrozenBatchNorm(C)``: fixed statistics and affine (buffers only)
sync      ``SyncBatchNorm(C)``: statistics over the processes of ``process_group``
dyt       ``DynamicTanh(C, channel_axis=1)``: ``w * tanh(alpha * x) + b`` per position, no
          statistics (``alpha_init=0.5``)
derf      ``Derf(C, channel_axis=1)``: ``w * erf(alpha * x + s) + b``, no statistics
========= ===================================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from normlab import nn

__all__ = ["create_norm_layer", "get_norm_layer", "list_norm_layers"]


@dataclass(frozen=True)
class _Entry:
    cls: type
    build: Callable[..., torch.nn.Module]


def _none(c, **kwargs):
    return torch.nn.Identity()


def _group(c, num_groups=None, **kwargs):
    return nn.GroupNorm(math.gcd(32, c) if num_groups is None else num_groups, c, **kwargs)


def _per_position(cls):
    def build(c, channel_axis=1, **kwargs):
        return cls(c, channel_axis=channel_axis, **kwargs)
    return build


_REGISTRY: dict[str, _Entry] = {
    "none": _Entry(torch.nn.Identity, _none),
    "batch": _Entry(nn.BatchNorm, nn.BatchNorm),
    "instance": _Entry(nn.InstanceNorm, nn.InstanceNorm),
    "group": _Entry(nn.GroupNorm, _group),
    "layer": _Entry(nn.LayerNorm, _per_position(nn.LayerNorm)),
    "rms": _Entry(nn.RMSNorm, _per_position(nn.RMSNorm)),
    "adain": _Entry(nn.AdaptiveInstanceNorm, nn.AdaptiveInstanceNorm),
    "renorm": _Entry(nn.BatchRenorm, nn.BatchRenorm),
    "ghost": _Entry(nn.GhostBatchNorm, nn.GhostBatchNorm),
    "frozen": _Entry(nn.FrozenBatchNorm, nn.FrozenBatchNorm),
    "sync": _Entry(nn.SyncBatchNorm, nn.SyncBatchNorm),
    "dyt": _Entry(nn.DynamicTanh, _per_position(nn.DynamicTanh)),
    "derf": _Entry(nn.Derf, _per_position(nn.Derf)),
}


def list_norm_layers() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def _entry(name) -> _Entry:
    key = name.lower() if isinstance(name, str) else name
    if key not in _REGISTRY:
        raise ValueError(f"name must be one of {list_norm_layers()}, got {name!r}")
    return _REGISTRY[key]


def get_norm_layer(name: str) -> type:
    """The module class registered as ``name``."""
    return _entry(name).cls


def create_norm_layer(name: str, num_channels: int, **kwargs) -> torch.nn.Module:
    """A ``name`` layer for ``num_channels`` channels; ``kwargs`` go to its constructor."""
    return _entry(name).build(num_channels, **kwargs)
