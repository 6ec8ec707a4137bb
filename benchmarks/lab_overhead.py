"""The lab runner's overhead: `train_run` on one config vs a bare PyTorch loop doing the same
work (same model, data, optimizer, batches and evaluation schedule), alternating which runs
first, in one process, one torch thread. Target: ratio <= 1.1.

    python benchmarks/lab_overhead.py [--reps 6] [--config mlp|cnn]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from normlab.lab import data as datasets
from normlab.lab.claims import BASE
from normlab.lab.train import build_model, train_run

CONFIGS = {
    "mlp": {**BASE, "norm": "batch", "steps": 300},
    "cnn": {**BASE, "model": "cnn", "kernel_size": 5, "stride": 1, "channels": [16, 16, 16],
            "norm": "batch", "steps": 150},
}


def bare_loop(cfg: dict) -> None:
    torch.manual_seed(cfg["seed"])
    ds = datasets.load(cfg["data"], 0)
    model = build_model(cfg, ds)
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"])
    gen = torch.Generator().manual_seed(10_000 + cfg["seed"])
    n, bs = ds.x_train.shape[0], cfg["batch_size"]
    sub = torch.randperm(n, generator=torch.Generator().manual_seed(7))[:1000]

    def evaluate():
        model.eval()
        with torch.no_grad():
            for x, y in ((ds.x_test, ds.y_test), (ds.x_train[sub], ds.y_train[sub])):
                logits = model(x)
                nn.functional.cross_entropy(logits, y).item()
                (logits.argmax(1) == y).float().mean().item()
        model.train()

    perm, pos = torch.randperm(n, generator=gen), 0
    evaluate()
    for step in range(1, cfg["steps"] + 1):
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos:pos + bs]
        pos += bs
        loss = nn.functional.cross_entropy(model(ds.x_train[idx]), ds.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()
        if step % cfg["eval_every"] == 0 or step == cfg["steps"]:
            evaluate()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=6)
    p.add_argument("--config", choices=sorted(CONFIGS), default="mlp")
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = {**CONFIGS[args.config], "seed": 0, "claim": "bench", "arm": "x", "x": None}
    datasets.load(cfg["data"], 0)  # generate/cache the data outside the timing
    times = {"lab": [], "bare": []}
    calls = {"lab": lambda: train_run(cfg), "bare": lambda: bare_loop(cfg)}
    for i in range(args.reps):
        for name in (("lab", "bare") if i % 2 == 0 else ("bare", "lab")):
            t0 = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t0)
    ratios = [a / b for a, b in zip(times["lab"], times["bare"], strict=True)]
    print(f"config={args.config} steps={cfg['steps']} reps={args.reps} (alternating order)")
    print(f"bare loop  median {statistics.median(times['bare']):.3f} s")
    print(f"lab run    median {statistics.median(times['lab']):.3f} s")
    print(f"lab / bare ratio (median of paired ratios): {statistics.median(ratios):.3f} "
          f"(target <= 1.1)")


if __name__ == "__main__":
    main()
