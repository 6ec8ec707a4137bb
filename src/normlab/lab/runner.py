"""Run a study's runs in worker processes, appending each row as it finishes; resume.

Every run has a key: a hash of its resolved config. A rerun into the same folder skips every
key already in ``results.jsonl``, so an interrupted study (Ctrl-C, kill, crash) loses at most
the runs that were in flight, and a changed config re-runs only the runs whose config changed.
Rows are written by this (parent) process only, one line each, flushed to disk as they come.
Under ``torchrun`` the processes run every run together, data-parallel (``lab.train``), and
process 0 writes the rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from normlab import distributed
from normlab.progress import Progress
from normlab.results import append_row, environment, read_rows

__all__ = ["Progress", "RunFailed", "run_key", "run_all"]


def run_key(cfg: dict) -> str:
    """A stable identifier of a resolved run config."""
    blob = json.dumps(cfg, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _cost(cfg: dict) -> float:
    """Rough relative cost of a run, for ordering (longest first) and the ETA."""
    per_step = {"cnn": 3.0, "stylizer": 40.0}.get(cfg["model"], 1.0)
    return cfg["steps"] * per_step * max(1.0, cfg["batch_size"] / 64) ** 0.5


def _die_with(parent: int) -> None:
    """End this worker when process ``parent`` ends, however it ends (``kill -9`` too).

    Linux: the kernel sends SIGKILL when the parent dies (``PR_SET_PDEATHSIG``). Everywhere,
    as a fallback: a daemon thread checks once a second that the parent is still ours."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the thread remains
            pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="normlab-parent-watch", daemon=True).start()


def _init_worker(parent: int | None = None) -> None:
    import torch

    torch.set_num_threads(1)
    if parent is not None:  # a worker process (not the in-process path)
        # Ctrl-C reaches the whole process group: the parent decides (it lets the runs in
        # flight finish and keeps their rows), so a worker does not stop on it
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _die_with(parent)


def _work(cfg: dict) -> dict:
    from normlab.lab.train import train_run

    t0 = time.perf_counter()
    out = train_run(cfg)
    out["wall_seconds"] = time.perf_counter() - t0
    out["pid"] = os.getpid()
    return out


class RunFailed(RuntimeError):
    """A run raised in its worker: a setting the checks let through, or a bug."""


def _stop_workers(ex: ProcessPoolExecutor) -> None:
    ex.shutdown(wait=False, cancel_futures=True)
    for proc in list((getattr(ex, "_processes", None) or {}).values()):
        with contextlib.suppress(OSError):
            proc.kill()


def run_all(plan: list[dict], results_path: Path, *, workers: int, progress: bool = True,
            stream=None) -> tuple[dict, list[dict]]:
    """Run every config of ``plan`` whose key is not yet in ``results_path``.

    Returns ``(counts, rows)``: counts ``{"planned", "already_done", "ran", "skipped_lines",
    "skipped"}`` (``skipped``: a message per unreadable line of the file) and every row, read
    and new, in file order (the caller holds the folder's lock, so no one else wrote).

    At most ``workers`` runs are handed out at a time. On Ctrl-C (KeyboardInterrupt) no
    further run starts, the runs in flight finish and their rows are appended, then the
    interrupt propagates; a second Ctrl-C stops the workers at once. A run that raises in its
    worker stops the study with ``RunFailed`` naming the run (rows finished are kept).
    """
    lead = distributed.rank() == 0
    existing, skipped = read_rows(results_path) if lead else ([], [])
    done = {r.get("key") for r in existing if r.get("kind") == "run"}
    todo = [cfg for cfg in plan if run_key(cfg) not in done]
    todo.sort(key=_cost, reverse=True)  # longest first balances the workers
    # under torchrun every process runs the same runs in the same order (data-parallel)
    todo, skipped = distributed.broadcast_object((todo, skipped))
    bar = Progress(sum(_cost(c) for c in todo), len(todo), stream, progress and lead)
    env = environment()
    rows = list(existing)

    def record(cfg: dict, out: dict) -> None:
        if lead:
            row = {"kind": "run", "key": run_key(cfg), "claim": cfg["claim"], "config": cfg,
                   **out, "env": env, "time": time.time()}
            append_row(results_path, row)
            rows.append(row)
        bar.update(_cost(cfg))

    if distributed.data_parallel() or workers <= 1 or len(todo) <= 1:
        _init_worker()
        for cfg in todo:
            record(cfg, _checked(cfg, _work, cfg))
    else:
        _run_pool(todo, workers, record, stream or sys.stderr)
    counts = {"planned": len(plan), "already_done": len(plan) - len(todo), "ran": len(todo),
              "skipped_lines": len(skipped), "skipped": skipped}
    return counts, rows


def _checked(cfg: dict, fn, *args):
    try:
        return fn(*args)
    except Exception as exc:
        raise RunFailed(f"the run of claim {cfg['claim']}, arm {cfg['arm']}, seed "
                        f"{cfg['seed']} failed: {type(exc).__name__}: {exc}") from exc


def _run_pool(todo: list[dict], workers: int, record, stream) -> None:
    """Run ``todo`` in spawned workers, at most ``workers`` at a time, recording each."""
    ctx = multiprocessing.get_context("spawn")  # no torch state shared through fork
    ex = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(os.getpid(),))
    queue, pending = list(reversed(todo)), {}
    sigints = []

    def on_sigint(signum, frame):  # the first Ctrl-C: finish what runs; the second: stop
        sigints.append(signum)
        if len(sigints) > 1:
            raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if main else None
    told = False
    try:
        while queue or pending:
            while queue and len(pending) < workers and not sigints:
                cfg = queue.pop()
                pending[ex.submit(_work, cfg)] = cfg
            if sigints and not told:
                told = True
                stream.write(f"\nnormlab lab: interrupted: {len(queue)} run(s) not started "
                             f"are cancelled; waiting for the {len(pending)} in flight to "
                             "finish and keep their rows (Ctrl-C again to stop them now)\n")
                stream.flush()
            if not pending:
                break
            finished, _ = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            for fut in finished:
                cfg = pending.pop(fut)
                record(cfg, _checked(cfg, fut.result))
    except BaseException:
        _stop_workers(ex)
        raise
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    ex.shutdown(wait=True)
    if sigints:
        raise KeyboardInterrupt
