"""normlab's Triton kernels on one GPU: correctness first, then time and bandwidth.

    python benchmarks/gpu.py [--out DIR] [--budget 540] [--reps 30]
    TRITON_INTERPRET=1 python benchmarks/gpu.py --smoke     # CPU: tiny shapes, exercise the code

Designed for one 10-minute call on a lent device (``$OUT`` is the default output folder):

1. checks: every kind x layout x dtype on small awkward shapes against torch.nn in float64
   (output and every gradient), and a layer norm over more than 2^31 elements (64-bit
   offsets); a failing case is reported and left out of the timings;
2. the copy baseline: a device-to-device copy of the same bytes, timed in the same run;
3. for each kind x layout x dtype on inputs of >= 256 MB (well above the 50-60 MB L2):
   forward, and backward (dx, dgamma, dbeta together, timed from a retained graph), for
   normlab (backend="triton"), torch eager, torch.compile and Liger-Kernel where it has the op
   and is installed; then layer and RMS norm rows 256 ... 262144 long.

Times are CUDA-event medians (p20/p50/p80 kept); GB/s counts the minimal bytes (forward: read
x, write y; backward: read x and dy, write dx); ``of_copy`` is that over the same-run copy's
GB/s. torch.compile rows are skipped (and say so) once the time budget is spent. Rows are
appended to ``DIR/gpu-bench.jsonl`` as they are measured (long format); one table is printed
last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as TF

import normlab
import normlab.functional as F

KINDS = ["batch", "instance", "group", "layer", "rms"]
GROUPS = 32


def _timer(device):
    if device == "cuda":
        def run(fn, reps):
            fn()
            torch.cuda.synchronize()
            times = []
            for _ in range(reps):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                torch.cuda.synchronize()
                times.append(a.elapsed_time(b))
            return times
    else:
        def run(fn, reps):
            fn()
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            return times
    return run


def _q(times, q):
    s = sorted(times)
    return s[min(len(s) - 1, int(q * len(s)))]


def _case(kind, layout, shape, dtype, device):
    """-> (x, weight, bias, normlab fn, torch fn, liger fn or None)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float32).to(device, dtype)
    axis = 1
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "channel_axis=-1":
        x = x.movedim(1, -1).contiguous()
        axis = -1
    if kind in ("layer", "rms"):
        c = shape[-1]
        axis = -1
    else:
        c = x.shape[axis]
    w = torch.randn(c, generator=g).to(device, dtype).requires_grad_()
    b = None if kind == "rms" else torch.randn(c, generator=g).to(device, dtype).requires_grad_()

    def ours(t):
        if kind == "batch":
            return F.batch_norm(t, None, None, w, b, training=True, channel_axis=axis,
                                backend="triton")
        if kind == "instance":
            return F.instance_norm(t, weight=w, bias=b, channel_axis=axis, backend="triton")
        if kind == "group":
            return F.group_norm(t, GROUPS, w, b, channel_axis=axis, backend="triton")
        if kind == "layer":
            return F.layer_norm(t, (c,), w, b, backend="triton")
        return F.rms_norm(t, (c,), w, 1e-6, backend="triton")

    def theirs(t):
        return _ref(kind, layout, t, w, b)

    liger = None
    if kind in ("layer", "rms") and device == "cuda":
        try:
            if kind == "layer":
                from liger_kernel.ops.layer_norm import LigerLayerNormFunction

                def liger(t):
                    return LigerLayerNormFunction.apply(t, w, b, 1e-5)
            else:
                from liger_kernel.ops.rms_norm import LigerRMSNormFunction

                def liger(t):
                    return LigerRMSNormFunction.apply(t, w, 1e-6)
        except ImportError:
            liger = None
    return x, w, b, ours, theirs, liger


