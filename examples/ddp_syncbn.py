"""Data-parallel training with normlab's SyncBatchNorm on CPU (gloo), under torchrun.

    torchrun --nproc_per_node=2 examples/ddp_syncbn.py

Each process trains on its own slice of the batch; batch norm's statistics are those of the
whole batch (every process's slice), so the result equals single-process training on the
full batch. On GPUs use backend "nccl" and move the model and data to the process's device.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import normlab.nn as nl
from normlab.surgery import convert_sync_batchnorm


def main() -> None:
    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR/PORT
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial model on every process
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), nl.BatchNorm2d(16),
                                torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(16 * 6 * 6, 10))
    model = DistributedDataParallel(convert_sync_batchnorm(model))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)  # the same global batches on every process
    for step in range(20):
        x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
        mine = slice(rank * 16 // world, (rank + 1) * 16 // world)
        loss = torch.nn.functional.cross_entropy(model(x[mine]), y[mine])
        opt.zero_grad()
        loss.backward()  # DDP averages the gradients; SyncBatchNorm exchanged its statistics
        opt.step()
        if rank == 0 and step % 5 == 0:
            print(f"step {step:2d} loss {loss.item():.3f} (rank 0's slice)")
    bn = model.module[1]
    print(f"rank {rank}: {type(bn).__name__}, running_mean[:3] = "
          f"{bn.running_mean[:3].tolist()}")  # identical on every rank
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
