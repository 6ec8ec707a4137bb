"""One entry point for every kind: ``normalize(plan, x, ...) -> (y, stats)`` over one ordered list
of backends.

Each backend says whether it takes a call (``accepts(call) -> None`` or the reason it does not)
and runs it (``run(call) -> (y, stats)``, ``stats = (mean, var, count)`` in
``plan.stats_shape`` or None). ``BACKEND_LIST`` is the order ``backend=None`` tries them in;
the first that accepts runs. A backend asked for by name that does not accept a call raises a
``ValueError`` naming the backend, the call and the reason -- except the reasons a backend
declares in ``hands_on``: those calls go to the next backend of the list that accepts them
(documented here and in docs/ARCHITECTURE.md; ``trace_backends()`` shows which one ran):

* ``triton`` hands on what the kernels have no work for or do not read: running statistics
  (eval mode: a per-channel affine map), AdaIN, an empty input, a layout the kernels do not
  read in place, masked layer/rms norm. So ``BatchNorm2d(backend="triton")`` works in eval mode.
* ``numba`` hands on the same calls as ``triton`` and also dtypes other than float32/float64
  and any mask (its kernels have neither), so ``LayerNorm(backend="numba").bfloat16()`` works;
  the half-precision calls it takes are instance and group norm with the channel innermost
  and a backward to run, on a float32 copy (``_upcast_pays``). For DyT/Derf it hands on a dtype
  other than bfloat16/float32, an activation other than ReLU and a residual not laid out
  like x (``cpu_pointwise``).
* ``masked`` hands on a call whose statistics came out non-finite (NaN or Inf in the padding,
  which its multiply-by-mask passes read): the reference masked math, which never reads padded
  values, runs instead. That is one check on the (N, C) statistics, on CPU where this backend
  runs (the kernels take masks on GPU).

Running statistics are updated in one place, ``update_running`` (torch's batch-norm kernel on
the native path updates them in its own pass, with the factor computed here, and so does the
numba path's batch norm with the channels first, in the same launch: ``cpu_op.numba_norm``;
both then return no statistics).

The pointwise kinds (``spec.POINTWISE``: DyT, Derf; ``Plan.stats == "none"``) go through the
same list: ``triton`` (the elementwise kernels, ``triton_op.triton_pointwise``), ``numba``
(CPU, bfloat16/float32, from ``Numba.MIN_NUMEL`` elements: ``cpu_pointwise``), ``native``
(``ops/pointwise.py``: composed torch ops, the backward recomputing tanh from x) and
``reference`` (``reference.pointwise_forward`` with autograd); ``masked`` and ``hybrid``
decline them by their own rules (no mask; not instance norm). They return no statistics.
"""

from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple

import torch
import torch.nn.functional as _F

from normlab import spec
from normlab.ops import cpu_op, cpu_pointwise, native, triton_op
from normlab.ops.masked import masked_norm
from normlab.ops.pointwise import pointwise
from normlab.ops.reference_op import reference_norm
from normlab.reference import (
    apply_activation,
    like_input,
    masked_forward,
    pointwise_forward,
    stat_dtype,
)

__all__ = ["BACKENDS", "BACKEND_LIST", "Call", "Running", "accepting", "last_backend",
           "normalize", "select", "trace_backends", "update_running"]


class Running(NamedTuple):
    """Running statistics of one call: buffers, the momentum (None: cumulative average) and the
    batch counter (or None)."""

    mean: torch.Tensor | None
    var: torch.Tensor | None
    momentum: float | None = 0.1
    num_batches_tracked: torch.Tensor | None = None


class Call(NamedTuple):
    """Everything one normalization call carries (inputs validated by ``functional``)."""

    plan: spec.Plan
    x: torch.Tensor
    weight: torch.Tensor | None  # (C,), normalized_shape, or AdaIN's per-sample std
    bias: torch.Tensor | None
    eps: float
    residual: torch.Tensor | None
    activation: str | None
    mask: torch.Tensor | None  # bool (N, positions...), True at real positions
    running: Running | None
    factor: float  # the running-average factor for this batch (after counting it)
    channel_axis: int
    extra: tuple  # num_groups (group) or normalized_shape (layer, rms, dyt, derf)
    explicit: bool  # the backend was asked for by name
    alpha: torch.Tensor | None = None  # the pointwise kinds' scalar (a one-element tensor)
    shift: torch.Tensor | None = None  # Derf's scalar shift s

    def describe(self) -> str:
        p = self.plan
        stats = "no statistics" if p.stats == "none" else f"{p.stats} statistics"
        what = [f"{p.kind} norm", f"input {tuple(self.x.shape)} {self.x.dtype}",
                f"{self.x.device.type}", stats]
        if self.mask is not None:
            what.append("masked")
        return ", ".join(what)


def _affine(t, plan):
    return None if t is None or plan.affine == "style" else t.reshape(plan.affine_shape)


def _mask_on_x(call):
    """The (N, positions) mask as a view that broadcasts against ``x``."""
    return call.mask.unsqueeze(call.channel_axis % call.x.dim())


def _running_on_x(call):
    shape = call.plan.affine_shape
    return call.running.mean.reshape(shape), call.running.var.reshape(shape)