def check(device, dtypes):
    """Small awkward shapes: normlab (triton) vs torch.nn in float64 -> list of failures."""
    fails, lines = [], []
    shapes = {"batch": (3, 13, 5, 7), "instance": (2, 13, 5, 7), "group": (2, 64, 3, 5),
              "layer": (7, 1023), "rms": (5, 4099)}
    for kind in KINDS:
        for layout in (["rows"] if kind in ("layer", "rms")
                       else ["nchw", "channels_last", "channel_axis=-1"]):
            for dtype in dtypes:
                x, w, b, ours, theirs, _ = _case(kind, layout, shapes[kind], dtype, device)
                x.requires_grad_()
                y = ours(x)
                dy = torch.randn_like(y)
                got = torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], dy)
                x64 = x.detach().double().requires_grad_()
                w64 = w.detach().double().requires_grad_()
                b64 = None if b is None else b.detach().double().requires_grad_()
                y64 = _ref(kind, layout, x64, w64, b64)
                want = torch.autograd.grad(y64, [t for t in (x64, w64, b64) if t is not None],
                                           dy.double())
                errs = [float((a.double() - e).abs().max()) for a, e in
                        zip((y, *got), (y64, *want), strict=True)]
                tol = {torch.float32: 1e-4, torch.bfloat16: 6e-2, torch.float16: 1e-2}[dtype]
                scale = [max(1.0, float(e.abs().max())) for e in (y64, *want)]
                ok = all(er <= tol * s for er, s in zip(errs, scale, strict=True))
                lines.append(f"check {kind:<9}{layout:<17}{str(dtype)[6:]:<9}"
                             f"{'ok' if ok else 'FAIL'}  max errors "
                             + " ".join(f"{e:.1e}" for e in errs))
                if not ok:
                    fails.append((kind, layout, dtype))
    return fails, lines


