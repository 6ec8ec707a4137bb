"""The engines (issue 14): the local process pool and Ray, behind one runner.

Two kinds of test here. The first ones start no Ray: the arguments and the clear errors, the
resources a task asks for, the data sets the runs share, and the runner's policy for a run
that fails (a row, the others go on, a rerun retries it), on the local engine.

The ones marked ``ray`` start a real Ray cluster on this machine (a head node and a second
node joined to it, on 127.0.0.1) and stop it at the end. Ray's own processes reach each other
over the machine's interface address, and these machines may send traffic to loopback only,
so they run only in a network namespace that holds nothing but loopback (scripts/test.sh:
``unshare -n -p -f --mount-proc bash -c 'ip link set lo up && python -m pytest -m ray
tests/test_ray.py'``); anywhere else they skip, and no Ray process is started.

Same rows: every field but where and when a row ran (engine, node, host, pid, times: the
wall and training seconds, the CPU milliseconds per step) is compared, bit for bit. Two causes
made runs differ under Ray (losses ~1e-7 apart), each with a test here or beside the data
that fails where it was not fixed: the data were standardized by torch's float32 mean at the
Ray driver's thread count (tests/test_data.py), and a worker that compiled normlab's numba
kernels itself trained differently from one that loaded them from numba's disk cache (the
first test of the engines below that starts no Ray).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from normlab.cli import main
from normlab.lab import engine as engine_mod
from normlab.lab.engine import EngineError, LocalEngine, make_engine, task_resources
from normlab.lab.runner import RunFailed, run_all, run_key
from normlab.lab.study import LabError, plan_study, run_lab
from normlab.lab.train import data_key
from normlab.results import read_rows

SRC = Path(__file__).resolve().parents[1] / "src"
# a lab of 4 tiny runs (MLP of 8 on the breast-cancer table, 5 steps): seconds, not minutes
TINY = ["--only", "placement", "--quick", "--seeds", "2", "--data=tabular", "--hidden=8",
        "--eval_every=5", "--steps=5", "--no-progress"]
TINY_OVERRIDES = {"data": "tabular", "hidden": [8], "eval_every": 5, "steps": 5}
# what a row says about where and when it ran, not what the run computed
WHERE_AND_WHEN = {"time", "env", "pid", "host", "node", "engine", "wall_seconds",
                  "train_seconds"}
TIMES_IN_FINAL = {"step_ms"}  # a row's final metrics that are times (CPU ms per step)


def _numbers(row: dict) -> dict:
    """What a row's run computed: the row without where and when it ran."""
    out = {k: v for k, v in row.items() if k not in WHERE_AND_WHEN}
    if isinstance(out.get("final"), dict):
        out["final"] = {k: v for k, v in out["final"].items() if k not in TIMES_IN_FINAL}
    return out


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------------------------
# no Ray started


