"""``normlab bench``: normlab vs torch.nn on representative shapes, in one process.

Every figure is relative to a baseline measured in the same run: each repetition times the
torch.nn module, the normlab module and a same-size ``copy_`` back to back, alternating the
order and rotating it (A B C, C B A, B C A, A C B, C A B, B A C, ...: each provider in each
position equally often, so neither drift on a shared machine nor what ran just before -- the
cache a neighbour leaves -- favours one). The ``copy_`` gives the
machine's practical memory bandwidth for the "of copy" columns (effective bytes per second /
copy's bytes per second, for torch.nn and for normlab). Rows are appended, one per (op,
provider, mode, threads), to a long-format JSONL file; a table is printed per thread count.

Bytes counted per call (the floor for a normalization): forward reads x and writes y
(2 tensors); forward+backward adds reading x and dy and writing dx (5 tensors); copy_ reads
and writes one (2 tensors). The ratio column is the median over repetitions of
normlab time / baseline time, each pair measured back to back.

A case may name its own baseline and add *context* providers timed in the same rotation
(A B C, C B A, ...): DyT and Derf, which torch.nn lacks, are measured against the plain torch
composition ``w * torch.tanh(a * x) + b`` (autograd's backward), with torch.nn's LayerNorm of
the same shape beside them for context; layer norm over the channel of NCHW (LayerNorm2d),
which torch.nn lacks too, against timm's composition ``permute -> F.layer_norm -> permute``.
In forward+backward mode each provider's row also carries ``saved_mb``: the bytes autograd
keeps for the backward beyond the input and the parameters (measured with
``torch.autograd.graph.saved_tensors_hooks``).
"""

from __future__ import annotations

import functools
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import torch

from normlab import nn as nl
from normlab.ops.pointwise import pointwise
from normlab.results import append_row, environment

__all__ = ["CASES", "Case", "run_bench"]


@dataclass(frozen=True)
class Case:
    name: str  # op name in the rows
    layout: str  # "nchw", "channels_last" or "rows"
    shape: tuple[int, ...]
    quick_shape: tuple[int, ...]
    make: Callable[[], tuple[torch.nn.Module, torch.nn.Module]]  # (baseline, normlab)
    baseline: str = "torch.nn"  # the baseline provider's name
    context: Callable[[], dict[str, torch.nn.Module]] | None = None  # more providers


def _pair(torch_cls, normlab_cls, *args):
    return lambda: (torch_cls(*args), normlab_cls(*args))


class TorchPointwise(torch.nn.Module):
    """The plain torch composition DyT / Derf replace: ``w * torch.tanh(a * x) + b`` (or
    ``torch.erf(a * x + s)``), autograd's backward: the baseline normlab's must beat."""

    def __init__(self, c, kind="dyt", channel_axis=-1):
        super().__init__()
        self.kind, self.channel_axis = kind, channel_axis
        self.alpha = torch.nn.Parameter(torch.full((1,), 0.5))
        self.shift = torch.nn.Parameter(torch.zeros(1)) if kind == "derf" else None
        self.weight = torch.nn.Parameter(torch.ones(c))
        self.bias = torch.nn.Parameter(torch.zeros(c))

    def forward(self, x):
        w, b = self.weight, self.bias
        if self.channel_axis == 1:
            shape = (-1,) + (1,) * (x.dim() - 2)
            w, b = w.reshape(shape), b.reshape(shape)
        if self.kind == "dyt":
            return w * torch.tanh(self.alpha * x) + b
        return w * torch.erf(self.alpha * x + self.shift) + b


class TorchLayerNorm2d(torch.nn.Module):
    """Layer norm over the channel of NCHW as timm's LayerNorm2d (ConvNeXt, SAM, ...) writes it
    with torch ops: ``permute -> F.layer_norm -> permute back`` (torch.nn has no layer norm over
    axis 1; its kernel copies the permuted input to contiguous, and the output is left in
    channels-last strides): the baseline of normlab's ``LayerNorm(channel_axis=1)``."""

    def __init__(self, c):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(c))
        self.bias = torch.nn.Parameter(torch.zeros(c))

    def forward(self, x):
        y = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape,
                                           self.weight, self.bias, 1e-5)
        return y.permute(0, 3, 1, 2)


