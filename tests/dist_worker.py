"""Worker functions for the multi-process tests (spawned; gloo on loopback; bounded in time)."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

import normlab.nn as nl


def _global_data(sizes, shape_rest, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    xs = [torch.randn((n, *shape_rest), generator=g, dtype=torch.float64) * (2 + s) + s
          for s in range(steps)]
    dys = [torch.randn((n, *shape_rest), generator=g, dtype=torch.float64) for _ in range(steps)]
    return xs, dys


def _my_slice(sizes, rank):
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def sync_bn_worker(rank, world, init_file, out_dir, sizes, channel_axis, steps):
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=60))
    try:
        torch.manual_seed(0)
        c = 4
        rest = (c, 3) if channel_axis == 1 else (3, c)
        m = nl.SyncBatchNorm(c, momentum=0.3, channel_axis=channel_axis, dtype=torch.float64)
        with torch.no_grad():
            m.weight.copy_(torch.linspace(0.5, 2.0, c))
            m.bias.copy_(torch.linspace(-1.0, 1.0, c))
        xs, dys = _global_data(sizes, rest, steps)
        sl = _my_slice(sizes, rank)
        out = {"y": [], "dx": [], "dw": [], "db": []}
        for x, dy in zip(xs, dys, strict=True):
            xr = x[sl].clone().requires_grad_()
            m.zero_grad()
            y = m(xr)
            y.backward(dy[sl])
            out["y"].append(y.detach())
            out["dx"].append(xr.grad)
            out["dw"].append(m.weight.grad.clone())
            out["db"].append(m.bias.grad.clone())
        out["running_mean"] = m.running_mean.clone()
        out["running_var"] = m.running_var.clone()
        out["num_batches_tracked"] = m.num_batches_tracked.clone()
        m.eval()
        out["eval"] = m(xs[0][sl])
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def make_model():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(6, 8, dtype=torch.float64),
                               nl.BatchNorm1d(8, dtype=torch.float64), torch.nn.ReLU(),
                               torch.nn.Linear(8, 3, dtype=torch.float64))


def ddp_worker(rank, world, init_file, out_dir, sizes, steps):
    from torch.nn.parallel import DistributedDataParallel

    from normlab.surgery import convert_sync_batchnorm

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=60))
    try:
        model = DistributedDataParallel(convert_sync_batchnorm(make_model()))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        xs, _ = _global_data(sizes, (6,), steps, seed=5)
        g = torch.Generator().manual_seed(9)
        targets = [torch.randint(0, 3, (sum(sizes),), generator=g) for _ in range(steps)]
        sl = _my_slice(sizes, rank)
        n = sum(sizes)
        for x, t in zip(xs, targets, strict=True):
            opt.zero_grad()
            logits = model(x[sl])
            # this rank's share of the full batch's mean loss, times the world size: DDP
            # averages gradients over processes
            loss = torch.nn.functional.cross_entropy(logits, t[sl], reduction="sum") * world / n
            loss.backward()
            opt.step()
        torch.save({k: v.detach().clone() for k, v in model.module.state_dict().items()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def lab_train_worker(rank, world, init_file, out_dir, cfgs):
    from normlab.lab.train import train_run

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=60))
    try:
        results = [train_run(cfg) for cfg in cfgs]
        if rank == 0:
            torch.save(results, os.path.join(out_dir, "rank0.pt"))
        else:
            torch.save([], os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
