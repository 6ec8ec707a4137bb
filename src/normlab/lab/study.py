"""``normlab lab``: plan the claims' runs, run them (resuming), and decide the verdicts.

Writes into the output folder: ``config.json`` (the resolved settings), ``claims.json`` (each
claim's spec: effect rule, figure, paper, and the keys of its current runs), ``results.jsonl``
(one row per finished run, appended) and ``summary.json`` (the verdicts, recomputed from the
rows). The report reads only these files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from normlab import distributed
from normlab.lab import claims as claims_mod
from normlab.lab.runner import run_all, run_key
from normlab.results import read_rows
from normlab.results.stats import RULE, claim_verdict

__all__ = ["CLAIM_IDS", "LabError", "parse_overrides", "plan_study", "run_lab", "summarize"]

CLAIM_IDS = tuple(c["id"] for c in claims_mod.CLAIMS)


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
            items = [t for t in text.split(",") if t]
            kind = type(default[0]) if default else str
            return [kind(t) for t in items]
        return str(text)
    except ValueError:
        want = type(default).__name__
        if isinstance(default, list):
            want = f"comma-separated list of {type(default[0]).__name__ if default else 'str'}"
        raise LabError(f"--{key}={text}: expected {want} (the default is {default!r})") \
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
    """The claims to run and their resolved run configs."""
    if preset not in claims_mod.PRESETS:
        raise LabError(f"preset must be one of {sorted(claims_mod.PRESETS)}, got {preset!r}")
    p = dict(claims_mod.PRESETS[preset])
    if seeds is not None:
        if seeds < 1:
            raise LabError(f"--seeds must be a positive integer, got {seeds}")
        p["seeds"] = seeds
    chosen = [c for c in claims_mod.CLAIMS if preset in c.get("presets", (preset,))]
    if only:
        unknown = [i for i in only if i not in CLAIM_IDS]
        if unknown:
            raise LabError(f"unknown claim id {', '.join(unknown)}; ids are "
                           f"{', '.join(CLAIM_IDS)}")
        chosen = [c for c in claims_mod.CLAIMS if c["id"] in only]
    base = claims_mod.resolve_base(overrides)
    plans = {c["id"]: claims_mod.expand(c, seeds=p["seeds"], steps_scale=p["steps_scale"],
                                        full=p["full"], base=base) for c in chosen}
    if distributed.data_parallel():  # a data-parallel run is its own run (its own key)
        for runs in plans.values():
            for cfg in runs:
                cfg["processes"] = distributed.world_size()
    settings = {"preset": preset, **p, "only": list(only) if only else None,
                "overrides": overrides or {}, "base": base}
    return chosen, plans, settings


def _claim_spec(claim: dict, runs: list[dict]) -> dict:
    spec = {k: v for k, v in claim.items() if k not in ("build", "presets")}
    spec["run_keys"] = [run_key(c) for c in runs]
    return spec


def summarize(claim_specs: list[dict], rows: list[dict]) -> dict:
    """Verdicts of every claim from the rows of its current runs (latest row per key)."""
    latest = {r["key"]: r for r in rows if r.get("kind") == "run"}
    claims = []
    for spec in claim_specs:
        current = [latest[k] for k in spec["run_keys"] if k in latest]
        claims.append(claim_verdict(spec, current))
    return {"rule": RULE, "claims": claims}


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".normlab-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise LabError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None


def run_lab(out, *, preset="default", only=None, seeds=None, workers=None, overrides=None,
            progress=True, stream=None) -> dict:
    """Run the study into ``out`` and return ``{"summary", "counts", "settings"}``.

    Inside an initialized process group (``normlab lab`` under ``torchrun``) every process
    runs each run together, data-parallel; process 0 writes the files (the others' summary is
    None)."""
    out = Path(out)
    chosen, plans, settings = plan_study(preset, only, seeds, overrides)
    lead = distributed.rank() == 0
    ok = None
    if lead:
        try:
            _check_writable(out)
        except LabError as exc:
            ok = str(exc)
    ok = distributed.broadcast_object(ok)
    if ok is not None:
        raise LabError(ok)
    workers = workers or max(1, min(os.cpu_count() or 1, 8))
    settings["workers"] = workers
    settings["processes"] = distributed.world_size()
    specs = [_claim_spec(c, plans[c["id"]]) for c in chosen]
    if lead:
        (out / "config.json").write_text(json.dumps(settings, indent=2, sort_keys=True))
        (out / "claims.json").write_text(json.dumps({"claims": specs}, indent=2))
    plan = [cfg for c in chosen for cfg in plans[c["id"]]]
    counts = run_all(plan, out / "results.jsonl", workers=workers, progress=progress,
                     stream=stream)
    summary = None
    if lead:
        rows, _ = read_rows(out / "results.jsonl")
        summary = summarize(specs, rows)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return {"summary": summary, "counts": counts, "settings": settings}
