"""Where a study's runs run: the engines ``run_all`` hands its runs to.

The runner plans the runs, skips the ones already done and writes every row; an engine only
runs. ``engine.run(todo, record, stream)`` calls ``record(cfg, out)`` in this process (the
driver) once per config of ``todo``, as each run finishes, in the order they finish: ``out`` is
the run's result (``lab.train.train_run``'s dict plus ``wall_seconds``, ``pid``, ``host``), or a
:class:`Failure` when the run raised in its worker or its worker died. Engines write no file, so
resume and the no-loss guarantees are the runner's whichever engine ran the runs, and since a
run is deterministic given its config the rows are the same too.

* :class:`LocalEngine` (the default; needs nothing more): spawned worker processes on this
  machine, one torch thread each, at most one run handed to each at a time; workers ignore
  SIGINT and die with the driver (``PR_SET_PDEATHSIG`` on Linux and a parent-pid watchdog).
  One worker, one run, or a data-parallel lab under ``torchrun``: the runs run in this process.
* :class:`RayEngine` (the ``ray`` extra): one Ray task per run on a Ray cluster (``address``)
  or on a Ray instance started on this machine for the study (no address). Each task asks for
  one CPU (and a GPU when its config names a CUDA device); each data set the runs train on is
  put in the object store once and every task gets a reference to it; a worker that dies is
  retried ``max_retries`` times by Ray, then the run is a failure.

Ctrl-C, for both: the first one starts no further run and lets the runs in flight finish
(their rows are kept); the second one stops them at once (local: the workers are killed; Ray:
the tasks are cancelled).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from normlab import distributed

__all__ = ["ENGINES", "EngineError", "Failure", "LocalEngine", "RayEngine", "make_engine",
           "task_resources"]

ENGINES = ("local", "ray")
MAX_RETRIES = 2  # Ray's retries of a run whose worker died (default of RayEngine)


class EngineError(ValueError):
    """Bad engine input (an unknown engine, Ray not installed, no cluster at the address)."""


@dataclass(frozen=True)
class Failure:
    """A run that did not complete: it raised in its worker, or its worker died."""

    message: str


def make_engine(engine: str = "local", *, workers: int = 1, address: str | None = None,
                max_retries: int = MAX_RETRIES):
    """The engine named ``engine`` (``local`` or ``ray``).

    ``workers``: the local engine's worker processes; for ``ray`` without an address, the
    CPUs of the Ray instance started on this machine. ``address``: an existing Ray cluster
    (``HOST:PORT`` of its head, as ``ray start --head`` prints), only with ``ray``."""
    if engine not in ENGINES:
        raise EngineError(f"--engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
    if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
        raise EngineError(f"max_retries: expected an integer >= 0, got {max_retries!r}")
    if engine == "local":
        if address is not None:
            raise EngineError(f"--address {address}: a cluster address needs --engine ray "
                              "(the local engine runs on this machine)")
        return LocalEngine(workers)
    if address is not None and not address.strip():
        raise EngineError("--address: expected HOST:PORT of a Ray head node, got ''")
    _import_ray()  # the clear error now, before any folder is touched
    return RayEngine(address, num_cpus=workers, max_retries=max_retries)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise EngineError("--engine ray: Ray is not installed; install the extra: "
                          "pip install 'normlab[ray]'") from None
    return ray


# --------------------------------------------------------------------------------------------
# what runs in a worker (a pool process or a Ray worker)


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
    from normlab.lab.train import pin_run

    pin_run()  # what train_run pins again per run: one torch (and numba) thread
    if parent is not None:  # a pool worker process (not the in-process path)
        # Ctrl-C reaches the whole process group: the parent decides (it lets the runs in
        # flight finish and keeps their rows), so a worker does not stop on it
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _die_with(parent)


def _work(cfg: dict, ds=None) -> dict:
    from normlab.lab.train import train_run

    t0 = time.perf_counter()
    out = train_run(cfg, ds)
    out["wall_seconds"] = time.perf_counter() - t0
    out["pid"] = os.getpid()
    out["host"] = socket.gethostname()
    return out


def _ray_task(cfg: dict, ds) -> dict:
    """One run as a Ray task: ``ds`` is the data set, read from the object store by Ray."""
    import ray

    _init_worker()
    out = _work(cfg, ds)
    out["node"] = ray.get_runtime_context().get_node_id()
    return out


def _failure(exc: Exception) -> Failure:
    return Failure(f"{type(exc).__name__}: {exc}")


def _command(todo) -> str:
    """The command whose runs these are, for the messages: a user study's or the lab's."""
    return "normlab study" if todo and all(c.get("claim") == "study" for c in todo) else \
        "normlab lab"


class _Interrupts:
    """Ctrl-C while the engine runs: the first is noted (no new run starts), the second
    raises KeyboardInterrupt."""

    def __init__(self, stream, what: str, todo: list[dict] = ()):
        self.count, self.stream, self.what, self.told = 0, stream, what, False
        self.command = _command(todo)
        self.main = threading.current_thread() is threading.main_thread()
        self.previous = None

    def __enter__(self):
        if self.main:
            self.previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc):
        if self.main:
            signal.signal(signal.SIGINT, self.previous)

    def _on_sigint(self, signum, frame):
        self.count += 1
        if self.count > 1:
            raise KeyboardInterrupt

    def tell(self, not_started: int, in_flight: int) -> None:
        if self.count and not self.told:
            self.told = True
            self.stream.write(f"\n{self.command}: interrupted: {not_started} run(s) not started "
                              f"are cancelled; waiting for the {in_flight} in flight to "
                              f"finish and keep their rows (Ctrl-C again to {self.what})\n")
            self.stream.flush()


# --------------------------------------------------------------------------------------------
# the local engine: today's process pool


class LocalEngine:
    """Spawned worker processes on this machine (or this process: see the module doc)."""

    name = "local"

    def __init__(self, workers: int = 1):
        self.workers = workers

    def describe(self) -> dict:
        return {"engine": self.name, "workers": self.workers}

    def run(self, todo: list[dict], record, stream) -> None:
        if distributed.data_parallel() or self.workers <= 1 or len(todo) <= 1:
            _init_worker()
            for cfg in todo:
                try:
                    out = _work(cfg)
                except Exception as exc:
                    out = _failure(exc)
                record(cfg, out)
            return
        self._run_pool(todo, record, stream)

    def _run_pool(self, todo: list[dict], record, stream) -> None:
        ctx = multiprocessing.get_context("spawn")  # no torch state shared through fork
        ex = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx,
                                 initializer=_init_worker, initargs=(os.getpid(),))
        queue, pending = list(reversed(todo)), {}
        with _Interrupts(stream, "stop them now", todo) as interrupts:
            try:
                while queue or pending:
                    while queue and len(pending) < self.workers and not interrupts.count:
                        cfg = queue.pop()
                        pending[ex.submit(_work, cfg)] = cfg
                    interrupts.tell(len(queue), len(pending))
                    if not pending:
                        break
                    finished, _ = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        cfg = pending.pop(fut)
                        try:
                            out = fut.result()
                        except BrokenProcessPool:
                            raise  # a worker died: the pool is gone, the study stops
                        except Exception as exc:
                            out = _failure(exc)
                        record(cfg, out)
            except BaseException:
                _stop_workers(ex)
                raise
        ex.shutdown(wait=True)
        if interrupts.count:
            raise KeyboardInterrupt


def _stop_workers(ex: ProcessPoolExecutor) -> None:
    ex.shutdown(wait=False, cancel_futures=True)
    for proc in list((getattr(ex, "_processes", None) or {}).values()):
        with contextlib.suppress(OSError):
            proc.kill()


# --------------------------------------------------------------------------------------------
# the Ray engine


def task_resources(cfg: dict) -> dict:
    """The Ray resources one run asks for: one CPU (a run trains on one torch thread), and one
    GPU when its config names a CUDA device (``device``: ``cuda`` or ``cuda:N``)."""
    device = str(cfg.get("device") or "cpu")
    return {"num_cpus": 1, "num_gpus": 1 if device.startswith("cuda") else 0}


class RayEngine:
    """One Ray task per run, on the cluster at ``address`` or on a Ray instance started here
    for the study with ``num_cpus`` CPUs (no address)."""

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 max_retries: int = MAX_RETRIES):
        self.address, self.num_cpus, self.max_retries = address, num_cpus, max_retries

    def describe(self) -> dict:
        return {"engine": self.name, "address": self.address, "max_retries": self.max_retries}

    def _connect(self, ray) -> bool:
        """Connect (or start a local instance); True if this call did (and so shuts down)."""
        if ray.is_initialized():
            return False
        kw = {"logging_level": logging.WARNING, "log_to_driver": False,
              "configure_logging": True}
        try:
            if self.address is None:
                ray.init(num_cpus=self.num_cpus, include_dashboard=False, **kw)
            else:
                ray.init(address=self.address, **kw)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"--address {self.address}" if self.address else "--engine ray"
            raise EngineError(f"{where}: cannot start or reach a Ray cluster "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
        return True

    def run(self, todo: list[dict], record, stream) -> None:
        if not todo:
            return
        ray = _import_ray()
        from normlab.lab.train import data_key, load_data

        started = self._connect(ray)
        try:
            cpus = int(ray.cluster_resources().get("CPU", 0))
            nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
            stream.write(f"{_command(todo)}: Ray cluster {self.address or '(started here)'}: "
                         f"{nodes} node(s), {cpus} CPUs\n")
            stream.flush()
            # every data set once in the object store; a task receives the reference (Ray
            # reads the object on the task's node, once per node)
            data = {}
            for cfg in todo:
                key = data_key(cfg)
                if key is not None and key not in data:
                    data[key] = ray.put(load_data(cfg))
            task = ray.remote(_ray_task)
            self._dispatch(ray, task, data, data_key, todo, record, stream, max(1, cpus))
        finally:
            if started:
                ray.shutdown()

    def _dispatch(self, ray, task, data, data_key, todo, record, stream, window) -> None:
        from ray.exceptions import RayError, RayTaskError

        # at most ``window`` (the cluster's CPUs) tasks submitted at a time: what Ctrl-C
        # cancels is then what has not started
        queue, pending = list(reversed(todo)), {}
        with _Interrupts(stream, "cancel them now", todo) as interrupts:
            try:
                while queue or pending:
                    while queue and len(pending) < window and not interrupts.count:
                        cfg = queue.pop()
                        opts = {**task_resources(cfg), "max_retries": self.max_retries}
                        ref = task.options(**opts).remote(cfg, data.get(data_key(cfg)))
                        pending[ref] = cfg
                    interrupts.tell(len(queue), len(pending))
                    if not pending:
                        break
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.25)
                    for ref in ready:
                        cfg = pending.pop(ref)
                        try:
                            out = ray.get(ref)
                        except RayTaskError as exc:  # the run raised: its own exception
                            cause = getattr(exc, "cause", None)
                            out = _failure(cause if isinstance(cause, Exception) else exc)
                        except RayError as exc:  # the worker (or its node) died every try
                            out = Failure(f"{type(exc).__name__}: the run's worker died "
                                          f"({self.max_retries} retries): "
                                          f"{str(exc).splitlines()[0] if str(exc) else ''}")
                        record(cfg, out)
            except BaseException:
                for ref in pending:
                    with contextlib.suppress(Exception):
                        ray.cancel(ref, force=True)
                raise
        if interrupts.count:
            raise KeyboardInterrupt
