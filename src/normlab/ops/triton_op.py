"""The Triton backend: the kernels of ``normlab.kernels.triton.norm`` as ``torch.library``
custom ops (with fake implementations, so ``torch.compile(fullgraph=True)`` traces through
them) and an autograd formula.

The kernels' 4-D view of the input's memory is ``spec.plan(..., strides=...).kernel``
(channels-first and channels-last memory, ``channel_axis=-1`` or ``torch.channels_last`` with
``channel_axis=1``, both read in place; None for a layout the kernels do not take). Which calls
come here is ``dispatch.Triton.accepts``. No double backward (use ``backend="reference"``).
"""

from __future__ import annotations

import importlib.util
import os

import torch

from normlab import spec
from normlab.ops.pointwise import grads_like
from normlab.reference import stat_dtype

__all__ = ["available", "layout", "triton_norm", "triton_pointwise", "usable_for"]


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


def _pointwise_kernels():
    from normlab.kernels.triton import pointwise

    return pointwise


_FAMILY = {spec.ROW: 0, spec.COLUMN: 1}  # the kernels' numbering


def layout(kind: str, x: torch.Tensor, channel_axis: int, *, num_groups: int | None = None,
           normalized_ndim: int | None = None) -> spec.Kernel | None:
    """The kernels' view of ``x`` for ``kind`` (``spec.plan(...).kernel``), or None when this
    layout is not one the kernels read in place."""
    return spec.plan(kind, tuple(x.shape), channel_axis=channel_axis, num_groups=num_groups,
                     normalized_ndim=normalized_ndim, strides=x.stride()).kernel


@torch.library.custom_op("normlab::triton_norm_fwd", mutates_args=())
def _fwd(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
         residual: torch.Tensor | None, mask: torch.Tensor | None, family: int,
         dims: list[int], affine: list[int], mask_index: list[int], centered: bool, eps: float,
         activation: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _kernels().forward(x, weight, bias, residual, mask, family=family, dims=dims,
                              affine=affine, mask_index=mask_index, centered=centered, eps=eps,
                              activation=activation or None)


def _stats_like(x, dims):
    return x.new_empty(dims[0] * dims[2], dtype=stat_dtype(x.dtype))


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


def triton_norm(plan: spec.Plan, x: torch.Tensor, *, eps: float, weight=None, bias=None,
                residual=None, activation=None, mask=None):
    """-> ``(y, mean, var, count)`` with the statistics in ``plan.stats_shape`` (var biased;
    count = real elements per group). ``plan.kernel`` must be set (the dispatcher's Triton
    backend accepts only such calls). ``mask``: the bool (N, positions...) padding mask, True
    at real positions (batch, instance and group norm only)."""
    k = plan.kernel
    if residual is not None and residual.stride() != x.stride():
        residual = torch.empty_like(x).copy_(residual)  # the kernels read it like x
    if mask is not None:
        mask = mask.reshape(-1).contiguous().view(torch.uint8)
    # the kernels index the affine parameters densely: a strided view (w[:, 0]) is copied
    flat = [None if t is None else t.reshape(-1).contiguous() for t in (weight, bias)]
    y, mean, rstd, count = _fwd(x, flat[0], flat[1], residual, mask, _FAMILY[k.family],
                                list(k.dims), list(k.affine), list(k.mask or (1, 0, 0, 0)),
                                plan.centered, float(eps), activation or "")
    shape = plan.stats_shape
    rstd = rstd.reshape(shape)
    var = rstd.pow(-2) - eps
    if mask is not None:  # a group with no real element: mean 0, variance 0 (as the reference)
        var = torch.where(count.reshape(shape) > 0, var, torch.zeros_like(var))
    return y, mean.reshape(shape), var, count.reshape(shape)


# --------------------------------------------------------------------------------------------
# the pointwise kinds (DyT, Derf): ``normlab.kernels.triton.pointwise``, family ELEMENT


@torch.library.custom_op("normlab::triton_pointwise_fwd", mutates_args=())
def _pw_fwd(x: torch.Tensor, alpha: torch.Tensor, shift: torch.Tensor | None,
            weight: torch.Tensor | None, bias: torch.Tensor | None,
            residual: torch.Tensor | None, kind: str, dims: list[int],
            activation: str) -> torch.Tensor:
    return _pointwise_kernels().forward(x, alpha, shift, weight, bias, residual, kind=kind,
                                        dims=dims, activation=activation or None)


@_pw_fwd.register_fake
def _(x, alpha, shift, weight, bias, residual, kind, dims, activation):
    return torch.empty_like(x)


@torch.library.custom_op("normlab::triton_pointwise_bwd", mutates_args=())
def _pw_bwd(dy: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, shift: torch.Tensor | None,
            weight: torch.Tensor | None, bias: torch.Tensor | None,
            residual: torch.Tensor | None, kind: str, dims: list[int],
            activation: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                      torch.Tensor, torch.Tensor]:
    dx, da, ds, dw, db, dr = _pointwise_kernels().backward(
        dy, x, alpha, shift, weight, bias, residual, kind=kind, dims=dims,
        activation=activation or None)
    empty = x.new_empty(0)  # outputs must not alias each other
    return (dx, da.reshape(alpha.shape).to(alpha.dtype),
            empty if ds is None else ds.reshape(shift.shape).to(shift.dtype),
            x.new_empty(0) if dw is None else dw.to(weight.dtype),
            x.new_empty(0) if db is None else db.to(bias.dtype),
            x.new_empty(0) if dr is None else dr)


@_pw_bwd.register_fake
def _(dy, x, alpha, shift, weight, bias, residual, kind, dims, activation):
    return grads_like(x, alpha, shift, weight, bias, residual)


def _pw_setup(ctx, inputs, output):
    x, alpha, shift, weight, bias, residual, kind, dims, activation = inputs
    ctx.save_for_backward(x, alpha, shift, weight, bias, residual)  # the inputs only
    ctx.args = (kind, dims, activation)


def _pw_backward(ctx, dy):
    x, alpha, shift, weight, bias, residual = ctx.saved_tensors
    kind, dims, activation = ctx.args
    if dy.stride() != x.stride():  # the kernels read dy in x's memory order
        dy = torch.empty_like(x, dtype=dy.dtype).copy_(dy)
    dx, da, ds, dw, db, dr = _pw_bwd(dy, x, alpha, shift, weight, bias, residual, kind, dims,
                                     activation)
    needs = ctx.needs_input_grad
    return (dx if needs[0] else None, da if needs[1] else None,
            ds if needs[2] and shift is not None else None,
            dw if needs[3] and weight is not None else None,
            db if needs[4] and bias is not None else None,
            dr if needs[5] and residual is not None else None, None, None, None)


_pw_fwd.register_autograd(_pw_backward, setup_context=_pw_setup)


def triton_pointwise(plan: spec.Plan, x: torch.Tensor, alpha: torch.Tensor, *, shift=None,
                     weight=None, bias=None, residual=None, activation=None) -> torch.Tensor:
    """DyT / Derf by the elementwise kernels (``plan.kernel`` of family ELEMENT must be set);
    the affine parameters flattened to (PERIOD,), the residual made x's layout."""
    if residual is not None and residual.stride() != x.stride():
        residual = torch.empty_like(x).copy_(residual)
    flat = [None if t is None else t.reshape(-1).contiguous() for t in (weight, bias)]
    return _pw_fwd(x, alpha, shift, flat[0], flat[1], residual, plan.kind,
                   list(plan.kernel.dims), activation or "")
