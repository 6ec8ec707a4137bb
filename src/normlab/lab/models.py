"""The lab's small networks, with the norm placed per the seed: Linear/Conv -> Norm -> Act.

Norm kinds come from ``normlab.registry`` with the lab's choices for each place:

===========  =====================================  =======================================
kind         in the MLP (N x W)                     in the CNN (N x C x positions)
===========  =====================================  =======================================
none         nothing                                nothing
batch        BatchNorm                              BatchNorm
layer        LayerNorm over the features            GroupNorm(1, C): the whole sample, as
                                                    Ba et al. apply layer norm to conv nets
group        GroupNorm(C/4 groups)                  GroupNorm(C/4 groups)
instance     (not defined: no positions)            InstanceNorm(C, affine=True)
ghost:k      batch norm over ghost groups of k samples inside the batch
renorm:k     batch renormalization over ghost groups of k samples
===========  =====================================  =======================================
"""

from __future__ import annotations

import math

import torch
from torch import nn

import normlab.functional as F
from normlab import nn as nl
from normlab.registry import create_norm_layer

__all__ = ["ACTIVATIONS", "CNN", "MLP", "GhostBatchNorm", "SeqCNN", "SeqRNN", "make_norm"]

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


class GhostBatchNorm(nl.BatchNorm):
    """Batch norm whose training statistics come from ghost groups of ``ghost_size`` samples
    inside the batch (Hoffer et al. 2017), so that the statistics' batch size is separated from
    the optimizer's. Running statistics average the groups' statistics; eval as batch norm.

    A vectorized lab helper: all groups in one pass, which keeps the small-batch study within
    its time budget; ``normlab.nn.GhostBatchNorm`` (one batch-norm call per group, running
    statistics updated group by group) is the library's exact version.
    """

    def __init__(self, num_features, ghost_size: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.ghost_size = int(ghost_size)

    def forward(self, input, residual=None):
        n, k = input.shape[0], self.ghost_size
        if not self.training or n <= k or n % k != 0:
            return super().forward(input, residual)
        c = input.shape[1]
        factor = self._factor(input)
        # (N, C, *S) -> (N/k, C, k*S): each (ghost group, channel) is one instance-norm group
        g = input.reshape(n // k, k, c, -1).transpose(1, 2).reshape(n // k, c, -1)
        y = F.instance_norm(g, self.running_mean, self.running_var, self.weight, self.bias,
                            True, factor, self.eps)
        y = y.reshape(n // k, c, k, -1).transpose(1, 2).reshape(input.shape)
        return y if residual is None else y + residual

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ghost_size={self.ghost_size}"


class GhostRenorm(nl.BatchRenorm):
    """Batch renormalization over ghost groups of ``ghost_size`` samples inside the batch: the
    small-batch setting of Ioffe 2017 (its "sets of 4") inside one process. Vectorized over the
    groups; running statistics move by the groups' average."""

    def __init__(self, num_features, ghost_size: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.ghost_size = int(ghost_size)

    def forward(self, input, residual=None):
        n, k = input.shape[0], self.ghost_size
        if not self.training or n <= k or n % k != 0:
            return super().forward(input, residual)
        c = input.shape[1]
        factor = self._factor(input)
        r_max, d_max = self.current_limits()
        g = input.reshape(n // k, k, c, -1)  # G, k, C, S
        var_b, mu_b = torch.var_mean(g, (1, 3), correction=0, keepdim=True)  # G,1,C,1
        sigma_b = torch.sqrt(var_b + self.eps)
        with torch.no_grad():
            sigma = torch.sqrt(self.running_var + self.eps).view(1, 1, c, 1)
            r = (sigma_b / sigma).clamp(1.0 / r_max, r_max)
            d = ((mu_b - self.running_mean.view(1, 1, c, 1)) / sigma).clamp(-d_max, d_max)
            m = g.shape[1] * g.shape[3]
            self.running_mean.mul_(1 - factor).add_(mu_b.mean((0, 1, 3)), alpha=factor)
            self.running_var.mul_(1 - factor).add_(var_b.mean((0, 1, 3)) * m / max(m - 1, 1),
                                                   alpha=factor)
        y = (g - mu_b) / sigma_b * r + d
        y = y * self.weight.view(1, 1, c, 1) + self.bias.view(1, 1, c, 1)
        y = y.reshape(input.shape)
        return y if residual is None else y + residual


def make_norm(kind: str, channels: int, *, conv: bool) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return create_norm_layer("batch", channels)
    if kind.startswith("ghost:"):
        return GhostBatchNorm(channels, int(kind.split(":", 1)[1]))
    if kind.startswith("renorm:"):
        # momentum 0.1 as the lab's batch norm (the paper's 0.01 needs far more steps), limits
        # ramped from batch norm to (3, 5) over the first 50 steps
        return GhostRenorm(channels, int(kind.split(":", 1)[1]), momentum=0.1, warmup_steps=50)
    if kind == "layer":
        return (create_norm_layer("group", channels, num_groups=1) if conv
                else create_norm_layer("layer", channels))
    if kind == "group":
        return create_norm_layer("group", channels, num_groups=max(1, channels // 4))
    if kind == "instance":
        if not conv:
            raise ValueError("norm 'instance' needs positions: use the CNN model")
        return create_norm_layer("instance", channels, affine=True)
    raise ValueError(f"norm must be one of none, batch, layer, group, instance, ghost:K, "
                     f"renorm:K; "
                     f"got {kind!r}")


class MLP(nn.Module):
    """in -> [Linear -> Norm -> Act (-> Dropout)] x len(hidden) -> Linear.

    ``placement="after"`` puts the norm after the activation instead.
    """

    def __init__(self, in_features: int, num_classes: int, hidden=(100, 100), norm="none",
                 activation="relu", placement="before", dropout=0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        self.hidden_linears: list[nn.Linear] = []
        for h in hidden:
            lin = nn.Linear(width, h)
            self.hidden_linears.append(lin)
            block = [lin, make_norm(norm, h, conv=False), ACTIVATIONS[activation]()]
            if placement == "after":
                block = [lin, ACTIVATIONS[activation](), make_norm(norm, h, conv=False)]
            layers += block
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    """[Conv -> Norm -> Act] x len(channels) -> flatten -> Linear, in 1D (sequences) or 2D
    (images). Convolutions are unpadded, so a per-channel shift of the input is constant over
    the positions of the first feature map (what instance norm can remove). The head flattens
    rather than pools: after instance norm every channel's mean over positions is its bias, so
    a pooled head would see constants."""

    def __init__(self, in_channels: int, num_classes: int, input_size: tuple[int, ...],
                 channels=(32, 32, 32), norm="none", activation="relu", kernel_size=3, stride=1,
                 placement="before"):
        super().__init__()
        dims = len(input_size)
        conv_cls = nn.Conv1d if dims == 1 else nn.Conv2d
        layers: list[nn.Module] = []
        size = list(input_size)
        width = in_channels
        self.hidden_linears: list[nn.Module] = []
        for c in channels:
            conv = conv_cls(width, c, kernel_size, stride=stride)
            self.hidden_linears.append(conv)
            norm_layer = make_norm(norm, c, conv=True)
            if placement == "after":
                layers += [conv, ACTIVATIONS[activation](), norm_layer]
            else:
                layers += [conv, norm_layer, ACTIVATIONS[activation]()]
            width = c
            size = [(n - kernel_size) // stride + 1 for n in size]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width * math.prod(size), num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class SeqRNN(nn.Module):
    """A recurrent classifier over padded sequences (N, T, F) with lengths: a per-step
    embedding (Linear -> tanh), one LSTM layer run by :class:`normlab.nn.Recurrent` (a
    sequence's state stops at its last real step), then a linear readout of the final hidden
    state.

    ``norm``: ``none`` (the plain LSTM cell, = ``torch.nn.LSTMCell``), ``layer`` (Ba et al.
    2016), ``batch`` (Cooijmans et al. 2016: statistics per time step for the first
    ``max_steps`` steps, the last step's beyond; finished sequences left out of a step's
    statistics), ``batch-unmasked`` (the same, but every sequence of the batch, finished or
    not, counts in every step's statistics: what batch norm does without a mask).
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 32, norm="none",
                 max_steps: int = 40, embed: int = 16):
        super().__init__()
        # a learned nonlinear embedding of each step's features: layer-normalizing W_ih x of a
        # single scalar feature would keep only its sign (W_ih x is then rank one)
        self.embed = nn.Sequential(nn.Linear(in_features, embed), nn.Tanh())
        if norm == "none":
            cell = nl.LayerNormLSTMCell(embed, hidden, norm=False)
        elif norm == "layer":
            cell = nl.LayerNormLSTMCell(embed, hidden)
        elif norm in ("batch", "batch-unmasked"):
            cell = nl.BatchNormLSTMCell(embed, hidden, max_steps)
        else:
            raise ValueError(f"norm for the recurrent model must be none, layer, batch or "
                             f"batch-unmasked, got {norm!r}")
        self.rnn = nl.Recurrent(cell, mask_statistics=norm != "batch-unmasked")
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x, lengths):
        _, state = self.rnn(self.embed(x), lengths)
        return self.head(state[0])


class SeqCNN(nn.Module):
    """[Conv1d (same padding) -> Norm -> Act] x len(channels) -> mean over the real positions
    -> Linear, on padded (N, T, F) sequences with lengths. The padded positions of the input
    are zeros; ``mask_norm`` passes the padding mask to the norms (statistics over the real
    positions only, padded outputs zero) or not (torch.nn's behaviour: the padding counts)."""

    def __init__(self, in_features: int, num_classes: int, channels=(16, 16, 16), norm="batch",
                 activation="relu", kernel_size=5, mask_norm=True):
        super().__init__()
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        width = in_features
        for c in channels:
            self.convs.append(nn.Conv1d(width, c, kernel_size, padding=kernel_size // 2))
            self.norms.append(make_norm(norm, c, conv=True))
            width = c
        self.act = ACTIVATIONS[activation]()
        self.mask_norm = mask_norm
        self.head = nn.Linear(width, num_classes)

    def forward(self, x, lengths):
        mask = F.lengths_to_mask(lengths, x.shape[1])  # N, T
        h = x.transpose(1, 2)  # N, F, T
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = conv(h)
            h = norm(h, mask=mask) if self.mask_norm else norm(h)
            h = self.act(h)
        m = mask.unsqueeze(1).to(h.dtype)
        pooled = (h * m).sum(2) / m.sum(2).clamp_min(1.0)
        return self.head(pooled)


def hidden_inputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The input of each hidden layer's activation (for the activation-drift claim): hooks on
    the module right before each activation."""
    acts = [m for m in model.modules() if isinstance(m, tuple(ACTIVATIONS.values()))]
    seen: list[torch.Tensor] = []
    hooks = [a.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
             for a in acts]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen
