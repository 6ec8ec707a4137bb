"""The CPU backend: the numba kernels of ``normlab.kernels.cpu.norm`` behind ``torch.library``
custom ops (with fake implementations, so ``torch.compile(fullgraph=True)`` traces through
them) and an autograd formula.

The input's memory is read in place through ``spec.plan(..., strides=...).kernel``'s 4-D view
``(NB, D0, D1, D2)`` (a group is one ``(b, d1)`` reduced over ``(d0, d2)``), in one of four
shapes (``_shape``): *rows* (layer, rms: one group per row, fused), *lines* (channels first:
each run of ``D2`` positions shares one weight; one fused unit per group, statistics merged
in the kernel), *columns* (channels innermost: one sample per unit when it fits in
``SAMPLE_BYTES``, otherwise chunks of ``TILE`` elements' rows whose per-column partial
statistics the same kernel merges by Chan's formula between its statistics and output loops;
one launch per forward and per backward) and *channels* (layer and rms norm over the channel
of channels-first memory: the columns with a weight per row, ``_chan_block`` columns per
unit). Eager calls on plain tensors go through
``_Eager`` (the same functions, without the custom op's dispatcher work), or no Function at
all where autograd records nothing; there batch norm's running statistics move in the same
launch (``_update_running``). The Python around a small call is most of its time (a warm
(2, 64, 8, 8) batch norm: the kernel ~15 us of ~0.13 ms), so each torch op or ``.numpy()``
avoided here counts (~1-5 us each; numba's own dispatch of the arguments is ~1 us).
Statistics are float32 for float32 input and float64 for float64 (``spec.STAT_DTYPES``); the
normalizations take only those two dtypes here (numba has no bfloat16), but for the channels,
which also read bfloat16 as its bits (``uint16``, computed and summed in float32, statistics
float32); DyT and Derf, bfloat16 included, are ``cpu_pointwise``'s. Which calls come here is
``dispatch.Numba.accepts``. A
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
ROWS, LINES, COLUMNS, CHANNELS = 0, 1, 2, 3


_AVAILABLE = importlib.util.find_spec("numba") is not None


def available() -> bool:
    """numba is installed (importing normlab never imports it: the first numba call does)."""
    return _AVAILABLE


@functools.cache
def _kernels():
    import numba

    from normlab.kernels.cpu import norm

    return numba, norm


@functools.cache
def _running():
    from normlab.kernels.cpu import running

    return running


def _plain(t, dtype) -> bool:
    """A plain contiguous CPU tensor of ``dtype`` that may be written through numpy: autograd
    does not track it and it is no inference tensor (updating one outside inference mode must
    raise, as torch's in-place ops do)."""
    return (type(t) is torch.Tensor and t.dtype == dtype and t.is_cpu and not t.requires_grad
            and not t.is_inference() and t.is_contiguous())


def _update_running(running, mean, var, group_size):
    """Batch norm's running statistics (``running = (mean, var, factor)``: ``dispatch.Running``'s
    buffers and the call's factor) from the statistics' numpy views (one row of C), in one
    numba call (``kernels.cpu.running``: ~30 us less than ``dispatch.update_running``'s torch
    ops and the statistics' conversions, in a small call); the version counters bumped as
    torch's in-place ops do."""
    rm, rv, factor = running
    t = mean.dtype.type
    _running().update_row(rm.numpy(), rv.numpy(), mean, var, t(1.0 - factor), t(factor),
                          t(group_size / max(group_size - 1, 1)))
    torch._C._increment_version((rm, rv))


def _shape(dims, affine, family) -> int:
    """Which of the kernels' four readings of the memory a 4-D view takes."""
    if family == spec.COLUMN:
        return CHANNELS if affine[2] != 0 else COLUMNS  # a weight per row (S0): the channels
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
    if t.requires_grad:
        t = t.detach()
    if not t.is_contiguous():
        t = t.as_strided((t.numel(),), (1,))
    if t.dtype == torch.bfloat16:  # its bits (the channels kernels widen them)
        return t.view(torch.int16).numpy().view(np.uint16).reshape(shape)
    return t.numpy().reshape(shape)


def _param(t, n, fill, dtype):
    if t is None:
        return torch.full((n,), fill, dtype=dtype)
    return t.detach().reshape(-1).to(dtype).contiguous()


def _param_np(t, n, fill, dtype):
    """``_param`` as a 1-D numpy array: a contiguous parameter of ``dtype`` is read in place
    (as ``_param`` does, without its reshape/to/contiguous calls: ~1 us each)."""
    if t is not None and t.dtype == dtype and t.is_contiguous():
        a = (t.detach() if t.requires_grad else t).numpy()
        return a if a.ndim == 1 else a.reshape(-1)
    return _param(t, n, fill, dtype).numpy()


def _out_zero(dtype):
    """0 in the kernels' element type of an output of ``dtype`` (bfloat16: its bits)."""
    return np.uint16(0) if dtype == torch.bfloat16 else _zero(dtype)


@functools.cache
def _zero(dtype):
    """0 as a numpy scalar of ``dtype`` (the kernels' block accumulators take its type)."""
    return torch.zeros((), dtype=dtype).numpy()[()]


class _launch:  # noqa: N801 -- used as a function: ``with _launch(numba, k) as (kern, n)``
    """One kernel launch at a time, on ``torch.get_num_threads()`` of numba's threads; enters as
    ``(kernels, threads)``: the parallel kernels, or on one thread their serial twins
    (``k.SERIAL``: the same numbers in every process, whether it compiled the kernels or
    loaded them from numba's cache; see ``normlab.kernels.cpu.norm``), which use no thread pool
    (so numba's thread count is not set for them: ``numba.set_num_threads`` takes ~3 us). On
    more threads torch's thread count is put back afterwards (numba's OpenMP pool shares
    torch's OpenMP runtime, and a launch leaves the runtime's thread count at numba's). A class,
    not a ``contextlib`` generator (~3 us less a call)."""

    __slots__ = ("before", "k", "n", "numba")

    def __init__(self, numba, k):
        self.numba, self.k = numba, k

    def __enter__(self):
        _LOCK.acquire()
        try:
            self.before = before = torch.get_num_threads()
            self.n = n = max(1, min(before, self.numba.config.NUMBA_NUM_THREADS))
            if n == 1:
                return self.k.SERIAL, 1
            self.numba.set_num_threads(n)  # per Python thread in numba: set on every launch
            return self.k, n
        except BaseException:
            _LOCK.release()
            raise

    def __exit__(self, *exc):
        try:
            if self.n > 1 and torch.get_num_threads() != self.before:
                torch.set_num_threads(self.before)
        finally:
            _LOCK.release()


def _chan_block(nb, w, nth) -> int:
    """The channels' columns per unit: a whole sample (its C x positions in cache between the
    statistics and the output; blocks of ~``TILE`` elements measured 1.2-1.6x slower), split
    in ``ceil(nth / nb)`` blocks (of whole 32-byte vectors) when the samples are fewer than
    the threads."""
    if nb >= nth:
        return w
    per = -(-w // -(-nth // nb))
    return max(8, -(-per // 8) * 8)


def _fused_columns(x, dims) -> bool:
    """Whether a columns-shaped call normalizes one sample per unit (several samples, each
    small enough to stay in cache) rather than in chunks of rows merged afterwards."""
    nb, d0, d1, d2 = dims
    return nb > 1 and d0 * d1 * d2 * x.element_size() <= SAMPLE_BYTES


def _stat_arrays(sdt, view, shape):
    """-> ((mean, rstd, var), their numpy views of shape ``view`` for the kernel). ``shape``
    None (the custom op): three 1-D tensors. Else (eager calls: the plan's ``stats_shape``)
    one numpy buffer, mean and var tensors over it in that shape and rstd numpy only (the
    backward's, never handed out): ~10 us less than three tensors and their numpy views."""
    if shape is None:
        n = view[0] * view[1] if len(view) == 2 else view[0]
        ts = (torch.empty(n, dtype=sdt), torch.empty(n, dtype=sdt), torch.empty(n, dtype=sdt))
        return ts, tuple(t.numpy().reshape(view) for t in ts)
    a = np.empty((3, *shape), dtype=_zero(sdt).dtype)
    v = a.reshape(3, *view)
    return (torch.from_numpy(a[0]), v[1], torch.from_numpy(a[2])), (v[0], v[1], v[2])


def _stat_np(t, view):
    """A statistic (a tensor, or the numpy array ``_stat_arrays`` made) as numpy of ``view``."""
    return (t if isinstance(t, np.ndarray) else t.numpy()).reshape(view)


def _forward(x, weight, bias, dims, affine, family, centered, eps, stats_shape=None,
             running=None):
    """-> (y, mean, rstd, var); the statistics 1-D tensors, or (the rows and lines, given
    ``stats_shape``: eager calls) ``_stat_arrays``' (rstd a numpy array). ``running``: batch
    norm's running statistics to update (``_update_running``; lines and columns, ``numba_norm``
    says when)."""
    numba, k = _kernels()
    nb, d0, d1, d2 = dims
    sdt = stat_dtype(x.dtype)
    shape = _shape(dims, affine, family)
    y = torch.empty_like(x)
    if shape == ROWS:
        (mean, rstd, var), (mn, rn, vn) = _stat_arrays(sdt, (nb,), stats_shape)
        w, b = _param_np(weight, d2, 1.0, x.dtype), _param_np(bias, d2, 0.0, x.dtype)
        with _launch(numba, k) as (kern, _):
            kern.rows_fwd(_np(x, (nb, d2)), w, b, centered, eps, _zero(sdt),
                          _np(y, (nb, d2)), mn, rn, vn)
        return y, mean, rstd, var
    if shape == CHANNELS:  # layer/rms norm over the channel of channels-first memory
        (mean, rstd, var), (mn, rn, vn) = _stat_arrays(sdt, (nb, d1), stats_shape)
        w, b = _param_np(weight, d0, 1.0, sdt), _param_np(bias, d0, 0.0, sdt)
        with _launch(numba, k) as (kern, nth):
            kern.chan_fwd(_np(x, (nb, d0, d1)), w, b, centered, eps, _chan_block(nb, d1, nth),
                          _out_zero(x.dtype), _np(y, (nb, d0, d1)), mn, rn, vn)
        return y, mean, rstd, var
    idx, cw = _affine_index(dims, affine, shape)
    if shape == LINES:  # one fused pass per group of D0 lines (a channel in batch norm)
        (mean, rstd, var), (mn, rn, vn) = _stat_arrays(sdt, (nb, d1), stats_shape)
        scratch = np.empty((nb, d1), dtype=mn.dtype)
        w, b = _param_np(weight, cw, 1.0, sdt), _param_np(bias, cw, 0.0, sdt)
        with _launch(numba, k) as (kern, nth):
            kern.lines_fwd_fused(_np(x, dims), w, b, affine[:4], centered, eps, _zero(sdt),
                                 scratch, _np(y, dims), mn, rn, vn, nth)
            if running is not None:  # batch norm: one row (nb == 1)
                _update_running(running, mn[0], vn[0], d0 * d2)
        return y, mean, rstd, var
    # the columns: per-(b, column) weight and bias, the statistics and scratch as numpy arrays
    # (numpy's indexing and allocation: ~0.15 ms less Python per call than torch's here)
    cols = (nb, d0, d1 * d2)
    wc, bc = _col_param(weight, idx, cw, 1.0, sdt), _col_param(bias, idx, cw, 0.0, sdt)
    mean, rstd, var = (torch.empty(nb * d1, dtype=sdt) for _ in range(3))
    stats = [t.numpy().reshape(nb, d1) for t in (mean, rstd, var)]
    sc = np.empty((nb, 3, d1 * d2), dtype=wc.dtype)
    if _fused_columns(x, dims):
        with _launch(numba, k) as (kern, _):
            kern.cols_fwd_fused(_np(x, cols), d2, wc, bc, centered, eps, sc, _np(y, cols),
                                *stats)
            if running is not None:
                _update_running(running, stats[0][0], stats[2][0], d0 * d2)
        return y, mean, rstd, var
    # larger samples, or one (batch norm): chunks of rows, merged in the kernel
    rows = max(1, TILE // (d1 * d2))
    t = -(-d0 // rows)
    pm, pq = (np.empty((nb, t, d1 * d2)) for _ in range(2))
    with _launch(numba, k) as (kern, nth):
        kern.cols_fwd_chunked(_np(x, cols), d2, wc, bc, centered, eps, rows, nth, pm, pq, sc,
                              _np(y, cols), *stats)
        if running is not None:  # batch norm channels last: one row (nb == 1)
            _update_running(running, stats[0][0], stats[2][0], d0 * d2)
    return y, mean, rstd, var


def _col_param(t, idx, n, fill, dtype):
    """A parameter per (b, column) of the columns' view, ``(NB, D1 * D2)`` numpy in
    ``dtype``, from the cached weight index ``idx`` of ``_affine_index``."""
    return _param_np(t, n, fill, dtype)[idx.numpy()]


def _col_stat(t, nb, d1, d2):
    """A saved statistic (NB * D1,) repeated over its group's D2 columns: (NB, D1 * D2)."""
    a = t.detach().numpy().reshape(nb, d1)
    return np.ascontiguousarray(a) if d2 == 1 else np.repeat(a, d2, axis=1)


@functools.lru_cache(maxsize=256)
def _flat_index_np(dims, affine, shape):
    """``_affine_index``'s weight index of each line, flat, as numpy (``np.bincount``'s)."""
    return _affine_index(dims, affine, shape)[0].reshape(-1).numpy()


def _backward(dy, x, weight, mean, rstd, dims, affine, family, centered):
    """-> (dx, dweight, dbias) with dweight/dbias float64 over the weight's elements (numpy
    arrays on the rows and lines: their scratch is numpy's, a few us less than torch's ops;
    ``_grad`` makes them the parameters' gradients)."""
    numba, k = _kernels()
    nb, d0, d1, d2 = dims
    sdt = stat_dtype(x.dtype)
    shape = _shape(dims, affine, family)
    dx = torch.empty_like(x)
    if shape == ROWS:
        w = _param_np(weight, d2, 1.0, x.dtype)
        with _launch(numba, k) as (kern, nth):
            p = np.zeros((2, nth, d2))  # per thread: dweight, dbias
            kern.rows_bwd(_np(dy, (nb, d2)), _np(x, (nb, d2)), w, _stat_np(mean, nb),
                          _stat_np(rstd, nb), centered, _zero(sdt), nth, _np(dx, (nb, d2)),
                          p[0], p[1])
        return dx, p[0].sum(0), p[1].sum(0)
    if shape == CHANNELS:
        w = _param_np(weight, d0, 1.0, sdt)
        with _launch(numba, k) as (kern, nth):
            cb = _chan_block(nb, d1, nth)
            p = np.empty((2, nb * -(-d1 // cb), d0))  # per unit: dweight, dbias
            kern.chan_bwd(_np(dy, (nb, d0, d1)), _np(x, (nb, d0, d1)), w,
                          _stat_np(mean, (nb, d1)), _stat_np(rstd, (nb, d1)), centered,
                          _zero(sdt), cb, _out_zero(x.dtype), _np(dx, (nb, d0, d1)), p[0],
                          p[1])
        return dx, p[0].sum(0), p[1].sum(0)
    idx, cw = _affine_index(dims, affine, shape)
    if shape == LINES:  # one fused pass per group of D0 lines (a channel in batch norm)
        sums = np.empty((2, nb, d0, d1))  # per line: sum(dy), sum(dy * xhat)
        with _launch(numba, k) as (kern, _):
            kern.lines_bwd_fused(_np(dy, dims), _np(x, dims), _stat_np(mean, (nb, d1)),
                                 _stat_np(rstd, (nb, d1)), _param_np(weight, cw, 1.0, sdt),
                                 affine[:4], centered, _zero(sdt),
                                 np.empty((nb, d1, 2), dtype=_zero(sdt).dtype), _np(dx, dims),
                                 sums[0], sums[1])
        # each weight's lines summed in order (as index_add_ would: the same bits)
        flat = _flat_index_np(dims, affine, shape)
        return (dx, np.bincount(flat, sums[1].reshape(-1), cw),
                np.bincount(flat, sums[0].reshape(-1), cw))
    cols = (nb, d0, d1 * d2)
    wc = _col_param(weight, idx, cw, 1.0, sdt)
    cm, cr = _col_stat(mean, nb, d1, d2), _col_stat(rstd, nb, d1, d2)
    sc = np.empty((nb, 3, d1 * d2), dtype=wc.dtype)
    sdy, sdyx = (torch.empty(nb * d1 * d2, dtype=torch.float64) for _ in range(2))
    sums = sdy.numpy().reshape(nb, -1), sdyx.numpy().reshape(nb, -1)
    if _fused_columns(x, dims):
        with _launch(numba, k) as (kern, _):
            kern.cols_bwd_fused(_np(dy, cols), _np(x, cols), d2, wc, cm, cr, centered, sc,
                                _np(dx, cols), *sums)
    else:
        rows = max(1, TILE // (d1 * d2))
        t = -(-d0 // rows)
        pdy, pdyx = (np.empty((nb, t, d1 * d2)) for _ in range(2))
        with _launch(numba, k) as (kern, nth):
            kern.cols_bwd_chunked(_np(dy, cols), _np(x, cols), d2, wc, cm, cr, centered,
                                  rows, nth, pdy, pdyx, sc, _np(dx, cols), *sums)
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
    return (dx, _grad(dw, weight) if need_dw else x.new_empty(0),
            _grad(db, bias) if need_db else x.new_empty(0))


def _grad(g, like):
    """``_backward``'s float64 gradient (a tensor, or a numpy array) in ``like``'s dtype and
    shape."""
    if isinstance(g, np.ndarray):
        if like.dtype in _NUMPY_DTYPES:
            g = torch.from_numpy(g.astype(_NUMPY_DTYPES[like.dtype]))
            return g if like.dim() == 1 else g.reshape(like.shape)  # 1-D: g's shape
        g = torch.from_numpy(g)
    return g.to(like.dtype).reshape(like.shape)


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


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
    calls on plain tensors that autograd records, without the dispatcher's work around a
    custom op (about 0.3 ms of Python per forward+backward: 3% of a (32, 64, 56, 56) batch
    norm, more on small inputs). ``torch.compile``, fake tensors and other tensor subclasses,
    and functorch transforms go through the custom ops (``_use_custom_op``); calls autograd
    does not record run ``_forward`` alone. ``call``: ``(plan, eps, running, stats)``
    (``numba_norm``; ``stats``: a list the statistics are appended to)."""

    @staticmethod
    def forward(ctx, x, weight, bias, call):
        # ctx first, no setup_context: Function.apply then skips binding the arguments by
        # signature (inspect, ~0.1 ms); functorch transforms, which would need setup_context,
        # take the custom ops
        plan, eps, running, stats = call
        k = plan.kernel
        y, mean, rstd, var = _forward(x, weight, bias, k.dims, k.affine, k.family,
                                      plan.centered, eps, plan.stats_shape, running)
        stats += mean, var  # handed out beside the output: not differentiable, and two
        ctx.set_materialize_grads(False)  # outputs fewer for autograd to wrap (~3 us)
        ctx.save_for_backward(x, weight, bias, mean)
        ctx.call, ctx.rstd = (plan, eps), rstd  # rstd: no one else's (numpy on rows, lines)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, mean = ctx.saved_tensors
        rstd = ctx.rstd
        plan, eps = ctx.call
        needs = ctx.needs_input_grad
        if dy is None:
            return None, None, None, None
        if torch.is_grad_enabled():  # a graph of the backward (double backward, a gradient
            return _graph_backward(plan, eps, needs, dy, x, weight, bias)  # penalty): the
        if dy.stride() != x.stride() or dy.dtype != x.dtype:  # reference's; the kernels read
            dy = torch.empty_like(x).copy_(dy)  # dy like x
        k = plan.kernel
        dx, dw, db = _backward(dy, x, weight, mean, rstd, k.dims, k.affine, k.family,
                               plan.centered)
        return (dx if needs[0] else None, _grad(dw, weight) if needs[1] else None,
                _grad(db, bias) if needs[2] else None, None)


# ``Function.apply`` without its Python wrapper (~3 us: setup-context and functorch checks, an
# unwrap of every argument): ``numba_norm`` makes those checks itself (``_use_custom_op``) and
# unwraps the tensors
_apply_eager = torch._C._FunctionBase.__dict__["apply"].__get__(None, _Eager)
_unwrap_if_dead = torch._C._functorch.unwrap_if_dead


def _live(t):
    """``t``, or the tensor inside it if it is a functorch wrapper whose transform has ended (as
    ``Function.apply`` unwraps its arguments)."""
    return None if t is None else _unwrap_if_dead(t)


def _graph_backward(plan, eps, needs, dy, x, weight, bias):
    """The backward as differentiable ops of the saved inputs (autograd through the reference
    math, ``normlab.reference.forward``), so that a graph of it connects to them: the kernels'
    backward is not differentiable, and cutting the graph there gave silently wrong gradients
    in a loss that also holds the output."""
    shape = plan.affine_shape
    with torch.enable_grad():
        y, _ = reference_forward(x, plan, eps=eps,
                                 weight=None if weight is None else weight.reshape(shape),
                                 bias=None if bias is None else bias.reshape(shape))
        wanted = [(i, t) for i, t in enumerate((x, weight, bias))
                  if t is not None and needs[i]]
        grads = torch.autograd.grad(y, [t for _, t in wanted], dy.to(y.dtype),
                                    create_graph=True, allow_unused=True)
    out = [None] * 4
    for (i, t), g in zip(wanted, grads, strict=True):
        out[i] = None if g is None else g.to(t.dtype)
    return tuple(out)


def _use_custom_op(*tensors) -> bool:
    """Whether a call goes through the custom ops: under ``torch.compile``, with a tensor
    subclass (fake tensors while tracing) or under a functorch transform."""
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return True
    for t in tensors:
        if t is not None and type(t) not in _PLAIN:
            return True
    return False


def _records(*tensors) -> bool:
    """Whether autograd records a call on ``tensors`` (else no Function is needed)."""
    if torch.is_grad_enabled():
        for t in tensors:
            if t is not None and t.requires_grad:
                return True
    return False


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def numba_norm(plan: spec.Plan, x: torch.Tensor, *, eps: float, weight=None, bias=None,
               running=None):
    """-> ``(y, mean, var, moved)`` with the statistics in ``plan.stats_shape`` (var biased).
    ``plan.kernel`` must be set and ``x`` float32 or float64 on the CPU (the dispatcher's
    numba backend accepts only such calls). ``running``: batch norm's ``(running_mean,
    running_var, factor)`` to update in the same launch where it can (``moved``: it did; an
    eager call with plain buffers of the statistics' dtype: inside ``_Eager.forward``, so a
    non-reentrant checkpoint's recomputation, which stops once the Function has saved its
    tensors, moves them as it counts the batch, as torch's kernel does), else the caller
    updates them (``dispatch.update_running``)."""
    k = plan.kernel
    if _use_custom_op(x, weight, bias):
        y, mean, _rstd, var = _fwd(x, weight, bias, _FAMILIES.index(k.family), list(k.dims),
                                   list(k.affine), plan.centered, float(eps))
        return y, mean.reshape(plan.stats_shape), var.reshape(plan.stats_shape), False
    if running is not None:
        sdt = stat_dtype(x.dtype)
        if not (_shape(k.dims, k.affine, k.family) != ROWS and _plain(running[0], sdt)
                and _plain(running[1], sdt)):
            running = None
    if _records(x, weight, bias):
        stats = []
        y = _apply_eager(_live(x), _live(weight), _live(bias),
                         (plan, float(eps), running, stats))
        mean, var = stats
    else:  # nothing for autograd to record: no Function
        y, mean, _rstd, var = _forward(_live(x), _live(weight), _live(bias), k.dims, k.affine,
                                       k.family, plan.centered, float(eps), plan.stats_shape,
                                       running)
    shape = plan.stats_shape
    if mean.dim() != len(shape):  # the columns' 1-D statistics
        mean, var = mean.reshape(shape), var.reshape(shape)
    return y, mean, var, running is not None