class Backend:
    """A way to compute a call. ``hands_on``: reasons (``accepts``' return values) that send an
    explicitly requested call on to the next backend instead of raising."""

    name = ""
    hands_on: frozenset = frozenset()

    def accepts(self, call: Call) -> str | None:
        raise NotImplementedError

    def run(self, call: Call):
        raise NotImplementedError


NOT_CUDA = "the input is not a CUDA tensor"
RUNNING = "running statistics: a per-channel affine map, no reduction for the kernels"
ADAIN = "no AdaIN kernel"
EMPTY = "an empty input: nothing to launch"
LAYOUT = "a memory layout the kernels do not read in place"
MASKED_BLOCK = "masks of layer and rms norm are not fused"


class Triton(Backend):
    """The fused kernels (``triton_op``): training statistics, any channel axis, the epilogue
    and (batch/instance/group) the mask fused."""

    name = "triton"
    hands_on = frozenset({RUNNING, ADAIN, EMPTY, LAYOUT, MASKED_BLOCK})

    def accepts(self, call):
        p = call.plan
        if not (call.x.is_cuda or call.explicit):  # explicit: functional checked Triton runs
            return NOT_CUDA
        if not triton_op.available():
            return "Triton is not installed"
        if p.stats == "running":
            return RUNNING
        if p.kind == "adain":
            return ADAIN
        if call.x.numel() == 0:
            return EMPTY
        if p.kernel is None or _weight_per_row(p.kernel):  # the column kernels index the
            return LAYOUT  # weight by the group
        if call.mask is not None and p.kernel.mask is None:
            return MASKED_BLOCK
        return None

    def run(self, call):
        p = call.plan
        if p.stats == "none":
            return triton_op.triton_pointwise(
                p, call.x, call.alpha, shift=call.shift, weight=call.weight, bias=call.bias,
                residual=call.residual, activation=call.activation), None
        y, mean, var, count = triton_op.triton_norm(
            p, call.x, eps=call.eps, weight=call.weight, bias=call.bias, residual=call.residual,
            activation=call.activation, mask=call.mask)
        return y, (mean, var, count if call.mask is not None else None)


MASKED_KINDS = ("batch", "instance", "group")


# masked's and hybrid's autograd Functions have no setup_context or jvp: under a torch.func
# transform or forward-mode AD (``_no_function_rules``) they raised; the next backend has rules
_NO_RULES = "its autograd Function has no torch.func or forward-mode AD rules"


class Masked(Backend):
    """``ops/masked.py``: masked batch/instance/group norm in the fewest eager passes (CPU)."""

    name = "masked"
    hands_on = frozenset({_NO_RULES})

    def accepts(self, call):
        p = call.plan
        if call.mask is None:
            return "no mask given"
        if p.kind not in MASKED_KINDS:
            return f"only {MASKED_KINDS} (the kinds with a channel axis and positions)"
        if p.stats == "running":
            return "running statistics (eval mode): the reference masked math runs them"
        if call.x.dim() <= 2:
            return "no positions to mask (a 2-D input)"
        if torch.compiler.is_compiling():
            return "under torch.compile (its finiteness check is data-dependent)"
        if _no_function_rules():  # (it raised there; the reference's masked math has them)
            return _NO_RULES
        return None

    def run(self, call):
        p = call.plan
        m = _mask_on_x(call)
        out = masked_norm(call.x, p, m, eps=call.eps, weight=call.weight, bias=call.bias)
        if out is None:  # non-finite statistics: NaN/Inf padding (see the module docstring)
            return None
        y, mean, var, count = out
        if call.residual is not None:
            y = y + torch.where(m, call.residual, 0.0)
        return like_input(apply_activation(y, call.activation), call.x), (mean, var, count)


NUMBA_DTYPES = (torch.float32, torch.float64)


# the pointwise kinds (DyT, Derf: ``cpu_pointwise``): what numba hands on to the native path
_PW_DTYPE = "numba's DyT/Derf kernels take bfloat16 and float32 only"
_PW_ACT = "numba's DyT/Derf kernels fuse no activation but ReLU"
_PW_RESIDUAL = "a residual not in x's dtype, shape and strides (numba reads it like x)"
# torch.func's grad/jvp/vjp gave a crash (the custom ops' autograd Function has no
# setup_context) or, jvp, silently wrong tangents (no forward-mode rule); vmap ran them one
# sample at a time: torch's kernels have rules for every transform
_FUNCTORCH = "numba's custom ops have no torch.func (functorch) or forward-mode AD rules"
_fwad = torch.autograd.forward_ad


def _no_function_rules() -> bool:
    """Whether a torch.func transform or forward-mode AD (a ``dual_level``) is active: numba's
    custom ops and ``hybrid``'s autograd Function have no rules for them (forward-mode AD
    raised NotImplementedError in both; torch.func raised in ``hybrid``), torch's kernels do."""
    return torch._C._are_functorch_transforms_active() or _fwad._current_level >= 0


