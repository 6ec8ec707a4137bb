"""Process-group plumbing for running under ``torchrun`` (the lab's data-parallel mode).

The synchronized statistics themselves are an op (``normlab.ops.remedies``) reached through
``normlab.nn.SyncBatchNorm``; see docs/ARCHITECTURE.md for why.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch.distributed as dist

__all__ = ["broadcast_object", "data_parallel", "finish", "init_from_torchrun", "rank",
           "world_size"]


def init_from_torchrun(backend: str = "gloo") -> bool:
    """Join the process group that ``torchrun`` describes in the environment (RANK,
    WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Returns False, doing nothing, outside torchrun or
    with one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    if os.environ.get("MASTER_ADDR", "127.0.0.1") in ("127.0.0.1", "localhost", "::1"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # a single machine: loopback only
    dist.init_process_group(backend, timeout=timedelta(minutes=10))
    return True


def data_parallel() -> bool:
    """Whether this process is one of several in an initialized process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if data_parallel() else 0


def world_size() -> int:
    return dist.get_world_size() if data_parallel() else 1


def broadcast_object(obj, src: int = 0):
    """``obj`` as process ``src`` has it, on every process (itself when not distributed)."""
    if not data_parallel():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def finish() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
