"""Normalized recurrent cells and a runner over padded batches.

* :class:`LayerNormLSTMCell`, :class:`LayerNormGRUCell` (Ba et al. 2016): the input and the
  recurrent pre-activations are layer-normalized separately (each over all its gates), and the
  LSTM's cell state before its tanh. With ``norm=False`` they are exactly
  ``torch.nn.LSTMCell`` / ``torch.nn.GRUCell`` (same parameter names and shapes, so weights
  load both ways).
* :class:`BatchNormLSTMCell` (Cooijmans et al. 2016, recurrent batch norm): batch norm with
  separate statistics for every time step ``t < max_steps``; at ``t >= max_steps`` it reuses
  the statistics of the last step — the documented weak spot on test sequences longer than any
  training sequence.
* :class:`Recurrent`: runs any of these cells (or torch's) over an (N, T, F) padded batch with
  lengths: a sequence's state stops at its last real step, outputs at padded steps are zero.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from normlab import functional as F
from normlab.nn._script import NotScriptable
from normlab.nn.normalization import LayerNorm

__all__ = ["BatchNormLSTMCell", "LayerNormGRUCell", "LayerNormLSTMCell", "Recurrent"]


def _init_uniform(module: nn.Module, hidden_size: int) -> None:
    """torch.nn's RNN initialization: U(-1/sqrt(H), 1/sqrt(H)) for weights and biases."""
    k = 1.0 / math.sqrt(hidden_size)
    for name, p in module.named_parameters():
        if name.startswith(("weight_", "bias_")):
            nn.init.uniform_(p, -k, k)


class _CellBase(NotScriptable, nn.Module):
    gates = 4

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None):
        super().__init__()
        f = {"device": device, "dtype": dtype}
        self.input_size = F.validate_positive_int(input_size, "input_size")
        self.hidden_size = F.validate_positive_int(hidden_size, "hidden_size")
        g = self.gates * self.hidden_size
        self.weight_ih = nn.Parameter(torch.empty(g, self.input_size, **f))
        self.weight_hh = nn.Parameter(torch.empty(g, self.hidden_size, **f))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(g, **f))
            self.bias_hh = nn.Parameter(torch.empty(g, **f))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)

    def _check(self, input, hx):
        F.check_input_dim(input, (2,), type(self).__name__)
        if input.shape[1] != self.input_size:
            raise ValueError(f"{type(self).__name__}: expected input of shape (N, "
                             f"{self.input_size}), got {tuple(input.shape)}")

    def _zeros(self, like):
        return like.new_zeros(like.shape[0], self.hidden_size)

    def project_input(self, input):
        """The input term of the gates, ``W_ih x`` (normalized where the cell does), for any
        leading dims: :class:`Recurrent` computes it for all steps at once."""
        return torch.nn.functional.linear(input, self.weight_ih)

    def forward(self, input, hx=None):
        self._check(input, hx)
        return self.step(self.project_input(input), hx)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        return s + (", bias=False" if self.bias_ih is None else "")


class _LayerNormCell(_CellBase):
    """Layer normalization of the input and recurrent gate projections (each over all its
    gates), optionally of the cell state; ``norm=False`` leaves the plain torch.nn cell."""

    cell_norm = False

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 norm=True, eps=1e-5):
        super().__init__(input_size, hidden_size, bias, device, dtype)
        self.norm = bool(norm)
        f = {"device": device, "dtype": dtype}
        if self.norm:
            self.ln_ih = LayerNorm(self.gates * self.hidden_size, eps, **f)
            self.ln_hh = LayerNorm(self.gates * self.hidden_size, eps, **f)
            if self.cell_norm:
                self.ln_c = LayerNorm(self.hidden_size, eps, **f)
        _init_uniform(self, self.hidden_size)

    def project_input(self, input):
        wi = super().project_input(input)
        return self.ln_ih(wi) if self.norm else wi

    def _recurrent_term(self, h):
        wh = torch.nn.functional.linear(h, self.weight_hh)
        return self.ln_hh(wh) if self.norm else wh

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.norm else ", norm=False")


