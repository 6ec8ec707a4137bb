"""Precise batch norm: population statistics by true averaging (Wu & Johnson 2021).

A batch norm's running statistics are an exponential moving average (EMA) of per-batch
statistics taken while the weights moved; at small batches or high learning rates they can be
far from the statistics of the final network. :func:`precise_batch_norm` recomputes them with
the weights fixed: the model runs in training mode (as it trained) over batches of a loader,
and every batch-norm layer's input is averaged directly, in float64:

    mean = sum_b n_b * mean_b / sum_b n_b      (the exact mean over all values seen)
    var  = sum_b n_b * var_b  / sum_b n_b      (var_b: the batch's unbiased variance, as
                                                torch's running_var; n_b values per channel)

With batches of one size this is the equal-weight average of per-batch statistics that
fvcore's precise BN and ``torch.optim.swa_utils.update_bn`` (a cumulative average,
``momentum=None``) compute; with batches of unequal sizes (a shorter last batch) each batch
counts by its size, so the mean is the dataset's mean, where those two weight every batch the
same.

Like every surgery function it returns a new model and leaves its input alone (fvcore's and
torch's versions update in place). The layers' own updates during the passes are undone after
each forward (every buffer of each layer is put back), so the passes all see the trained
state (batch renorm's r and d read the running statistics) and ``num_batches_tracked``, the
momentum and every module's train/eval mode come back as they were; only ``running_mean`` and
``running_var`` change.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from normlab.surgery import adapters as ad

__all__ = ["PreciseBNReport", "precise_batch_norm"]


@dataclass
class PreciseBNReport:
    """What :func:`precise_batch_norm` did: the layers whose statistics it set, the layers it
    left (path, class, reason), and the samples and batches it averaged over."""

    updated: list[str] = field(default_factory=list)
    left: list[tuple[str, str, str]] = field(default_factory=list)
    samples: int = 0
    batches: int = 0

    def __str__(self) -> str:
        lines = [f"set {p}: population statistics over {self.samples} samples "
                 f"({self.batches} batches)" for p in self.updated]
        lines += [f"left {p} ({c}): {why}" for p, c, why in self.left]
        return "\n".join(lines) or "no batch-norm layer found"


class _Stats:
    """Count-weighted sums of per-batch means and unbiased variances of one layer's input."""

    def __init__(self, info: ad.NormInfo):
        self.axis = info.channel_axis
        self.count = 0
        self.mean_sum: torch.Tensor | None = None
        self.var_sum: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        if x.numel() == 0:
            return  # an empty batch: nothing to average (the layer leaves it too)
        c = x.shape[self.axis]
        v = x.detach().movedim(self.axis, -1).reshape(-1, c).double()  # values, C
        n = v.shape[0]
        if n < 2:
            raise ValueError("precise_batch_norm: a batch gives one value per channel "
                             f"(input shape {tuple(x.shape)}); its unbiased variance is "
                             "undefined: use batches of at least 2 samples")
        var, mean = torch.var_mean(v, dim=0, correction=1)  # C
        if self.mean_sum is None:
            self.mean_sum, self.var_sum = mean * n, var * n
        else:
            self.mean_sum += mean * n
            self.var_sum += var * n
        self.count += n


def _batch_layers(model: nn.Module, report: PreciseBNReport):
    out = []
    for path, m in model.named_modules():
        if not ad.adapter_for(m):
            continue
        try:
            info = ad.read(m)
        except ad.Refused:
            continue
        if info.kind != "batch":
            continue
        if info.running_mean is None or info.running_var is None:
            report.left.append((path, type(m).__name__, "no running statistics "
                                "(track_running_stats=False): it always uses the batch's"))
            continue
        out.append((path, m, info))
    return out


def _input_of(item):
    if isinstance(item, torch.Tensor):
        return item
    if isinstance(item, (list, tuple)) and item and isinstance(item[0], torch.Tensor):
        return item[0]
    raise TypeError("loader: expected each item to be a tensor or a (tensor, ...) tuple/list, "
                    f"got {type(item).__name__}")


def precise_batch_norm(model: nn.Module, loader: Iterable, num_samples: int | None = None, *,
                       device=None, return_report: bool = False):
    """A copy of ``model`` whose batch norms hold population statistics averaged over the
    batches of ``loader`` (see the module docstring for the formula).

    ``loader`` yields input tensors or ``(input, ...)`` tuples (a ``DataLoader`` over a
    ``TensorDataset`` does); the first element is the model's input, moved to ``device`` if
    given. Whole batches are taken until at least ``num_samples`` samples (the inputs' first
    dimension) have been seen; ``None`` takes the whole loader. Every batch-norm layer of
    the adapter table (torch.nn's, normlab's batch norm and its ghost, renorm and sync
    variants, timm's ``BatchNormAct2d``, ...) with running statistics is set; a layer
    without them is left and reported. The input model is not changed.

    Returns the new model, or ``(model, PreciseBNReport)`` with ``return_report=True``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if num_samples is not None and (isinstance(num_samples, bool)
                                    or not isinstance(num_samples, int) or num_samples < 1):
        raise ValueError(f"num_samples: expected a positive integer or None, got "
                         f"{num_samples!r}")
    new = copy.deepcopy(model)
    report = PreciseBNReport()
    layers = _batch_layers(new, report)
    modes = {m: m.training for m in new.modules()}
    stats = {}
    hooks = []
    for path, m, info in layers:
        s = stats[path] = _Stats(info)
        saved = {name: b.clone() for name, b in m.named_buffers(recurse=False)
                 if b is not None}

        def pre(mod, args, kwargs, s=s):
            if kwargs.get("mask") is not None:
                raise ValueError("precise_batch_norm: masked batch-norm calls are not "
                                 "supported (the statistics would need the mask)")
            s.add(args[0] if args else kwargs["input"])

        def post(mod, args, output, saved=saved):
            with torch.no_grad():  # undo the layer's own update: every pass sees one state
                for name, b in mod.named_buffers(recurse=False):
                    if name in saved:
                        b.copy_(saved[name])

        hooks.append(m.register_forward_pre_hook(pre, with_kwargs=True))
        hooks.append(m.register_forward_hook(post))
    try:
        if layers:
            new.train()
            with torch.no_grad():
                for item in loader:
                    if num_samples is not None and report.samples >= num_samples:
                        break
                    x = _input_of(item)
                    if device is not None:
                        x = x.to(device)
                    new(x)
                    report.samples += x.shape[0]
                    report.batches += 1
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training
    with torch.no_grad():
        for path, m, _ in layers:
            s = stats[path]
            if s.count == 0:
                report.left.append((path, type(m).__name__, "no input reached it"))
                continue
            m.running_mean.copy_(s.mean_sum / s.count)
            m.running_var.copy_(s.var_sum / s.count)
            report.updated.append(path)
    return (new, report) if return_report else new
