"""From result rows to verdicts, with the rule written down once (the report prints it).

A claim's ``effect`` spec names a metric (below), the arm claimed better, a baseline arm, and
whether higher or lower is better; its ``decide`` entry says, as data fixed before the runs,
*where* the verdict is taken and why (``DECISIONS``). Each seed that both arms finished gives
one paired difference ``d`` (sign flipped when lower is better, so that positive always means
"as claimed"). Then (``normlab.results.inference``):

    effect = mean(d);  95% interval = mean(d) +- t(0.975, n-1) * sd(d) / sqrt(n)
    reproduced      if the interval lies above 0,
    not reproduced  if it lies below 0,
    inconclusive    otherwise (or with fewer than 2 paired seeds);
    stability       the share of seed-bootstrap resamples that give the same verdict, the
                    decision made again on each (fragile below ``inference.STABLE``);
    seeds needed    for an inconclusive verdict, the seeds that would give the observed effect
                    a 95% interval excluding zero with 80% power, from the observed spread.

Where the verdict is taken (``effect["decide"]["rule"]``):

* ``seed`` (the default): the two arms as declared, one row per arm and seed.
* ``area``: for a sweep over ``x`` (a learning-rate grid), the mean of the metric over
  ``log x`` (the trapezoid area under the metric-vs-log-x curve divided by the span), taken
  only over the points where at least one of the two arms *trains*: its mean ``trains.key``
  over the seeds reaches ``trains.chance + trains.margin``. A point where every arm sits at
  chance says nothing about the claim and never decides it. The area rather than one test per
  point with a Holm correction: with 3 to 5 seeds the per-point tests at ``0.05 / m`` need t
  quantiles near 9 (3 seeds, 4 points) and decide almost nothing, while the area gives one
  pre-declared number per seed, to which the interval, the bootstrap and the power figure
  apply unchanged. The selection looks at the arms' accuracy, never at their difference, and
  is made again on every bootstrap resample.
* A ``trains`` entry on a ``seed`` decision is a guard: if neither arm trains at the decision
  point the verdict is "not measured" instead of a difference between two chance levels.
* ``at_max_x: true`` (effect specs written before ``decide`` existed): the largest ``x`` of the
  claimed arm, kept so that old folders re-render as they were decided.

An *equivalence* claim ("as good as": ``effect["test"] == "equivalence"`` with a declared
``effect["margin"]`` in the metric's units) takes the same paired differences and applies two
one-sided tests (``inference.equivalence``): **equivalent** if the 90% t interval of mean(d)
lies inside (-margin, margin), **different** if it lies wholly outside, inconclusive
otherwise; the margin is printed beside the verdict. Its stability is computed the same way;
no seeds-needed figure is given for it.

An effect spec may carry ``also``: further comparisons of the same runs (another metric or
another pair of arms), each a spec of the same shape, decided by the same rules and shown
beside the claim's verdict (``claim_verdict(...)["also"]``); they never change it.

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

from normlab.results.inference import (
    MAX_SEEDS_ESTIMATE,
    RESAMPLES,
    STABLE,
    equivalence,
    paired_interval,
    seeds_needed,
    stability,
    t_quantile,
)
from normlab.results.setup import setup_line

__all__ = ["DECISIONS", "RULE", "TESTS", "claim_verdict", "compare_verdicts",
           "decision_problem", "effect_verdict", "metric", "metric_problem", "paired_effect",
           "reached", "seeds_words", "stability_words", "summarize", "t_quantile"]

RULE = ("For each seed, d = metric(claimed arm) - metric(baseline), signed so that d > 0 is "
        "the claimed direction, at the claim's declared decision point. Effect = mean(d) with "
        "a 95% t interval over seeds. Reproduced if the interval lies above 0, not reproduced "
        "if it lies below 0, inconclusive otherwise or with fewer than 2 seeds. A run stopped "
        "by an error counts with its last evaluation. For steps to a target, a seed where "
        "neither arm reached it is left out. Stability: the share of "
        f"{RESAMPLES} seed-bootstrap resamples (seeds drawn with replacement, the decision "
        f"made again on each) that give the same verdict; below {STABLE:.0%} the verdict is "
        "fragile. For an inconclusive verdict: the seeds that would give the observed effect "
        "a 95% interval excluding 0 with 80% power, taking the observed mean and spread of d "
        "as the truth. An equivalence claim is equivalent if the 90% interval of mean(d) lies "
        "inside (-margin, +margin) of its declared margin (two one-sided tests at 5%), "
        "different if it lies wholly outside, inconclusive otherwise.")

DECISIONS = ("seed", "area")
TESTS = ("difference", "equivalence")


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
    ci = paired_interval(diffs)
    if ci is None:
        return {"effect": mean, "ci": None, "n_seeds": n, "verdict": "inconclusive"}
    lo, hi = ci
    verdict = "reproduced" if lo > 0 else "not reproduced" if hi < 0 else "inconclusive"
    return {"effect": mean, "ci": [lo, hi], "n_seeds": n, "verdict": verdict}


def decision_problem(effect: dict) -> str | None:
    """Why an effect spec's ``decide`` entry cannot be used, or None (absent is fine)."""
    test = effect.get("test", "difference")
    if test not in TESTS:
        return f"effect 'test' must be one of {', '.join(TESTS)}, got {test!r}"
    margin = effect.get("margin")
    if test == "equivalence" and (not isinstance(margin, int | float)
                                  or isinstance(margin, bool) or not margin > 0):
        return f"an equivalence effect needs a positive number 'margin', got {margin!r}"
    also = effect.get("also", [])
    if not isinstance(also, list):
        return "effect 'also' must be a list of effect specs"
    for i, extra in enumerate(also):
        if not isinstance(extra, dict) or not all(
                isinstance(extra.get(k), str) for k in ("metric", "arm", "baseline", "better")):
            return f"effect 'also' entry {i + 1} needs string metric, arm, baseline and better"
        if metric_problem(extra["metric"]) or extra["better"] not in ("higher", "lower"):
            return f"effect 'also' entry {i + 1}: " + (
                metric_problem(extra["metric"]) or "'better' must be higher or lower")
        if "also" in extra:
            return f"effect 'also' entry {i + 1} has its own 'also' (one level only)"
        problem = decision_problem(extra)
        if problem:
            return f"effect 'also' entry {i + 1}: {problem}"
    dec = effect.get("decide")
    if dec is None:
        return None
    if not isinstance(dec, dict):
        return "'decide' must be an object"
    if dec.get("rule", "seed") not in DECISIONS:
        return f"decide rule must be one of {', '.join(DECISIONS)}, got {dec.get('rule')!r}"
    trains = dec.get("trains")
    if dec.get("rule") == "area" and trains is None:
        return "decide rule 'area' needs 'trains' (key, chance, margin)"
    if trains is not None:
        if not isinstance(trains, dict) or not isinstance(trains.get("key"), str) or not all(
                isinstance(trains.get(k), int | float) and not isinstance(trains.get(k), bool)
                for k in ("chance", "margin")):
            return "decide 'trains' needs a string key and numbers chance and margin"
    if "why" in dec and not isinstance(dec["why"], str):
        return "decide 'why' must be a string"
    return None


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


def _trains_value(row: dict, key: str) -> float | None:
    v = (row.get("final") or {}).get(key)
    return float(v) if v is not None else None


def _rows_by(rows, arm):
    """{(seed, x): row} of one arm (the latest row wins)."""
    return {(r["config"]["seed"], r["config"].get("x")): r for r in rows
            if r["config"]["arm"] == arm}


def _pair(ra, rb, spec, trains_key):
    """One seed's observation at one point: the two metric values, whether neither reached
    a steps_to target, and the two arms' trains values (for the decision's guard)."""
    m = spec["metric"]
    neither = reached(ra, m) is False and reached(rb, m) is False
    return {"a": metric(ra, m), "b": metric(rb, m), "neither": neither,
            "ta": _trains_value(ra, trains_key) if trains_key else None,
            "tb": _trains_value(rb, trains_key) if trains_key else None}


def _entries(spec, rows):
    """One entry per paired seed: ``{x: observation}`` (x is None for a plain seed rule)."""
    dec = spec.get("decide") or {}
    trains_key = (dec.get("trains") or {}).get("key")
    a, b = _rows_by(rows, spec["arm"]), _rows_by(rows, spec["baseline"])
    if spec.get("at_max_x") and dec.get("rule", "seed") == "seed":
        xs = [x for (_, x) in a if x is not None]
        top = max(xs) if xs else None
        a = {k: r for k, r in a.items() if k[1] == top}
        b = {k: r for k, r in b.items() if k[1] == top}
    by_seed: dict = {}
    for (seed, x), ra in a.items():
        rb = b.get((seed, x))
        if rb is None and dec.get("rule", "seed") == "seed":
            # the arms carry different x (ghost group k=64 vs k=2): pair by seed alone
            rb = next((r for (s, _), r in b.items() if s == seed), None)
        if rb is not None:
            by_seed.setdefault(seed, {})[x] = _pair(ra, rb, spec, trains_key)
    return [by_seed[s] for s in sorted(by_seed)]