class Numba(Backend):
    """The numba CPU kernels (``cpu_op``): float32/float64 training statistics read in place,
    where they beat torch's kernels (``normlab bench``), and DyT/Derf in bfloat16 and float32
    (``cpu_pointwise``: 0.3-0.95x the torch composition from 1 Mi elements); any such call when
    asked for by name."""

    name = "numba"
    hands_on = frozenset({RUNNING, ADAIN, EMPTY, LAYOUT, "masks are not fused",
                          "numba has no kernels for this dtype (float32 and float64 only)",
                          _PW_DTYPE, _PW_ACT, _PW_RESIDUAL, _FUNCTORCH})
    # Chosen by default only where it was measured faster than torch's kernel (``_slower_here``
    # says why not; the tables are in docs/ARCHITECTURE.md, "Where it is the default"): not
    # small inputs, where the Python around a call is what counts (~0.13 ms forward, ~0.4 ms
    # forward+backward at (2, 64, 8, 8) against torch.nn's ~0.05 / ~0.2): batch and instance
    # norm from MIN_NUMEL elements (numba/torch at 256 Ki, 1 thread: 0.53-0.59, channels-last
    # instance 0.31-0.35; at 64 Ki 0.78-1.01), RMS norm from MIN_NUMEL_RMS (512 Ki: 0.59-0.93;
    # 256 Ki forward 1.02); layer norm read as rows from MIN_NUMEL_LAYER (at 1 Mi rows of 384
    # and 768 floats measured 1.08-1.25, of 4096 at 2 threads 1.54 forward+backward; at 4 Mi
    # 0.81-1.01), rows of at least MIN_ROW elements (layer norm rows of 24: 0.99-1.30); layer
    # and RMS norm over the channel of channels-first memory from MIN_NUMEL (torch has no
    # kernel: against its permute -> layer_norm -> permute composition, timm's LayerNorm2d,
    # 0.41-0.54 forward, 0.24-0.32 forward+backward at ConvNeXt's shapes); not group
    # norm with the channel outermost (torch's fused forward is as fast); channels first, lines
    # of at least MIN_LINE_BATCH / MIN_LINE_INSTANCE positions (shorter lines: up to 1.5x
    # slower); batch norm with the channel innermost when the channels fill whole 32-byte
    # vectors of at most MAX_BATCH_CL_ROW_BYTES (C = 32, 64, 96 float32: 0.6-0.97 from 4 Mi;
    # C = 128 and 256 1.02-1.30 forward+backward at 2 threads) from MIN_NUMEL_BATCH_CL (C = 64
    # at 1 Mi: 1.07-1.27 forward+backward at 2 threads; at 2 Mi 0.9-1.07); group norm with
    # the channel innermost from MIN_NUMEL_GROUP_CL (G=8, (32, 64, 32, 32), forward+backward:
    # 1.17x; G=32 at 4 Mi: 0.1-0.42 for C = 64 and 128, 0.5-1.17 for C = 256). The lab's
    # models, at most 64 x 32 x 64 = 128 Ki elements a norm, stay on torch's kernels and never
    # import numba. DyT/Derf from MIN_NUMEL too (``_accepts_pointwise``); the half-precision
    # instance-norm copy keeps MIN_NUMEL_OTHER.
    MIN_NUMEL = 1 << 18
    MIN_NUMEL_RMS = 1 << 19
    MIN_NUMEL_OTHER = 1 << 20
    MIN_NUMEL_GROUP_CL = 1 << 22
    MIN_NUMEL_LAYER = 1 << 22
    MIN_NUMEL_BATCH_CL = 1 << 22
    MAX_BATCH_CL_ROW_BYTES = 384
    MIN_LINE_BATCH = 192
    MIN_ROW = 64
    MIN_LINE_INSTANCE = 100

    def accepts(self, call):
        p, x = call.plan, call.x
        if x.device.type != "cpu":
            return "the input is not on the CPU"
        if _no_function_rules():
            return _FUNCTORCH
        if p.stats == "none":
            return self._accepts_pointwise(call)
        if (x.dtype not in NUMBA_DTYPES and not _upcast_pays(call)
                and not (x.dtype == torch.bfloat16 and p.kernel is not None
                         and _weight_per_row(p.kernel))):  # the channels read its bits
            return "numba has no kernels for this dtype (float32 and float64 only)"
        if p.stats == "running":
            return RUNNING
        if p.kind == "adain":
            return ADAIN
        if call.mask is not None:
            return "masks are not fused"
        if x.numel() == 0:
            return EMPTY
        if p.kernel is None:
            return LAYOUT
        if not call.explicit and x.dtype == torch.float64 and not _weight_per_row(p.kernel):
            # float64 stays on torch's kernels unless asked for: users compare float64 results
            # with torch's bit for bit (surgery's probes, the zoo's whole-model checks), and a
            # different summation order compounds through train-mode batch statistics. Not
            # over the channel of channels-first memory: torch has no kernel there (its route,
            # a copy to channels-last, the layer norm and a copy back, measured 1.26-2.03x
            # timm's permute composition in float64), and per-sample statistics do not compound
            return "float64 runs torch's kernels unless numba is asked for by name"
        if not call.explicit:
            slower = self._slower_here(p, x)
            if slower is not None:
                return slower
        if not cpu_op.available():  # last: the first time, this imports numba
            return "numba is not installed"
        return None

    def _slower_here(self, p, x):
        """Why torch's kernel is the default for this float32 call (None: numba's is): the
        shapes where numba was not measured faster (docs/ARCHITECTURE.md, "Where it is the
        default"). Line and row lengths count, not only the size: per line and per row costs
        (batch norm merges each line's statistics; unaligned heads and tails run scalar)
        outweigh the bandwidth saved on short ones (numba/torch.nn at 2 Mi elements, 1
        thread, forward / forward+backward: batch norm channels first with 7x7 positions
        1.05-1.31 / 1.28-1.53, 10x10 0.54-0.67 / 1.05-1.18, 14x14 0.31-0.78 / 0.70-0.90;
        instance norm 7x7 0.91-0.96 / 1.25-1.47, 10x10 0.54-0.56 / 0.79-0.83; layer norm rows
        of 24 floats 0.99-1.30, of 32 0.81-1.05 at 4 Mi, of 64 0.83-1.00)."""
        n, k = x.numel(), p.kernel
        if n < self.MIN_NUMEL:
            return f"an input below Numba.MIN_NUMEL ({self.MIN_NUMEL}) elements"
        if p.kind in ("layer", "rms"):
            if _weight_per_row(k):  # torch has no kernel: a copy to channels-last and back
                return None
            if not _rows(k):
                return "layer/rms norm not read as rows (not measured)"
            if k.dims[3] < self.MIN_ROW:
                return (f"rows shorter than Numba.MIN_ROW ({self.MIN_ROW}) elements (measured "
                        "slower: per-row costs)")
            if p.kind == "layer" and n < self.MIN_NUMEL_LAYER:
                return f"layer norm below Numba.MIN_NUMEL_LAYER ({self.MIN_NUMEL_LAYER}) elements"
            if p.kind == "rms" and n < self.MIN_NUMEL_RMS:
                return f"rms norm below Numba.MIN_NUMEL_RMS ({self.MIN_NUMEL_RMS}) elements"
            return None
        if p.kind == "group":
            if k.affine[4] == 0:
                return "group norm channels first (torch's fused forward is as fast)"
            if n < self.MIN_NUMEL_GROUP_CL:
                return (f"group norm channels last below Numba.MIN_NUMEL_GROUP_CL "
                        f"({self.MIN_NUMEL_GROUP_CL}) elements")
            return None
        if k.family == spec.COLUMN:  # batch norm with the channel innermost
            row = k.dims[2] * x.element_size()
            if p.kind == "batch" and (row % 32 or row > self.MAX_BATCH_CL_ROW_BYTES):
                return ("batch norm channels last with channels not in whole 32-byte vectors "
                        f"or more than {self.MAX_BATCH_CL_ROW_BYTES} bytes of them (C = 128 "
                        "and 256 measured slower at 2 threads)")
            if p.kind == "batch" and n < self.MIN_NUMEL_BATCH_CL:
                return (f"batch norm channels last below Numba.MIN_NUMEL_BATCH_CL "
                        f"({self.MIN_NUMEL_BATCH_CL}) elements")
            return None
        line = k.dims[3]  # batch and instance norm with the positions innermost: one line each
        least = self.MIN_LINE_BATCH if p.kind == "batch" else self.MIN_LINE_INSTANCE
        if line < least:
            return (f"{p.kind} norm channels first with lines (positions per channel) shorter "
                    f"than {least} elements (measured slower: per-line costs)")
        return None

    def _accepts_pointwise(self, call):
        """DyT and Derf (``cpu_pointwise``): bfloat16 and float32, no activation or ReLU, a
        residual read like x; by default from MIN_NUMEL elements (module doc)."""
        p, x, r = call.plan, call.x, call.residual
        if x.dtype not in cpu_pointwise.DTYPES:
            return _PW_DTYPE
        if call.activation not in cpu_pointwise.ACTIVATIONS:
            return _PW_ACT
        if r is not None and (r.dtype != x.dtype or r.shape != x.shape
                              or r.stride() != x.stride()):
            return _PW_RESIDUAL
        if x.numel() == 0:
            return EMPTY
        if p.kernel is None:
            return LAYOUT
        if not call.explicit and x.numel() < self.MIN_NUMEL:
            # numba/torch composition at 256 Ki, 1 thread: 0.26-0.66 (float32), 0.41-0.82
            # (bfloat16), where the native Function read 1.03-1.58; at 64 Ki forward+backward
            # 0.88-1.30: the Python around the call
            return f"an input below Numba.MIN_NUMEL ({self.MIN_NUMEL}) elements"

        if not cpu_op.available():
            return "numba is not installed"
        return None

    def run(self, call):
        x = call.x
        if call.plan.stats == "none":
            return cpu_pointwise.numba_pointwise(
                call.plan, x, call.alpha, call.shift, call.weight, call.bias, call.residual,
                call.activation), None
        if x.dtype not in NUMBA_DTYPES:  # _upcast_pays: a float32 copy (same strides), cast back
            y, mean, var, _ = cpu_op.numba_norm(call.plan, x.float(), eps=call.eps,
                                                weight=call.weight, bias=call.bias)
            y = y.to(x.dtype)
        else:
            r = call.running  # batch norm's running statistics: moved in the same launch
            r = (None if r is None or r.mean is None or call.plan.running_rows != 1
                 or call.plan.stats == "running" else (r.mean, r.var, call.factor))
            y, mean, var, moved = cpu_op.numba_norm(call.plan, x, eps=call.eps,
                                                    weight=call.weight, bias=call.bias,
                                                    running=r)
            if moved:  # as torch's kernel on the native path: no statistics to update with
                return native.epilogue(y, call.residual, call.activation), None
        return native.epilogue(y, call.residual, call.activation), (mean, var, None)


