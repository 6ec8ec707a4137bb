"""The CPU backend: the numba kernels of ``normlab.kernels.cpu.norm`` behind ``torch.library``
custom ops (with fake implementations, so ``torch.compile(fullgraph=True)`` traces through
them) and an autograd formula.

The input's memory is read in place through ``spec.plan(..., strides=...).kernel``'s 4-D view
``(NB, D0, D1, D2)`` (a group is one ``(b, d1)`` reduced over ``(d0, d2)``), in one of three
shapes (``_shape``): *rows* (layer, rms: one group per row, fused), *lines* (channels first:
each run of ``D2`` positions shares one weight; one fused unit per group, statistics merged
in the kernel) and *columns* (channels innermost: one sample per unit when it fits in
``SAMPLE_BYTES``, otherwise chunks of ``TILE`` elements' rows whose per-column partial
statistics the same kernel merges by Chan's formula between its statistics and output loops;
one launch per forward and per backward). Eager calls on plain tensors go through
``_Eager`` (the same functions, without the custom op's dispatcher work).
Statistics are float32 for float32 input and float64 for float64 (``spec.STAT_DTYPES``); the
normalizations take only those two dtypes here (numba has no bfloat16; DyT and Derf, bfloat16
included, are ``cpu_pointwise``'s). Which calls come here is ``dispatch.Numba.accepts``. A
double backward (a backward with ``create_graph=True``) of an eager call runs the reference
math's differentiable backward instead of the kernels' (``_graph_backward``); the custom ops
(``torch.compile``) have none (use ``backend="reference"``).

numba compiles each kernel on its first call in a process (a few seconds; cached on disk next
to the kernels' source, so later processes load it). The kernels run on
``torch.get_num_threads()`` threads, one call at a time (a lock: numba's default thread pool
does not take concurrent launches); on one thread, as their serial twins
(``norm.SERIAL``), whose results are the same in every process (the parallel kernels' differ
in the last bits between a process that compiled them and one that loaded them from the cache;
the lab's runs, on one thread, rely on this: ``lab.train.pin_run``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import threading

import numpy as np
import torch

from normlab import spec
from normlab.reference import forward as reference_forward
from normlab.reference import stat_dtype

__all__ = ["available", "numba_norm"]

_LOCK = threading.Lock()
TILE = 1 << 14  # elements per chunk of rows in the column statistics (64 KiB of float32: in L2)
SAMPLE_BYTES = 1 << 22  # a sample this small is normalized in one unit (it stays in cache)
ROWS, LINES, COLUMNS = 0, 1, 2


_AVAILABLE = importlib.util.find_spec("numba") is not None


def available() -> bool:
    """numba is installed (importing normlab never imports it: the first numba call does)."""
    return _AVAILABLE


@functools.cache
def _kernels():
    import numba

    from normlab.kernels.cpu import norm

    return numba, norm


def _shape(dims, affine, family) -> int:
    """Which of the kernels' three readings of the memory a 4-D view takes."""
    if family == spec.COLUMN:
        return COLUMNS
    if affine[4] == 0:  # the D2 positions of a line share one weight: channels first
        return LINES
    if dims[1] == 1 and dims[2] == 1:  # layer and rms: one group per row
        return ROWS
    return COLUMNS  # group norm with the channels innermost: (N, positions, G, C/G)


@functools.lru_cache(maxsize=256)
def _affine_index(dims, affine, shape):
    """-> (the weight index of each line (NB, D0, D1) or each (b, column) (NB, D1 * D2), the
    number of weight elements)."""
    nb, d0, d1, d2 = dims
    mod_b, sb, s0, s1, s2 = affine
    b = (torch.arange(nb) % mod_b) * sb
    if shape == LINES:
        idx = (b[:, None, None] + torch.arange(d0)[None, :, None] * s0
               + torch.arange(d1)[None, None, :] * s1)
    else:
        idx = (b[:, None, None] + torch.arange(d1)[None, :, None] * s1
               + torch.arange(d2)[None, None, :] * s2).reshape(nb, d1 * d2)
    return idx, int(idx.max()) + 1


