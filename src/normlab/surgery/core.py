"""Model surgery: convert, swap, insert, remove and fold normalization layers.

Every function works on a deep copy and returns a new module tree; the input model is never
changed. Layer paths in reports and errors are the dotted names of ``model.named_modules()``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from normlab import nn as nl
from normlab.registry import create_norm_layer

__all__ = ["InsertReport", "Passthrough", "SurgeryError", "convert_sync_batchnorm",
           "freeze_batch_norm", "insert_norms", "is_norm", "remove_norms", "swap_norms",
           "to_normlab"]


class SurgeryError(ValueError):
    """A conversion that cannot be done, naming the layer and the reason."""


# --------------------------------------------------------------------------------------------
# what counts as a normalization layer, and how to read its channel count and axis

_TORCH_TO_NORMLAB: dict[type, type] = {
    nn.BatchNorm1d: nl.BatchNorm1d, nn.BatchNorm2d: nl.BatchNorm2d,
    nn.BatchNorm3d: nl.BatchNorm3d, nn.SyncBatchNorm: nl.BatchNorm,
    nn.InstanceNorm1d: nl.InstanceNorm1d, nn.InstanceNorm2d: nl.InstanceNorm2d,
    nn.InstanceNorm3d: nl.InstanceNorm3d, nn.LayerNorm: nl.LayerNorm,
    nn.GroupNorm: nl.GroupNorm, nn.RMSNorm: nl.RMSNorm,
}
_NORMLAB = (nl.BatchNorm, nl.InstanceNorm, nl.LayerNorm, nl.GroupNorm, nl.RMSNorm,
            nl.FrozenBatchNorm)
_BATCH_LIKE = (nn.modules.batchnorm._BatchNorm, nl.BatchNorm, nl.FrozenBatchNorm)


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a (torch.nn or normlab) normalization layer surgery handles.
    AdaIN takes two inputs and is left alone."""
    return isinstance(module, tuple(_TORCH_TO_NORMLAB)) or isinstance(module, _NORMLAB)


def _channels(path: str, m: nn.Module) -> tuple[int, int]:
    """(channel count, channel axis) of a norm layer, for the registry's convention."""
    if isinstance(m, (nn.modules.batchnorm._NormBase, nl.BatchNorm, nl.InstanceNorm,
                      nl.FrozenBatchNorm)):
        return m.num_features, getattr(m, "channel_axis", 1)
    if isinstance(m, (nn.GroupNorm, nl.GroupNorm)):
        return m.num_channels, getattr(m, "channel_axis", 1)
    shape = tuple(m.normalized_shape)  # layer / rms
    if len(shape) != 1:
        raise SurgeryError(f"layer {path!r} ({m}) normalizes over {shape}, not over one "
                           "channel axis; it has no channel count to give another kind")
    return shape[0], getattr(m, "channel_axis", -1)


def _factory(m: nn.Module) -> dict:
    t = next(iter(m.parameters()), None)
    if t is None:
        t = next((b for b in m.buffers() if b.is_floating_point()), None)
    return {} if t is None else {"device": t.device, "dtype": t.dtype}


def _replace(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)


def _norm_paths(model: nn.Module, filter=None) -> list[tuple[str, nn.Module]]:
    out = []
    for path, m in model.named_modules():
        if path and is_norm(m) and (filter is None or filter(path, m)):
            out.append((path, m))
    return out


# --------------------------------------------------------------------------------------------
# to_normlab


def _normlab_twin(path: str, m: nn.Module) -> nn.Module:
    cls = _TORCH_TO_NORMLAB[type(m)]
    f = _factory(m)
    if isinstance(m, nn.modules.batchnorm._NormBase):
        new = cls(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats,
                  bias=m.affine and m.bias is not None, **f)
    elif isinstance(m, nn.LayerNorm):
        new = cls(m.normalized_shape, m.eps, m.elementwise_affine, m.bias is not None, **f)
    elif isinstance(m, nn.GroupNorm):
        new = cls(m.num_groups, m.num_channels, m.eps, m.affine, bias=m.bias is not None, **f)
    else:  # RMSNorm
        new = cls(m.normalized_shape, m.eps, m.elementwise_affine, **f)
    new.load_state_dict(m.state_dict(), strict=True)
    new.train(m.training)
    return new


