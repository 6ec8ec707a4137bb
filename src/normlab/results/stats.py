"""From result rows to verdicts, with the rule written down once (the report prints it).

A claim's ``effect`` spec names a metric (below), the arm claimed better, a baseline arm, and
whether higher or lower is better. For every seed that both arms finished, the difference
``d = metric(arm) - metric(baseline)`` (sign flipped when lower is better, so that positive
always means "as claimed") is one paired observation. Then:

    effect = mean(d);  95% interval = mean(d) +- t(0.975, n-1) * sd(d) / sqrt(n)
    reproduced      if the interval lies above 0,
    not reproduced  if it lies below 0,
    inconclusive    otherwise (or with fewer than 2 paired seeds).

A run that stopped with an error (e.g. batch norm refusing one value per channel) counts with
its last evaluation: the model as it stood when it could not go on.

Metrics (computed from one row):

* ``final:KEY``: ``row["final"][KEY]``, the last evaluation;
* ``steps_to:KEY:T``: the first evaluated step with ``KEY >= T``; a run that never gets there
  counts as its last step plus one evaluation interval (censored). A seed where neither arm
  got there is no measurement and is left out; if no run got there at all the verdict is
  inconclusive with no effect (``note`` says so), never a measured zero;
* ``gap``: final ``train_acc - test_acc``;
* ``drop:SHIFT``: final ``test_acc - test_acc_SHIFT``;
* ``drift:L``: for hidden layer ``L`` of the activation probe, the largest distance of the
  median from its value at the first evaluation, divided by the 15-85 percentile spread there.
"""

from __future__ import annotations

import math
import statistics

from normlab.results.setup import setup_line

__all__ = ["RULE", "claim_verdict", "metric", "metric_problem", "paired_effect", "reached",
           "summarize", "t_quantile"]

RULE = ("For each seed, d = metric(claimed arm) - metric(baseline), signed so that d > 0 is "
        "the claimed direction. Effect = mean(d) with a 95% t interval over seeds. "
        "Reproduced if the interval lies above 0, not reproduced if it lies below 0, "
        "inconclusive otherwise or with fewer than 2 seeds. A run stopped by an error counts "
        "with its last evaluation. For steps to a target, a seed where neither arm reached "
        "it is left out.")

# two-sided 95% t quantiles for small df (scipy used when present, these otherwise)
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t_quantile(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df))
    except ImportError:  # pragma: no cover - scipy comes with the lab extra
        keys = sorted(k for k in _T975 if k <= df)
        return _T975[keys[-1]] if df <= 30 else 1.96


def metric(row: dict, name: str) -> float | None:
    """The value of metric ``name`` for one finished run (None if it does not apply)."""
    final = row.get("final") or {}
    kind, _, rest = name.partition(":")
    if kind == "final":
        v = final.get(rest)
        return None if v is None else float(v)
    if kind == "gap":
        if "train_acc" not in final:
            return None
        return float(final["train_acc"] - final["test_acc"])
    if kind == "drop":
        key = f"test_acc_{rest}"
        if key not in final:
            return None
        return float(final["test_acc"] - final[key])
    if kind == "steps_to":
        key, _, threshold = rest.partition(":")
        evals = row.get("evals") or []
        for e in evals:
            if e.get(key) is not None and e[key] >= float(threshold):
                return float(e["step"])
        if not evals:
            return None
        return float(row["config"]["steps"] + row["config"]["eval_every"])
    if kind == "drift":
        layer = int(rest)
        probes = [e["probe"] for e in row.get("evals") or [] if e.get("probe")]
        if not probes:
            return None
        p15, p50, p85 = probes[0][layer]
        spread = max(p85 - p15, 1e-12)
        return max(abs(p[layer][1] - p50) for p in probes) / spread
    raise ValueError(f"unknown metric {name!r}")


def metric_problem(name) -> str | None:
    """Why ``name`` is not a metric this module computes, or None."""
    if not isinstance(name, str):
        return "a metric name must be a string"
    kind, _, rest = name.partition(":")
    try:
        if kind == "steps_to":
            key, _, threshold = rest.partition(":")
            float(threshold)
            return None if key else "steps_to needs steps_to:KEY:T"
        if kind == "drift":
            int(rest)
            return None
    except ValueError:
        return f"bad metric {name!r}"
    return None if kind in ("final", "gap", "drop") else f"unknown metric {name!r}"


