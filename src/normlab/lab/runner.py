"""Run a study's runs on an engine (``lab.engine``), appending each row as it finishes; resume.

Every run has a key: a hash of its resolved config. A rerun into the same folder skips every
key already in ``results.jsonl``, so an interrupted study (Ctrl-C, kill, crash) loses at most
the runs that were in flight, and a changed config re-runs only the runs whose config changed.
Rows are written by this (driver) process only, one line each, flushed to disk as each run
finishes, whichever engine ran it (worker processes here, or Ray tasks on a cluster).
Under ``torchrun`` the processes run every run together, data-parallel (``lab.train``), and
process 0 writes the rows.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

from normlab import distributed
from normlab.lab.engine import Failure, LocalEngine
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




class RunFailed(RuntimeError):
    """A run raised in its worker: a setting the checks let through, or a bug."""


def run_all(plan: list[dict], results_path: Path, *, workers: int = 1, engine=None,
            progress: bool = True, stream=None) -> tuple[dict, list[dict]]:
    """Run every config of ``plan`` whose key is not yet done in ``results_path``.

    ``engine`` (``lab.engine``: ``LocalEngine(workers)`` when None, or a ``RayEngine``) runs
    them; this process appends each run's row as the engine reports it finished, so it is the
    only writer of the file, whichever engine ran the runs.

    Returns ``(counts, rows)``: counts ``{"planned", "already_done", "ran", "skipped_lines",
    "skipped"}`` (``skipped``: a message per unreadable line of the file) and every row, read
    and new, in file order (the caller holds the folder's lock, so no one else wrote).

    On Ctrl-C (KeyboardInterrupt) no further run starts, the runs in flight finish and their
    rows are appended, then the interrupt propagates; a second Ctrl-C stops them at once. A
    run that raises in its worker, or whose worker died (after the engine's retries), is a row
    with ``status`` ``failed`` and the ``error``; the other runs go on, and at the end
    ``RunFailed`` names the failed runs. A failed run is not done: a rerun runs it again.
    """
    lead = distributed.rank() == 0
    existing, skipped = read_rows(results_path) if lead else ([], [])
    done = {r.get("key") for r in existing if r.get("kind") == "run"
            and r.get("status") != "failed"}
    todo = [cfg for cfg in plan if run_key(cfg) not in done]
    todo.sort(key=_cost, reverse=True)  # longest first balances the workers
    # under torchrun every process runs the same runs in the same order (data-parallel)
    todo, skipped = distributed.broadcast_object((todo, skipped))
    bar = Progress(sum(_cost(c) for c in todo), len(todo), stream, progress and lead)
    env = environment()
    engine = LocalEngine(workers) if engine is None else engine
    rows, failed = list(existing), []

    def record(cfg: dict, out) -> None:
        if isinstance(out, Failure):
            failed.append(f"claim {cfg['claim']}, arm {cfg['arm']}, seed {cfg['seed']}: "
                          f"{out.message}")
            out = {"status": "failed", "error": out.message, "evals": [], "final": {}}
        if lead:
            row = {"kind": "run", "key": run_key(cfg), "claim": cfg["claim"], "config": cfg,
                   **out, "engine": engine.name, "env": env, "time": time.time()}
            append_row(results_path, row)
            rows.append(row)
        bar.update(_cost(cfg))

    engine.run(todo, record, stream or sys.stderr)
    if failed:
        raise RunFailed(f"{len(failed)} of {len(todo)} run(s) failed (their rows say "
                        f"status 'failed'; a rerun retries them); the first: {failed[0]}")
    counts = {"planned": len(plan), "already_done": len(plan) - len(todo), "ran": len(todo),
              "skipped_lines": len(skipped), "skipped": skipped}
    return counts, rows
