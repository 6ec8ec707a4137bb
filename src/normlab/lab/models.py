"""The lab's small networks, with the norm placed per the config: Linear/Conv -> Norm -> Act.

Every norm is a ``normlab.nn`` layer built through ``normlab.registry``, so the lab measures
the library's own layers; the lab's choices for each place:

===========  =====================================  =======================================
kind         in the MLP (N x W)                     in the CNN (N x C x positions)
===========  =====================================  =======================================
none         nothing                                nothing
batch        BatchNorm                              BatchNorm
layer        LayerNorm over the features            GroupNorm(1, C): the whole sample, as
                                                    Ba et al. apply layer norm to conv nets
group        GroupNorm(C/4 groups)                  GroupNorm(C/4 groups)
instance     (not defined: no positions)            InstanceNorm(C, affine=True)
ghost:k      GhostBatchNorm(C, virtual_batch_size=k): batch norm on each chunk of k samples
renorm:k     BatchRenorm(C, virtual_batch_size=k, **RENORM): batch renorm on each chunk
===========  =====================================  =======================================

The :class:`Transformer` (for the transformer-era claims) builds its norms the same way,
``create_norm_layer(kind, d_model, channel_axis=-1)`` for ``layer``, ``rms`` or ``dyt``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

import normlab.functional as F
from normlab import nn as nl
from normlab.registry import create_norm_layer

__all__ = ["ACTIVATIONS", "CNN", "MLP", "RENORM", "SeqCNN", "SeqRNN", "Transformer",
           "make_norm"]

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}

# The renorm arm's layer settings (fixed: no lab setting changes them; the report's setup line
# states them). Momentum 0.1 as the lab's batch norm (the paper's 0.01 needs far more
# updates); the limits ramp from batch norm's (1, 0) to (3, 5) over the first 50 ghost batches
# the layer sees (its running statistics, batch count and warm-up move once per chunk).
RENORM = {"r_max": 3.0, "d_max": 5.0, "momentum": 0.1, "warmup_steps": 50}


def make_norm(kind: str, channels: int, *, conv: bool) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return create_norm_layer("batch", channels)
    if kind.startswith("ghost:"):
        return create_norm_layer("ghost", channels, virtual_batch_size=int(kind.split(":")[1]))
    if kind.startswith("renorm:"):
        return create_norm_layer("renorm", channels, virtual_batch_size=int(kind.split(":")[1]),
                                 **RENORM)
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
                     f"renorm:K; got {kind!r}")


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


MLP_RATIO = 2  # the transformer's MLP width / d_model (GPT's 4 costs twice the time here)


def _token_norm(kind: str, width: int) -> nn.Module:
    """A norm over the last axis of (..., width) through the registry (``none``: identity)."""
    if kind == "none":
        return nn.Identity()
    return create_norm_layer(kind, width, channel_axis=-1)


class Attention(nn.Module):
    """Multi-head self-attention written out (the logits are measured): ``qk_norm`` normalizes
    each head's queries and keys over the head dimension before the dot product (Dehghani et
    al. 2023, Wortsman et al. 2023), with a norm of the block's kind. ``max_logit`` holds the
    largest attention logit of the last forward."""

    def __init__(self, width: int, heads: int, norm: str, qk_norm: bool):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.q_norm = _token_norm(norm, self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = _token_norm(norm, self.head_dim) if qk_norm else nn.Identity()
        self.max_logit = float("nan")

    def forward(self, x):
        n, t, w = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)  # N, H, T, Dh
        logits = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # N, H, T, T
        self.max_logit = float(logits.detach().max()) if logits.numel() else float("nan")
        out = logits.softmax(-1) @ v  # N, H, T, Dh
        return self.proj(out.transpose(1, 2).reshape(n, t, w))


class Block(nn.Module):
    """One transformer layer. ``position="pre"``: x + f(norm(x)) for attention and the MLP,
    the residual stream never normalized (Pre-LN); ``"post"``: norm(x + f(x)), the original
    Transformer's Post-LN."""

    def __init__(self, width: int, heads: int, norm: str, position: str, qk_norm: bool):
        super().__init__()
        if position not in ("pre", "post"):
            raise ValueError(f"norm_position must be pre or post, got {position!r}")
        self.position = position
        self.attn = Attention(width, heads, norm, qk_norm)
        self.mlp = nn.Sequential(nn.Linear(width, MLP_RATIO * width), nn.GELU(),
                                 nn.Linear(MLP_RATIO * width, width))
        self.norm1, self.norm2 = _token_norm(norm, width), _token_norm(norm, width)

    def forward(self, x):
        if self.position == "pre":
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))


class Transformer(nn.Module):
    """A small encoder classifier over token sequences (N, T) int64: token and learned
    position embeddings, ``layers`` blocks (:class:`Block`), a final norm in Pre-LN (as GPT-2;
    Post-LN's last block already ends in one), mean over positions, linear head."""

    def __init__(self, vocab: int, num_classes: int, seq_len: int, width: int = 32,
                 heads: int = 4, layers: int = 4, norm: str = "layer", position: str = "pre",
                 qk_norm: bool = False):
        super().__init__()
        if width % heads:
            raise ValueError(f"d_model ({width}) must be a multiple of heads ({heads})")
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.randn(seq_len, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, heads, norm, position, qk_norm)
                                    for _ in range(layers))
        self.final_norm = _token_norm(norm, width) if position == "pre" else nn.Identity()
        self.head = nn.Linear(width, num_classes)

    @property
    def max_attn_logit(self) -> float:
        """The largest attention logit of the last forward, over every layer and head."""
        return max(b.attn.max_logit for b in self.blocks)

    def forward(self, x):
        h = self.embed(x) + self.pos[: x.shape[1]]  # N, T, W
        for block in self.blocks:
            h = block(h)
        return self.head(self.final_norm(h).mean(1))


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