def _upcast_pays(call: Call) -> bool:
    """Half-precision instance or group norm with the channel innermost and a backward to run:
    torch's channels-last group-norm backward in bfloat16 took 8.1x torch.nn's instance norm at
    (32, 64, 56, 56) and the closed form 1.8x, and GroupNorm(32, 64)'s forward+backward there
    176 ms, 15x numba's float32 kernels, so numba runs on a float32 copy (statistics in float32,
    as promised for half inputs; the casts are autograd's); group norm from the float32 route's
    MIN_NUMEL_GROUP_CL."""
    x, p = call.x, call.plan
    if (x.dtype not in (torch.bfloat16, torch.float16) or p.kernel is None or x.dim() <= 2
            or not _needs_grad(call)):
        return False
    if p.kind == "instance" and p.kernel.family == spec.COLUMN:
        return call.explicit or x.numel() >= Numba.MIN_NUMEL_OTHER
    if p.kind == "group" and p.kernel.affine[4] != 0:  # the channel innermost
        return call.explicit or x.numel() >= Numba.MIN_NUMEL_GROUP_CL
    return False


def _weight_per_row(kernel) -> bool:
    """Whether a kernel view is the columns with a weight per row (layer and RMS norm over the
    channel of channels-first memory: ``cpu_op``'s CHANNELS), not per column."""
    return kernel.family == spec.COLUMN and kernel.affine[2] != 0