class Recomputing(torch.nn.Module):
    """normlab's native DyT/Derf Function in its memory-saving variant (``recompute=True``:
    only the inputs kept, tanh recomputed in backward), timed beside the default."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        m = self.layer
        shape = (-1,) + (1,) * (x.dim() - 2) if m.channel_axis == 1 else (-1,)
        shift = getattr(m, "shift", None)
        kind = "dyt" if isinstance(m, nl.DynamicTanh) else "derf"
        return pointwise(kind, x, m.alpha,
                         shift, m.weight.reshape(shape), m.bias.reshape(shape),
                         recompute=True)


def _pointwise(kind, c, channel_axis):
    cls = nl.DynamicTanh if kind == "dyt" else nl.Derf
    return lambda: (TorchPointwise(c, kind, channel_axis), cls(c, channel_axis=channel_axis))


def _context(kind, c, channel_axis):
    """The recomputing variant, and a layer norm of the same shape."""
    cls = nl.DynamicTanh if kind == "dyt" else nl.Derf
    if channel_axis == -1:
        ln = ("torch.nn.LayerNorm", lambda: torch.nn.LayerNorm(c))
    else:
        ln = ("normlab.LayerNorm(channel_axis=1)", lambda: nl.LayerNorm(c, channel_axis=1))
    return lambda: {"normlab recompute": Recomputing(cls(c, channel_axis=channel_axis)),
                    ln[0]: ln[1]()}


IMG, IMG_Q = (32, 64, 56, 56), (8, 64, 28, 28)
ROWS, ROWS_Q = (8192, 1024), (2048, 1024)

CASES: tuple[Case, ...] = (
    Case("BatchNorm2d", "nchw", IMG, IMG_Q, _pair(torch.nn.BatchNorm2d, nl.BatchNorm2d, 64)),
    Case("BatchNorm2d", "channels_last", IMG, IMG_Q,
         _pair(torch.nn.BatchNorm2d, nl.BatchNorm2d, 64)),
    Case("LayerNorm", "rows", ROWS, ROWS_Q, _pair(torch.nn.LayerNorm, nl.LayerNorm, 1024)),
    Case("LayerNorm2d", "nchw", IMG, IMG_Q,
         lambda: (TorchLayerNorm2d(64), nl.LayerNorm(64, channel_axis=1)),
         "torch permute+layer_norm"),
    Case("GroupNorm32", "nchw", IMG, IMG_Q, _pair(torch.nn.GroupNorm, nl.GroupNorm, 32, 64)),
    Case("GroupNorm32", "channels_last", IMG, IMG_Q,
         _pair(torch.nn.GroupNorm, nl.GroupNorm, 32, 64)),
    Case("InstanceNorm2d", "nchw", IMG, IMG_Q,
         _pair(torch.nn.InstanceNorm2d, nl.InstanceNorm2d, 64)),
    Case("InstanceNorm2d", "channels_last", IMG, IMG_Q,
         _pair(torch.nn.InstanceNorm2d, nl.InstanceNorm2d, 64)),
    Case("RMSNorm", "rows", ROWS, ROWS_Q, _pair(torch.nn.RMSNorm, nl.RMSNorm, 1024)),
    Case("DynamicTanh", "rows", ROWS, ROWS_Q, _pointwise("dyt", 1024, -1), "torch w*tanh(a*x)+b",
         _context("dyt", 1024, -1)),
    Case("DynamicTanh", "nchw", IMG, IMG_Q, _pointwise("dyt", 64, 1), "torch w*tanh(a*x)+b",
         _context("dyt", 64, 1)),
    Case("Derf", "rows", ROWS, ROWS_Q, _pointwise("derf", 1024, -1), "torch w*erf(a*x+s)+b",
         _context("derf", 1024, -1)),
)

MODES = ("forward", "forward+backward")
_TENSORS_MOVED = {"forward": 2, "forward+backward": 5, "copy": 2}


def _input(case: Case, shape, dtype) -> torch.Tensor:
    x = torch.randn(shape, dtype=dtype)
    if case.layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _timer(module: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor, mode: str):
    params = [p for p in module.parameters()]
    if mode == "forward":
        def call():
            with torch.no_grad():
                module(x)
    else:
        xg = x.detach().requires_grad_()

        def call():
            module(xg).backward(dy)
            xg.grad = None
            for p in params:
                p.grad = None
    return call


def _saved_bytes(module: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd saves for the backward of ``module(x)``, beyond ``x`` and the parameters
    (each storage counted once)."""
    own = {x.untyped_storage().data_ptr()} | {p.untyped_storage().data_ptr()
                                              for p in module.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in own:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    xg = x.detach().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = module(xg)
    del y
    return sum(seen.values())


def _time_once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _quantiles(ts: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(ts, n=10, method="inclusive") if len(ts) > 1 else ts * 9
    return q[1], statistics.median(ts), q[7]


def run_bench(*, out=None, quick=False, reps=None, dtype=torch.float32, ops=None,
              threads=None, printer=print, cases=CASES) -> list[dict]:
    """Measure every case of ``cases`` (or those whose name is in ``ops``) at each of
    ``threads`` (torch intra-op thread counts; None: the current one); append rows to
    ``out``."""
    reps = reps or (6 if quick else 40)
    rows: list[dict] = []
    before = torch.get_num_threads()
    try:
        for n in threads or [before]:
            torch.set_num_threads(n)
            rows += _run_at(out, quick, reps, dtype, ops, printer, cases)
    finally:
        torch.set_num_threads(before)
    worst = max(r["ratio"] for r in rows if r["provider"] == "normlab")
    printer(f"worst normlab/torch.nn time ratio: {worst:.3f} (target <= 1.05)")
    return rows


def _run_at(out, quick, reps, dtype, ops, printer, cases) -> list[dict]:
    run_id = uuid.uuid4().hex[:12]
    env = environment()
    rows: list[dict] = []
    cases = [c for c in cases if ops is None or c.name in ops]
    header = (f"{'op':<15}{'layout':<14}{'mode':<17}{'baseline ms':>12}{'normlab ms':>12}"
              f"{'ratio':>7}{'copy GB/s':>10}{'base of copy':>13}{'normlab of copy':>16}")
    printer(f"normlab bench: {len(cases)} shapes x {len(MODES)} modes, {reps} alternating "
            f"repetitions each, {dtype}, allocator={env['allocator']}, "
            f"torch threads={env['torch_threads']}")
    printer(header)
    for case in cases:
        shape = case.quick_shape if quick else case.shape
        torch.manual_seed(0)
        ref_mod, nl_mod = case.make()
        ref_mod, nl_mod = ref_mod.to(dtype), nl_mod.to(dtype)
        extra = {k: m.to(dtype) for k, m in (case.context() if case.context else {}).items()}
        base_name = case.baseline
        x = _input(case, shape, dtype)
        dy = _input(case, shape, dtype)
        nbytes = x.numel() * x.element_size()
        dst = torch.empty_like(x)
        all_copies: list[float] = []
        for mode in MODES:
            mods = {base_name: ref_mod, "normlab": nl_mod, **extra}
            calls = {k: _timer(m, x, dy, mode) for k, m in mods.items()}
            saved = ({k: _saved_bytes(m, x) / 2 ** 20 for k, m in mods.items()}
                     if mode != "forward" else {})
            calls["copy_"] = functools.partial(dst.copy_, x)  # the bandwidth, in the same loop
            for fn in calls.values():  # warm up: allocator, threads, first-call paths
                fn()
                fn()
            times: dict[str, list[float]] = {k: [] for k in calls}
            order = list(calls)
            for i in range(reps):
                k = (i // 2) % len(order)
                turn = order[k:] + order[:k]
                for name in (turn if i % 2 == 0 else turn[::-1]):  # A B C, C B A, B C A, ...
                    times[name].append(_time_once(calls[name]))
            copies = times.pop("copy_")
            all_copies += copies
            copy_gbps = _TENSORS_MOVED["copy"] * nbytes / _quantiles(copies)[1] / 1e9
            base = _quantiles(times[base_name])[1]
            stats = {k: _quantiles(v) for k, v in times.items()}
            # the ratio is the median of per-repetition ratios: each pair was measured back to
            # back, so slow drift of the machine cancels within a pair
            paired = {k: statistics.median(a / b for a, b in zip(v, times[base_name],
                                                                 strict=True))
                      for k, v in times.items()}
            of_copy = {}
            for provider, (p20, p50, p80) in stats.items():
                gbps = _TENSORS_MOVED[mode] * nbytes / p50 / 1e9
                of_copy[provider] = gbps / copy_gbps
                row = dict(kind="bench", run_id=run_id, op=case.name, provider=provider,
                           mode=mode, layout=case.layout, shape=list(shape),
                           dtype=str(dtype).replace("torch.", ""), p20=p20, p50=p50, p80=p80,
                           unit="s", reps=reps, gbps=gbps, copy_gbps=copy_gbps,
                           of_copy=of_copy[provider], ratio=paired[provider],
                           baseline=base_name, saved_mb=saved.get(provider),
                           threads=torch.get_num_threads(), env=env, time=time.time())
                rows.append(row)
                if out is not None:
                    append_row(out, row)
            printer(f"{case.name:<15}{case.layout:<14}{mode:<17}{base * 1e3:>12.3f}"
                    f"{stats['normlab'][1] * 1e3:>12.3f}{paired['normlab']:>7.3f}"
                    f"{copy_gbps:>10.1f}{of_copy[base_name]:>13.2f}{of_copy['normlab']:>16.2f}")
            if base_name != "torch.nn" or extra:
                mem = "" if not saved else ", saved for backward: " + ", ".join(
                    f"{k} {v:.1f} MiB" for k, v in saved.items())
                ctx = "".join(f"; {k} {stats[k][1] * 1e3:.3f} ms (x{paired[k]:.2f})"
                              for k in extra)
                printer(f"{'':<15}baseline = {base_name}{ctx}{mem}")
        c20, c50, c80 = _quantiles(all_copies)
        copy_gbps = _TENSORS_MOVED["copy"] * nbytes / c50 / 1e9
        copy_row = dict(kind="bench", run_id=run_id, op=case.name, provider="copy_",
                        mode="copy", layout=case.layout, shape=list(shape),
                        dtype=str(dtype).replace("torch.", ""), p20=c20, p50=c50, p80=c80,
                        unit="s", reps=len(all_copies), gbps=copy_gbps, copy_gbps=copy_gbps,
                        ratio=None, baseline=None, threads=torch.get_num_threads(), env=env,
                        time=time.time())
        rows.append(copy_row)
        if out is not None:
            append_row(out, copy_row)
    return rows
