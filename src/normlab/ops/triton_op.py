"""The Triton backend: the kernels of ``normlab.kernels.triton.norm`` as ``torch.library``
custom ops (with fake implementations, so ``torch.compile(fullgraph=True)`` traces through
them) and an autograd formula.

``layout()`` maps (kind, input, channel axis) to the kernels' 4-D view of the input's memory
without copying: channels-first and channels-last memory (``channel_axis=-1``, or
``torch.channels_last`` with ``channel_axis=1``) are both read in place. A layout the kernels
do not take (layer/rms norm over a block that is not the trailing memory, odd strides) gives
``None`` and the caller uses the native path.

Training statistics only: eval-mode batch norm and instance norm with running statistics are
per-channel affine maps and take the native path. No double backward (use
``backend="reference"`` for that).
"""

from __future__ import annotations

import importlib.util
import os

import torch

from normlab import spec

__all__ = ["available", "layout", "triton_norm", "usable_for"]

ROW, COLUMN = 0, 1


_AVAILABLE = importlib.util.find_spec("triton") is not None


def available() -> bool:
    """Triton is installed (importing normlab never requires it)."""
    return _AVAILABLE


def usable_for(x: torch.Tensor) -> bool:
    """The kernels can run on ``x``: a CUDA tensor, or any tensor under Triton's interpreter
    (``TRITON_INTERPRET=1`` in the environment before Triton is first imported)."""
    if not available():
        return False
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


def _kernels():
    from normlab.kernels.triton import norm

    return norm


def _channels_last_memory(x: torch.Tensor, channel_axis: int) -> bool | None:
    """True if the channel axis is innermost in memory and the rest dense in logical order,
    False if the memory is in logical (channels-first) order, None otherwise."""
    c = channel_axis % x.dim()
    if x.is_contiguous():
        return c == x.dim() - 1
    if c == 1 and x.dim() in (4, 5):
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        if x.is_contiguous(memory_format=fmt):
            return True
    return None