def _rows(kernel) -> bool:
    """Whether a kernel view is the rows reading (one contiguous group per row, each element
    its own weight: ``cpu_op``'s ROWS), the only one measured for layer norm."""
    return (kernel.family == spec.ROW and kernel.dims[1] == 1 and kernel.dims[2] == 1
            and kernel.affine[4] != 0)


def _needs_grad(call: Call) -> bool:
    """Whether autograd will run a backward through this call."""
    return torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (call.x, call.weight, call.bias))


def _closed_form_backward_is_faster(x, channel_axis) -> bool:
    """Instance norm with the channel innermost in memory: torch's group-norm backward for that
    layout is slow on CPU (1.6x torch.nn's contiguous-copy path at 32x64x56x56), the closed form
    over the same layout is faster than both (``normlab bench``)."""
    return x.dim() > 2 and x.stride(channel_axis) == 1 and x.shape[channel_axis] > 1


class Hybrid(Backend):
    """Instance norm whose channel is innermost in memory: torch's group-norm kernel forward
    (which returns mean and rstd too) and the closed-form backward (``reference_op``)."""

    name = "hybrid"
    hands_on = frozenset({_NO_RULES})

    def accepts(self, call):
        p = call.plan
        if p.kind != "instance" or p.stats == "running" or call.mask is not None:
            return "only instance norm with input statistics and no mask"
        if not _closed_form_backward_is_faster(call.x, call.channel_axis):
            return "only a channel innermost in memory (torch's backward is fast otherwise)"
        if call.x.dtype not in (torch.float32, torch.float64) and not call.explicit:
            # measured: the closed form in bfloat16 costs 1.8x torch's forward+backward
            return "half precision: torch's kernels are faster there"
        if _no_function_rules():
            return _NO_RULES
        return None

    def run(self, call):
        p, x = call.plan, call.x
        y, mean, var = reference_norm(
            x, p, eps=call.eps, weight=_affine(call.weight, p), bias=_affine(call.bias, p),
            forward_impl=functools.partial(native.instance_norm_with_stats,
                                           channel_axis=call.channel_axis))
        return native.epilogue(y, call.residual, call.activation), (mean, var, None)


# DyT/Derf's autograd Function (ops/pointwise.py) has neither setup_context nor jvp: under a
# torch.func transform or forward-mode AD it raised; the reference's torch ops have every rule
_PW_FUNCTION = "DyT/Derf's autograd Function has no torch.func or forward-mode AD rules"