def _trains_at(entries, x, trains) -> bool:
    """Whether at least one arm's mean ``trains.key`` over the entries reaches chance+margin."""
    need = trains["chance"] + trains["margin"]
    for side in ("ta", "tb"):
        vals = [e[x][side] for e in entries if x in e and _finite(e[x][side])]
        if vals and statistics.fmean(vals) >= need:
            return True
    return False


def _area(points, log):
    """Mean of a curve over (log) x: trapezoid area / span; the value itself at one point."""
    if len(points) == 1:
        return points[0][1]
    xs = [math.log10(x) if log else x for x, _ in points]
    ys = [y for _, y in points]
    area = sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1))
    return area / (xs[-1] - xs[0])


def _decide(spec, entries) -> dict:
    """The paired differences at the declared decision point, and what was left out."""
    dec = spec.get("decide") or {}
    sign = 1.0 if spec["better"] == "higher" else -1.0
    trains = dec.get("trains")
    if dec.get("rule", "seed") == "area":
        xs = sorted({x for e in entries for x in e if x is not None})
        used = [x for x in xs if _trains_at(entries, x, trains)]
        diffs = []
        for e in entries:
            if not used or not all(x in e and _finite(e[x]["a"]) and _finite(e[x]["b"])
                                   for x in used):
                continue
            area_a = _area([(x, e[x]["a"]) for x in used], dec.get("log", True))
            area_b = _area([(x, e[x]["b"]) for x in used], dec.get("log", True))
            diffs.append(sign * (area_a - area_b))
        return {"diffs": diffs, "neither": 0, "used": used,
                "left_out": [x for x in xs if x not in used]}
    obs = [o for e in entries for o in e.values()]
    if trains is not None:
        probe = [{None: o} for o in obs]
        if probe and not _trains_at(probe, None, trains):
            return {"diffs": [], "neither": 0, "at_chance": True}
    diffs, neither = [], 0
    for o in obs:
        if o["neither"]:
            neither += 1  # both censored: says nothing about which is faster
        elif _finite(o["a"]) and _finite(o["b"]):
            diffs.append(sign * (o["a"] - o["b"]))
    return {"diffs": diffs, "neither": neither}


def _fmt_x(x) -> str:
    return f"{x:g}" if isinstance(x, int | float) else str(x)


def _comparison(spec, decided, at_x) -> str:
    if spec.get("test") == "equivalence":
        text = (f"{spec['metric']}: {spec['arm']} vs {spec['baseline']} (equivalence: "
                f"margin +-{_fmt_x(spec['margin'])} {spec.get('unit', '')}".rstrip())
    else:
        text = (f"{spec['metric']}: {spec['arm']} vs {spec['baseline']} "
                f"({spec['better']} is better")
    dec = spec.get("decide") or {}
    if dec.get("rule") == "area":
        tr = dec["trains"]
        used = ", ".join(map(_fmt_x, decided["used"])) or "none"
        text += (f"; mean over log x at x = {used}, where an arm trains: mean {tr['key']} >= "
                 f"{_fmt_x(tr['chance'] + tr['margin'])} (chance {_fmt_x(tr['chance'])} + "
                 f"{_fmt_x(tr['margin'])})")
        if decided["left_out"]:
            text += (f"; left out, every arm at chance: x = "
                     f"{', '.join(map(_fmt_x, decided['left_out']))}")
    elif at_x is not None:
        text += f", at x={at_x}"
    return text + ")"


def _judge(spec: dict, diffs: list[float]) -> dict:
    """The verdict of paired differences under the effect's test."""
    if spec.get("test") == "equivalence":
        eq = equivalence(diffs, spec["margin"])
        return {"effect": eq["effect"], "ci": eq["ci"], "n_seeds": eq["n_seeds"],
                "verdict": eq["verdict"]}
    return paired_effect(diffs)


