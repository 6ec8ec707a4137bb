"""Masked vs unmasked forward+backward on the same shapes (CPU, one process, order
alternated): the cost of excluding padded positions.

    python benchmarks/mask_overhead.py [--reps 20]

Batch, instance and group norm take ``normlab.ops.masked`` (a closed-form Function built from
~10 eager passes: multiply-by-mask, batched mat-vec sums); layer norm over positions takes the
reference math (autograd through ``torch.where``). The unmasked path is torch's fused kernels
through normlab. Target in the sequences issue: <= 1.3. Run it under
``../shared/tools/jemalloc-run``: the default allocator page-faults on every fresh buffer.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import normlab
import normlab.nn as nl

N, C, L = 32, 64, 512


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    torch.manual_seed(0)
    lengths = torch.randint(L // 4, L + 1, (N,))
    mask_ncl = normlab.lengths_to_mask(lengths, L)
    cases = [
        ("BatchNorm1d (N,C,L)", nl.BatchNorm1d(C), torch.randn(N, C, L)),
        ("InstanceNorm1d (N,C,L)", nl.InstanceNorm1d(C, affine=True), torch.randn(N, C, L)),
        ("GroupNorm(8) (N,C,L)", nl.GroupNorm(8, C), torch.randn(N, C, L)),
        ("LayerNorm(C) (N,L,C)", nl.LayerNorm(C), torch.randn(N, L, C)),
    ]
    print(f"{'op':<24}{'unmasked ms':>12}{'masked ms':>12}{'ratio':>8}   "
          f"({args.reps} alternating reps, torch threads {torch.get_num_threads()})")
    for name, m, x in cases:
        dy = torch.randn_like(x)
        xg = x.clone().requires_grad_()

        def step(mask, m=m, xg=xg, dy=dy):
            m(xg, mask=mask).backward(dy)
            xg.grad = None

        calls = {"plain": lambda: step(None), "masked": lambda: step(mask_ncl)}
        for f in calls.values():
            f()
        times = {k: [] for k in calls}
        for i in range(args.reps):
            for k in (("plain", "masked") if i % 2 == 0 else ("masked", "plain")):
                t0 = time.perf_counter()
                calls[k]()
                times[k].append(time.perf_counter() - t0)
        ratio = statistics.median(a / b for a, b in zip(times["masked"], times["plain"],
                                                        strict=True))
        print(f"{name:<24}{statistics.median(times['plain']) * 1e3:>12.2f}"
              f"{statistics.median(times['masked']) * 1e3:>12.2f}{ratio:>8.2f}")


if __name__ == "__main__":
    main()