class Native(Backend):
    """torch's own kernels, through views (``native.py``); the fastest correct path on CPU."""

    name = "native"
    hands_on = frozenset({_PW_FUNCTION})

    def accepts(self, call):
        if call.mask is not None:
            return "torch has no masked normalization kernel (use backend=None, 'masked' or " \
                   "'reference')"
        if call.plan.stats == "none" and _no_function_rules():
            return _PW_FUNCTION
        return None

    def run(self, call):
        p, x, ax = call.plan, call.x, call.channel_axis
        w, b, eps, stats = call.weight, call.bias, call.eps, None
        if p.stats == "none":  # DyT / Derf: ops/pointwise.py fuses the epilogue itself
            return pointwise(p.kind, x, call.alpha, call.shift, _affine(w, p), _affine(b, p),
                             call.residual, call.activation), None
        if p.stats == "running":  # batch or instance norm: the same per-channel affine map
            r = call.running
            y = native.batch_norm(x, r.mean, r.var, w, b, False, 0.0, eps, ax)
        elif p.kind == "batch":  # torch's kernel updates the running statistics in its pass
            r = call.running
            rm, rv = (None, None) if r is None else (r.mean, r.var)
            y = native.batch_norm(x, rm, rv, w, b, True, call.factor, eps, ax)
        elif p.kind == "instance":
            y = native.instance_norm(x, w, b, eps, ax)
            if call.running is not None and call.running.mean is not None:
                with torch.no_grad():
                    var, mean = torch.var_mean(x.to(stat_dtype(x.dtype)), p.reduce_dims,
                                               correction=0)
                stats = (mean, var, None)
        elif p.kind == "group":
            y = native.group_norm(x, call.extra, w, b, eps, ax)
        elif p.kind == "layer":
            y = native.layer_norm(x, call.extra, w, b, eps, ax)
        elif p.kind == "rms":
            y = native.rms_norm(x, call.extra, w, eps, ax)
        else:  # adain: weight/bias are the style's std and mean
            xhat = native.instance_norm(x, None, None, eps, ax)
            y = (xhat.to(w.dtype) * w + b).to(x.dtype)
        if call.residual is None and call.activation is None:
            return y, stats
        return native.epilogue(y, call.residual, call.activation), stats

    def direct(self, call):
        """``run(x) -> y``: what ``normalize`` does for ``call`` (count the batch, run torch's
        kernel, record this backend), for another input of the same shape, strides, dtype,
        device and autograd need, every other argument the same objects in the same state; or
        None where more happens around the kernel (a residual, an activation, statistics to
        compute, AdaIN, the pointwise kinds, an empty input) or the call is not plain eager
        (``torch.compile``, a torch.func transform or forward-mode AD, whose choice holds only
        there, ``torch.jit.trace``). The modules keep it as their shortcut
        (``normlab.nn._shortcut``), re-checking all of that before each use.
        Where ``native``'s wrapper would pass the arguments through unchanged, torch's function
        is called directly: the same kernel with the same arguments."""
        p, x, ax = call.plan, call.x, call.channel_axis
        if (call.residual is not None or call.activation is not None or call.mask is not None
                or x.numel() == 0 or torch.compiler.is_compiling()
                or _no_function_rules() or torch._C._get_tracing_state()):
            return None
        w, b, eps, r = call.weight, call.bias, call.eps, call.running
        plain = not native._needs_upcast(x) and not native._mixed(w, b)  # no float32 copies
        if p.stats == "running" or p.kind == "batch":
            return _direct_batch_norm(call, plain)
        if p.kind in ("instance", "group"):
            if r is not None and r.mean is not None:  # instance norm's statistics to update
                return None
            groups = x.shape[ax] if p.kind == "instance" else call.extra
            if plain and (ax == 1 or x.dim() <= 2) and x.is_contiguous():
                # (not contiguous: native's wrapper, which makes forward-mode AD's input
                # contiguous: native._forward_rule_safe)
                return _recorded(_F.group_norm, groups, w, b, eps)
            return _recorded(native.group_norm, groups, w, b, eps, ax)
        if p.kind == "layer":
            if ax == -1 and not native._mixed(w, b):
                return _recorded(_F.layer_norm, call.extra, w, b, eps)
            return _recorded(native.layer_norm, call.extra, w, b, eps, ax)
        if p.kind == "rms":
            if ax == -1 and (w is None or w.dtype == x.dtype):
                return _recorded(_F.rms_norm, call.extra, w, eps)
            return _recorded(native.rms_norm, call.extra, w, eps, ax)
        return None


def _recorded(fn, *args):
    """``run(x)``: ``fn(x, *args)``, recorded as ``native`` (``Native.direct``)."""
    def run(x):
        y = fn(x, *args)
        _last[0] = "native"
        if _traces:
            _record("native")
        return y
    return run


def _direct_batch_norm(call, plain):
    """``Native.direct`` for batch norm, and for instance norm with running statistics (eval):
    the batch counted as ``count_batch`` does (its numpy path inlined)."""
    x, ax, w, b, eps, r = call.x, call.channel_axis, call.weight, call.bias, call.eps, call.running
    training = call.plan.stats != "running"
    rm, rv = (None, None) if r is None else (r.mean, r.var)
    plain = plain and not native._mixed(w, b, rm, rv) and (ax == 1 or x.dim() <= 2)
    kernel = _F.batch_norm if plain else functools.partial(native.batch_norm, channel_axis=ax)
    nbt = None if r is None else r.num_batches_tracked
    if not training or rm is None or nbt is None:
        # nothing counted: normalize's factor (0.0, or the momentum) for every call
        return _recorded(kernel, rm, rv, w, b, training, call.factor, eps)
    momentum = r.momentum
    if not (type(nbt) is torch.Tensor and nbt.is_cpu and nbt.dtype == torch.int64):
        def count():
            return count_batch(r, True)
    else:
        def count():
            if nbt.is_inference():  # add_ raises on one outside inference mode, as it should
                return count_batch(r, True)
            a = nbt.numpy()  # count_batch's path, not under compile or torch.func (checked)
            a[()] = n = a[()] + 1
            _increment_version((nbt,))
            return momentum if momentum is not None else 1.0 / float(n)

    def run(x):
        y = kernel(x, rm, rv, w, b, True, count(), eps)
        _last[0] = "native"
        if _traces:
            _record("native")
        return y
    return run


_increment_version = torch._C._increment_version


