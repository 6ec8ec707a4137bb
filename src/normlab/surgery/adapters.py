"""The adapter table: every normalization class surgery knows, with its exact semantics.

One entry per class, keyed by the class's ``module:qualname`` (so importing normlab never imports
timm, torchvision or transformers, and a subclass is never mistaken for its base class: a subclass
may carry an activation, a drop, a permute or a float32 upcast). An adapter *reads* a module into
a :class:`NormInfo` — kind, channel count and axis, eps, affine tensors, weight offset, upcast,
running statistics, the activation and drop a norm+act class holds — and :func:`build_twin`
builds the normlab layer from that. :func:`probe` checks a twin against its original on float64
inputs before surgery accepts it.

A class not in the table may still be accepted by :func:`structural_match`: a parameter-light
module whose name says it is a norm and whose output, on probe inputs, is that of an RMS or layer
norm over the last axis (weight or 1 + weight). ``register_adapter`` adds a class of one's own.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from normlab import nn as nl

__all__ = ["PROBE_RTOL", "PROBE_RTOL_UPCAST", "ActThenNorm", "Adapter", "NormAct", "NormInfo",
           "Refused", "adapter_for", "build_twin", "class_key", "looks_like_norm", "probe",
           "register_adapter", "structural_match"]

# A twin matches its original when max|a - b| <= rtol * max|a| on every probe: float64
# arithmetic on both sides (the order of operations differs, so not bit for bit) ...
PROBE_RTOL = 1e-10
# ... or, for a layer that computes in float32 whatever its input (HF's RMSNorms, timm's *Fp32),
# float32 rounding of the probe inside the original.
PROBE_RTOL_UPCAST = 1e-5


class Refused(Exception):  # noqa: N818 - a reason, not an error of the caller
    """An adapter's reason for leaving a layer as it is."""


@dataclass
class NormInfo:
    """What a normalization layer computes, read off the module by its adapter.

    ``kind``: "batch", "frozen", "instance", "group", "layer", "rms" or a pointwise kind
    ("dyt", "derf": normlab's DynamicTanh and Derf, which swap_norms can replace and
    to_normlab leaves). Per-channel kinds have ``num_channels`` (and ``dims``: 1, 2, 3 for the
    1d/2d/3d class, None for any rank); layer/rms/dyt/derf have ``normalized_shape``.
    ``channel_axis``: 1 (N x C x ...) or -1 (N x ... x C).
    The layer multiplies by ``weight + weight_offset`` (Gemma: 1 + w). ``upcast``: it computes in
    float32 whatever the input dtype. ``act``/``drop``: modules a norm+act class applies after
    the norm (drop first); ``activation``: a normlab fused activation already in the layer.
    """

    kind: str
    num_channels: int | None = None
    normalized_shape: tuple[int, ...] | None = None
    channel_axis: int = 1
    eps: float | None = 1e-5
    dims: int | None = None
    num_groups: int | None = None
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    weight_offset: float = 0.0
    upcast: bool = False
    momentum: float | None = 0.1
    track_running_stats: bool = False
    running_mean: torch.Tensor | None = None
    running_var: torch.Tensor | None = None
    num_batches_tracked: torch.Tensor | None = None
    act: nn.Module | None = None
    drop: nn.Module | None = None
    activation: str | None = None
    note: str = ""

    def channels(self) -> int:
        """The channel count in the registry's convention (one channel axis)."""
        if self.num_channels is not None:
            return self.num_channels
        if len(self.normalized_shape) != 1:
            raise Refused(f"normalizes over {self.normalized_shape}, not over one channel axis; "
                          "it has no channel count to give another kind")
        return self.normalized_shape[0]


@dataclass(frozen=True)
class Adapter:
    """``read(module) -> NormInfo`` (raising :class:`Refused` with a reason) and a one-line
    description of the class's semantics."""

    read: Callable[[nn.Module], NormInfo]
    semantics: str


