"""normlab's recurrent cells run over a padded batch vs torch.nn.LSTM, forward+backward on
CPU, one process, order alternated. Reports time ratios against torch.nn.LSTM.

    python benchmarks/recurrent_cells.py [--reps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import normlab.nn as nl

N, T, F, H = 32, 40, 32, 64


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    torch.manual_seed(0)
    x = torch.randn(N, T, F)
    lengths = torch.full((N,), T)
    lstm = torch.nn.LSTM(F, H, batch_first=True)
    plain = nl.Recurrent(nl.LayerNormLSTMCell(F, H, norm=False))
    ln_lstm = nl.Recurrent(nl.LayerNormLSTMCell(F, H))
    ln_gru = nl.Recurrent(nl.LayerNormGRUCell(F, H))
    runs = {
        "torch.nn.LSTM": lambda: lstm(x)[0],
        "Recurrent(LSTM cell, norm off)": lambda: plain(x, lengths)[0],
        "Recurrent(LayerNormLSTMCell)": lambda: ln_lstm(x, lengths)[0],
        "Recurrent(LayerNormGRUCell)": lambda: ln_gru(x, lengths)[0],
    }
    calls = {k: (lambda f=f: f().sum().backward()) for k, f in runs.items()}
    for f in calls.values():
        f()
    times = {k: [] for k in calls}
    names = list(calls)
    for i in range(args.reps):
        for k in (names if i % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            calls[k]()
            times[k].append(time.perf_counter() - t0)
    base = times["torch.nn.LSTM"]
    print(f"(N, T, F, H) = {(N, T, F, H)}, forward+backward, {args.reps} alternating reps, "
          f"torch threads {torch.get_num_threads()}")
    for k, ts in times.items():
        r = statistics.median(a / b for a, b in zip(ts, base, strict=True))
        print(f"{k:<32} median {statistics.median(ts) * 1e3:8.2f} ms   ratio vs torch.nn.LSTM "
              f"{r:5.2f}")


if __name__ == "__main__":
    main()
