"""Synchronized vs plain batch norm, forward+backward per step, 2 gloo processes on CPU.

Each process times SyncBatchNorm and BatchNorm on its local batch, alternating the order
every repetition; the bytes handed to the collectives are counted by wrapping them. Prints
rank 0's figures: the time ratio and the bytes exchanged per step (O(C), not O(N*C*H*W)).

    python benchmarks/sync_overhead.py [--batch 16] [--channels 64] [--size 28] [--reps 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank, world, init, args):
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    import normlab.nn as nl
    from normlab.ops import remedies

    sent = {"bytes": 0, "calls": 0}
    real_gather, real_reduce = dist.all_gather, dist.all_reduce

    def counting_gather(out, t, **kw):
        sent["bytes"] += t.numel() * t.element_size()
        sent["calls"] += 1
        return real_gather(out, t, **kw)

    def counting_reduce(t, **kw):
        sent["bytes"] += t.numel() * t.element_size()
        sent["calls"] += 1
        return real_reduce(t, **kw)

    remedies.dist.all_gather = counting_gather
    remedies.dist.all_reduce = counting_reduce
    x = torch.randn(args.batch, args.channels, args.size, args.size)
    dy = torch.randn_like(x)
    mods = {"sync": nl.SyncBatchNorm(args.channels), "plain": nl.BatchNorm2d(args.channels)}
    xg = x.clone().requires_grad_()

    def step(m):
        m(xg).backward(dy)
        xg.grad = None

    for m in mods.values():
        step(m)
    dist.barrier()
    sent.update(bytes=0, calls=0)
    times = {k: [] for k in mods}
    for i in range(args.reps):
        for name in (("sync", "plain") if i % 2 == 0 else ("plain", "sync")):
            dist.barrier()
            t0 = time.perf_counter()
            step(mods[name])
            times[name].append(time.perf_counter() - t0)
    if rank == 0:
        ratio = statistics.median(a / b for a, b in zip(times["sync"], times["plain"],
                                                        strict=True))
        per_step = sent["bytes"] / args.reps
        activ = x.numel() * x.element_size()
        print(f"2 gloo processes, local batch {tuple(x.shape)} float32, {args.reps} "
              f"alternating reps, 1 torch thread each")
        print(f"plain BatchNorm2d  median {statistics.median(times['plain']) * 1e3:7.2f} ms")
        print(f"SyncBatchNorm      median {statistics.median(times['sync']) * 1e3:7.2f} ms")
        print(f"sync / plain time ratio (median of paired ratios): {ratio:.3f}")
        expected = (1 + 2 * args.channels) * 8 + 16 * args.channels
        print(f"bytes sent per process per step: {per_step:.0f} in "
              f"{sent['calls'] / args.reps:.0f} collectives (C = {args.channels}: "
              f"(1 + 2C) * 8 forward + 2C * 8 backward = {expected}); "
              f"the activation is {activ} bytes")
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--reps", type=int, default=30)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        mp.start_processes(_worker, args=(2, os.path.join(d, "init"), args), nprocs=2,
                           start_method="spawn")


if __name__ == "__main__":
    main()
