"""Layer, group, RMS and adaptive instance norm modules (torch.nn's names and arguments).

Layer, group and RMS norm keep a shortcut to torch's kernel as batch norm does
(``normlab.nn._shortcut``)."""

from __future__ import annotations

import torch
from torch import nn

from normlab import functional as F
from normlab.nn._script import NotScriptable
from normlab.nn._shortcut import Shortcuts

__all__ = ["AdaptiveInstanceNorm", "GroupNorm", "LayerNorm", "RMSNorm"]


def _extras(module, default_axis: int) -> str:
    s = ""
    if module.channel_axis != default_axis:
        s += f", channel_axis={module.channel_axis}"
    if module.activation is not None:
        s += f", activation={module.activation!r}"
    if module.backend is not None:
        s += f", backend={module.backend!r}"
    return s


class LayerNorm(Shortcuts, NotScriptable, nn.Module):
    """Layer norm over the ``normalized_shape`` block of each sample; per-element affine.

    ``channel_axis=-1`` (default, torch.nn's convention): the block is the trailing dims.
    ``channel_axis=1``: the block starts at axis 1, so ``LayerNorm(C, channel_axis=1)``
    normalizes an (N, C, H, W) input over its channels at each position (ConvNeXt's
    channels-first layer norm). ``bias=False`` registers ``bias`` as None.
    """

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 device=None, dtype=None, *, channel_axis=-1, activation=None, backend=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.normalized_shape = F.normalize_shape(normalized_shape)
        self.eps = F.validate_eps(eps)
        F.validate_options(channel_axis=channel_axis, activation=activation, backend=backend)
        self.elementwise_affine = bool(elementwise_affine)
        self.channel_axis, self.activation, self.backend = channel_axis, activation, backend
        if self.elementwise_affine:
            self.weight = nn.Parameter(torch.empty(self.normalized_shape, **factory))
            if bias:
                self.bias = nn.Parameter(torch.empty(self.normalized_shape, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, input, residual=None, mask=None):
        return self._call(input, residual, mask)

    def _forward(self, input, residual, mask, shortcut=None):
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps,
                            channel_axis=self.channel_axis, residual=residual,
                            activation=self.activation, backend=self.backend, mask=mask,
                            _shortcut=shortcut)

    def extra_repr(self) -> str:
        s = (f"{self.normalized_shape}, eps={self.eps}, "
             f"elementwise_affine={self.elementwise_affine}")
        if self.elementwise_affine and self.bias is None:
            s += ", bias=False"
        return s + _extras(self, -1)


class RMSNorm(Shortcuts, NotScriptable, nn.Module):
    """RMS norm (Zhang & Sennrich 2019): ``x / sqrt(mean(x^2) + eps) * weight`` over the
    ``normalized_shape`` block; ``eps=None`` uses the machine epsilon of the statistics' dtype
    as torch.nn.RMSNorm's kernel does (``torch.finfo(input.dtype).eps``; float32's for float16
    and bfloat16 input, see ``normlab.functional.rms_norm``). ``channel_axis`` as in
    :class:`LayerNorm`."""

    _shortcut_params = ("weight",)

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, device=None,
                 dtype=None, *, channel_axis=-1, activation=None, backend=None):
        super().__init__()
        self.normalized_shape = F.normalize_shape(normalized_shape)
        self.eps = None if eps is None else F.validate_eps(eps)
        F.validate_options(channel_axis=channel_axis, activation=activation, backend=backend)
        self.elementwise_affine = bool(elementwise_affine)
        self.channel_axis, self.activation, self.backend = channel_axis, activation, backend
        if self.elementwise_affine:
            self.weight = nn.Parameter(torch.empty(self.normalized_shape, device=device,
                                                   dtype=dtype))
        else:
            self.register_parameter("weight", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)

    def forward(self, input, residual=None, mask=None):
        return self._call(input, residual, mask)

    def _forward(self, input, residual, mask, shortcut=None):
        return F.rms_norm(input, self.normalized_shape, self.weight, self.eps,
                          channel_axis=self.channel_axis, residual=residual,
                          activation=self.activation, backend=self.backend, mask=mask,
                          _shortcut=shortcut)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}" + _extras(self, -1))


class GroupNorm(Shortcuts, NotScriptable, nn.Module):
    """Group norm (Wu & He 2018): statistics per sample over ``num_channels / num_groups``
    consecutive channels and all positions; per-channel affine. ``num_groups`` must divide
    ``num_channels`` (checked here, at construction)."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, device=None,
                 dtype=None, *, bias=True, channel_axis=1, activation=None, backend=None):
        super().__init__()
        self.num_channels = F.validate_positive_int(num_channels, "num_channels")
        F.validate_num_groups(num_groups, self.num_channels)
        self.num_groups = int(num_groups)
        self.eps = F.validate_eps(eps)
        F.validate_options(channel_axis=channel_axis, activation=activation, backend=backend)
        self.affine = bool(affine)
        self.channel_axis, self.activation, self.backend = channel_axis, activation, backend
        if self.affine:
            self.weight = nn.Parameter(torch.empty(self.num_channels, device=device, dtype=dtype))
            if bias:
                self.bias = nn.Parameter(torch.empty(self.num_channels, device=device,
                                                     dtype=dtype))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def forward(self, input, residual=None, mask=None):
        return self._call(input, residual, mask)

    def _forward(self, input, residual, mask, shortcut=None):
        F.check_num_features(input, self.num_channels, self.channel_axis, "GroupNorm")
        return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps,
                            channel_axis=self.channel_axis, residual=residual,
                            activation=self.activation, backend=self.backend, mask=mask,
                            _shortcut=shortcut)

    def extra_repr(self) -> str:
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
                f"bias={self.bias is not None}" + _extras(self, 1))


class AdaptiveInstanceNorm(NotScriptable, nn.Module):
    """AdaIN (Huang & Belongie 2017): ``forward(content, style)`` gives the content normalized
    per sample and channel, scaled and shifted by the style's per-channel std and mean. No
    parameters; ``num_features`` is checked against both inputs."""

    def __init__(self, num_features, eps=1e-5, *, channel_axis=1, activation=None,
                 backend=None):
        super().__init__()
        self.num_features = F.validate_positive_int(num_features, "num_features")
        self.eps = F.validate_eps(eps)
        F.validate_options(channel_axis=channel_axis, activation=activation, backend=backend)
        self.channel_axis, self.activation, self.backend = channel_axis, activation, backend

    def forward(self, content, style, residual=None, content_mask=None, style_mask=None):
        F.check_num_features(content, self.num_features, self.channel_axis,
                             "AdaptiveInstanceNorm")
        return F.adaptive_instance_norm(content, style, self.eps,
                                        channel_axis=self.channel_axis, residual=residual,
                                        activation=self.activation, backend=self.backend,
                                        content_mask=content_mask, style_mask=style_mask)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}" + _extras(self, 1)