def _np(t: torch.Tensor, shape):
    """The tensor's memory (dense, in memory order) as a numpy array of ``shape``."""
    t = t.detach()
    if not t.is_contiguous():
        t = t.as_strided((t.numel(),), (1,))
    return t.numpy().reshape(shape)


def _param(t, n, fill, dtype):
    if t is None:
        return torch.full((n,), fill, dtype=dtype)
    return t.detach().reshape(-1).to(dtype).contiguous()


def _param_np(t, n, fill, dtype):
    """``_param`` as a numpy array: a 1-D contiguous parameter of ``dtype`` is read in place
    (as ``_param`` does, without its reshape/to/contiguous calls: ~1 us each)."""
    if t is not None and t.dtype == dtype and t.dim() == 1 and t.is_contiguous():
        return t.detach().numpy()
    return _param(t, n, fill, dtype).numpy()


@functools.cache
def _zero(dtype):
    """0 as a numpy scalar of ``dtype`` (the kernels' block accumulators take its type)."""
    return torch.zeros((), dtype=dtype).numpy()[()]


@contextlib.contextmanager
def _launch(numba, k):
    """One kernel launch at a time, on ``torch.get_num_threads()`` of numba's threads; yields
    ``(kernels, threads)``: the parallel kernels, or on one thread their serial twins
    (``k.SERIAL``: the same numbers in every process, whether it compiled the kernels or
    loaded them from numba's cache; see ``normlab.kernels.cpu.norm``). torch's thread count is
    put back afterwards (numba's OpenMP pool shares torch's OpenMP runtime, and a launch
    leaves the runtime's thread count at numba's)."""
    with _LOCK:
        before = torch.get_num_threads()
        n = max(1, min(before, numba.config.NUMBA_NUM_THREADS))
        numba.set_num_threads(n)
        try:
            yield (k if n > 1 else k.SERIAL), n
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)


def _fused_columns(x, dims) -> bool:
    """Whether a columns-shaped call normalizes one sample per unit (several samples, each
    small enough to stay in cache) rather than in chunks of rows merged afterwards."""
    nb, d0, d1, d2 = dims
    return nb > 1 and d0 * d1 * d2 * x.element_size() <= SAMPLE_BYTES