class LayerNormLSTMCell(_LayerNormCell):
    """An LSTM cell with layer normalization (Ba et al. 2016, eq. 20-22):
    ``gates = LN(W_ih x) + LN(W_hh h) + b``; ``c' = sigma(f) c + sigma(i) tanh(g)``;
    ``h' = sigma(o) tanh(LN(c'))``. Gate order i, f, g, o as torch.nn.LSTMCell.
    ``forward(input, (h, c)) -> (h', c')``."""

    gates = 4
    cell_norm = True

    def step(self, wi, hx=None):
        """One step from the projected input ``wi`` (see :meth:`project_input`)."""
        h, c = hx if hx is not None else (self._zeros(wi), self._zeros(wi))
        z = wi + self._recurrent_term(h)
        if self.bias_ih is not None:
            z = z + self.bias_ih + self.bias_hh
        i, f, g, o = z.chunk(4, dim=1)
        c2 = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h2 = torch.sigmoid(o) * torch.tanh(self.ln_c(c2) if self.norm else c2)
        return h2, c2


class LayerNormGRUCell(_LayerNormCell):
    """A GRU cell with layer normalization of the input and recurrent projections (each over
    its three gates): ``r, z = sigma(LN(W_ih x)_rz + LN(W_hh h)_rz + b)``,
    ``n = tanh(LN(W_ih x)_n + b_in + r (LN(W_hh h)_n + b_hn))``, ``h' = (1 - z) n + z h``.
    Gate order r, z, n as torch.nn.GRUCell. ``forward(input, h) -> h'``."""

    gates = 3

    def step(self, wi, hx=None):
        """One step from the projected input ``wi`` (see :meth:`project_input`)."""
        h = hx if hx is not None else self._zeros(wi)
        wh = self._recurrent_term(h)
        if self.bias_ih is not None:
            wi, wh = wi + self.bias_ih, wh + self.bias_hh
        ir, iz, in_ = wi.chunk(3, dim=1)
        hr, hz, hn = wh.chunk(3, dim=1)
        r = torch.sigmoid(ir + hr)
        z = torch.sigmoid(iz + hz)
        n = torch.tanh(in_ + r * hn)
        return (1 - z) * n + z * h


class _StepBatchNorm(NotScriptable, nn.Module):
    """Batch norm over the batch with separate running statistics for each time step
    (shared affine, as in Cooijmans et al.)."""

    def __init__(self, num_features, max_steps, eps=1e-5, momentum=0.1, affine=True,
                 gamma=1.0, device=None, dtype=None):
        super().__init__()
        f = {"device": device, "dtype": dtype}
        self.num_features, self.max_steps = num_features, max_steps
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.full((num_features,), gamma, **f)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features, **f)) if affine else None
        self.register_buffer("running_mean", torch.zeros(max_steps, num_features, **f))
        self.register_buffer("running_var", torch.ones(max_steps, num_features, **f))

    def forward(self, x, t: int, mask=None):
        # beyond the trained steps: the last step's statistics
        s = min(F.validate_nonnegative_int(t, "t"), self.max_steps - 1)
        # a step where the mask leaves fewer than 2 real sequences of a batch has no batch
        # statistics: it uses the running ones. A batch of one sequence is refused in training
        # (batch norm's own error), as torch.nn.BatchNorm1d refuses it.
        if mask is not None and x.shape[0] > 1:
            real = int(mask.sum())
            if real == x.shape[0]:
                mask = None  # every sequence is real at this step: the unmasked kernels
        training = self.training and (mask is None or x.shape[0] < 2 or real > 1)
        # the step's rows as separate tensors: autograd may save them, and the rows of one
        # buffer share a version counter that the other steps' updates would bump
        rm, rv = self.running_mean[s].clone(), self.running_var[s].clone()
        y = F.batch_norm(x, rm, rv, self.weight, self.bias, training, self.momentum, self.eps,
                         mask=mask)
        if training:
            with torch.no_grad():
                self.running_mean[s].copy_(rm)
                self.running_var[s].copy_(rv)
        return y


