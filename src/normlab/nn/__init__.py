"""torch.nn-compatible normalization modules (same constructor arguments, parameter and buffer
names, so state dicts load both ways), plus channel_axis, fused activation and residual; and
the pointwise replacements of a layer norm, DynamicTanh (DyT) and Derf."""

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
from normlab.nn.pointwise import Derf, DynamicTanh
from normlab.nn.recurrent import (
    BatchNormLSTMCell,
    LayerNormGRUCell,
    LayerNormLSTMCell,
    Recurrent,
)
from normlab.nn.remedies import (
    BatchRenorm,
    BatchRenorm1d,
    BatchRenorm2d,
    BatchRenorm3d,
    FrozenBatchNorm,
    FrozenBatchNorm1d,
    FrozenBatchNorm2d,
    FrozenBatchNorm3d,
    GhostBatchNorm,
    GhostBatchNorm1d,
    GhostBatchNorm2d,
    SyncBatchNorm,
)

__all__ = ["AdaptiveInstanceNorm", "BatchNorm", "BatchNormLSTMCell", "LayerNormGRUCell",
           "LayerNormLSTMCell", "Recurrent", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
           "BatchRenorm", "BatchRenorm1d", "BatchRenorm2d", "BatchRenorm3d", "Derf",
           "DynamicTanh", "FrozenBatchNorm",
           "FrozenBatchNorm1d", "FrozenBatchNorm2d", "FrozenBatchNorm3d", "GhostBatchNorm",
           "GhostBatchNorm1d", "GhostBatchNorm2d", "GroupNorm", "InstanceNorm", "InstanceNorm1d",
           "InstanceNorm2d", "InstanceNorm3d", "LayerNorm", "RMSNorm", "SyncBatchNorm"]