class Reference(Backend):
    """The readable math (``reference/``) with the closed-form backward; takes every call
    (masked ones through ``masked_forward``, whose backward is autograd's)."""

    name = "reference"

    def accepts(self, call):
        return None

    def run(self, call):
        p, x = call.plan, call.x
        w, b = _affine(call.weight, p), _affine(call.bias, p)
        if p.stats == "none":
            return pointwise_forward(x, p, alpha=call.alpha, weight=w, bias=b, shift=call.shift,
                                     residual=call.residual, activation=call.activation), None
        if p.affine == "style":
            w, b = call.weight, call.bias
        rm = rv = None
        if p.stats == "running":
            rm, rv = _running_on_x(call)
        if call.mask is not None:
            y, mean, var, count = masked_forward(
                x, p, _mask_on_x(call), eps=call.eps, weight=w, bias=b,
                residual=call.residual, activation=call.activation, running_mean=rm,
                running_var=rv)
            return y, (mean, var, count)
        y, mean, var = reference_norm(x, p, eps=call.eps, weight=w, bias=b,
                                      residual=call.residual, activation=call.activation,
                                      running_mean=rm, running_var=rv)
        return y, (mean, var, None)


# The order backend=None tries; every accept rule of every path is in these classes.
BACKEND_LIST: tuple[Backend, ...] = (Triton(), Masked(), Numba(), Hybrid(), Native(),
                                     Reference())
BACKENDS: tuple[str, ...] = tuple(b.name for b in BACKEND_LIST)
_BY_NAME = {b.name: i for i, b in enumerate(BACKEND_LIST)}
_NATIVE = BACKEND_LIST[_BY_NAME["native"]]


_CHOICES: dict = {}  # select()'s key (plan, is_cuda, ...) -> the backend it chose


def select(call: Call, backend: str | None, start: int = 0) -> Backend:
    """The backend that runs ``call``: the first of ``BACKEND_LIST`` (from ``start``) that
    accepts it, or ``backend`` itself; see the module docstring for ``hands_on``. Every accept
    rule reads only the plan, the device, whether there is a mask, whether the backend was
    named, whether a backward will run, the activation and the residual's dtype and
    strides (and ``torch.compile`` and torch.func transforms, whose calls are not cached), so
    the choice is cached on those."""
    if torch.compiler.is_compiling() or _no_function_rules():
        return _select(call, backend, start)  # not cached
    r = call.residual
    key = (call.plan, call.x.is_cuda, call.mask is None, backend, start, _needs_grad(call),
           call.activation, None if r is None else (r.dtype, tuple(r.shape), r.stride()))
    b = _CHOICES.get(key)
    if b is None:
        b = _select(call, backend, start)
        if len(_CHOICES) > 4096:
            _CHOICES.clear()
        _CHOICES[key] = b
    return b


def _select(call, backend, start):
    if backend is None or start:
        for b in BACKEND_LIST[start:]:
            if b.accepts(call) is None:
                return b
        raise AssertionError("the reference backend accepts every call")
    i = _BY_NAME[backend]
    b = BACKEND_LIST[i]
    why = b.accepts(call)
    if why is None:
        return b
    if why in b.hands_on:
        return _select(call, None, i + 1)
    raise ValueError(f"backend={backend!r} cannot run this call ({call.describe()}): {why}")


def accepting(call: Call) -> list[str]:
    """The names of every backend that accepts ``call`` by its own rules (for the tests)."""
    return [b.name for b in BACKEND_LIST if b.accepts(call) is None]


_last: list[str | None] = [None]
_traces: list[list[str]] = []


def last_backend() -> str | None:
    """The backend the last eager call ran on (a debug query; nothing reads it to decide)."""
    return _last[0]


@contextlib.contextmanager
def trace_backends():
    """Collect, in order, the name of the backend each eager call inside runs on."""
    names: list[str] = []
    _traces.append(names)
    try:
        yield names
    finally:
        _traces.remove(names)


def _record(name: str) -> None:
    _last[0] = name
    for t in _traces:
        t.append(name)


def count_batch(running: Running | None, moves: bool) -> float:
    """Count a batch that moves the running statistics in ``num_batches_tracked`` and return the
    running-average factor: ``momentum``, or ``1 / num_batches_tracked`` (the cumulative
    average) when ``momentum`` is None."""
    if running is None:
        return 0.0
    nbt, momentum = running.num_batches_tracked, running.momentum
    if nbt is None or not moves:
        return 0.0 if momentum is None else momentum
    if (not torch.compiler.is_compiling() and not torch._C._are_functorch_transforms_active()
            and type(nbt) is torch.Tensor and nbt.is_cpu and not nbt.is_inference()
            and nbt.dtype == torch.int64):  # (the compile check first: dynamo stops there)
        # through numpy (a scalar add: ~5 us less than add_, most of it in a small numba
        # call); not an inference tensor: add_ must raise on one outside inference mode
        a = nbt.numpy()
        a[()] = n = a[()] + 1
        torch._C._increment_version((nbt,))  # what add_ records for autograd's checks
        return momentum if momentum is not None else 1.0 / float(n)
    nbt.add_(1)
    return momentum if momentum is not None else 1.0 / float(nbt)


_FOREACH_DTYPES = (torch.float32, torch.float64)