def _forward(x, weight, bias, dims, affine, family, centered, eps):
    numba, k = _kernels()
    nb, d0, d1, d2 = dims
    sdt = stat_dtype(x.dtype)
    shape = _shape(dims, affine, family)
    y = torch.empty_like(x)
    if shape == ROWS:
        mean, rstd, var = (torch.empty(nb, dtype=sdt) for _ in range(3))
        w, b = _param_np(weight, d2, 1.0, x.dtype), _param_np(bias, d2, 0.0, x.dtype)
        with _launch(numba, k) as (kern, _):
            kern.rows_fwd(_np(x, (nb, d2)), w, b, centered, eps, _zero(sdt),
                       _np(y, (nb, d2)), mean.numpy(), rstd.numpy(), var.numpy())
        return y, mean, rstd, var
    idx, cw = _affine_index(dims, affine, shape)
    if shape == LINES:  # one fused pass per group of D0 lines (a channel in batch norm)
        # separate tensors: a custom op's outputs must not alias one another; 1-D (the
        # statistics' shape) with (NB, D1) numpy views for the kernel, the scratch numpy's own
        mean, rstd, var = torch.empty(nb * d1, dtype=sdt), torch.empty(nb * d1, dtype=sdt), \
            torch.empty(nb * d1, dtype=sdt)
        scratch = np.empty((nb, d1), dtype=_zero(sdt).dtype)
        w, b = _param_np(weight, cw, 1.0, sdt), _param_np(bias, cw, 0.0, sdt)
        with _launch(numba, k) as (kern, nth):
            kern.lines_fwd_fused(_np(x, dims), w, b, affine[:4], centered, eps, _zero(sdt),
                                 scratch, _np(y, dims), mean.numpy().reshape(nb, d1),
                                 rstd.numpy().reshape(nb, d1), var.numpy().reshape(nb, d1),
                                 nth)
        return y, mean, rstd, var
    w, b = _param(weight, cw, 1.0, torch.float64), _param(bias, cw, 0.0, torch.float64)
    if _fused_columns(x, dims):
        cols = (nb, d0, d1 * d2)
        mean, rstd, var = (torch.empty(nb, d1, dtype=sdt) for _ in range(3))
        with _launch(numba, k) as (kern, _):
            kern.cols_fwd_fused(_np(x, cols), d2, w[idx].to(sdt).numpy(), b[idx].to(sdt).numpy(),
                             centered, eps, torch.empty(nb, 3, d1 * d2, dtype=sdt).numpy(),
                             _np(y, cols), mean.numpy(), rstd.numpy(), var.numpy())
        return y, mean.reshape(-1), rstd.reshape(-1), var.reshape(-1)
    # larger samples, or one (batch norm): chunks of rows, merged in the kernel
    cols = (nb, d0, d1 * d2)
    rows = max(1, TILE // (d1 * d2))
    t = -(-d0 // rows)
    mean, rstd, var = (torch.empty(nb, d1, dtype=sdt) for _ in range(3))
    pm, pq = (torch.empty(nb, t, d1 * d2, dtype=torch.float64) for _ in range(2))
    with _launch(numba, k) as (kern, nth):
        kern.cols_fwd_chunked(_np(x, cols), d2, w[idx].to(sdt).numpy(), b[idx].to(sdt).numpy(),
                              centered, eps, rows, nth, pm.numpy(), pq.numpy(),
                              torch.empty(nb, 3, d1 * d2, dtype=sdt).numpy(), _np(y, cols),
                              mean.numpy(), rstd.numpy(), var.numpy())
    return y, mean.reshape(-1), rstd.reshape(-1), var.reshape(-1)


def _backward(dy, x, weight, mean, rstd, dims, affine, family, centered):
    """-> (dx, dweight, dbias) with dweight/dbias float64 over the weight's elements."""
    numba, k = _kernels()
    nb, d0, d1, d2 = dims
    sdt = stat_dtype(x.dtype)
    shape = _shape(dims, affine, family)
    dx = torch.empty_like(x)
    if shape == ROWS:
        w = _param_np(weight, d2, 1.0, x.dtype)
        with _launch(numba, k) as (kern, nth):
            dwp, dbp = (torch.zeros(nth, d2, dtype=torch.float64) for _ in range(2))
            kern.rows_bwd(_np(dy, (nb, d2)), _np(x, (nb, d2)), w, mean.numpy(),
                          rstd.numpy(), centered, _zero(sdt), nth, _np(dx, (nb, d2)),
                          dwp.numpy(), dbp.numpy())
        return dx, dwp.sum(0), dbp.sum(0)
    idx, cw = _affine_index(dims, affine, shape)
    if shape == LINES:  # one fused pass per group of D0 lines (a channel in batch norm)
        sdy, sdyx = torch.empty(2, nb, d0, d1, dtype=torch.float64).unbind()
        with _launch(numba, k) as (kern, _):
            kern.lines_bwd_fused(_np(dy, dims), _np(x, dims), mean.view(nb, d1).numpy(),
                              rstd.view(nb, d1).numpy(), _param_np(weight, cw, 1.0, sdt),
                              affine[:4], centered, _zero(sdt),
                              torch.empty(nb, d1, 2, dtype=sdt).numpy(), _np(dx, dims),
                              sdy.numpy(), sdyx.numpy())
    elif _fused_columns(x, dims):
        w = _param(weight, cw, 1.0, torch.float64)
        cols = (nb, d0, d1 * d2)
        cm = mean.view(nb, d1, 1).expand(nb, d1, d2).reshape(nb, d1 * d2).contiguous()
        cr = rstd.view(nb, d1, 1).expand(nb, d1, d2).reshape(nb, d1 * d2).contiguous()
        sdy, sdyx = (torch.empty(nb * d1 * d2, dtype=torch.float64) for _ in range(2))
        with _launch(numba, k) as (kern, _):
            kern.cols_bwd_fused(_np(dy, cols), _np(x, cols), d2, w[idx].to(sdt).numpy(),
                             cm.numpy(), cr.numpy(), centered,
                             torch.empty(nb, 3, d1 * d2, dtype=sdt).numpy(), _np(dx, cols),
                             sdy.numpy().reshape(nb, -1), sdyx.numpy().reshape(nb, -1))
    else:
        w = _param(weight, cw, 1.0, torch.float64)
        cols = (nb, d0, d1 * d2)
        rows = max(1, TILE // (d1 * d2))
        t = -(-d0 // rows)
        cm = mean.view(nb, d1, 1).expand(nb, d1, d2).reshape(nb, d1 * d2).contiguous()
        cr = rstd.view(nb, d1, 1).expand(nb, d1, d2).reshape(nb, d1 * d2).contiguous()
        pdy, pdyx = (torch.empty(nb, t, d1 * d2, dtype=torch.float64) for _ in range(2))
        sdy, sdyx = (torch.empty(nb * d1 * d2, dtype=torch.float64) for _ in range(2))
        with _launch(numba, k) as (kern, nth):
            kern.cols_bwd_chunked(_np(dy, cols), _np(x, cols), d2, w[idx].to(sdt).numpy(),
                                  cm.numpy(), cr.numpy(), centered, rows, nth, pdy.numpy(),
                                  pdyx.numpy(), torch.empty(nb, 3, d1 * d2, dtype=sdt).numpy(),
                                  _np(dx, cols), sdy.numpy().reshape(nb, -1),
                                  sdyx.numpy().reshape(nb, -1))
    flat = idx.reshape(-1)
    dw = torch.zeros(cw, dtype=torch.float64).index_add_(0, flat, sdyx.reshape(-1))
    db = torch.zeros(cw, dtype=torch.float64).index_add_(0, flat, sdy.reshape(-1))
    return dx, dw, db


@torch.library.custom_op("normlab::numba_norm_fwd", mutates_args=())
def _fwd(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
         family: int, dims: list[int], affine: list[int], centered: bool,
         eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _forward(x, weight, bias, tuple(dims), tuple(affine), _FAMILIES[family], centered,
                    eps)


@_fwd.register_fake
def _(x, weight, bias, family, dims, affine, centered, eps):
    def stats():
        return x.new_empty(dims[0] * dims[2], dtype=stat_dtype(x.dtype))
    return torch.empty_like(x), stats(), stats(), stats()


@torch.library.custom_op("normlab::numba_norm_bwd", mutates_args=())
def _bwd(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None,
         bias: torch.Tensor | None, mean: torch.Tensor, rstd: torch.Tensor, family: int,
         dims: list[int], affine: list[int], centered: bool, need_dw: bool,
         need_db: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dw, db = _backward(dy, x, weight, mean, rstd, tuple(dims), tuple(affine),
                           _FAMILIES[family], centered)
    dw = dw.to(weight.dtype).reshape(weight.shape) if need_dw else x.new_empty(0)
    db = db.to(bias.dtype).reshape(bias.shape) if need_db else x.new_empty(0)
    return dx, dw, db


@_bwd.register_fake
def _(dy, x, weight, bias, mean, rstd, family, dims, affine, centered, need_dw, need_db):
    return (torch.empty_like(x), torch.empty_like(weight) if need_dw else x.new_empty(0),
            torch.empty_like(bias) if need_db else x.new_empty(0))


_FAMILIES = (spec.ROW, spec.COLUMN)


def _setup(ctx, inputs, output):
    x, weight, bias, family, dims, affine, centered, _eps = inputs
    _, mean, rstd, _var = output
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.args = (family, dims, affine, centered)


def _autograd(ctx, dy, _dmean, _drstd, _dvar):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    family, dims, affine, centered = ctx.args
    needs = ctx.needs_input_grad
    if dy.stride() != x.stride() or dy.dtype != x.dtype:  # the kernels read dy like x
        dy = torch.empty_like(x).copy_(dy)
    need_dw = bool(needs[1]) and weight is not None
    need_db = bool(needs[2]) and bias is not None
    dx, dw, db = _bwd(dy, x, weight, bias, mean, rstd, family, dims, affine, centered,
                      need_dw, need_db)
    return (dx if needs[0] else None, dw if need_dw else None, db if need_db else None,
            None, None, None, None, None)


_fwd.register_autograd(_autograd, setup_context=_setup)


class _Eager(torch.autograd.Function):
    """The custom ops' forward and backward (the same ``_forward``/``_backward``) for eager
    calls on plain tensors, without the dispatcher's work around a custom op (about 0.3 ms of
    Python per forward+backward: 3% of a (32, 64, 56, 56) batch norm, more on small inputs).
    ``torch.compile``, fake tensors and other tensor subclasses, and functorch transforms go
    through the custom ops (``_use_custom_op``)."""

    @staticmethod
    def forward(ctx, x, weight, bias, family, dims, affine, centered, eps, plan):
        # ctx first, no setup_context: Function.apply then skips binding the arguments by
        # signature (inspect, ~0.1 ms); functorch transforms, which would need setup_context,
        # take the custom ops
        y, mean, rstd, var = _forward(x, weight, bias, dims, affine, _FAMILIES[family],
                                      centered, eps)
        ctx.mark_non_differentiable(mean, rstd, var)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.args = (family, dims, affine, centered)
        ctx.plan, ctx.eps = plan, eps
        return y, mean, rstd, var

    @staticmethod
    def backward(ctx, dy, _dmean, _drstd, _dvar):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        family, dims, affine, centered = ctx.args
        needs = ctx.needs_input_grad
        if dy is None:
            return (None,) * 9
        if torch.is_grad_enabled():  # a graph of the backward (double backward, a gradient
            return _graph_backward(ctx, dy, x, weight, bias)  # penalty): the reference's
        if dy.stride() != x.stride() or dy.dtype != x.dtype:  # the kernels read dy like x
            dy = torch.empty_like(x).copy_(dy)
        dx, dw, db = _backward(dy, x, weight, mean, rstd, dims, affine, _FAMILIES[family],
                               centered)
        dw = dw.to(weight.dtype).reshape(weight.shape) if needs[1] else None
        db = db.to(bias.dtype).reshape(bias.shape) if needs[2] else None
        return (dx if needs[0] else None, dw, db, None, None, None, None, None, None)


def _graph_backward(ctx, dy, x, weight, bias):
    """The backward as differentiable ops of the saved inputs (autograd through the reference
    math, ``normlab.reference.forward``), so that a graph of it connects to them: the kernels'
    backward is not differentiable, and cutting the graph there gave silently wrong gradients
    in a loss that also holds the output."""
    shape = ctx.plan.affine_shape
    with torch.enable_grad():
        y, _ = reference_forward(x, ctx.plan, eps=ctx.eps,
                                 weight=None if weight is None else weight.reshape(shape),
                                 bias=None if bias is None else bias.reshape(shape))
        wanted = [(i, t) for i, t in enumerate((x, weight, bias))
                  if t is not None and ctx.needs_input_grad[i]]
        grads = torch.autograd.grad(y, [t for _, t in wanted], dy.to(y.dtype),
                                    create_graph=True, allow_unused=True)
    out = [None] * 9
    for (i, t), g in zip(wanted, grads, strict=True):
        out[i] = None if g is None else g.to(t.dtype)
    return tuple(out)


def _use_custom_op(*tensors) -> bool:
    """Whether a call goes through the custom ops: under ``torch.compile``, with a tensor
    subclass (fake tensors while tracing) or under a functorch transform."""
    return (torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()
            or any(t is not None and type(t) not in _PLAIN for t in tensors))


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def numba_norm(plan: spec.Plan, x: torch.Tensor, *, eps: float, weight=None, bias=None):
    """-> ``(y, mean, var)`` with the statistics in ``plan.stats_shape`` (var biased).
    ``plan.kernel`` must be set and ``x`` float32 or float64 on the CPU (the dispatcher's
    numba backend accepts only such calls)."""
    k = plan.kernel
    family = _FAMILIES.index(k.family)
    if _use_custom_op(x, weight, bias):
        y, mean, _rstd, var = _fwd(x, weight, bias, family, list(k.dims), list(k.affine),
                                   plan.centered, float(eps))
    else:
        y, mean, _rstd, var = _Eager.apply(x, weight, bias, family, k.dims, k.affine,
                                           plan.centered, float(eps), plan)
    return y, mean.reshape(plan.stats_shape), var.reshape(plan.stats_shape)