def to_normlab(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every torch.nn normalization layer replaced by its normlab
    equivalent carrying its exact state (parameters, running statistics, batch count,
    train/eval mode). ``SyncBatchNorm`` becomes ``normlab.nn.BatchNorm``."""
    new = copy.deepcopy(model)
    if type(new) in _TORCH_TO_NORMLAB:
        return _normlab_twin("", new)
    for path, m in _norm_paths(new):
        if type(m) in _TORCH_TO_NORMLAB:
            _replace(new, path, _normlab_twin(path, m))
    return new


# --------------------------------------------------------------------------------------------
# swap_norms


def _carry(old: nn.Module, new: nn.Module, c: int) -> None:
    """Copy per-channel affine parameters (and running statistics between batch-like kinds)
    where they mean the same in both layers."""
    with torch.no_grad():
        for name in ("weight", "bias"):
            src, dst = getattr(old, name, None), getattr(new, name, None)
            if (isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor)
                    and src.shape == dst.shape == (c,)):
                dst.copy_(src)
        if isinstance(old, _BATCH_LIKE) and isinstance(new, _BATCH_LIKE) \
                and old.running_mean is not None and new.running_mean is not None:
            new.running_mean.copy_(old.running_mean)
            new.running_var.copy_(old.running_var)
            old_n = getattr(old, "num_batches_tracked", None)
            new_n = getattr(new, "num_batches_tracked", None)
            if old_n is not None and new_n is not None:
                new_n.copy_(old_n)


def swap_norms(model: nn.Module, to: str, *, filter: Callable[[str, nn.Module], bool] | None
               = None, **kwargs) -> nn.Module:
    """A copy of ``model`` with every normalization layer (torch.nn or normlab; those for
    which ``filter(path, module)`` is true) replaced by a ``to`` layer from the registry, built
    for the same channel count and channel axis; ``kwargs`` go to its constructor (e.g.
    ``num_groups``). Per-channel weight and bias are carried over where both layers have them,
    running statistics between batch-norm kinds; the train/eval mode is kept."""
    new = copy.deepcopy(model)
    for path, m in _norm_paths(new, filter):
        c, axis = _channels(path, m)
        kw = {"channel_axis": axis, **kwargs} if to != "none" else {}
        f = _factory(m)
        if f and to != "none":
            kw = {**f, **kw}
        try:
            layer = create_norm_layer(to, c, **kw)
        except (ValueError, TypeError) as exc:
            raise SurgeryError(f"cannot replace layer {path!r} ({m}) by {to!r}: {exc}") \
                from None
        _carry(m, layer, c)
        layer.train(m.training)
        _replace(new, path, layer)
    return new


# --------------------------------------------------------------------------------------------
# remove_norms


class Passthrough(nn.Module):
    """What a removed norm leaves behind: ``act(x + residual)`` with the removed layer's fused
    activation (the identity when it had none), so call sites keep working."""

    def __init__(self, activation: str | None = None):
        super().__init__()
        self.activation = activation

    def forward(self, input, residual=None):
        y = input if residual is None else input + residual
        if self.activation is None:
            return y
        return {"relu": torch.relu, "gelu": nn.functional.gelu,
                "silu": nn.functional.silu}[self.activation](y)

    def extra_repr(self) -> str:
        return "" if self.activation is None else f"activation={self.activation!r}"


def remove_norms(model: nn.Module, *, filter=None) -> nn.Module:
    """A copy of ``model`` with every normalization layer replaced by a :class:`Passthrough`
    (the "no normalization" baseline)."""
    new = copy.deepcopy(model)
    if is_norm(new):
        return Passthrough(getattr(new, "activation", None))
    for path, m in _norm_paths(new, filter):
        _replace(new, path, Passthrough(getattr(m, "activation", None)))
    return new


# --------------------------------------------------------------------------------------------
# insert_norms

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU,
                nn.ELU, nn.SELU, nn.Mish, nn.Hardswish, nn.Softplus, nn.PReLU)
_LINEAR_LIKE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
                nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass
class InsertReport:
    """What ``insert_norms`` did: ``inserted`` as (new layer path, layer repr, after which
    layer), ``skipped`` as (path, reason)."""

    inserted: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"inserted {p}: {r} (after {a})" for p, r, a in self.inserted]
        lines += [f"skipped {p}: {why}" for p, why in self.skipped]
        return "\n".join(lines) or "nothing to do"


def _out_channels(m: nn.Module) -> tuple[int, int]:
    if isinstance(m, nn.Linear):
        return m.out_features, -1  # features are the last dim of a Linear's output
    return m.out_channels, 1


def insert_norms(model: nn.Module, kind: str, placement: str = "before_activation",
                 **kwargs) -> tuple[nn.Module, InsertReport]:
    """Insert a ``kind`` norm around each Linear/Conv that an activation follows directly in a
    ``nn.Sequential`` (at any depth): ``Linear -> Norm -> Act`` with
    ``placement="before_activation"`` (the seed's), ``Linear -> Act -> Norm`` with
    ``"after_activation"``. A pair that already has a norm next to it is skipped. Returns the new
    model and an :class:`InsertReport`."""
    if placement not in ("before_activation", "after_activation"):
        raise SurgeryError("placement must be 'before_activation' or 'after_activation', got "
                           f"{placement!r}")
    new = copy.deepcopy(model)
    report = InsertReport()
    for seq_path, seq in list(new.named_modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        out: list[tuple[str, nn.Module]] = []
        i = 0
        while i < len(children):
            name, m = children[i]
            out.append((name, m))
            nxt = children[i + 1][1] if i + 1 < len(children) else None
            if isinstance(m, _LINEAR_LIKE) and isinstance(nxt, _ACTIVATIONS):
                after = children[i + 2][1] if i + 2 < len(children) else None
                full = f"{seq_path}.{name}" if seq_path else name
                if placement == "after_activation" and is_norm(after):
                    report.skipped.append((full, "already followed by a norm"))
                else:
                    c, axis = _out_channels(m)
                    try:
                        layer = create_norm_layer(kind, c, channel_axis=axis, **_factory(m),
                                                  **kwargs)
                    except (ValueError, TypeError) as exc:
                        raise SurgeryError(f"cannot insert {kind!r} after layer {full!r} "
                                           f"({m}): {exc}") from None
                    layer.train(m.training)
                    act_name, act = children[i + 1]
                    norm_name = f"{name}_norm"
                    if placement == "before_activation":
                        out += [(norm_name, layer), (act_name, act)]
                    else:
                        out += [(act_name, act), (norm_name, layer)]
                    where = f"{seq_path}.{norm_name}" if seq_path else norm_name
                    report.inserted.append((where, repr(layer), full if placement ==
                                            "before_activation" else
                                            (f"{seq_path}.{act_name}" if seq_path
                                             else act_name)))
                    i += 2
                    continue
            elif isinstance(m, _LINEAR_LIKE) and is_norm(nxt):
                full = f"{seq_path}.{name}" if seq_path else name
                report.skipped.append((full, "already followed by a norm"))
            i += 1
        if len(out) != len(children):
            for name, _ in children:
                delattr(seq, name)
            for name, m in out:
                seq.add_module(name, m)
    return new, report


# --------------------------------------------------------------------------------------------
# sync and freeze


def _batch_norms(model: nn.Module, exclude=()):
    return [(p, m) for p, m in model.named_modules()
            if p and isinstance(m, (nn.modules.batchnorm._BatchNorm, nl.BatchNorm))
            and not isinstance(m, exclude)]


_PLAIN_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
                      nl.BatchNorm, nl.BatchNorm1d, nl.BatchNorm2d, nl.BatchNorm3d)


def convert_sync_batchnorm(model: nn.Module, process_group=None) -> nn.Module:
    """A copy of ``model`` with every plain batch norm (torch.nn's, normlab's, with or without a
    fused activation) replaced by :class:`normlab.nn.SyncBatchNorm` with the same state, on
    ``process_group``: works on any torch.distributed backend (gloo on CPU included). Batch
    norm's variants with other statistics (renorm, ghost, frozen, or any subclass) are left
    as they are."""
    new = copy.deepcopy(model)
    todo = [(p, m) for p, m in new.named_modules()
            if p and type(m) in _PLAIN_BATCH_NORMS]
    if not todo and type(new) in _PLAIN_BATCH_NORMS:
        todo = [("", new)]
    for path, m in todo:
        sync = nl.SyncBatchNorm(m.num_features, m.eps, m.momentum, m.affine,
                                m.track_running_stats, process_group, **_factory(m),
                                bias=m.affine and m.bias is not None,
                                channel_axis=getattr(m, "channel_axis", 1),
                                activation=getattr(m, "activation", None))
        sync.load_state_dict(m.state_dict(), strict=True)
        sync.train(m.training)
        if not path:
            return sync
        _replace(new, path, sync)
    return new


def freeze_batch_norm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every batch norm that has running statistics replaced by
    :class:`normlab.nn.FrozenBatchNorm` carrying its weight, bias and running statistics
    (affine-less ones get weight 1, bias 0). Layers without running statistics are kept."""
    new = copy.deepcopy(model)
    todo = _batch_norms(new)
    if not todo and isinstance(new, (nn.modules.batchnorm._BatchNorm, nl.BatchNorm)):
        todo = [("", new)]
    for path, m in todo:
        if m.running_mean is None:
            continue
        frozen = nl.FrozenBatchNorm(m.num_features, m.eps, **_factory(m),
                                    channel_axis=getattr(m, "channel_axis", 1),
                                    activation=getattr(m, "activation", None))
        with torch.no_grad():
            frozen.running_mean.copy_(m.running_mean)
            frozen.running_var.copy_(m.running_var)
            if m.weight is not None:
                frozen.weight.copy_(m.weight)
            if m.bias is not None:
                frozen.bias.copy_(m.bias)
        if not path:
            return frozen
        _replace(new, path, frozen)
    return new