def class_key(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


_TABLE: dict[str, Adapter] = {}


def register_adapter(cls: type | str, read: Callable[[nn.Module], NormInfo],
                     semantics: str = "") -> None:
    """Teach surgery a normalization class: ``cls`` (a class, or its ``"module:qualname"``)
    and ``read(module) -> NormInfo``. Only that exact class matches, never its subclasses.
    Every layer read this way is still checked on a probe before surgery accepts it."""
    if isinstance(cls, type):
        cls = class_key(cls)
    if not isinstance(cls, str) or ":" not in cls:
        raise TypeError(f"cls must be a class or a 'module:qualname' string, got {cls!r}")
    if not callable(read):
        raise TypeError(f"read must be callable (module -> NormInfo), got {read!r}")
    _TABLE[cls] = Adapter(read, semantics)


def adapter_for(module: nn.Module) -> Adapter | None:
    return _TABLE.get(class_key(type(module)))


# --------------------------------------------------------------------------------------------
# readers


def _tensor(m, name):
    t = getattr(m, name, None)
    return t if isinstance(t, torch.Tensor) else None


def _act_drop(m) -> dict:
    act, drop = getattr(m, "act", None), getattr(m, "drop", None)
    return {"act": None if isinstance(act, nn.Identity) else act,
            "drop": None if isinstance(drop, nn.Identity) else drop}


def _no_fast(m):
    if getattr(m, "_fast_norm", False):
        raise Refused("timm fast-norm mode is on (its autocast/APEX paths are not reproduced)")


def _batch(dims, kind="batch", norm_act=False, any_rank=False):
    def read(m):
        return NormInfo(kind, num_channels=m.num_features, eps=m.eps,
                        dims=None if any_rank else dims, weight=_tensor(m, "weight"),
                        bias=_tensor(m, "bias"), momentum=m.momentum,
                        track_running_stats=m.running_mean is not None,
                        running_mean=m.running_mean, running_var=m.running_var,
                        num_batches_tracked=getattr(m, "num_batches_tracked", None),
                        channel_axis=getattr(m, "channel_axis", 1),
                        activation=getattr(m, "activation", None),
                        **(_act_drop(m) if norm_act else {}))
    return read


def _frozen(norm_act=False):
    def read(m):
        return NormInfo("frozen", num_channels=m.weight.shape[0], eps=m.eps, dims=2,
                        weight=m.weight, bias=m.bias, running_mean=m.running_mean,
                        running_var=m.running_var, track_running_stats=True,
                        **(_act_drop(m) if norm_act else {}))
    return read


def _group(norm_act=False):
    def read(m):
        _no_fast(m)
        return NormInfo("group", num_channels=m.num_channels, num_groups=m.num_groups,
                        eps=m.eps, weight=_tensor(m, "weight"), bias=_tensor(m, "bias"),
                        channel_axis=getattr(m, "channel_axis", 1),
                        activation=getattr(m, "activation", None),
                        **(_act_drop(m) if norm_act else {}))
    return read


def _layer(axis=-1, norm_act=False, upcast=False):
    def read(m):
        _no_fast(m)
        shape = tuple(m.normalized_shape)
        if axis == 1 and len(shape) != 1:
            raise Refused(f"channels-first layer norm over {shape}")
        return NormInfo("layer", normalized_shape=shape, eps=m.eps,
                        weight=_tensor(m, "weight"), bias=_tensor(m, "bias"),
                        channel_axis=getattr(m, "channel_axis", axis), upcast=upcast,
                        activation=getattr(m, "activation", None),
                        **(_act_drop(m) if norm_act else {}))
    return read


def _rms(axis=-1, eps_attr="eps", offset=0.0, upcast=False, norm_act=False):
    def read(m):
        _no_fast(m)
        w = _tensor(m, "weight")
        shape = getattr(m, "normalized_shape", None)
        shape = tuple(shape) if shape is not None else tuple(w.shape)
        eps = getattr(m, eps_attr)
        return NormInfo("rms", normalized_shape=shape, eps=None if eps is None else float(eps),
                        weight=w, weight_offset=offset, upcast=upcast,
                        channel_axis=getattr(m, "channel_axis", axis),
                        activation=getattr(m, "activation", None),
                        **(_act_drop(m) if norm_act else {}))
    return read


def _hf_rms(eps_attr="variance_epsilon", offset=0.0):
    """The Hugging Face RMSNorms: weight of shape (hidden,), float32 inside."""
    def read(m):
        w = _tensor(m, "weight")
        if w is None or w.dim() != 1 or any(True for _ in m.children()):
            raise Refused("expected one 1-D weight and no submodules")
        return NormInfo("rms", normalized_shape=tuple(w.shape), eps=float(getattr(m, eps_attr)),
                        weight=w, weight_offset=offset, upcast=True, channel_axis=-1)
    return read


def _olmo(m):  # no affine, eps fixed at 1e-5 in its forward, float32 inside
    return NormInfo("layer", normalized_shape=tuple(m.normalized_shape), eps=1e-5,
                    upcast=True, channel_axis=-1)


def _cohere(m):
    w = m.weight
    if w.dim() != 1:
        raise Refused(f"weight of shape {tuple(w.shape)} (per-head affine over the last axis)")
    return NormInfo("layer", normalized_shape=tuple(w.shape), eps=float(m.variance_epsilon),
                    weight=w, upcast=True, channel_axis=-1)


def _simple(m):
    raise Refused("divides by the unbiased variance without subtracting the mean; normlab has "
                  "no such kind")


def _refuse(reason):
    def read(m):
        raise Refused(reason)
    return read


def _pointwise(kind):
    def read(m):
        return NormInfo(kind, normalized_shape=tuple(m.normalized_shape), eps=None,
                        weight=_tensor(m, "weight"), bias=_tensor(m, "bias"),
                        channel_axis=m.channel_axis, activation=m.activation)
    return read


def _normlab_batch(dims, kind="batch"):
    base = _batch(dims, kind)
    return lambda m: replace(base(m), dims=dims)


T = "timm.layers.norm"
TA = "timm.layers.norm_act"
_ENTRIES: list[tuple[str, Callable, str]] = [
    # torch.nn
    ("torch.nn.modules.batchnorm:BatchNorm1d", _batch(1), "batch norm, (N, C) or (N, C, L)"),
    ("torch.nn.modules.batchnorm:BatchNorm2d", _batch(2), "batch norm, (N, C, H, W)"),
    ("torch.nn.modules.batchnorm:BatchNorm3d", _batch(3), "batch norm, (N, C, D, H, W)"),
    ("torch.nn.modules.batchnorm:SyncBatchNorm", _batch(None, any_rank=True),
     "batch norm over the processes; normlab's BatchNorm in one process"),
    ("torch.nn.modules.instancenorm:InstanceNorm1d", _batch(1, "instance"), "instance norm"),
    ("torch.nn.modules.instancenorm:InstanceNorm2d", _batch(2, "instance"), "instance norm"),
    ("torch.nn.modules.instancenorm:InstanceNorm3d", _batch(3, "instance"), "instance norm"),
    ("torch.nn.modules.normalization:LayerNorm", _layer(), "layer norm, trailing dims"),
    ("torch.nn.modules.normalization:GroupNorm", _group(), "group norm, channels at axis 1"),
    ("torch.nn.modules.normalization:RMSNorm", _rms(), "RMS norm, trailing dims, eps None = "
     "finfo(statistics dtype).eps"),
    # timm.layers
    (f"{T}:LayerNorm", _layer(), "nn.LayerNorm (fast-norm flag off)"),
    (f"{T}:LayerNorm2d", _layer(1), "layer norm over C of (N, C, H, W) by permute"),
    (f"{T}:LayerNormFp32", _layer(upcast=True), "layer norm in float32"),
    (f"{T}:LayerNorm2dFp32", _layer(1, upcast=True), "channels-first layer norm in float32"),
    (f"{T}:LayerNormExp2d", _layer(1), "channels-first layer norm (permute or var_mean)"),
    (f"{T}:GroupNorm", _group(), "nn.GroupNorm (fast-norm flag off)"),
    (f"{T}:GroupNorm1", _group(), "group norm with one group"),
    (f"{T}:RmsNorm", _rms(), "RMS norm over the trailing dims"),
    (f"{T}:RmsNorm2d", _rms(1), "RMS norm over C of (N, C, H, W)"),
    (f"{T}:RmsNormFp32", _rms(upcast=True), "RMS norm in float32"),
    (f"{T}:RmsNorm2dFp32", _rms(1, upcast=True), "channels-first RMS norm in float32"),
    (f"{T}:SimpleNorm", _simple, "x / sqrt(unbiased var + eps) * w"),
    (f"{T}:SimpleNorm2d", _simple, "x / sqrt(unbiased var + eps) * w, channels first"),
    (f"{T}:SimpleNormFp32", _simple, "as SimpleNorm, float32"),
    (f"{T}:SimpleNorm2dFp32", _simple, "as SimpleNorm2d, float32"),
    (f"{TA}:BatchNormAct2d", _batch(2, norm_act=True), "batch norm, then drop, then act"),
    (f"{TA}:SyncBatchNormAct", _batch(None, norm_act=True, any_rank=True),
     "sync batch norm, then drop, then act"),
    (f"{TA}:FrozenBatchNormAct2d", _frozen(norm_act=True), "frozen batch norm, drop, act"),
    (f"{TA}:GroupNormAct", _group(norm_act=True), "group norm, drop, act"),
    (f"{TA}:GroupNorm1Act", _group(norm_act=True), "one-group norm, drop, act"),
    (f"{TA}:LayerNormAct", _layer(norm_act=True), "layer norm, drop, act"),
    (f"{TA}:LayerNormActFp32", _layer(norm_act=True, upcast=True), "float32 layer norm + act"),
    (f"{TA}:LayerNormAct2d", _layer(1, norm_act=True), "channels-first layer norm + act"),
    (f"{TA}:LayerNormAct2dFp32", _layer(1, norm_act=True, upcast=True),
     "float32 channels-first layer norm + act"),
    (f"{TA}:RmsNormAct", _rms(norm_act=True), "RMS norm, drop, act"),
    (f"{TA}:RmsNormActFp32", _rms(norm_act=True, upcast=True), "float32 RMS norm + act"),
    (f"{TA}:RmsNormAct2d", _rms(1, norm_act=True), "channels-first RMS norm + act"),
    (f"{TA}:RmsNormAct2dFp32", _rms(1, norm_act=True, upcast=True),
     "float32 channels-first RMS norm + act"),
    ("timm.layers.split_batchnorm:SplitBatchNorm2d",
     _refuse("split batch norm (one batch norm per augmentation split): no normlab kind"), ""),
    ("timm.layers.filter_response_norm:FilterResponseNormTlu2d",
     _refuse("filter response norm: no normlab kind"), ""),
    ("timm.layers.filter_response_norm:FilterResponseNormAct2d",
     _refuse("filter response norm: no normlab kind"), ""),
    ("timm.models.metaformer:GroupNorm1NoBias", _group(), "one-group norm without bias"),
    ("timm.models.metaformer:LayerNorm2dNoBias", _layer(1), "channels-first layer norm, "
     "no bias"),
    ("timm.models.metaformer:LayerNormNoBias", _layer(), "layer norm, no bias"),
    # torchvision
    ("torchvision.ops.misc:FrozenBatchNorm2d", _frozen(), "frozen batch norm, (N, C, H, W)"),
    ("torchvision.models.convnext:LayerNorm2d", _layer(1), "layer norm over C by permute"),
    # Hugging Face transformers
    ("transformers.models.t5.modeling_t5:T5LayerNorm", _hf_rms(), "RMS norm; statistics in "
     "float32, normalized in the input dtype"),
    ("transformers.models.mt5.modeling_mt5:MT5LayerNorm", _hf_rms(), "as T5LayerNorm"),
    ("transformers.models.longt5.modeling_longt5:LongT5LayerNorm", _hf_rms(), "as T5"),
    ("transformers.models.umt5.modeling_umt5:UMT5LayerNorm", _hf_rms(), "as T5LayerNorm"),
    ("transformers.models.olmo.modeling_olmo:OlmoLayerNorm", _olmo, "layer norm, no affine, "
     "eps 1e-5, float32"),
    ("transformers.models.cohere.modeling_cohere:CohereLayerNorm", _cohere, "layer norm without "
     "bias, float32"),
]
for _evo in ("B0", "B1", "B2", "S0", "S0a", "S1", "S1a", "S2", "S2a"):
    _ENTRIES.append((f"timm.layers.evo_norm:EvoNorm2d{_evo}", _refuse(
        "EvoNorm (normalization and activation in one formula): no normlab kind"), ""))
for _name in ("gemma", "gemma2", "gemma3"):
    _ENTRIES.append((f"transformers.models.{_name}.modeling_{_name}:"
                     f"{_name.capitalize()}RMSNorm", _hf_rms("eps", 1.0),
                     "RMS norm times (1 + weight), float32 inside"))
for _name, _cls in [("llama", "Llama"), ("mistral", "Mistral"), ("mixtral", "Mixtral"),
                    ("qwen2", "Qwen2"), ("qwen2_moe", "Qwen2Moe"), ("qwen3", "Qwen3"),
                    ("qwen3_moe", "Qwen3Moe"), ("phi3", "Phi3"), ("olmo2", "Olmo2"),
                    ("granite", "Granite"), ("deepseek_v3", "DeepseekV3"), ("glm", "Glm"),
                    ("helium", "Helium"), ("smollm3", "SmolLM3"), ("arcee", "Arcee"),
                    ("starcoder2", "Starcoder2"), ("ernie4_5", "Ernie4_5"),
                    ("mimi", "Mimi")]:
    _ENTRIES.append((f"transformers.models.{_name}.modeling_{_name}:{_cls}RMSNorm", _hf_rms(),
                     "RMS norm, float32 inside, weight applied in the input dtype"))
# normlab's own classes (swap_norms works on them; to_normlab leaves them as they are)
for _cls, _read in [(nl.BatchNorm, _normlab_batch(None)), (nl.BatchNorm1d, _normlab_batch(1)),
                    (nl.BatchNorm2d, _normlab_batch(2)), (nl.BatchNorm3d, _normlab_batch(3)),
                    (nl.SyncBatchNorm, _normlab_batch(None)),
                    (nl.InstanceNorm, _normlab_batch(None, "instance")),
                    (nl.InstanceNorm1d, _normlab_batch(1, "instance")),
                    (nl.InstanceNorm2d, _normlab_batch(2, "instance")),
                    (nl.InstanceNorm3d, _normlab_batch(3, "instance")),
                    (nl.LayerNorm, _layer()), (nl.RMSNorm, _rms()), (nl.GroupNorm, _group()),
                    (nl.DynamicTanh, _pointwise("dyt")), (nl.Derf, _pointwise("derf"))]:
    _ENTRIES.append((class_key(_cls), _read, "normlab"))
for _cls in (nl.FrozenBatchNorm, nl.FrozenBatchNorm1d, nl.FrozenBatchNorm2d,
             nl.FrozenBatchNorm3d):
    _ENTRIES.append((class_key(_cls), lambda m: replace(
        _frozen()(m), dims=None, channel_axis=m.channel_axis, activation=m.activation),
        "normlab"))
for _cls in (nl.BatchRenorm, nl.BatchRenorm1d, nl.BatchRenorm2d, nl.BatchRenorm3d,
             nl.GhostBatchNorm, nl.GhostBatchNorm1d, nl.GhostBatchNorm2d):
    _ENTRIES.append((class_key(_cls), _batch(None), "normlab batch-norm remedy"))
for _key, _read, _sem in _ENTRIES:
    register_adapter(_key, _read, _sem)

NORMLAB_CLASSES = (nl.BatchNorm, nl.InstanceNorm, nl.LayerNorm, nl.GroupNorm, nl.RMSNorm,
                   nl.FrozenBatchNorm, nl.DynamicTanh, nl.Derf)

# --------------------------------------------------------------------------------------------
# fused activations and the norm + rest wrapper

_FUSED = {"torch.nn.modules.activation:ReLU": "relu", "torch.nn.modules.activation:SiLU": "silu",
          "timm.layers.activations:GELU": "gelu"}


def fused_name(act: nn.Module | None) -> str | None:
    """normlab's fused activation equal to ``act``, or None."""
    if act is None:
        return None
    if type(act) is nn.GELU:
        return "gelu" if act.approximate == "none" else None
    return _FUSED.get(class_key(type(act)))


class _KeepsNormKeys(nn.Module):
    """A wrapper whose state dict keeps its ``norm``'s keys at the top level (the other
    children's under their names), so the state dict of the layer it replaces loads both
    ways."""

    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        if args:  # torch's deprecated positional form
            destination, prefix, keep_vars = (list(args) + [destination, prefix, keep_vars])[:3]
        if destination is None:
            from collections import OrderedDict
            destination = OrderedDict()
        for name, child in self.named_children():
            child.state_dict(destination=destination, keep_vars=keep_vars,
                             prefix=prefix if name == "norm" else f"{prefix}{name}.")
        return destination

    def _nest_norm_keys(self, state_dict, prefix, *args):
        for k in list(self.norm.state_dict()):
            if prefix + k in state_dict:
                state_dict[prefix + "norm." + k] = state_dict.pop(prefix + k)


class NormAct(_KeepsNormKeys):
    """A normlab norm followed by the drop and activation modules it cannot fuse:
    ``act(drop(norm(x)))``. The state dict keeps the norm's keys at the top level (and the
    act's and drop's under ``act.``/``drop.``), as the timm norm+act classes it replaces, so
    their state dicts load both ways."""

    def __init__(self, norm: nn.Module, drop: nn.Module | None = None,
                 act: nn.Module | None = None):
        super().__init__()
        self.norm = norm
        self.drop = nn.Identity() if drop is None else drop
        self.act = nn.Identity() if act is None else act
        self._register_load_state_dict_pre_hook(self._nest_norm_keys)

    def forward(self, input):
        return self.act(self.drop(self.norm(input)))


class ActThenNorm(_KeepsNormKeys):
    """A norm moved after its activation (``surgery.move_norms``): ``norm(act(x))``. The state
    dict keeps the norm's keys at the top level (the act's under ``act.``), so the moved
    layer's state dict loads both ways."""

    def __init__(self, act: nn.Module, norm: nn.Module):
        super().__init__()
        self.act = act
        self.norm = norm
        self._register_load_state_dict_pre_hook(self._nest_norm_keys)

    def forward(self, input):
        return self.norm(self.act(input))


def _norm_act(m: NormAct) -> NormInfo:
    inner = adapter_for(m.norm)
    if inner is None:
        raise Refused(f"a NormAct around {type(m.norm).__qualname__}, which is not in the table")
    info = inner.read(m.norm)
    return replace(info, act=None if isinstance(m.act, nn.Identity) else m.act,
                   drop=None if isinstance(m.drop, nn.Identity) else m.drop)


register_adapter(NormAct, _norm_act, "a normlab norm, then drop, then act")
register_adapter(ActThenNorm, _refuse("its activation comes before the norm (moved by "
                                      "move_norms); swap or convert before moving"),
                 "an activation, then a norm (move_norms' placement after the activation)")

# --------------------------------------------------------------------------------------------
# building the normlab twin


def _factory(info: NormInfo, like: nn.Module) -> dict:
    t = next((t for t in (info.weight, info.running_mean, info.bias) if t is not None), None)
    if t is None:
        t = next(iter(like.parameters()), None)
    return {} if t is None else {"device": t.device, "dtype": t.dtype}


_BATCH_CLS = {None: nl.BatchNorm, 1: nl.BatchNorm1d, 2: nl.BatchNorm2d, 3: nl.BatchNorm3d}
_INSTANCE_CLS = {None: nl.InstanceNorm, 1: nl.InstanceNorm1d, 2: nl.InstanceNorm2d,
                 3: nl.InstanceNorm3d}
_FROZEN_CLS = {None: nl.FrozenBatchNorm, 1: nl.FrozenBatchNorm1d, 2: nl.FrozenBatchNorm2d,
               3: nl.FrozenBatchNorm3d}


def split_rest(info: NormInfo) -> tuple[str | None, list[nn.Module]]:
    """(fused activation name, modules to apply after the norm) for ``info``'s act/drop."""
    if info.act is None and info.drop is None:
        return info.activation, []
    if info.activation is not None:  # a normlab layer's fused act comes first; keep it
        raise Refused("a fused activation and separate act/drop modules")
    name = fused_name(info.act) if info.drop is None else None
    if name is not None:
        return name, []
    return None, [m for m in (info.drop, info.act) if m is not None]


def wrap_rest(norm: nn.Module, info: NormInfo, rest: list[nn.Module]) -> nn.Module:
    if not rest:
        return norm
    return NormAct(norm, info.drop, info.act)


def build_twin(info: NormInfo, like: nn.Module) -> nn.Module:
    """The normlab layer (wrapped in :class:`NormAct` when an activation or drop cannot be
    fused) computing what ``info`` describes, with its state, in ``like``'s train/eval mode."""
    f = _factory(info, like)
    act, rest = split_rest(info)
    opts = {"channel_axis": info.channel_axis, "activation": act}
    k = info.kind
    affine = info.weight is not None
    if k in ("batch", "instance"):
        cls = (_BATCH_CLS if k == "batch" else _INSTANCE_CLS)[info.dims]
        new = cls(info.num_channels, info.eps, info.momentum, affine, info.track_running_stats,
                  bias=info.bias is not None or not affine, **f, **opts)
    elif k == "frozen":
        new = _FROZEN_CLS[info.dims](info.num_channels, info.eps, **f, **opts)
    elif k == "group":
        new = nl.GroupNorm(info.num_groups, info.num_channels, info.eps, affine,
                           bias=info.bias is not None or not affine, **f, **opts)
    elif k == "layer":
        new = nl.LayerNorm(info.normalized_shape, info.eps, affine,
                           info.bias is not None or not affine, **f, **opts)
    elif k == "rms":
        if info.bias is not None:
            raise Refused("an RMS norm with a bias")
        new = nl.RMSNorm(info.normalized_shape, info.eps, affine, **f, **opts)
    else:
        raise Refused(f"unknown kind {k!r}")
    with torch.no_grad():
        if info.weight is not None:
            w = info.weight.detach()
            new.weight.copy_(w.double() + info.weight_offset if info.weight_offset else w)
            if isinstance(new.weight, nn.Parameter):
                new.weight.requires_grad_(w.requires_grad or not isinstance(w, nn.Parameter))
        if info.bias is not None:
            new.bias.copy_(info.bias.detach())
            if isinstance(new.bias, nn.Parameter):
                new.bias.requires_grad_(info.bias.requires_grad
                                        or not isinstance(info.bias, nn.Parameter))
        if info.running_mean is not None and getattr(new, "running_mean", None) is not None:
            new.running_mean.copy_(info.running_mean)
            new.running_var.copy_(info.running_var)
            nbt = getattr(new, "num_batches_tracked", None)
            if nbt is not None and info.num_batches_tracked is not None:
                nbt.copy_(info.num_batches_tracked)
    new.train(like.training)
    return wrap_rest(new, info, rest)


# --------------------------------------------------------------------------------------------
# probes


def probe_shape(info: NormInfo) -> tuple[int, ...]:
    """An input shape the layer accepts: batch 2, small positions."""
    if info.kind in ("layer", "rms", "dyt", "derf"):
        shape = info.normalized_shape
        return (2, *shape, 3, 2) if info.channel_axis == 1 else (2, 3, *shape)
    spatial = {None: (3, 2), 1: (5,), 2: (3, 2), 3: (2, 2, 2)}[info.dims]
    c = info.num_channels
    return (2, *spatial, c) if info.channel_axis == -1 else (2, c, *spatial)


def _randomize(m: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial affine and running statistics, so the probe sees them."""
    with torch.no_grad():
        for name, t in list(m.named_parameters()) + list(m.named_buffers()):
            if not t.is_floating_point():
                if "num_batches" in name:
                    t.fill_(3)
                continue
            r = torch.rand(t.shape, generator=gen, dtype=torch.float64).to(t)
            if name.endswith("running_var"):
                t.copy_(0.5 + r)
            elif name.endswith("weight"):
                t.copy_(0.5 + r)
            else:
                t.copy_(r - 0.5)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return math.inf
    scale = a.abs().max().item() if a.numel() else 0.0
    return (a - b).abs().max().item() / max(scale, 1e-300) if a.numel() else 0.0


def _run(m: nn.Module, x: torch.Tensor, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return m(x.clone())


def probe(old: nn.Module, make_new: Callable[[nn.Module], nn.Module], shape, *,
          upcast: bool, eps: float | None) -> str | None:
    """Compare ``make_new(old')`` with ``old'`` — ``old'`` a float64 copy of ``old`` with random
    affine and running statistics — on float64 inputs at two scales (unit, and small enough that
    eps matters), in eval and train mode (same RNG seed for both; running statistics compared
    after the train step). None when equal within the stated tolerance, else the reason."""
    gen = torch.Generator().manual_seed(1234)
    ref = copy.deepcopy(old).double()
    _randomize(ref, gen)
    new = make_new(ref).double()
    tol = PROBE_RTOL_UPCAST if upcast else PROBE_RTOL
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 1.5 + 0.3
    scales = [1.0] + ([math.sqrt(eps)] if eps else [])
    for training in (False, True):
        # one copy per mode: in train mode the second scale sees the running statistics the
        # first one moved, in both layers alike
        a, b = copy.deepcopy(ref).train(training), copy.deepcopy(new).train(training)
        for s in scales:
            try:
                ya = _run(a, x * s, 0)
            except Exception as exc:  # the original rejects the probe: nothing to compare
                return f"the original layer fails on a probe of shape {tuple(shape)}: {exc}"
            try:
                yb = _run(b, x * s, 0)
            except Exception as exc:
                return f"the twin fails on the probe: {type(exc).__name__}: {exc}"
            if not isinstance(ya, torch.Tensor):
                return f"the original returns {type(ya).__name__}, not a tensor"
            err = _rel_err(ya, yb)
            if not err <= tol:
                mode = "train" if training else "eval"
                return (f"the twin's {mode} output differs on a probe (scale {s:.2g}): "
                        f"relative error {err:.2g} > {tol:g}")
            if training:
                sa = {k: v for k, v in a.state_dict().items() if "running" in k}
                sb = {k: v for k, v in b.state_dict().items() if "running" in k}
                for k, v in sa.items():
                    if k not in sb or _rel_err(v, sb[k]) > tol:
                        return f"the running statistic {k} differs after a training step"
    return None


# --------------------------------------------------------------------------------------------
# unknown modules


_NORM_NAME = re.compile(r"norm", re.IGNORECASE)
_TORCH_BASES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm,
                nn.LocalResponseNorm)


def looks_like_norm(m: nn.Module) -> bool:
    """A module surgery should account for: in the table, normlab's, a subclass of a torch.nn
    norm, or a class whose name says norm and whose submodules (if any) hold no parameters (so
    not a Conv+Norm block)."""
    if adapter_for(m) is not None or isinstance(m, (NormAct, *NORMLAB_CLASSES, *_TORCH_BASES)):
        return True  # a subclass of a norm is a norm surgery must account for
    if not _NORM_NAME.search(type(m).__name__):
        return False
    if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return False
    return not any(p is not None for c in m.children() for p in c.parameters())


def _candidates(m: nn.Module):
    w, b = _tensor(m, "weight"), _tensor(m, "bias")
    eps = next((getattr(m, a) for a in ("eps", "variance_epsilon", "epsilon")
                if isinstance(getattr(m, a, None), float)), None)
    if eps is None or w is None or w.dim() != 1 or any(True for _ in m.children()):
        return []
    own = {n for n, _ in m.named_parameters()} | {n for n, _ in m.named_buffers()}
    if not own <= {"weight", "bias"}:
        return []
    shape = tuple(w.shape)
    out = []
    if b is None:
        out += [NormInfo("rms", normalized_shape=shape, eps=eps, weight=w, channel_axis=-1,
                         weight_offset=off) for off in (0.0, 1.0)]
    out.append(NormInfo("layer", normalized_shape=shape, eps=eps, weight=w, bias=b,
                        channel_axis=-1))
    return out


def _oracle(info: NormInfo, ref: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The candidate semantics in plain float64 torch ops (not normlab)."""
    w = ref.weight.double() + info.weight_offset
    if info.kind == "rms":
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + info.eps)
        return y * w
    mu = x.mean(-1, keepdim=True)
    y = (x - mu) * torch.rsqrt((x - mu).pow(2).mean(-1, keepdim=True) + info.eps) * w
    b = _tensor(ref, "bias")
    return y if b is None else y + b.double()


def structural_match(m: nn.Module) -> NormInfo | None:
    """For a module not in the table: the RMS/layer norm over the last axis it computes, when
    probe inputs show it (float64, unit and eps-sized scales, random weight), else None."""
    cands = _candidates(m)
    if not cands:
        return None
    gen = torch.Generator().manual_seed(4321)
    ref = copy.deepcopy(m).double()
    _randomize(ref, gen)
    x = torch.randn((2, 3, *cands[0].normalized_shape), generator=gen, dtype=torch.float64)
    for info in cands:
        ok, exact = True, True
        for s in (1.0, math.sqrt(info.eps)):
            try:
                with torch.no_grad():
                    y = ref(x * s)
            except Exception:
                return None
            if not isinstance(y, torch.Tensor):
                return None
            err = _rel_err(_oracle(info, ref, x * s), y)
            ok &= err <= PROBE_RTOL_UPCAST
            exact &= err <= PROBE_RTOL
        if ok:
            info = replace(info, weight=_tensor(m, "weight"), bias=_tensor(m, "bias"),
                           upcast=not exact,
                           note=f"structural: computes {info.kind} norm over the last axis"
                           + (" times (1 + weight)" if info.weight_offset else "")
                           + (" in float32" if not exact else "") + " on probe inputs")
            return info
    return None


def read_like(m: nn.Module, info: NormInfo) -> NormInfo:
    """``m`` read the way ``info`` was (by the table, or by the structural match's result)."""
    if adapter_for(m) is not None:
        return adapter_for(m).read(m)
    return replace(info, weight=_tensor(m, "weight"), bias=_tensor(m, "bias"))


def read(m: nn.Module) -> NormInfo:
    """The layer's :class:`NormInfo` from the table or the structural fallback; raises
    :class:`Refused` with the reason when neither applies."""
    a = adapter_for(m)
    if a is not None:
        return a.read(m)
    info = structural_match(m)
    if info is None:
        raise Refused(f"{type(m).__qualname__} ({type(m).__module__}) is not in the adapter "
                      "table and no probe shows it computes an RMS or layer norm")
    return info