def _ref(kind, layout, x, w, b):
    axis = -1 if layout == "channel_axis=-1" or kind in ("layer", "rms") else 1
    if axis == -1 and kind not in ("layer", "rms"):
        return _ref(kind, "nchw", x.movedim(-1, 1), w, b).movedim(1, -1)
    if kind == "batch":
        return TF.batch_norm(x, None, None, w, b, training=True)
    if kind == "instance":
        return TF.instance_norm(x, weight=w, bias=b)
    if kind == "group":
        return TF.group_norm(x, GROUPS, w, b)
    if kind == "layer":
        return TF.layer_norm(x, (x.shape[-1],), w, b)
    return TF.rms_norm(x, (x.shape[-1],), w, 1e-6)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--budget", type=float, default=540.0,
                   help="seconds; torch.compile rows are skipped once it is spent")
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--smoke", action="store_true", help="tiny shapes (CPU interpreter)")
    args = p.parse_args()
    t_start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        print("no GPU: run with --smoke and TRITON_INTERPRET=1 to exercise the script on CPU")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "gpu-bench.jsonl"
    timer = _timer(device)
    reps = 3 if args.smoke else args.reps
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    env = {"device": name, "torch": torch.__version__, "normlab": normlab.__version__,
           "triton": __import__("triton").__version__, "python": sys.version.split()[0]}
    print(json.dumps(env))
    dtypes = [torch.float32, torch.bfloat16]

    fails, lines = check(device, dtypes)
    print("\n".join(lines), flush=True)
    if device == "cuda":  # 64-bit offsets: a tensor of more than 2^31 elements
        big = torch.randn(32769, 65536, device=device, dtype=torch.bfloat16)
        got = F.layer_norm(big, (65536,), backend="triton")[-4:].float()
        want = TF.layer_norm(big[-4:].float(), (65536,))
        err = float((got - want).abs().max())
        ok = err < 6e-2
        print(f"check layer norm over {big.numel()} elements (> 2^31), last rows: "
              f"{'ok' if ok else 'FAIL'} max error {err:.1e}", flush=True)
        if not ok:
            fails.append(("layer", "rows > 2^31", torch.bfloat16))
        del big, got
        torch.cuda.empty_cache()

    elems = {torch.float32: 64 * 2 ** 20, torch.bfloat16: 128 * 2 ** 20}  # 256 MiB each
    if args.smoke:
        elems = {torch.float32: 2 ** 12, torch.bfloat16: 2 ** 12}
    copy_gbs = {}
    for dtype, n in elems.items():
        src = torch.empty(n, dtype=dtype, device=device).normal_()
        dst = torch.empty_like(src)
        t = timer(lambda src=src, dst=dst: dst.copy_(src), reps)
        copy_gbs[dtype] = 2 * src.numel() * src.element_size() / (statistics.median(t) * 1e6)
        del src, dst
    print("copy GB/s:", {str(k)[6:]: round(v, 1) for k, v in copy_gbs.items()}, flush=True)

    table = []

    def record(row):
        row.update(env)
        with rows_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        table.append(row)

    def bench(kind, layout, shape, dtype, label):
        x, w, b, ours, theirs, liger = _case(kind, layout, shape, dtype, device)
        providers = {"normlab": ours, "torch": theirs}
        if liger is not None:
            providers["liger"] = liger
        if time.perf_counter() - t_start < args.budget and not args.smoke:
            providers["torch.compile"] = torch.compile(theirs)
        nbytes = x.numel() * x.element_size()
        base = {}
        for prov, fn in providers.items():
            for mode in ("forward", "backward"):
                try:
                    if mode == "forward":
                        with torch.no_grad():
                            t = timer(lambda fn=fn: fn(x), reps)
                        moved = 2 * nbytes
                    else:
                        xg = x.detach().requires_grad_()
                        y = fn(xg)
                        dy = torch.randn_like(y)
                        leaves = [t_ for t_ in (xg, w, b) if t_ is not None]
                        t = timer(lambda y=y, dy=dy, leaves=leaves: torch.autograd.grad(
                            y, leaves, dy, retain_graph=True), reps)
                        moved = 3 * nbytes
                        del y, dy, xg
                except Exception as exc:  # a provider that cannot run this case
                    print(f"  {prov} {kind} {layout} {mode}: {type(exc).__name__}: {exc}"[:200])
                    continue
                med = statistics.median(t)
                gbs = moved / (med * 1e6)
                if prov == "torch":
                    base[mode] = med
                record({"op": kind, "layout": layout, "shape": list(shape), "label": label,
                        "dtype": str(dtype)[6:], "provider": prov, "mode": mode,
                        "ms_p20": _q(t, 0.2), "ms_p50": med, "ms_p80": _q(t, 0.8),
                        "GBps": gbs, "of_copy": gbs / copy_gbs[dtype],
                        "vs_torch": (med / base[mode]) if mode in base else None})
        torch.cuda.empty_cache() if device == "cuda" else None

    for dtype in dtypes:
        n = elems[dtype]
        img = (max(1, n // (256 * 64 * 64)), 256, 64, 64) if not args.smoke else (2, 64, 4, 8)
        for kind in ("batch", "instance", "group"):
            for layout in ("nchw", "channels_last", "channel_axis=-1"):
                if (kind, layout, dtype) in fails:
                    continue
                bench(kind, layout, img, dtype, "image")
        for kind in ("layer", "rms"):
            for length in ([256, 1024, 4096, 16384, 65536, 262144] if not args.smoke
                           else [256, 1024]):
                if (kind, "rows", dtype) in fails:
                    continue
                bench(kind, "rows", (max(1, n // length), length), dtype, f"rows {length}")
        print(f"{str(dtype)[6:]} done at {time.perf_counter() - t_start:.0f} s", flush=True)

    # the table, last: normlab's rows with the ratios against every other provider
    print(f"\n{'op':<9}{'layout':<16}{'shape':<20}{'dtype':<9}{'mode':<9}{'ms':>8}"
          f"{'GB/s':>8}{'of copy':>8}{'/torch':>8}{'/compile':>9}{'/liger':>8}")
    for r in table:
        if r["provider"] != "normlab":
            continue
        other = {o["provider"]: o["ms_p50"] for o in table
                 if o["op"] == r["op"] and o["layout"] == r["layout"] and o["shape"] == r["shape"]
                 and o["dtype"] == r["dtype"] and o["mode"] == r["mode"]}

        def ratio(p, other=other, r=r):
            return f"{r['ms_p50'] / other[p]:.2f}" if p in other else "-"

        print(f"{r['op']:<9}{r['layout']:<16}{'x'.join(map(str, r['shape'])):<20}"
              f"{r['dtype']:<9}{r['mode']:<9}{r['ms_p50']:>8.3f}{r['GBps']:>8.0f}"
              f"{r['of_copy']:>8.2f}{ratio('torch'):>8}{ratio('torch.compile'):>9}"
              f"{ratio('liger'):>8}")
    print(f"(ratios: normlab time / provider time; < 1 is faster. Copy GB/s: "
          f"{ {str(k)[6:]: round(v) for k, v in copy_gbs.items()} }; failed checks: {fails}; "
          f"{time.perf_counter() - t_start:.0f} s)")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