def test_ray_not_installed_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    out = tmp_path / "lab"
    assert main(["lab", "--out", str(out), "--engine", "ray", *TINY]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "--engine ray: Ray is not installed" in line and "normlab[ray]" in line
    assert not out.exists()  # refused before the folder was touched


def _exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own errors
        return exc.code


@pytest.mark.parametrize("args, pattern", [
    (["--engine", "spark"], r"--engine: invalid choice: 'spark'"),
    (["--address", "127.0.0.1:6379"], r"--address 127.0.0.1:6379: a cluster address needs "
                                      r"--engine ray"),
])
def test_bad_engine_arguments(args, pattern, tmp_path, capsys):
    out = tmp_path / "lab"
    assert _exit_code(["lab", "--out", str(out), *args, *TINY]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]  # argparse prints its usage first
    assert re.search(pattern, line), line
    assert not out.exists()


def test_engine_api_errors(tmp_path):
    with pytest.raises(EngineError, match=r"--engine: expected one of local, ray, got 'dask'"):
        make_engine("dask")
    with pytest.raises(EngineError, match=r"max_retries: expected an integer >= 0, got -1"):
        make_engine("local", max_retries=-1)
    with pytest.raises(LabError, match=r"--engine: expected one of local, ray, got 'x'"):
        run_lab(tmp_path / "a", engine="x", overrides=TINY_OVERRIDES)
    pytest.importorskip("ray")
    with pytest.raises(LabError, match=r"--workers=2: with --address the cluster's CPUs"):
        run_lab(tmp_path / "b", engine="ray", address="127.0.0.1:1", workers=2,
                overrides=TINY_OVERRIDES)
    with pytest.raises(EngineError, match=r"--address: expected HOST:PORT"):
        make_engine("ray", address=" ")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_task_resources():
    assert task_resources({"model": "mlp"}) == {"num_cpus": 1, "num_gpus": 0}
    assert task_resources({"device": "cpu"}) == {"num_cpus": 1, "num_gpus": 0}
    assert task_resources({"device": "cuda"}) == {"num_cpus": 1, "num_gpus": 1}
    assert task_resources({"device": "cuda:1"}) == {"num_cpus": 1, "num_gpus": 1}


def test_the_quick_study_trains_on_few_data_sets():
    """What the Ray engine puts in the object store: one object per distinct data set, far
    fewer than the runs; the key follows the settings that change the data, not the seed."""
    _, plans, _ = plan_study("quick")
    runs = [cfg for runs in plans.values() for cfg in runs]
    keys = {data_key(cfg) for cfg in runs}
    # one data set per name (the sequence claim draws all its runs from one set of spans)
    assert sorted(k[0] for k in keys) == ["digits", "digits_rgb", "mnist1d", "mnist1d_seq",
                                          "tabular"], keys
    assert len(runs) > 10 * len(keys)
    seq = next(c for c in runs if c["data"] == "mnist1d_seq")
    assert data_key(dict(seq, seed=seq["seed"] + 1)) == data_key(seq)
    assert data_key(dict(seq, long_lengths=[[60, 80]])) != data_key(seq)
    assert data_key({"model": "stylizer"}) is None  # makes its own data


def test_a_failing_run_is_a_row_the_others_go_on_and_a_rerun_retries_it(tmp_path,
                                                                       monkeypatch):
    _, plans, _ = plan_study("quick", only=["placement"], seeds=2, overrides=TINY_OVERRIDES)
    plan = plans["placement"]
    bad = plan[1]
    real = engine_mod._work

    def work(cfg, ds=None):
        if cfg == bad:
            raise RuntimeError("boom on this worker")
        return real(cfg, ds)

    monkeypatch.setattr(engine_mod, "_work", work)
    path = tmp_path / "results.jsonl"
    with pytest.raises(RunFailed, match=r"1 of 4 run\(s\) failed .* the first: claim "
                                        rf"placement, arm {bad['arm']}, seed {bad['seed']}: "
                                        r"RuntimeError: boom on this worker"):
        run_all(plan, path, engine=LocalEngine(1), progress=False)
    rows = read_rows(path)[0]
    assert len(rows) == 4  # the runs after the failing one ran too
    failed = [r for r in rows if r["status"] == "failed"]
    assert [r["key"] for r in failed] == [run_key(bad)]
    assert failed[0]["error"] == "RuntimeError: boom on this worker"
    monkeypatch.setattr(engine_mod, "_work", real)
    counts, rows = run_all(plan, path, engine=LocalEngine(1), progress=False)
    assert counts["ran"] == 1 and counts["already_done"] == 3  # only the failed one again
    assert rows[-1]["key"] == run_key(bad) and rows[-1]["status"] == "ok"


# a run in a fresh process: what a Ray worker or a local worker is. It prints its rows' numbers
# (the evaluations: no times in them) and whether normlab's numba kernels ran.
_RUN_IN_A_FRESH_PROCESS = """
import json
from normlab.lab.study import plan_study
from normlab.lab.train import train_run
from normlab.ops import trace_backends
from normlab.ops.dispatch import Numba
# the digits CNN's activations are below the size (Numba.MIN_NUMEL) and the line length
# (8x8 positions: Numba.MIN_LINE_BATCH / MIN_LINE_INSTANCE) where the dispatcher picks numba by
# itself: lowered here so the run takes the numba kernels, as a run on a user's larger model does
Numba.MIN_NUMEL = Numba.MIN_LINE_BATCH = Numba.MIN_LINE_INSTANCE = 0
_, plans, _ = plan_study("quick", only=["batch-size-one"], seeds=1)
cnn = next(c for c in plans["batch-size-one"] if c["data"] == "digits")  # the CNN on the digits
rows = []
with trace_backends() as ran:
    for norm in ("batch", "instance"):  # at a batch of 64, both on the numba kernels
        cfg = dict(cnn, norm=norm, batch_size=64, steps=12, eval_every=4)
        out = train_run(cfg)
        rows.append([norm, out["status"], out["evals"]])
print(json.dumps({"rows": rows, "numba": "numba" in set(ran)}))
"""


def test_a_run_gives_the_same_numbers_whether_its_process_compiled_the_kernels_or_not(
        tmp_path):
    """The cause of the rows that differed under Ray: a worker that compiled normlab's numba
    kernels itself (numba's disk cache did not have them yet) trained a few ulps away from a
    worker that loaded them from the cache. Two fresh processes on an empty cache of their
    own: the first compiles, the second loads; their runs must agree bit for bit."""
    cache = tmp_path / "numba-cache"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache),
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    outs = []
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", _RUN_IN_A_FRESH_PROCESS], env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        outs.append(json.loads(r.stdout.strip().splitlines()[-1]))
        assert any(cache.rglob("*.nbc")), "the first process cached no kernel"
    compiled, loaded = outs
    assert compiled["numba"], "the runs did not use the numba kernels: the test tests nothing"
    assert [row[:2] for row in compiled["rows"]] == [["batch", "ok"], ["instance", "ok"]]
    assert loaded["rows"] == compiled["rows"]


