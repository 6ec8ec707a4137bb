"""The pointwise replacements of a normalization layer: DyT and Derf (no statistics)."""

from __future__ import annotations

import torch
from torch import nn

from normlab import functional as F
from normlab.nn._script import NotScriptable
from normlab.nn.normalization import _extras

__all__ = ["Derf", "DynamicTanh"]


class _Pointwise(NotScriptable, nn.Module):
    """The state both kinds share: ``alpha`` (shape (1,), as the DyT authors' code, so their
    state dicts load), and ``weight``/``bias`` over ``normalized_shape`` as
    :class:`normlab.nn.LayerNorm`'s (``elementwise_affine``, ``bias``; a slot that is off is
    registered as None). ``channel_axis`` as in LayerNorm: ``-1`` (default) the trailing dims,
    ``1`` the dims from axis 1 (a channels-first (N, C, H, W) input over C)."""

    def __init__(self, normalized_shape, alpha_init, elementwise_affine, bias, device, dtype,
                 channel_axis, activation, backend):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.normalized_shape = F.normalize_shape(normalized_shape)
        F.validate_options(channel_axis=channel_axis, activation=activation, backend=backend)
        self.alpha_init = F.validate_finite(alpha_init, "alpha_init")
        self.elementwise_affine = bool(elementwise_affine)
        self.channel_axis, self.activation, self.backend = channel_axis, activation, backend
        self.alpha = nn.Parameter(torch.empty(1, **factory))
        if self.elementwise_affine:
            self.weight = nn.Parameter(torch.empty(self.normalized_shape, **factory))
            if bias:
                self.bias = nn.Parameter(torch.empty(self.normalized_shape, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        nn.init.constant_(self.alpha, self.alpha_init)
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        s = f"{self.normalized_shape}, alpha_init={self.alpha_init}"
        s += self._more_repr()
        if not self.elementwise_affine:
            s += ", elementwise_affine=False"
        elif self.bias is None:
            s += ", bias=False"
        return s + _extras(self, -1)

    def _more_repr(self) -> str:
        return ""


class DynamicTanh(_Pointwise):
    """Dynamic Tanh (DyT; Zhu, Chen, He, LeCun, Liu, "Transformers without Normalization",
    CVPR 2025): ``y = weight * tanh(alpha * x) + bias`` elementwise, in place of a layer norm.

    ``alpha`` is one learnable scalar initialized to ``alpha_init`` (the paper's default 0.5;
    they lower it for large language models), ``weight`` (ones) and ``bias`` (zeros) are per
    element over ``normalized_shape``. ``forward(input, residual=None)`` adds ``residual``
    before the fused ``activation``. :func:`normlab.surgery.swap_norms` with ``"dyt"`` turns
    a model's layer norms into these.
    """

    def __init__(self, normalized_shape, alpha_init=0.5, elementwise_affine=True, bias=True,
                 device=None, dtype=None, *, channel_axis=-1, activation=None, backend=None):
        super().__init__(normalized_shape, alpha_init, elementwise_affine, bias, device, dtype,
                         channel_axis, activation, backend)
        self.reset_parameters()

    def forward(self, input, residual=None):
        return F.dynamic_tanh(input, self.normalized_shape, self.alpha, self.weight, self.bias,
                              channel_axis=self.channel_axis, residual=residual,
                              activation=self.activation, backend=self.backend)


class Derf(_Pointwise):
    """Dynamic erf (Derf; Chen, Lu, Zhu, Sun, Liu, "Stronger Normalization-Free Transformers",
    arXiv 2512.10938): ``y = weight * erf(alpha * x + shift) + bias`` elementwise.

    ``alpha`` and ``shift`` are learnable scalars (shape (1,)) initialized to ``alpha_init``
    (0.5) and ``shift_init`` (0), the paper's defaults as reported in secondary summaries of
    it (a scalar shift: the paper found a per-channel one no better); ``weight`` ones and
    ``bias`` zeros per element over ``normalized_shape``. Other arguments as
    :class:`DynamicTanh`.
    """

    def __init__(self, normalized_shape, alpha_init=0.5, shift_init=0.0,
                 elementwise_affine=True, bias=True, device=None, dtype=None, *,
                 channel_axis=-1, activation=None, backend=None):
        super().__init__(normalized_shape, alpha_init, elementwise_affine, bias, device, dtype,
                         channel_axis, activation, backend)
        self.shift_init = F.validate_finite(shift_init, "shift_init")
        self.shift = nn.Parameter(torch.empty(1, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.constant_(self.shift, self.shift_init)

    def forward(self, input, residual=None):
        return F.derf(input, self.normalized_shape, self.alpha, self.shift, self.weight,
                      self.bias, channel_axis=self.channel_axis, residual=residual,
                      activation=self.activation, backend=self.backend)

    def _more_repr(self) -> str:
        return f", shift_init={self.shift_init}"
