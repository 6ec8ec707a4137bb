"""The numba backend of the pointwise kinds (DyT, Derf) on CPU: the fused kernels of
``normlab.kernels.cpu.pointwise`` behind ``torch.library`` custom ops (with fake
implementations, so ``torch.compile(fullgraph=True)`` traces through them), and for eager calls
on plain tensors a plain ``autograd.Function`` over the same functions (as ``cpu_op``).

The input's memory is read in place through the plan's ELEMENT view ``(OUTER, PERIOD, INNER)``
(``spec.Kernel``): rows when ``INNER == 1``, else lines of ``INNER`` elements sharing one weight.
bfloat16 tensors are handed to numba as their bits (a ``uint16`` view of the same memory, no
copy); float32 as they are. The kernels compute in float32 and round once, so the output is
the float32 result rounded (the bfloat16 output within one ulp of the float64 value, as the
native path's). ``dy`` and the residual are read like ``x`` (same strides and dtype: ``dy`` is
copied into x's layout when it is not; a residual that is not is handed on by the dispatcher).
The backward recomputes ``tanh(a x)`` from ``x``: nothing activation-sized is saved. Which calls
come here is ``dispatch.Numba.accepts``. An eager backward asked for a graph
(``create_graph=True``: double backward) runs the native path's differentiable backward
(``_graph_backward``); the custom ops have no double backward.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from normlab.ops.cpu_op import _launch, _live, _param_np, _records, _use_custom_op
from normlab.ops.pointwise import grads_like, pointwise

__all__ = ["ACTIVATIONS", "DTYPES", "numba_pointwise"]

DTYPES = (torch.bfloat16, torch.float32)  # the kernels' input/output dtypes
ACTIVATIONS = (None, "relu")  # fused; the others (gelu, silu) are handed on


@functools.cache
def _kernels():
    import numba

    from normlab.kernels.cpu import pointwise

    return numba, pointwise


def _np(t: torch.Tensor, shape):
    """The tensor's memory (dense, in memory order) as a numpy array of ``shape``: float32, or
    bfloat16's bits as uint16 (a view of the same memory)."""
    if t.requires_grad:
        t = t.detach()
    if not t.is_contiguous():
        t = t.as_strided((t.numel(),), (1,))
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view("uint16").reshape(shape)
    return t.numpy().reshape(shape)


def _zero(dtype):
    """0 in the kernels' element type for ``dtype`` (selects the bfloat16 or float32 store)."""
    return np.uint16(0) if dtype == torch.bfloat16 else np.float32(0)


def _view(dims):
    """-> (is rows, the 2-D shape the kernels read)."""
    outer, period, inner, _ = dims
    if inner == 1:
        return True, (outer, period)
    return False, (outer * period, inner)


def _scalars(alpha, shift):
    """alpha and shift (one-element tensors) as Python floats (exact: bfloat16 and float32
    values are float64 values)."""
    return alpha.item(), 0.0 if shift is None else shift.item()


def _forward(x, alpha, shift, weight, bias, residual, kind, dims, relu):
    numba, k = _kernels()
    rows, shape = _view(dims)
    period = dims[1]
    y = torch.empty_like(x)
    a, s = _scalars(alpha, shift)
    w = _param_np(weight, period, 1.0, torch.float32)
    b = _param_np(bias, period, 0.0, torch.float32)
    xa = _np(x, shape)
    r = xa if residual is None else _np(residual, shape)
    with _launch(numba, k.KERNELS[kind, relu]) as (kern, _):
        (kern.rows_fwd if rows else kern.lines_fwd)(
            xa, w, b, r, residual is not None, np.float32(a), np.float32(s), _zero(x.dtype),
            _np(y, shape), k.CONSTS)
    return y