# --------------------------------------------------------------------------------------------
# a real Ray cluster, in a network namespace holding only loopback

NO_NAMESPACE = ("the Ray tests start a Ray cluster, which may only run in a network namespace "
                "holding only loopback (e.g. unshare -n -p -f --mount-proc bash -c 'ip link "
                "set lo up && python -m pytest -m ray tests/test_ray.py', as scripts/test.sh "
                "does); this process sees the interfaces {}")


def _interfaces() -> list[str]:
    return sorted(name for _, name in socket.if_nameindex())


def _session(sid: int) -> list[int]:
    """Live processes of session ``sid`` (what one `ray start --block` started), from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[4]) == sid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def _stop(proc: subprocess.Popen) -> None:
    """Stop a `ray start --block` and every process it started (its session), by pid."""
    if proc.poll() is None:
        proc.terminate()  # --block stops its node's processes on SIGTERM
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    deadline = time.time() + 10
    while _session(proc.pid) and time.time() < deadline:
        time.sleep(0.2)
    for pid in _session(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _started(log) -> bool:
    """Whether the `ray start --block` writing ``log`` has its node up (it says so)."""
    log.flush()
    return "Ray runtime started" in Path(log.name).read_text(errors="replace")


def _tail(log) -> str:
    log.flush()
    lines = Path(log.name).read_text(errors="replace").splitlines()
    return "the Ray nodes did not start:\n" + "\n".join(
        ln for ln in lines if "network_util" not in ln)[-3000:]


@pytest.fixture(scope="module")
def cluster():
    """A Ray head (1 CPU) and a second node (1 CPU) on 127.0.0.1; yields (address, env)."""
    if _interfaces() != ["lo"]:
        pytest.skip(NO_NAMESPACE.format(", ".join(_interfaces())))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    temp = tempfile.mkdtemp(prefix="nlray", dir="/tmp")  # short: Ray's socket paths
    # Ray's token authentication, with a token of this cluster's own (nothing read from or
    # written to ~/.ray): the nodes, the drivers started here and this process's own
    ray_env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
               "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env = {**os.environ, **ray_env,
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    mp = pytest.MonkeyPatch()
    for k, v in ray_env.items():
        mp.setenv(k, v)
    pytest.importorskip("ray")  # after: Ray reads its authentication mode when imported
    common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
              "--object-store-memory", str(100 * 2**20), "--disable-usage-stats"]
    logs, procs = [], []
    try:
        for args in (["--head", "--port", str(port), "--include-dashboard", "false",
                      "--temp-dir", temp], ["--address", address]):
            log = open(Path(temp) / f"node{len(logs)}.log", "w")  # noqa: SIM115 - closed below
            logs.append(log)
            procs.append(subprocess.Popen(["ray", "start", *args, *common], stdout=log,
                                          stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True))
            deadline = time.time() + 300  # minutes on a loaded machine
            while not _started(log):
                assert time.time() < deadline and procs[-1].poll() is None, _tail(log)
                time.sleep(0.5)
        yield address, env
    finally:
        for proc in reversed(procs):
            _stop(proc)
        for log in logs:
            log.close()
        shutil.rmtree(temp, ignore_errors=True)
        mp.undo()


def _lab_cmd(out, *args):
    return [sys.executable, "-m", "normlab", "lab", "--out", str(out), "--no-progress", *args]


def _by_key(path: Path) -> dict:
    rows, skipped = read_rows(path)
    assert skipped == []
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)), "a run was trained twice"
    return {r["key"]: r for r in rows}


# the quick lab's claims that train on each kind of data (CNN on MNIST-1D and on the digits,
# MLP on MNIST-1D and on the table, the sequence CNN on padded sequences), one seed: 13 runs
QUICK = ["--quick", "--seeds", "1", "--only",
         "faster-training,batch-size-one,padding-contamination,placement"]


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_ray_lab_resumes_to_the_rows_of_the_local_engine(cluster, tmp_path):
    address, env = cluster
    ray_out, local_out = tmp_path / "ray", tmp_path / "local"
    driver = subprocess.Popen(_lab_cmd(ray_out, *QUICK, "--engine", "ray", "--address",
                                       address), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while len(read_rows(ray_out / "results.jsonl")[0]) < 3:
            assert time.time() < deadline and driver.poll() is None, driver.stderr.read()
            time.sleep(0.1)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver dies mid-study (kill -9)
        driver.wait()
    kept = len(read_rows(ray_out / "results.jsonl")[0])
    r = subprocess.run(_lab_cmd(ray_out, *QUICK, "--engine", "ray", "--address", address),
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    planned = int(r.stdout.split("(", 1)[1].split(" planned")[0])
    assert f"{planned - kept} runs trained, {kept} already done" in r.stdout
    assert "2 node(s), 2 CPUs" in r.stderr
    r = subprocess.run(_lab_cmd(local_out, *QUICK, "--workers", "2"), env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    ray_rows, local_rows = _by_key(ray_out / "results.jsonl"), _by_key(local_out /
                                                                       "results.jsonl")
    assert len(ray_rows) == planned and set(ray_rows) == set(local_rows)
    differ = []
    for key, row in ray_rows.items():
        other = local_rows[key]
        assert row["engine"] == "ray" and other["engine"] == "local"
        assert set(row) - {"node"} == set(other), key
        if _numbers(row) != _numbers(other):
            differ.append((row["config"]["data"], row["claim"], row["config"]["arm"],
                           _first_difference(_numbers(row), _numbers(other))))
    # bit for bit, every run: the same config and seed give the same numbers on either engine
    assert not differ, (f"{len(differ)} of the {len(ray_rows)} runs trained differently under "
                        f"Ray (ray != local): {differ}")
    s_ray = json.loads((ray_out / "summary.json").read_text())
    s_local = json.loads((local_out / "summary.json").read_text())
    assert s_ray == s_local


def _first_difference(a, b, path="row"):
    """Where two rows first differ, e.g. ``row['evals'][1]['train_loss']: 2.33 != 2.34``."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}[{k!r}]")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
    return f"{path}: {a!r} != {b!r}"


