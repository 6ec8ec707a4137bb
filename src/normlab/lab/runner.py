"""Run a study's runs in worker processes, appending each row as it finishes; resume.

Every run has a key: a hash of its resolved config. A rerun into the same folder skips every
key already in ``results.jsonl``, so an interrupted study (Ctrl-C, kill, crash) loses at most
the runs that were in flight, and a changed config re-runs only the runs whose config changed.
Rows are written by this (parent) process only, one line each, flushed to disk as they come.
Under ``torchrun`` the processes run every run together, data-parallel (``lab.train``), and
process 0 writes the rows.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from normlab import distributed
from normlab.results import append_row, environment, read_rows

__all__ = ["Progress", "run_key", "run_all"]


def run_key(cfg: dict) -> str:
    """A stable identifier of a resolved run config."""
    blob = json.dumps(cfg, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _cost(cfg: dict) -> float:
    """Rough relative cost of a run, for ordering (longest first) and the ETA."""
    per_step = {"cnn": 3.0, "stylizer": 40.0}.get(cfg["model"], 1.0)
    return cfg["steps"] * per_step * max(1.0, cfg["batch_size"] / 64) ** 0.5


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _work(cfg: dict) -> dict:
    from normlab.lab.train import train_run

    t0 = time.perf_counter()
    out = train_run(cfg)
    out["wall_seconds"] = time.perf_counter() - t0
    out["pid"] = os.getpid()
    return out


class Progress:
    """A one-line progress bar with ETA on stderr (a line per 10% when not a terminal)."""

    def __init__(self, total_cost: float, n_runs: int, stream=None, enabled: bool = True,
                 unit: str = "runs"):
        self.total, self.n, self.done_cost, self.done = total_cost, n_runs, 0.0, 0
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = enabled and n_runs > 0
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.last_decile = -1

    def update(self, cost: float) -> None:
        self.done += 1
        self.done_cost += cost
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        frac = self.done_cost / self.total if self.total else 1.0
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
        line = (f"[{bar}] {self.done}/{self.n} {self.unit}  {elapsed:5.0f}s elapsed  "
                f"ETA {eta:4.0f}s")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if self.done == self.n else ""))
            self.stream.flush()
        elif int(frac * 10) > self.last_decile or self.done == self.n:
            self.last_decile = int(frac * 10)
            self.stream.write(line + "\n")
            self.stream.flush()


def run_all(plan: list[dict], results_path: Path, *, workers: int, progress: bool = True,
            stream=None) -> dict:
    """Run every config of ``plan`` whose key is not yet in ``results_path``.

    Returns counts: ``{"planned", "already_done", "ran", "skipped_lines"}``. On
    KeyboardInterrupt the finished rows are already on disk; pending runs are cancelled and
    the interrupt propagates.
    """
    lead = distributed.rank() == 0
    existing, bad = read_rows(results_path) if lead else ([], 0)
    done = {r.get("key") for r in existing if r.get("kind") == "run"}
    todo = [cfg for cfg in plan if run_key(cfg) not in done]
    todo.sort(key=_cost, reverse=True)  # longest first balances the workers
    # under torchrun every process runs the same runs in the same order (data-parallel)
    todo, bad = distributed.broadcast_object((todo, bad))
    bar = Progress(sum(_cost(c) for c in todo), len(todo), stream, progress and lead)
    env = environment()

    def record(cfg: dict, out: dict) -> None:
        if lead:
            row = {"kind": "run", "key": run_key(cfg), "claim": cfg["claim"], "config": cfg,
                   **out, "env": env, "time": time.time()}
            append_row(results_path, row)
        bar.update(_cost(cfg))

    if distributed.data_parallel() or workers <= 1 or len(todo) <= 1:
        _init_worker()
        for cfg in todo:
            record(cfg, _work(cfg))
    else:
        ctx = multiprocessing.get_context("spawn")  # no torch state shared through fork
        ex = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker)
        try:
            pending = {ex.submit(_work, cfg): cfg for cfg in todo}
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    record(pending.pop(fut), fut.result())
        except BaseException:
            ex.shutdown(wait=False, cancel_futures=True)
            raise
        ex.shutdown(wait=True)
    return {"planned": len(plan), "already_done": len(plan) - len(todo), "ran": len(todo),
            "skipped_lines": bad}
