"""Folded vs unfolded eval inference of the ResNet-18-like model of the surgery tests, on CPU,
in one process, alternating the order; prints the speed-up (unfolded time / folded time).

    python benchmarks/fold_speedup.py [--reps 30] [--batch 32] [--width 32] [--size 32]

Run from the repository root (it imports the model from tests/test_surgery.py). For stable
figures run it under jemalloc (see the README's Benchmark section).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.test_surgery import ResNetLike  # noqa: E402

from normlab.surgery import fold_batch_norm, to_normlab  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--size", type=int, default=32)
    args = p.parse_args()
    torch.manual_seed(0)
    model = ResNetLike(width=args.width)
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            model(torch.randn(args.batch, 3, args.size, args.size))
    model.eval()
    folded, report = fold_batch_norm(model)
    normlab_model = to_normlab(model).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    calls = {"unfolded (torch.nn BN)": model, "unfolded (normlab BN)": normlab_model,
             "folded": folded}
    times = {k: [] for k in calls}
    with torch.inference_mode():
        for m in calls.values():
            m(x)
            m(x)
        names = list(calls)
        for i in range(args.reps):
            for name in (names if i % 2 == 0 else names[::-1]):
                t0 = time.perf_counter()
                calls[name](x)
                times[name].append(time.perf_counter() - t0)
    base = times["unfolded (torch.nn BN)"]
    print(f"ResNet-like width {args.width}, input {args.batch}x3x{args.size}x{args.size}, "
          f"{len(report.folded)} batch norms folded ({report.method}), {args.reps} alternating "
          f"repetitions, torch threads {torch.get_num_threads()}")
    for name, ts in times.items():
        speedup = statistics.median(b / t for b, t in zip(base, ts, strict=True))
        print(f"{name:<24} median {statistics.median(ts) * 1e3:8.2f} ms   speed-up vs "
              f"unfolded torch.nn: {speedup:.2f}x")


if __name__ == "__main__":
    main()