def effect_verdict(spec: dict, rows: list[dict]) -> dict:
    """One effect spec (a claim's ``effect`` or one of its ``also`` entries) over the claim's
    rows: verdict, effect, interval, stability, seeds needed, what was left out."""
    entries = _entries(spec, rows)
    decided = _decide(spec, entries)
    diffs = decided["diffs"]
    out = _judge(spec, diffs)
    note = None
    neither = decided["neither"]
    if decided.get("at_chance"):
        note = "not measured: neither arm trains above chance at the decision point"
    elif spec.get("decide", {}).get("rule") == "area" and not decided["used"] and entries:
        note = "not measured: every arm is at chance at every x"
    elif neither and not diffs:
        note = "not measured: the target was never reached in any run"
    elif neither:
        note = f"{neither} seed(s) where neither arm reached the target are left out"
    stable = None
    if out["effect"] is not None and len(entries) >= 2:
        stable = stability(entries, lambda es: _judge(spec, _decide(spec, es)["diffs"])
                           ["verdict"])
    needed = None
    if (out["verdict"] == "inconclusive" and len(diffs) >= 2
            and spec.get("test") != "equivalence"):
        needed = seeds_needed(out["effect"], statistics.stdev(diffs))
    at_x = None
    if spec.get("at_max_x"):
        xs = [r["config"].get("x") for r in rows if r["config"]["arm"] == spec["arm"]
              and r["config"].get("x") is not None]
        at_x = max(xs) if xs else None
    equiv = spec.get("test") == "equivalence"
    return {"verdict": out["verdict"], "effect": out["effect"], "ci": out["ci"],
            "n_seeds": out["n_seeds"], "sd": statistics.stdev(diffs) if len(diffs) >= 2
            else None, "stability": stable, "fragile": stable is not None and stable < STABLE,
            "seeds_needed": needed, "decision": _decision_text(spec), "note": note,
            "comparison": _comparison(spec, decided, at_x),
            "test": "equivalence" if equiv else "difference",
            "level": 0.90 if equiv else 0.95, "margin": spec.get("margin") if equiv else None,
            "unit": spec.get("unit", "")}


def claim_verdict(claim: dict, rows: list[dict]) -> dict:
    """The verdict of ``claim`` (its spec from claims.json) over its rows (those whose
    ``claim`` field is the spec's ``claim_of_rows``, else its id: a study's comparisons share
    the as-is rows): effect, interval, stability over seed resamples, and for an inconclusive
    verdict the seeds that would decide it; ``also``: the verdicts of the effect's further
    comparisons (same rows)."""
    spec = claim["effect"]
    rows = [r for r in rows if r.get("claim") == claim.get("claim_of_rows", claim["id"])]
    out = {"id": claim["id"], "title": claim["title"], **effect_verdict(spec, rows),
           "rule": RULE, "paper": claim.get("paper")}
    out["also"] = [{"metric": extra["metric"], "arm": extra["arm"],
                    "baseline": extra["baseline"], **effect_verdict(extra, rows)}
                   for extra in spec.get("also", [])]
    return out


def _decision_text(spec) -> str:
    dec = spec.get("decide") or {}
    if spec.get("at_max_x") and dec.get("rule", "seed") == "seed":
        return "at the largest x of the grid (a rule of folders written before 'decide')"
    rule = dec.get("rule", "seed")
    text = {"seed": "the two arms as declared, paired by seed",
            "area": "mean over log x of the points where at least one arm trains"}[rule]
    return text + (f": {dec['why']}" if dec.get("why") else "")


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


def stability_words(v: dict) -> str:
    """"stable in 97% of resamples" / "fragile: the same verdict in 60% of resamples" (or
    "" when no stability was computed)."""
    share = v.get("stability")
    if share is None:
        return ""
    if v.get("fragile"):
        return f"fragile: the same verdict in only {share:.0%} of resamples"
    return f"stable in {share:.0%} of resamples"


def seeds_words(v: dict) -> str:
    """"about 14 seeds would decide this" for an inconclusive verdict with an estimate."""
    n = v.get("seeds_needed")
    if n is None:
        return ""
    if n > MAX_SEEDS_ESTIMATE:
        return f"more than {MAX_SEEDS_ESTIMATE} seeds would be needed to decide this"
    return f"about {n} seeds would decide this"


def compare_verdicts(a: list[dict], b: list[dict]) -> list[dict]:
    """Claim by claim, two lists of verdicts (two folders of the same study: other machines or
    versions): both verdicts and effects, and what disagrees (``flags``, empty when none)."""
    by_a, by_b = {v["id"]: v for v in a}, {v["id"]: v for v in b}
    ids = list(by_a) + [i for i in by_b if i not in by_a]
    out = []
    for cid in ids:
        va, vb = by_a.get(cid), by_b.get(cid)
        flags = []
        if va is None or vb is None:
            flags.append(f"only in {'A' if vb is None else 'B'}")
        else:
            if va["verdict"] != vb["verdict"]:
                flags.append(f"verdicts differ: {va['verdict']} vs {vb['verdict']}")
            if va.get("comparison") != vb.get("comparison"):  # metric, arms or points
                flags.append("decided differently (rule or decision points)")
            if va.get("n_seeds") != vb.get("n_seeds"):
                flags.append(f"seeds differ: {va.get('n_seeds')} vs {vb.get('n_seeds')}")
        v = va or vb
        out.append({"id": cid, "title": v["title"], "a": va, "b": vb, "flags": flags,
                    "agree": va is not None and vb is not None and
                    va["verdict"] == vb["verdict"]})
    return out