def _backward(dy, x, alpha, shift, weight, bias, residual, kind, dims, relu):
    """-> (dx, dalpha, dshift, dweight, dbias, dresidual): the parameter gradients float64 of
    the flattened block (the caller casts and reshapes), dresidual None unless the kernel wrote
    it (ReLU with a residual: else it is dy)."""
    numba, k = _kernels()
    rows, shape = _view(dims)
    outer, period, _, _ = dims
    dx = torch.empty_like(x)
    # with ReLU the kernel writes dz (the residual's gradient; a scratch buffer without one)
    dr = torch.empty_like(x) if relu else None
    a, s = _scalars(alpha, shift)
    w = _param_np(weight, period, 1.0, torch.float32)
    b = _param_np(bias, period, 0.0, torch.float32)
    xa = _np(x, shape)
    r = xa if residual is None else _np(residual, shape)
    if rows:
        sums = torch.zeros(min(k.BLOCKS, shape[0]), 4, period, dtype=torch.float64)
    else:
        sums = torch.empty(shape[0], 4, dtype=torch.float64)
    with _launch(numba, k.KERNELS[kind, relu]) as (kern, _):
        (kern.rows_bwd if rows else kern.lines_bwd)(
            _np(dy, shape), xa, w, b, r, residual is not None, np.float32(a),
            np.float32(s), _zero(x.dtype), _np(dx, shape),
            _np(dx if dr is None else dr, shape), sums.numpy(), k.CONSTS)  # dr: unused w/o ReLU
    if rows:
        per_w = sums.sum(0)  # (4, P)
        dw, db, da, ds = per_w[0], per_w[1], per_w[2].sum(), per_w[3].sum()
    else:
        per_line = sums.view(outer, period, 4).sum(0)  # (P, 4)
        dw, db, da, ds = per_line[:, 0], per_line[:, 1], per_line[:, 2].sum(), \
            per_line[:, 3].sum()
    return dx, da, ds, dw, db, dr if residual is not None else None


def _grads(x, dy, alpha, shift, weight, bias, residual, out, needs):
    """The backward's float64 results cast to the inputs' dtypes and shapes (None where not
    needed)."""
    dx, da, ds, dw, db, dr = out
    if residual is not None and needs[5] and dr is None:
        dr = dy.to(residual.dtype)
    return (dx if needs[0] else None,
            da.reshape(alpha.shape).to(alpha.dtype) if needs[1] else None,
            ds.reshape(shift.shape).to(shift.dtype) if shift is not None and needs[2] else None,
            dw.reshape(weight.shape).to(weight.dtype) if weight is not None and needs[3]
            else None,
            db.reshape(bias.shape).to(bias.dtype) if bias is not None and needs[4] else None,
            dr if residual is not None and needs[5] else None)


def _dy_like(dy, x):
    if dy.stride() != x.stride() or dy.dtype != x.dtype:  # the kernels read dy like x
        dy = torch.empty_like(x).copy_(dy)
    return dy


@torch.library.custom_op("normlab::numba_pointwise_fwd", mutates_args=())
def _fwd(x: torch.Tensor, alpha: torch.Tensor, shift: torch.Tensor | None,
         weight: torch.Tensor | None, bias: torch.Tensor | None, residual: torch.Tensor | None,
         kind: str, dims: list[int], relu: bool) -> torch.Tensor:
    return _forward(x, alpha, shift, weight, bias, residual, kind, tuple(dims), relu)


@_fwd.register_fake
def _(x, alpha, shift, weight, bias, residual, kind, dims, relu):
    return torch.empty_like(x)


@torch.library.custom_op("normlab::numba_pointwise_bwd", mutates_args=())
def _bwd(dy: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, shift: torch.Tensor | None,
         weight: torch.Tensor | None, bias: torch.Tensor | None,
         residual: torch.Tensor | None, kind: str, dims: list[int],
         relu: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                              torch.Tensor, torch.Tensor]:
    out = _backward(dy, x, alpha, shift, weight, bias, residual, kind, tuple(dims), relu)
    g = _grads(x, dy, alpha, shift, weight, bias, residual, out, (True,) * 6)
    # outputs must not alias each other (dweight, dbias: views of one tensor) nor the inputs
    return (g[0], *(x.new_empty(0) if t is None else t.clone() for t in g[1:]))


@_bwd.register_fake
def _(dy, x, alpha, shift, weight, bias, residual, kind, dims, relu):
    return grads_like(x, alpha, shift, weight, bias, residual)


def _setup(ctx, inputs, output):
    x, alpha, shift, weight, bias, residual, kind, dims, relu = inputs
    ctx.save_for_backward(x, alpha, shift, weight, bias, residual)  # the inputs only
    ctx.args = (kind, dims, relu)