def reached(row: dict, name: str) -> bool | None:
    """For a ``steps_to:KEY:T`` metric, whether the run got to the target (None otherwise)."""
    kind, _, rest = name.partition(":")
    if kind != "steps_to":
        return None
    key, _, threshold = rest.partition(":")
    return any(e.get(key) is not None and e[key] >= float(threshold)
               for e in row.get("evals") or [])


def paired_effect(diffs: list[float]) -> dict:
    """Mean, 95% t interval and verdict of paired differences (positive = as claimed)."""
    n = len(diffs)
    if n == 0:
        return {"effect": None, "ci": None, "n_seeds": 0, "verdict": "inconclusive"}
    mean = statistics.fmean(diffs)
    if n < 2:
        return {"effect": mean, "ci": None, "n_seeds": n, "verdict": "inconclusive"}
    half = t_quantile(n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    lo, hi = mean - half, mean + half
    verdict = "reproduced" if lo > 0 else "not reproduced" if hi < 0 else "inconclusive"
    return {"effect": mean, "ci": [lo, hi], "n_seeds": n, "verdict": verdict}


def _arm_rows(rows, arm, at_x):
    out = {}
    for r in rows:
        if r["config"]["arm"] != arm:
            continue
        if at_x is not None and r["config"].get("x") != at_x:
            continue
        out[r["config"]["seed"]] = r
    return out


def claim_verdict(claim: dict, rows: list[dict]) -> dict:
    """The verdict of ``claim`` (its spec from claims.json) over its rows."""
    spec = claim["effect"]
    rows = [r for r in rows if r.get("claim") == claim["id"]]
    at_x = None
    if spec.get("at_max_x"):
        xs = [r["config"]["x"] for r in rows if r["config"]["arm"] == spec["arm"]
              and r["config"].get("x") is not None]
        at_x = max(xs) if xs else None
    a = _arm_rows(rows, spec["arm"], at_x)
    b = _arm_rows(rows, spec["baseline"], at_x)
    sign = 1.0 if spec["better"] == "higher" else -1.0
    diffs, neither = [], 0
    for seed in sorted(set(a) & set(b)):
        if reached(a[seed], spec["metric"]) is False and \
                reached(b[seed], spec["metric"]) is False:
            neither += 1  # both censored: says nothing about which is faster
            continue
        ma, mb = metric(a[seed], spec["metric"]), metric(b[seed], spec["metric"])
        if ma is not None and mb is not None and math.isfinite(ma) and math.isfinite(mb):
            diffs.append(sign * (ma - mb))
    out = paired_effect(diffs)
    note = None
    if neither and not diffs:
        note = "not measured: the target was never reached in any run"
    elif neither:
        note = (f"{neither} seed(s) where neither arm reached the target are left out")
    return {"id": claim["id"], "title": claim["title"], "verdict": out["verdict"],
            "effect": out["effect"], "ci": out["ci"], "n_seeds": out["n_seeds"],
            "rule": RULE, "paper": claim.get("paper"), "note": note,
            "comparison": f"{spec['metric']}: {spec['arm']} vs {spec['baseline']} "
                          f"({spec['better']} is better"
                          + (f", at x={at_x}" if at_x is not None else "") + ")"}


def summarize(specs: list[dict], rows: list[dict]) -> dict:
    """The summary of a lab folder (what ``summary.json`` holds): for each claim spec, the
    verdict over the latest row of each of its current run keys, and the settings line of those
    rows (``results.setup``). The one computation of it; the report writes it."""
    latest = {r["key"]: r for r in rows if r.get("kind") == "run"}
    claims = []
    for spec in specs:
        current = [latest[k] for k in spec.get("run_keys", []) if k in latest]
        verdict = claim_verdict(spec, current)
        verdict["settings"] = setup_line(current, spec.get("setup_keys"))
        claims.append(verdict)
    return {"rule": RULE, "claims": claims}
