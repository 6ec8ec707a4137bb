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
import sys
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from normlab.surgery import adapters as ad
from normlab.surgery.core import Passthrough, _check_model, _replace

__all__ = ["FoldReport", "fold_batch_norm"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
# layers fold scales: exact classes only (a subclass may standardize its weight in forward, as
# timm's StdConv2d does); timm's Conv2dSame pads its input, then convolves with weight and bias
_FOLD_INTO = {ad.class_key(c) for c in (nn.Linear, *_CONV, *_CONV_T)} | {
    "timm.layers.conv2d_same:Conv2dSame"}


def _foldable_layer(m) -> bool:
    return m is not None and ad.class_key(type(m)) in _FOLD_INTO


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
    """Norm layers and the layers fold scales are leaves; so are the modules timm marks as
    not traceable, when timm is already imported."""

    def __init__(self):
        timm_fx = sys.modules.get("timm.layers._fx")
        self._extra_leaves = tuple(getattr(timm_fx, "_leaf_modules", ()))
        fns = tuple(f for f in getattr(timm_fx, "_autowrap_functions", ()) if callable(f))
        super().__init__(autowrap_functions=fns)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (ad.looks_like_norm(m) or _foldable_layer(m)
                or isinstance(m, self._extra_leaves) or super().is_leaf_module(m, qualname))


def _batch_info(bn: nn.Module):
    """(NormInfo, None) for a batch norm fold may consider, (None, reason) for a batch norm it
    cannot read, (None, None) for a layer that is not a batch norm."""
    try:
        info = ad.read(bn)
    except ad.Refused as exc:
        batch_like = ("batch" in type(bn).__name__.lower()
                      or isinstance(bn, nn.modules.batchnorm._BatchNorm))
        return None, (str(exc) if batch_like else None)
    return (info, None) if info.kind in ("batch", "frozen") else (None, None)


def _why_not(info: ad.NormInfo, layer: nn.Module | None, src_desc: str) -> str | None:
    """The reason the batch norm ``info`` cannot be folded into ``layer`` (None: it can)."""
    if info.running_mean is None:
        return "no running statistics (track_running_stats=False uses batch statistics)"
    if layer is None:
        return f"its input is {src_desc}, not a Conv, ConvTranspose or Linear layer"
    if not _foldable_layer(layer):
        return (f"the layer before is {type(layer).__qualname__} ({type(layer).__module__}), "
                "which fold does not scale (only exact Conv/ConvTranspose/Linear classes)")
    axis = info.channel_axis
    if isinstance(layer, nn.Linear):
        if not (axis == -1 or info.dims == 1):
            return "its channel axis is not the Linear layer's feature axis"
        n_out = layer.out_features
    else:
        if axis != 1:
            return "its channel axis is not the convolution's channel axis"
        n_out = layer.out_channels
    if n_out != info.num_channels:
        return f"{info.num_channels} channels but the layer before has {n_out}"
    return None


def _folded(layer: nn.Module, info: ad.NormInfo) -> nn.Module:
    new = copy.deepcopy(layer)
    w = layer.weight.detach().double()
    c = info.num_channels
    b = (layer.bias.detach().double() if layer.bias is not None
         else torch.zeros(c, dtype=torch.float64, device=w.device))
    mean, var = info.running_mean.double(), info.running_var.double()
    gamma = info.weight.detach().double() if info.weight is not None else torch.ones_like(mean)
    beta = info.bias.detach().double() if info.bias is not None else torch.zeros_like(mean)
    s = gamma / torch.sqrt(var + info.eps)
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


def _leftover(info: ad.NormInfo) -> nn.Module:
    """What stays in the batch norm's place: its activation (and drop), or the identity."""
    if info.act is None and info.drop is None:
        return Passthrough(info.activation)
    if info.drop is None:
        return info.act
    return nn.Sequential(info.drop, info.act) if info.act is not None else info.drop


def _layer_probe(layer: nn.Module) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return torch.randn(3, layer.in_features, dtype=torch.float64)
    n = len(layer.kernel_size)
    size = [d * (k - 1) + 1 + s + 2 for k, d, s in
            zip(layer.kernel_size, layer.dilation, layer.stride, strict=True)]
    cin = layer.in_channels
    return torch.randn(2, cin, *size[:n], dtype=torch.float64)


def _pair_check(layer: nn.Module, bn: nn.Module) -> str | None:
    """The fold done on float64 copies of the pair: ``left(new_layer(x))`` against
    ``bn(layer(x))`` in eval mode on a float64 probe (storing the folded weights in the
    layer's own dtype afterwards rounds them to that dtype, nothing more)."""
    layer64, bn64 = copy.deepcopy(layer).double().eval(), copy.deepcopy(bn).double().eval()
    info = ad.read(bn64)
    new64, left64 = _folded(layer64, info), _leftover(info)
    x = _layer_probe(layer) * 1.5 + 0.3
    with torch.no_grad():
        a = bn64(layer64(x))
        b = left64.eval()(new64.eval()(x))
    tol = ad.PROBE_RTOL_UPCAST if info.upcast else ad.PROBE_RTOL
    err = ad._rel_err(a, b)
    if not err <= tol:
        return f"the folded pair differs on a probe: relative error {err:.2g} > {tol:g}"
    return None


def _describe(node) -> str:
    if not isinstance(node, fx.Node):
        return "not a tensor from a layer"
    if node.op == "placeholder":
        return "the model's input"
    if node.op == "call_module":
        cls = type(node.graph.owning_module.get_submodule(node.target)).__qualname__
        return f"the output of {node.target} ({cls})"
    if node.op in ("call_function", "call_method"):
        name = getattr(node.target, "__name__", str(node.target))
        return f"the result of {name}()"
    return f"a {node.op} node"


def _fold_fx(model: nn.Module, report: FoldReport) -> nn.Module:
    graph = _Tracer().trace(model)
    gm = fx.GraphModule(model, graph)
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        bn = modules.get(node.target)
        info, why = _batch_info(bn)
        if info is None:
            if why:
                report.not_folded.append((node.target, why))
            continue
        src = node.args[0] if node.args else None
        layer = None
        if isinstance(src, fx.Node) and src.op == "call_module" \
                and isinstance(modules.get(src.target), (nn.Linear, *_CONV, *_CONV_T)):
            layer = modules[src.target]
        why = _why_not(info, layer, _describe(src))
        if why is None and len(src.users) != 1:
            why = f"the output of {src.target} is used elsewhere too"
        if why is None and (len(node.args) > 1 or node.kwargs):
            why = "called with more than its input (a residual)"
        if why:
            report.not_folded.append((node.target, why))
            continue
        why = _pair_check(layer, bn)
        if why:
            report.not_folded.append((node.target, why))
            continue
        new_layer, left = _folded(layer, info), _leftover(info)
        _replace(gm, src.target, new_layer)
        _replace(gm, node.target, left)
        report.folded.append((src.target, node.target))
    called = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    for target in sorted(called):  # leaves holding batch norms (timm's untraceable blocks)
        leaf = gm.get_submodule(target)
        if ad.looks_like_norm(leaf) or not _has_batch_norm(leaf):
            continue
        sub = FoldReport()
        _replace(gm, target, _fold_part(leaf, sub, target))
        report.folded += [(f"{target}.{a}", f"{target}.{b}") for a, b in sub.folded]
        report.not_folded += [(f"{target}.{p}", why) for p, why in sub.not_folded]
    for path, m in model.named_modules():
        if path and path not in called and not any(path.startswith(c + ".") for c in called):
            info, why = _batch_info(m)
            if info is not None or why:
                report.not_folded.append((path, why or "not called in the eval-mode forward "
                                          "torch.fx traced (e.g. an auxiliary head)"))
    gm.graph.lint()
    gm.recompile()
    return gm


def _has_batch_norm(m: nn.Module) -> bool:
    return any(_batch_info(c) != (None, None) for c in m.modules())


def _fold_part(m: nn.Module, report: FoldReport, where: str) -> nn.Module:
    """Fold inside a module torch.fx left as a leaf: traced on its own if it traces, else
    child by child (its own batch-norm children are reported)."""
    try:
        return _fold_fx(m, report)
    except Exception:
        pass
    for name, child in list(m.named_children()):
        info, why = _batch_info(child)
        if info is not None or why:
            report.not_folded.append((name, why or f"a child of {where}, which torch.fx "
                                      "cannot trace"))
        elif _has_batch_norm(child):
            sub = FoldReport()
            setattr(m, name, _fold_part(child, sub, f"{where}.{name}"))
            report.folded += [(f"{name}.{a}", f"{name}.{b}") for a, b in sub.folded]
            report.not_folded += [(f"{name}.{p}", w) for p, w in sub.not_folded]
    return m


def _fold_sequential(model: nn.Module, report: FoldReport, inside: str = "") -> nn.Module:
    new = copy.deepcopy(model)
    paired = set()
    for seq_path, seq in list(new.named_modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        names = list(seq._modules)
        for prev, cur in zip(names, names[1:], strict=False):
            layer, bn = seq._modules[prev], seq._modules[cur]
            info, why = _batch_info(bn)
            path = f"{seq_path}.{cur}" if seq_path else cur
            if info is None:
                if why:
                    report.not_folded.append((path, why))
                    paired.add(path)
                continue
            if not isinstance(layer, (nn.Linear, *_CONV, *_CONV_T)):
                desc, layer = f"the output of {type(layer).__qualname__}", None
            else:
                desc = ""
            why = _why_not(info, layer, desc)
            if why is None:
                why = _pair_check(layer, bn)
            if why:
                report.not_folded.append((path, why))
                paired.add(path)
                continue
            lpath = f"{seq_path}.{prev}" if seq_path else prev
            seq._modules[prev] = _folded(layer, info)
            seq._modules[cur] = _leftover(info)
            report.folded.append((lpath, path))
            paired.add(path)
    for path, m in new.named_modules():
        if path in paired or not path:
            continue
        info, why = _batch_info(m)
        if info is not None or why:
            report.not_folded.append((path, why or "not inside a Sequential right after a Conv "
                                      "or Linear layer (" + (f"{inside} does not trace"
                                                             if inside else
                                                             "the model did not trace") + ")"))
    return new


def fold_batch_norm(model: nn.Module, *, example_inputs=None) -> tuple[nn.Module, FoldReport]:
    """A folded copy of ``model`` in eval mode (its outputs equal the original's eval outputs)
    and a :class:`FoldReport` of what was folded and what was not, and why. Every batch norm
    of the adapter table (torch.nn's, normlab's, timm's BatchNormAct2d — whose activation and
    drop stay in its place —, frozen ones) whose input is the sole output of an exact
    Conv/ConvTranspose/Linear is folded; each pair is checked on a float64 probe first (a pair
    that fails is left and reported). ``example_inputs``: also compare the whole model's eval
    output in float64 and raise :class:`SurgeryError` beyond 1e-10 relative (1e-5 when the
    model is not float64: the folded weights are stored in its dtype). The input model,
    whatever its mode, is not changed."""
    report = FoldReport()
    src = copy.deepcopy(model).eval()  # folding computes the eval-mode model
    try:
        folded = _fold_fx(src, report)
    except Exception as exc:  # torch.fx cannot trace data-dependent control flow and more
        report = FoldReport(method="sequential", trace_error=f"{type(exc).__name__}: {exc}")
        folded = _fold_sequential(src, report)
    folded = folded.eval()
    if example_inputs is not None:
        p = next(iter(src.parameters()), None)
        rtol = ad.PROBE_RTOL if p is None or p.dtype == torch.float64 else ad.PROBE_RTOL_UPCAST
        _check_model(src, folded, example_inputs, "fold_batch_norm", exact=True, rtol=rtol,
                     modes=("eval",))
    return folded, report