def _ray_task_pids() -> set[int]:
    """Ray workers running a run now (Ray titles them ``ray::_ray_task``)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"ray::_ray_task"):
                pids.add(int(entry))
    return pids


def _kill_one_worker_mid_run(after: float, killed: list) -> threading.Thread:
    def kill():
        deadline = time.time() + 120
        while time.time() < deadline:
            pids = _ray_task_pids()
            if pids:
                time.sleep(after)  # well inside the run (each takes several seconds)
                pid = min(pids & _ray_task_pids() or pids)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


# 2 runs of about 5 s each (4000 steps of an MLP of 8 on the table)
LONG = {**TINY_OVERRIDES, "steps": 4000, "eval_every": 2000}


@pytest.mark.ray
@pytest.mark.slow
def test_a_worker_killed_mid_run_is_retried_or_recorded(cluster, tmp_path):
    address, _ = cluster
    out = tmp_path / "lab"
    only = dict(preset="quick", only=["placement"], seeds=1, overrides=LONG, progress=False)
    # no retries: the run whose worker died is a failed row; the other run is unharmed
    killed: list = []
    thread = _kill_one_worker_mid_run(1.5, killed)
    with pytest.raises(RunFailed, match=r"1 of 2 run\(s\) failed .*the run's worker died "
                                        r"\(0 retries\)"):
        run_lab(out, engine="ray", address=address, max_retries=0, **only)
    thread.join()
    assert killed
    rows = read_rows(out / "results.jsonl")[0]
    assert sorted(r["status"] for r in rows) == ["failed", "ok"]
    # with retries: a worker killed mid-run is retried; the rerun also redoes the failed run
    killed.clear()
    thread = _kill_one_worker_mid_run(1.5, killed)
    result = run_lab(out, engine="ray", address=address, max_retries=2, **only)
    thread.join()
    assert killed, "no worker was killed"
    assert result["counts"]["ran"] == 1 and result["counts"]["already_done"] == 1
    rows = read_rows(out / "results.jsonl")[0]
    assert [r["status"] for r in rows][-1] == "ok" and len(rows) == 3
    latest = {r["key"]: r for r in rows}
    assert sorted(r["status"] for r in latest.values()) == ["ok", "ok"]
    assert all(r["final"]["test_acc"] > 0.5 for r in latest.values())  # trained, not empty
