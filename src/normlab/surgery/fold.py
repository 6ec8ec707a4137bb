"""Fold eval-mode batch norm into the Conv/ConvTranspose/Linear before it.

In eval mode batch norm is a per-channel affine map, ``y = (x - mean) * s + beta`` with
``s = gamma / sqrt(var + eps)``, so with ``x = W u + b`` it becomes one layer with
``W' = W * s`` (scaled along the output channels) and ``b' = (b - mean) * s + beta``. Done in
float64 and cast back, so the folded model matches the unfolded one to float32 rounding.

The graph is found by torch.fx tracing (normlab's and torch's norm layers are leaves) when the
model traces; otherwise by the fallback: adjacent ``(Conv|Linear, BatchNorm)`` pairs inside
``nn.Sequential`` containers. A normlab batch norm with a fused activation leaves that
activation in its place.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from normlab import nn as nl
from normlab.surgery.core import Passthrough, _replace, is_norm

__all__ = ["FoldReport", "fold_batch_norm"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN = (nn.modules.batchnorm._BatchNorm, nl.BatchNorm, nl.FrozenBatchNorm)


@dataclass
class FoldReport:
    """``folded``: (layer path, batch-norm path) pairs; ``not_folded``: (batch-norm path,
    reason); ``method``: "fx" or "sequential" (the fallback, with ``trace_error``)."""

    folded: list[tuple[str, str]] = field(default_factory=list)
    not_folded: list[tuple[str, str]] = field(default_factory=list)
    method: str = "fx"
    trace_error: str | None = None

    def __str__(self) -> str:
        lines = [f"folded {bn} into {layer}" for layer, bn in self.folded]
        lines += [f"not folded {bn}: {why}" for bn, why in self.not_folded]
        if self.trace_error:
            lines.append(f"(torch.fx could not trace the model: {self.trace_error}; "
                         "used the Sequential fallback)")
        return "\n".join(lines) or "no batch norm found"


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_norm(m) or super().is_leaf_module(m, qualname)


def _why_not(bn: nn.Module, layer: nn.Module | None) -> str | None:
    """The reason ``bn`` cannot be folded into ``layer`` (None: it can)."""
    if bn.running_mean is None:
        return "no running statistics (track_running_stats=False uses batch statistics)"
    if layer is None:
        return "not directly after a Conv, ConvTranspose or Linear layer"
    axis = getattr(bn, "channel_axis", 1)
    if isinstance(layer, nn.Linear):
        if not (axis == -1 or isinstance(bn, (nn.BatchNorm1d, nl.BatchNorm1d))):
            return "its channel axis is not the Linear layer's feature axis"
        n_out = layer.out_features
    else:
        if axis != 1:
            return "its channel axis is not the convolution's channel axis"
        n_out = layer.out_channels
    if n_out != bn.num_features:
        return f"{bn.num_features} channels but the layer before has {n_out}"
    return None


def _folded(layer: nn.Module, bn: nn.Module) -> nn.Module:
    new = copy.deepcopy(layer)
    w = layer.weight.detach().double()
    b = (layer.bias.detach().double() if layer.bias is not None
         else torch.zeros(bn.num_features, dtype=torch.float64, device=w.device))
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    s = gamma / torch.sqrt(var + bn.eps)
    if isinstance(layer, _CONV_T):
        g = layer.groups  # weight: (in, out / groups, *k); output channel = g * out/g + j
        shape = (g, w.shape[0] // g, w.shape[1]) + tuple(w.shape[2:])
        w2 = (w.reshape(shape) * s.reshape(g, 1, -1, *[1] * (w.dim() - 2))).reshape(w.shape)
    else:  # Linear (out, in) and Conv (out, in / groups, *k)
        w2 = w * s.reshape(-1, *[1] * (w.dim() - 1))
    b2 = (b - mean) * s + beta
    new.weight = nn.Parameter(w2.to(layer.weight.dtype), requires_grad=False)
    new.bias = nn.Parameter(b2.to(layer.weight.dtype), requires_grad=False)
    new.weight.requires_grad_(layer.weight.requires_grad)
    new.bias.requires_grad_(layer.weight.requires_grad)
    return new


def _leftover(bn: nn.Module) -> nn.Module:
    return Passthrough(getattr(bn, "activation", None))


def _fold_fx(model: nn.Module, report: FoldReport) -> nn.Module:
    graph = _Tracer().trace(model)
    gm = fx.GraphModule(model, graph)
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BN):
            continue
        bn = modules[node.target]
        src = node.args[0] if node.args else None
        layer = None
        if (isinstance(src, fx.Node) and src.op == "call_module"
                and isinstance(modules.get(src.target), (nn.Linear, *_CONV, *_CONV_T))
                and len(src.users) == 1 and len(node.args) == 1 and not node.kwargs):
            layer = modules[src.target]
        why = _why_not(bn, layer)
        if why is None and len(node.args) > 1:
            why = "called with a residual input"
        if why:
            report.not_folded.append((node.target, why))
            continue
        _replace(gm, src.target, _folded(layer, bn))
        _replace(gm, node.target, _leftover(bn))
        report.folded.append((src.target, node.target))
    gm.graph.lint()
    gm.recompile()
    return gm


def _fold_sequential(model: nn.Module, report: FoldReport) -> nn.Module:
    new = copy.deepcopy(model)
    paired = set()
    for seq_path, seq in list(new.named_modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        names = list(seq._modules)
        for prev, cur in zip(names, names[1:], strict=False):
            layer, bn = seq._modules[prev], seq._modules[cur]
            if not isinstance(bn, _BN):
                continue
            path = f"{seq_path}.{cur}" if seq_path else cur
            if not isinstance(layer, (nn.Linear, *_CONV, *_CONV_T)):
                layer = None
            why = _why_not(bn, layer)
            if why:
                report.not_folded.append((path, why))
                paired.add(path)
                continue
            lpath = f"{seq_path}.{prev}" if seq_path else prev
            seq._modules[prev] = _folded(layer, bn)
            seq._modules[cur] = _leftover(bn)
            report.folded.append((lpath, path))
            paired.add(path)
    for path, m in new.named_modules():
        if isinstance(m, _BN) and path not in paired:
            report.not_folded.append((path, "not inside a Sequential right after a Conv or "
                                             "Linear layer (the model did not trace)"))
    return new


def fold_batch_norm(model: nn.Module) -> tuple[nn.Module, FoldReport]:
    """A folded copy of ``model`` in eval mode (its outputs equal the original's eval outputs)
    and a :class:`FoldReport` of what was folded and what was not, and why. The input model,
    whatever its mode, is not changed."""
    report = FoldReport()
    src = copy.deepcopy(model).eval()  # folding computes the eval-mode model
    try:
        folded = _fold_fx(src, report)
    except Exception as exc:  # torch.fx cannot trace data-dependent control flow and more
        report = FoldReport(method="sequential", trace_error=f"{type(exc).__name__}: {exc}")
        folded = _fold_sequential(src, report)
    return folded.eval(), report
