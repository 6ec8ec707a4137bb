"""torch.nn-compatible normalization modules (same constructor arguments, parameter and buffer
names, so state dicts load both ways), plus channel_axis, fused activation and residual."""

from normlab.nn.batchnorm import (
    BatchNorm,
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    InstanceNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
)
from normlab.nn.normalization import AdaptiveInstanceNorm, GroupNorm, LayerNorm, RMSNorm

__all__ = ["AdaptiveInstanceNorm", "BatchNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
           "GroupNorm", "InstanceNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
           "LayerNorm", "RMSNorm"]