class BatchNormLSTMCell(_CellBase):
    """Recurrent batch normalization (Cooijmans et al. 2016): ``gates = BN_t(W_hh h) +
    BN_t(W_ih x) + b``, ``h' = sigma(o) tanh(BN_t(c'))``, with statistics kept separately for
    every time step ``t < max_steps`` and the recurrent gains initialized to 0.1 (the paper's
    advice). ``forward(input, (h, c), t, mask=None)``; ``mask`` (N,) leaves finished sequences
    out of the step's statistics. At ``t >= max_steps`` the last step's statistics are used,
    which is where it fails on sequences longer than any seen in training."""

    gates = 4

    def __init__(self, input_size, hidden_size, max_steps, bias=True, device=None,
                 dtype=None, *, eps=1e-5, momentum=0.1):
        super().__init__(input_size, hidden_size, bias, device, dtype)
        f = {"device": device, "dtype": dtype}
        self.max_steps = F.validate_positive_int(max_steps, "max_steps")
        g = 4 * self.hidden_size
        self.bn_ih = _StepBatchNorm(g, self.max_steps, eps, momentum, gamma=0.1, **f)
        self.bn_hh = _StepBatchNorm(g, self.max_steps, eps, momentum, gamma=0.1, **f)
        self.bn_c = _StepBatchNorm(self.hidden_size, self.max_steps, eps, momentum, **f)
        _init_uniform(self, self.hidden_size)

    def forward(self, input, hx=None, t: int = 0, mask=None):
        self._check(input, hx)
        return self.step(self.project_input(input), hx, t, mask)

    def step(self, wi, hx=None, t: int = 0, mask=None):
        """One step from ``wi = W_ih x`` at time step ``t``."""
        h, c = hx if hx is not None else (self._zeros(wi), self._zeros(wi))
        wh = torch.nn.functional.linear(h, self.weight_hh)
        z = self.bn_ih(wi, t, mask) + self.bn_hh(wh, t, mask)
        if self.bias_ih is not None:
            z = z + self.bias_ih + self.bias_hh
        i, f, g, o = z.chunk(4, dim=1)
        c2 = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h2 = torch.sigmoid(o) * torch.tanh(self.bn_c(c2, t, mask))
        return h2, c2


class Recurrent(NotScriptable, nn.Module):
    """Run a cell over a padded batch ``(N, T, input_size)`` (``batch_first``) with
    ``lengths`` (N,): returns ``(outputs (N, T, H), state)`` where a sequence's state is the
    one after its last real step and outputs at padded steps are zero. Works with the cells
    here and with ``torch.nn.LSTMCell`` / ``GRUCell``.

    ``mask_statistics=False`` (for comparison only) lets a :class:`BatchNormLSTMCell` count the
    finished sequences of the batch in every step's statistics, as a batch norm without a mask
    does; their states still stop at their last real step."""

    def __init__(self, cell: nn.Module, *, mask_statistics: bool = True):
        super().__init__()
        self.cell = cell
        self.mask_statistics = mask_statistics

    def forward(self, input, lengths=None, hx=None):
        F.check_input_dim(input, (3,), "Recurrent")
        n, t_max, _ = input.shape
        if lengths is None:
            valid = input.new_ones(n, t_max, dtype=torch.bool)
        else:
            valid = F.lengths_to_mask(torch.as_tensor(lengths, device=input.device), t_max)
        lstm = isinstance(self.cell, (LayerNormLSTMCell, BatchNormLSTMCell, nn.LSTMCell))
        ours = isinstance(self.cell, _CellBase)
        if ours:
            self.cell._check(input[:, 0], hx)
            wi_all = self.cell.project_input(input)  # N, T, G: one matmul for every step
        state = hx
        outputs = []
        for t in range(t_max):
            v = valid[:, t]
            if isinstance(self.cell, BatchNormLSTMCell):
                new = self.cell.step(wi_all[:, t], state, t,
                                     v if self.mask_statistics else None)
            elif ours:
                new = self.cell.step(wi_all[:, t], state)
            else:
                new = self.cell(input[:, t], state)
            if state is None:
                state = (tuple(torch.zeros_like(s) for s in new) if lstm
                         else torch.zeros_like(new))
            keep = v[:, None]
            if lstm:
                state = tuple(torch.where(keep, a, b) for a, b in zip(new, state, strict=True))
                out = state[0]
            else:
                state = torch.where(keep, new, state)
                out = state
            outputs.append(torch.where(keep, out, torch.zeros_like(out)))
        return torch.stack(outputs, 1), state
