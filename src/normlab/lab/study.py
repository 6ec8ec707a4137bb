"""``normlab lab``: plan the claims' runs, run them (resuming), and decide the verdicts.

Writes into the output folder: ``config.json`` (the resolved settings), ``claims.json`` (each
claim's spec: effect rule, figure, paper, the keys of its current runs and the settings its
setup line states) and ``results.jsonl`` (one row per finished run, appended). The report reads
only these files and writes ``summary.json`` and ``index.html`` from them (``normlab lab``
renders through the report, inside the lab's lock).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from normlab import distributed
from normlab.lab import claims as claims_mod
from normlab.lab.checks import shown
from normlab.lab.engine import ENGINES, MAX_RETRIES, EngineError, make_engine
from normlab.lab.runner import run_all, run_key
from normlab.results import FolderBusy, folder_lock, write_atomic
from normlab.results.stats import summarize
from normlab.results.table import LabResult

__all__ = ["CLAIM_IDS", "LabError", "parse_overrides", "plan_study", "run_lab"]

CLAIM_IDS = tuple(c["id"] for c in claims_mod.CLAIMS)
MAX_SEEDS = 100


class LabError(ValueError):
    """Bad lab input (unknown claim, bad override, unwritable folder): one clear line."""


def _parse_value(key: str, text: str, default):
    try:
        if isinstance(default, bool):
            low = text.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return low in ("true", "1", "yes")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, list):
            items = [t for t in text.split(",") if t.strip()]
            kind = type(default[0]) if default else str
            if kind is list:  # spans: lo-hi,lo-hi
                return [[int(v) for v in t.split("-", 1)] if "-" in t else [int(t)]
                        for t in items]
            return [kind(t) for t in items]
        return str(text)
    except ValueError:
        want = type(default).__name__
        if isinstance(default, list):
            want = f"comma-separated list of {type(default[0]).__name__ if default else 'str'}"
            if default and isinstance(default[0], list):
                want = "comma-separated spans lo-hi"
        raise LabError(f"--{key}={text}: expected {want} (the default is {shown(default)})") \
            from None


def parse_overrides(items: list[str]) -> dict:
    """``["lr=0.1", "hidden=64,64"]`` -> typed overrides of ``claims.BASE``."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.lstrip("-").replace("-", "_")
        if not sep:
            raise LabError(f"override {item!r}: expected --key=value")
        if key not in claims_mod.BASE:
            raise LabError(f"--{key}: unknown setting; settings are "
                           f"{', '.join(sorted(claims_mod.BASE))}")
        out[key] = _parse_value(key, text, claims_mod.BASE[key])
    return out


def plan_study(preset: str = "default", only=None, seeds=None, overrides=None):
    """The claims to run and their resolved run configs; ``settings["skipped"]`` names the
    chosen claims this install cannot run (``claims.unavailable``) with the reason."""
    if preset not in claims_mod.PRESETS:
        raise LabError(f"preset must be one of {sorted(claims_mod.PRESETS)}, got {preset!r}")
    p = dict(claims_mod.PRESETS[preset])
    if seeds is not None:
        if not 1 <= seeds <= MAX_SEEDS:
            raise LabError(f"--seeds: expected an integer in [1, {MAX_SEEDS}], got {seeds}")
        p["seeds"] = seeds
    chosen = [c for c in claims_mod.CLAIMS if preset in c.get("presets", (preset,))]
    if only is not None and not only:
        raise LabError(f"--only: no claim named; give one or more of {', '.join(CLAIM_IDS)}")
    if only:
        unknown = [i for i in only if i not in CLAIM_IDS]
        if unknown:
            raise LabError(f"unknown claim id {', '.join(unknown)}; ids are "
                           f"{', '.join(CLAIM_IDS)}")
        chosen = [c for c in claims_mod.CLAIMS if c["id"] in only]
    # a claim whose layer this install lacks is skipped with its reason, never run
    skipped = {c["id"]: claims_mod.unavailable(c) for c in chosen if claims_mod.unavailable(c)}
    chosen = [c for c in chosen if c["id"] not in skipped]
    if not chosen and skipped:
        raise LabError("; ".join(f"claim {cid} cannot run: {why}" for cid, why in
                                 skipped.items()))
    base = claims_mod.resolve_base(overrides)
    given = set(overrides or ())
    problem = claims_mod.check_settings(base, claims_mod.CHECKS, overridden=given)
    if problem:
        raise LabError(problem)
    arms = {c["id"]: c["build"](p["full"]) for c in chosen}
    unused = sorted(k for k in given if all(k in arm for a in arms.values() for arm in a))
    if unused:
        raise LabError(f"--{unused[0]}={shown(base[unused[0]])}: every chosen claim sets "
                       f"{unused[0]} itself, so this override would change no run")
    plans = {c["id"]: claims_mod.expand(c, seeds=p["seeds"], steps_scale=p["steps_scale"],
                                        full=p["full"], base=base) for c in chosen}
    for cid, runs in plans.items():  # the claims' own values, merged with the overrides
        own = {k for arm in arms[cid] for k in arm}
        for cfg in runs:
            problem = claims_mod.check_run(cfg, f"claim {cid}, arm {cfg['arm']}: ", given - own)
            if problem:
                raise LabError(problem)
    if distributed.data_parallel():  # a data-parallel run is its own run (its own key)
        for runs in plans.values():
            for cfg in runs:
                cfg["processes"] = distributed.world_size()
    settings = {"preset": preset, **p, "only": list(only) if only else None,
                "overrides": overrides or {}, "base": base, "skipped": skipped}
    return chosen, plans, settings