def _update_moving(running_mean, running_var, mean, var, rows, group_size, factor, one_row):
    """``update_running`` without a count; ``one_row``: ``mean``/``var`` are already the one
    (channels,) row."""
    unbiased = var * (group_size / max(group_size - 1, 1))
    if not one_row:
        # instance norm: the samples' mean (of one row: the row itself, exactly)
        mean, unbiased = ((mean.mean(0), unbiased.mean(0)) if rows > 1
                          else (mean[0], unbiased[0]))
    if mean.dtype != running_mean.dtype:
        mean = mean.to(running_mean.dtype)
    if unbiased.dtype != running_var.dtype:
        unbiased = unbiased.to(running_var.dtype)
    if running_mean.dtype in _FOREACH_DTYPES and running_var.dtype in _FOREACH_DTYPES:
        # two foreach calls, not four ops (each ~10-15 us on the shared machine: the
        # Python around a large numba call was 0.4 ms, this update 0.12 of it); the
        # same bits (not in half precision, where foreach rounds differently)
        torch._foreach_mul_([running_mean, running_var], 1.0 - factor)
        torch._foreach_add_([running_mean, running_var], [mean, unbiased], alpha=factor)
    else:
        running_mean.mul_(1.0 - factor).add_(mean, alpha=factor)
        running_var.mul_(1.0 - factor).add_(unbiased, alpha=factor)


def update_running(running_mean, running_var, mean, var, count, rows, channels, group_size,
                   factor, num_batches_tracked=None):
    """running = (1 - factor) * running + factor * batch value, with the unbiased variance;
    ``mean``/``var`` hold ``rows`` per-sample rows of ``channels`` (instance norm's N rows are
    averaged, as torch does).

    With ``count`` (masked calls: real elements per group), groups with fewer than 2 real
    elements are left out; if none is left the running statistics do not move and the batch is
    not counted. That depends on the mask's values, so it is tensor arithmetic (no host sync,
    no branch on data: ``torch.compile(fullgraph=True)`` traces it), and with ``factor=None``
    the cumulative factor ``1 / num_batches_tracked`` is a tensor too."""
    if running_mean is None:
        return
    if count is None:
        if rows == 1:  # batch norm: the statistics as the (channels,) row (no indexing)
            mean, var = mean.reshape(channels), var.reshape(channels)
            one_row = True
        else:
            mean, var = mean.reshape(rows, channels), var.reshape(rows, channels)
            one_row = False
        if (mean.requires_grad or var.requires_grad or running_mean.requires_grad
                or running_var.requires_grad):
            with torch.no_grad():
                _update_moving(running_mean, running_var, mean, var, rows, group_size, factor,
                               one_row)
        else:  # nothing records a graph: no no_grad context (~4 us a call)
            _update_moving(running_mean, running_var, mean, var, rows, group_size, factor,
                           one_row)
        return
    mean, var = mean.reshape(rows, channels), var.reshape(rows, channels)
    with torch.no_grad():
        count = count.reshape(rows, channels)
        ok = count > 1
        has = ok.any(0)  # per channel: some group of this channel has 2 real values
        if num_batches_tracked is not None:
            num_batches_tracked.add_(has.any().to(num_batches_tracked.dtype))
            if factor is None:
                factor = 1.0 / num_batches_tracked.clamp_min(1).to(mean.dtype)
        unbiased = var * count / (count - 1).clamp_min(1)
        w = ok.to(mean.dtype)
        per_c = w.sum(0).clamp_min(1)
        new_mean = (mean * w).sum(0) / per_c
        new_var = (unbiased * w).sum(0) / per_c
        rm = (1 - factor) * running_mean + factor * new_mean.to(running_mean.dtype)
        rv = (1 - factor) * running_var + factor * new_var.to(running_var.dtype)
        running_mean.copy_(torch.where(has, rm, running_mean))
        running_var.copy_(torch.where(has, rv, running_var))


def normalize(plan: spec.Plan, x: torch.Tensor, weight=None, bias=None, *, eps: float,
              residual=None, activation=None, mask=None, running: Running | None = None,
              channel_axis: int = 1, extra=None, backend: str | None = None, alpha=None,
              shift=None, shortcut: list | None = None):
    """Normalize ``x`` as ``plan`` says -> ``(y, stats)``; ``stats = (mean, var, count)`` in
    ``plan.stats_shape`` (var biased, count None without a mask), or None where the backend
    does not compute them (torch's kernels, the pointwise kinds) or updated the running
    statistics itself (numba's batch norm, channels first). With ``running`` and training
    statistics the running statistics (and ``num_batches_tracked``) are updated here.
    ``alpha``/``shift``: the pointwise kinds' one-element tensors (``eps`` unused there).
    ``shortcut``: a list to which, when ``native`` ran the call and ``Native.direct`` has a
    function for it, that function is appended (the modules' shortcut, ``normlab.nn``)."""
    training = plan.stats != "running"
    moving = training and running is not None and running.mean is not None
    if moving and x.numel() == 0:  # an empty batch leaves the running statistics unchanged
        running, moving = None, False
    factor = count_batch(running, True) if moving and mask is None else 0.0
    call = Call(plan, x, weight, bias, eps, residual, activation, mask, running, factor,
                channel_axis, extra, backend is not None, alpha, shift)
    b = select(call, backend)
    out = b.run(call)
    if out is None:  # handed on after looking at the data (Masked)
        b = select(call, None, _BY_NAME[b.name] + 1)
        out = b.run(call)
    if not torch.compiler.is_compiling():
        _record(b.name)
    if shortcut is not None and b is _NATIVE:
        run = b.direct(call)
        if run is not None:
            shortcut.append(run)
    y, stats = out
    if moving and stats is not None:
        mean, var, count = stats
        update_running(running.mean, running.var, mean, var, count, plan.running_rows,
                       plan.channels, plan.group_size,
                       factor if mask is None else running.momentum,
                       running.num_batches_tracked if mask is not None else None)
    return y, stats
