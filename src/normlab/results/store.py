"""An append-only JSONL store: one JSON object per line, written and flushed as each result
finishes, so that an interrupted run loses nothing that had finished.

A line cut short by a crash is skipped when reading (with a count), never fatal.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

__all__ = ["append_row", "environment", "read_rows"]


def environment() -> dict:
    """Versions and machine, recorded in every row."""
    import torch

    import normlab

    return {
        "normlab": normlab.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "allocator": "jemalloc" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "default",
    }


def append_row(path, row: dict) -> None:
    """Append one row as a line and flush it to disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(row, sort_keys=True, allow_nan=True)
    with open(path, "a+b") as f:
        if f.tell() > 0:  # a line cut short by a crash must not swallow this row
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write(line.encode("utf-8") + b"\n")
        f.flush()
        os.fsync(f.fileno())


def read_rows(path) -> tuple[list[dict], int]:
    """All complete rows of ``path`` and the number of unreadable lines skipped."""
    path = Path(path)
    if not path.exists():
        return [], 0
    rows, bad = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                bad += 1
    return rows, bad
