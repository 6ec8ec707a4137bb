"""The Ray engine's cost: the same lab study run by the local engine (2 worker processes) and by
Ray (a one-node cluster of 2 CPUs on this machine), alternating A B B A in one process, each
into its own fresh folder. Target: wall ratio ray/local <= 1.15 at 2 workers.

Reports, for each study: the wall time of both engines, the ratio, the per-task overhead
``(wall_ray - wall_local) * workers / runs`` in ms, and the mean run time (the rows'
``wall_seconds``); the time to connect to the cluster (once: the engine reuses a connection
it did not open) is reported apart. Two studies: the quick lab (``--quick``, every claim)
and a batch of tiny runs (4 steps each), where the per-task cost shows; and how the cost grows
with the number of runs (tiny runs at two counts). Counts on the way the runs whose rows
differ between the engines (beyond where and when they ran).

Ray starts here, so run it only in a network namespace holding only loopback:

    unshare -n -p -f --mount-proc bash -c 'ip link set lo up && \\
        ../shared/tools/jemalloc-run python benchmarks/engine_overhead.py'
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from normlab.lab.engine import LocalEngine, RayEngine
from normlab.lab.runner import run_all
from normlab.lab.study import plan_study

WHERE_AND_WHEN = {"time", "env", "pid", "host", "node", "engine", "wall_seconds",
                  "train_seconds"}
TIMES_IN_FINAL = {"step_ms"}  # a row's final metrics that are times (CPU ms per step)
WORKERS = 2


def _start_head(port: int, temp: str) -> subprocess.Popen:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])
    return subprocess.Popen(
        ["ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port",
         str(port), "--num-cpus", str(WORKERS), "--include-dashboard", "false",
         "--object-store-memory", str(100 * 2**20), "--disable-usage-stats",
         "--temp-dir", temp], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)


def _study(engine, plan, folder: Path) -> tuple[float, list[dict]]:
    t0 = time.perf_counter()
    _, rows = run_all(plan, folder / "results.jsonl", engine=engine, progress=False,
                      stream=open(os.devnull, "w"))  # noqa: SIM115
    return time.perf_counter() - t0, rows


def _rows_differing(a: list[dict], b: list[dict]) -> int:
    """How many runs' rows differ between two studies (beyond where and when they ran)."""
    def numbers(row):
        out = {k: v for k, v in row.items() if k not in WHERE_AND_WHEN}
        out["final"] = {k: v for k, v in (row.get("final") or {}).items()
                        if k not in TIMES_IN_FINAL}
        return out

    def strip(rows):
        return {r["key"]: numbers(r) for r in rows}
    sa, sb = strip(a), strip(b)
    assert set(sa) == set(sb)
    return sum(sa[k] != sb[k] for k in sa)


def _compare(name: str, plan, ray_engine, tmp: Path) -> dict:
    """A B B A: local, ray, ray, local, each into a fresh folder."""
    walls = {"local": [], "ray": []}
    rows = {}
    for i, which in enumerate(("local", "ray", "ray", "local")):
        engine = LocalEngine(WORKERS) if which == "local" else ray_engine
        wall, rows[which] = _study(engine, plan, tmp / f"{name}-{i}-{which}")
        walls[which].append(wall)
        print(f"  {name}: {which:5s} {wall:7.2f} s", flush=True)
    differ = _rows_differing(rows["local"], rows["ray"])
    local, ray_ = statistics.fmean(walls["local"]), statistics.fmean(walls["ray"])
    run_s = statistics.fmean(r["wall_seconds"] for r in rows["ray"])
    return {"study": name, "runs": len(plan), "local_s": local, "ray_s": ray_,
            "ratio": ray_ / local, "overhead_ms": (ray_ - local) * WORKERS / len(plan) * 1e3,
            "mean_run_s": run_s, "rows_differing": differ, "walls": walls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", type=int, nargs=2, default=[16, 64], metavar=("N1", "N2"),
                        help="the two counts of tiny runs (default: 16 64)")
    parser.add_argument("--no-quick", action="store_true", help="skip the quick lab")
    parser.add_argument("--out", help="append the figures as one JSON line here")
    args = parser.parse_args()
    names = sorted(n for _, n in socket.if_nameindex())
    if names != ["lo"]:
        raise SystemExit("engine_overhead.py starts Ray: run it in a network namespace "
                         "holding only loopback (see the module docstring); this one has "
                         + ", ".join(names))
    # a token of this cluster's own for Ray's token authentication (nothing in ~/.ray); set
    # before Ray is imported (it reads the mode then)
    os.environ.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
                       "RAY_AUTH_TOKEN": secrets.token_hex(32)})
    import ray

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="nlray", dir="/tmp")
    head = _start_head(port, temp)
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                t0 = time.perf_counter()
                ray.init(address=address, logging_level="WARNING", log_to_driver=False)
                connect = time.perf_counter() - t0
                break
            except (ConnectionError, RuntimeError):
                if time.time() > deadline or head.poll() is not None:
                    raise SystemExit("the Ray head did not start") from None
                time.sleep(1)
        while ray.cluster_resources().get("CPU", 0) < WORKERS:
            time.sleep(0.5)
        engine = RayEngine(address)
        results = []
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            tiny = {"data": "tabular", "hidden": [8], "eval_every": 4, "steps": 4}
            for n in args.tiny:  # n tiny runs: the per-task cost, and how it grows
                _, plans, _ = plan_study("quick", only=["placement"], seeds=max(1, n // 2),
                                         overrides=tiny)
                results.append(_compare(f"tiny-{n}", plans["placement"], engine, tmp))
            if not args.no_quick:
                _, plans, _ = plan_study("quick")
                plan = [cfg for runs in plans.values() for cfg in runs]
                results.append(_compare("quick", plan, engine, tmp))
        print(f"\nRay connect (ray.init to the running head): {connect:.2f} s, once per study")
        print(f"{'study':10s} {'runs':>5s} {'local s':>8s} {'ray s':>8s} {'ratio':>6s} "
              f"{'ms/task':>8s} {'run s':>6s} {'rows differing':>14s}")
        for r in results:
            print(f"{r['study']:10s} {r['runs']:5d} {r['local_s']:8.2f} {r['ray_s']:8.2f} "
                  f"{r['ratio']:6.3f} {r['overhead_ms']:8.1f} {r['mean_run_s']:6.2f} "
                  f"{r['rows_differing']:14d}")
        quick = next((r for r in results if r["study"] == "quick"), None)
        if quick:
            cores = os.cpu_count() or 1
            per_hour = 10 * cores * 3600 / quick["mean_run_s"]
            print(f"on paper, 10 nodes x {cores} cores / {quick['mean_run_s']:.2f} s per quick "
                  f"run = {per_hour:,.0f} runs/hour")
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps({"connect_s": connect, "results": results}) + "\n")
    finally:
        if ray.is_initialized():
            ray.shutdown()
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            head.kill()
        subprocess.run(["rm", "-rf", temp], check=False)


if __name__ == "__main__":
    sys.exit(main())