def _autograd(ctx, dy):
    x, alpha, shift, weight, bias, residual = ctx.saved_tensors
    kind, dims, relu = ctx.args
    needs = ctx.needs_input_grad
    dx, da, ds, dw, db, dr = _bwd(_dy_like(dy, x), x, alpha, shift, weight, bias, residual,
                                  kind, dims, relu)
    return (dx if needs[0] else None, da if needs[1] else None,
            ds if shift is not None and needs[2] else None,
            dw if weight is not None and needs[3] else None,
            db if bias is not None and needs[4] else None,
            dr if residual is not None and needs[5] else None, None, None, None)


_fwd.register_autograd(_autograd, setup_context=_setup)


class _Eager(torch.autograd.Function):
    """The custom ops' forward and backward for eager calls on plain tensors (``cpu_op._Eager``
    says why)."""

    @staticmethod
    def forward(ctx, x, alpha, shift, weight, bias, residual, kind, dims, relu, affine):
        y = _forward(x, alpha, shift, weight, bias, residual, kind, dims, relu)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, alpha, shift, weight, bias, residual)
        ctx.args = (kind, dims, relu, affine)
        return y

    @staticmethod
    def backward(ctx, dy):
        if dy is None:
            return (None,) * 10
        x, alpha, shift, weight, bias, residual = ctx.saved_tensors
        kind, dims, relu, affine = ctx.args
        if torch.is_grad_enabled():  # a graph of the backward (double backward): the native
            return (*_graph_backward(ctx, dy, affine), None, None, None, None)  # path's
        dy = _dy_like(dy, x)
        out = _backward(dy, x, alpha, shift, weight, bias, residual, kind, dims, relu)
        return (*_grads(x, dy, alpha, shift, weight, bias, residual, out,
                        ctx.needs_input_grad), None, None, None, None)


# ``Function.apply`` without its Python wrapper (as ``cpu_op._apply_eager``)
_apply_eager = torch._C._FunctionBase.__dict__["apply"].__get__(None, _Eager)


def _graph_backward(ctx, dy, affine):
    """The gradients as differentiable ops of the saved inputs (``create_graph=True``: a
    gradient penalty), through the native path (``ops/pointwise.py``, whose backward is
    differentiable): the kernels' backward would cut the graph, silently."""
    x, alpha, shift, weight, bias, residual = ctx.saved_tensors
    kind, _, relu, _ = ctx.args
    inputs = (x, alpha, shift, weight, bias, residual)
    wanted = [t for i, t in enumerate(inputs) if t is not None and ctx.needs_input_grad[i]]
    with torch.enable_grad():
        y = pointwise(kind, x, alpha, shift,
                      None if weight is None else weight.reshape(affine),
                      None if bias is None else bias.reshape(affine), residual,
                      "relu" if relu else None)
        got = iter(torch.autograd.grad(y, wanted, dy, create_graph=True, allow_unused=True))
    return tuple(next(got) if t is not None and ctx.needs_input_grad[i] else None
                 for i, t in enumerate(inputs))


def numba_pointwise(plan, x, alpha, shift=None, weight=None, bias=None, residual=None,
                    activation=None):
    """``act(w * squash(alpha * x + s) + b + residual)`` on the numba kernels; ``weight``/
    ``bias`` over the normalized block (any shape of ``PERIOD`` elements), ``plan.kernel`` set,
    ``x`` bfloat16 or float32 on the CPU, ``residual`` (or None) in x's dtype and strides,
    ``activation`` in ``ACTIVATIONS`` (the dispatcher's numba backend accepts only such
    calls)."""
    dims = plan.kernel.dims
    relu = activation == "relu"
    if _use_custom_op(x, alpha, shift, weight, bias, residual):
        return _fwd(x, alpha, shift, weight, bias, residual, plan.kind, list(dims), relu)
    x, alpha, shift, weight, bias, residual = (_live(t) for t in (x, alpha, shift, weight,
                                                                   bias, residual))
    if not _records(x, alpha, shift, weight, bias, residual):  # no Function needed
        return _forward(x, alpha, shift, weight, bias, residual, plan.kind, dims, relu)
    return _apply_eager(x, alpha, shift, weight, bias, residual, plan.kind, dims, relu,
                        plan.affine_shape)