def layout(kind: str, x: torch.Tensor, channel_axis: int, *, num_groups: int | None = None,
           normalized_ndim: int | None = None):
    """-> ``(family, dims, affine, mask_index)`` for the kernels (see
    ``normlab.kernels.triton.norm``), or ``None`` when this layout is not one the kernels read
    in place. ``mask_index`` locates an element's position in an (N, positions) mask; it is
    ``None`` for layer and rms norm (their masks take the masked path)."""
    if kind in ("layer", "rms"):
        k = int(normalized_ndim)
        trailing = channel_axis == -1 or k == x.dim() - 1
        if not (trailing and x.is_contiguous()):
            return None
        length = 1
        for s in x.shape[x.dim() - k:]:
            length *= s
        return ROW, (x.numel() // max(length, 1), 1, 1, length), (1, 0, 0, 0, 1), None
    last = _channels_last_memory(x, channel_axis)
    if last is None:
        return None
    n, c = x.shape[0], x.shape[channel_axis]
    p = x.numel() // max(n * c, 1)
    if kind == "batch":
        return ((COLUMN, (1, n * p, c, 1), (1, 0, 0, 1, 0), (1, 0, 1, 0)) if last
                else (ROW, (1, n, c, p), (1, 0, 0, 1, 0), (1, 0, p, 1)))
    if kind == "instance":
        return ((COLUMN, (n, p, c, 1), (1, 0, 0, 1, 0), (1, p, 1, 0)) if last
                else (ROW, (n * c, 1, 1, p), (c, 1, 0, 0, 0), (c, p, 0, 1)))
    if kind == "group":
        g = int(num_groups)
        k = c // g
        return ((ROW, (n, p, g, k), (1, 0, 0, k, 1), (1, p, 1, 0)) if last
                else (ROW, (n * g, k, 1, p), (g, k, 1, 0, 0), (g, p, 0, 1)))
    return None


@torch.library.custom_op("normlab::triton_norm_fwd", mutates_args=())
def _fwd(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
         residual: torch.Tensor | None, mask: torch.Tensor | None, family: int,
         dims: list[int], affine: list[int], mask_index: list[int], centered: bool, eps: float,
         activation: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _kernels().forward(x, weight, bias, residual, mask, family=family, dims=dims,
                              affine=affine, mask_index=mask_index, centered=centered, eps=eps,
                              activation=activation or None)


def _stats_like(x, dims):
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.new_empty(dims[0] * dims[2], dtype=dtype)


@_fwd.register_fake
def _(x, weight, bias, residual, mask, family, dims, affine, mask_index, centered, eps,
      activation):
    return (torch.empty_like(x), _stats_like(x, dims), _stats_like(x, dims),
            _stats_like(x, dims))


@torch.library.custom_op("normlab::triton_norm_bwd", mutates_args=())
def _bwd(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None,
         bias: torch.Tensor | None, residual: torch.Tensor | None, mask: torch.Tensor | None,
         mean: torch.Tensor, rstd: torch.Tensor, count: torch.Tensor, family: int,
         dims: list[int], affine: list[int], mask_index: list[int], centered: bool,
         activation: str, need_dw: bool, need_db: bool) -> tuple[torch.Tensor, torch.Tensor,
                                                                torch.Tensor, torch.Tensor]:
    dx, dw, db, dr = _kernels().backward(
        dy, x, weight, bias, residual, mask, mean, rstd, count, family=family, dims=dims,
        affine=affine, mask_index=mask_index, centered=centered,
        activation=activation or None, need_dw=need_dw, need_db=need_db)
    return (dx, x.new_empty(0) if dw is None else dw.to(weight.dtype),
            x.new_empty(0) if db is None else db.to(bias.dtype),
            x.new_empty(0) if dr is None else dr)  # outputs must not alias each other


@_bwd.register_fake
def _(dy, x, weight, bias, residual, mask, mean, rstd, count, family, dims, affine,
      mask_index, centered, activation, need_dw, need_db):
    def like(t, need):
        return torch.empty_like(t) if need and t is not None else x.new_empty(0)
    return (torch.empty_like(x), like(weight, need_dw), like(bias, need_db),
            like(residual, True))


def _setup(ctx, inputs, output):
    x, weight, bias, residual, mask, family, dims, affine, mask_index, centered, _eps, act = \
        inputs
    _, mean, rstd, count = output
    ctx.save_for_backward(x, weight, bias, residual, mask, mean, rstd, count)
    ctx.args = (family, dims, affine, mask_index, centered, act)


def _backward(ctx, dy, _dmean, _drstd, _dcount):
    x, weight, bias, residual, mask, mean, rstd, count = ctx.saved_tensors
    family, dims, affine, mask_index, centered, activation = ctx.args
    needs = ctx.needs_input_grad
    if dy.stride() != x.stride():  # the kernels read dy in x's memory order
        dy = torch.empty_like(x, dtype=dy.dtype).copy_(dy)
    dx, dw, db, dr = _bwd(dy, x, weight, bias, residual, mask, mean, rstd, count, family, dims,
                          affine, mask_index, centered, activation, bool(needs[1]),
                          bool(needs[2]))
    return (dx if needs[0] else None, dw if needs[1] and weight is not None else None,
            db if needs[2] and bias is not None else None,
            dr if needs[3] and residual is not None else None,
            None, None, None, None, None, None, None, None)


_fwd.register_autograd(_backward, setup_context=_setup)


def triton_norm(kind: str, x: torch.Tensor, *, eps: float, weight=None, bias=None,
                residual=None, activation=None, channel_axis: int = 1, num_groups=None,
                normalized_ndim=None, mask=None):
    """-> ``(y, mean, var, count)`` with the statistics in the kind's ``plan().stats_shape``
    (var biased; count = real elements per group), or ``None`` when the layout is not one the
    kernels take. ``mask``: the bool (N, positions...) padding mask, True at real positions
    (batch, instance and group norm only)."""
    lay = layout(kind, x, channel_axis, num_groups=num_groups, normalized_ndim=normalized_ndim)
    if lay is None or (mask is not None and lay[3] is None):
        return None
    family, dims, affine, mask_index = lay
    if residual is not None and residual.stride() != x.stride():
        residual = torch.empty_like(x).copy_(residual)  # the kernels read it like x
    if mask is not None:
        mask = mask.reshape(-1).contiguous().view(torch.uint8)
    flat = [None if t is None else t.reshape(-1) for t in (weight, bias)]
    y, mean, rstd, count = _fwd(x, flat[0], flat[1], residual, mask, family, list(dims),
                                list(affine), list(mask_index or (1, 0, 0, 0)), kind != "rms",
                                float(eps), activation or "")
    plan = spec.plan(kind, tuple(x.shape), channel_axis=channel_axis, num_groups=num_groups,
                     normalized_ndim=normalized_ndim)
    shape = plan.stats_shape
    rstd = rstd.reshape(shape)
    var = rstd.pow(-2) - eps
    if mask is not None:  # a group with no real element: mean 0, variance 0 (as the reference)
        var = torch.where(count.reshape(shape) > 0, var, torch.zeros_like(var))
    return y, mean.reshape(shape), var, count.reshape(shape)