def _claim_spec(claim: dict, runs: list[dict]) -> dict:
    spec = {k: v for k, v in claim.items() if k not in ("build", "presets")}
    spec["run_keys"] = [run_key(c) for c in runs]
    spec["setup_keys"] = claims_mod.setup_keys(runs)
    return spec


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".normlab-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise LabError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None


def run_lab(out, *, preset="default", only=None, seeds=None, workers=None, overrides=None,
            progress=True, stream=None, render=None, engine="local", address=None,
            max_retries=MAX_RETRIES) -> dict:
    """Run the study into ``out`` and return ``{"summary", "counts", "settings"}`` (a
    ``results.table.LabResult``: a dict that Jupyter shows as the verdict table).

    The folder is locked for the whole call (``results.folder_lock``): a second lab on the
    same folder is refused at once (``LabError`` naming the holder's pid). ``render(out)``,
    if given, runs last, inside the lock, and returns the summary it wrote: the CLI passes
    ``normlab.report.render_report``, the one writer of summary.json and index.html. Without
    it nothing but config.json, claims.json and the rows is written, and the summary is
    computed from the rows in memory by the same ``results.stats.summarize``.

    Inside an initialized process group (``normlab lab`` under ``torchrun``) every process
    runs each run together, data-parallel; process 0 writes the files and holds the lock
    (the others' summary is None).

    ``engine``: where the runs run (``lab.engine``): ``local`` (worker processes on this
    machine, ``workers`` of them) or ``ray`` (one Ray task per run, on the cluster at
    ``address``, or on a Ray instance started here with ``workers`` CPUs when no address is
    given; a worker that dies is retried ``max_retries`` times). The rows are the same."""
    out = Path(out)
    chosen, plans, settings = plan_study(preset, only, seeds, overrides)
    cores = os.cpu_count() or 1
    if workers is not None and not 1 <= workers <= max(cores, 1):
        raise LabError(f"--workers: expected an integer in [1, {cores}] (the number of cores; "
                       f"each worker is one torch thread), got {workers}")
    if engine not in ENGINES:
        raise LabError(f"--engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "ray" and address is not None and workers is not None:
        raise LabError(f"--workers={workers}: with --address the cluster's CPUs set how many "
                       "runs run at once; --workers sizes the local engine or a Ray instance "
                       "started here")
    if engine == "ray" and distributed.data_parallel():
        raise LabError("--engine ray: not under torchrun (a data-parallel lab runs each run "
                       "on all its processes)")
    try:
        runner = make_engine(engine, workers=workers or max(1, min(cores, 8)),
                             address=address, max_retries=max_retries)
    except EngineError as exc:
        raise LabError(str(exc)) from None
    lead = distributed.rank() == 0
    problem, lock = None, contextlib.nullcontext()
    if lead:
        try:
            _check_writable(out)
            lock = folder_lock(out)
            lock.__enter__()
        except LabError as exc:
            problem = str(exc)
        except FolderBusy as exc:
            problem = f"--out {exc}"
    problem = distributed.broadcast_object(problem)
    if problem is not None:
        raise LabError(problem)
    try:
        return _run_locked(out, chosen, plans, settings, runner, progress, stream, render,
                           lead)
    finally:
        lock.__exit__(None, None, None)


def _run_locked(out, chosen, plans, settings, runner, progress, stream, render, lead):
    settings["workers"] = getattr(runner, "workers", None) or getattr(runner, "num_cpus", None)
    settings["engine"] = runner.describe()
    settings["processes"] = distributed.world_size()
    specs = [_claim_spec(c, plans[c["id"]]) for c in chosen]
    if lead:
        write_atomic(out / "config.json", json.dumps(settings, indent=2, sort_keys=True))
        write_atomic(out / "claims.json", json.dumps({"claims": specs}, indent=2))
    plan = [cfg for c in chosen for cfg in plans[c["id"]]]
    try:
        counts, rows = run_all(plan, out / "results.jsonl", engine=runner, progress=progress,
                               stream=stream)
    except EngineError as exc:  # no cluster at the address: before any run
        raise LabError(str(exc)) from None
    summary = None
    if lead:
        summary = summarize(specs, rows) if render is None else render(out)
    return LabResult(summary=summary, counts=counts, settings=settings)  # HTML in Jupyter
