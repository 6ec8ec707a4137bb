"""The rows kinds (LayerNorm, RMSNorm over (8192, 1024)) with the numba kernels asked for by
name, against torch.nn, in ``normlab bench``'s alternating rotation (same run, same ``copy_``
baseline): how the numba rows kernels compare where the default route may not take them.

    flock /tmp/normlab-bench.lock ../shared/tools/jemalloc-run \
        python benchmarks/rows_numba.py --threads 1 2 --reps 16 [--dtype float32]
"""

from __future__ import annotations

import argparse

import torch

from normlab import nn as nl
from normlab.bench import ROWS, ROWS_Q, Case, run_bench


def _numba(torch_cls, normlab_cls, c):
    return lambda: (torch_cls(c), normlab_cls(c, backend="numba"))


CASES = (
    Case("LayerNorm", "rows", ROWS, ROWS_Q, _numba(torch.nn.LayerNorm, nl.LayerNorm, 1024)),
    Case("RMSNorm", "rows", ROWS, ROWS_Q, _numba(torch.nn.RMSNorm, nl.RMSNorm, 1024)),
)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=16)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--ops", nargs="+", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None, help="JSONL file the rows are appended to")
    a = ap.parse_args(argv)
    run_bench(out=a.out, quick=a.quick, reps=a.reps, dtype=getattr(torch, a.dtype),
              ops=a.ops, threads=a.threads, cases=CASES)


if __name__ == "__main__":
    main()
