"""The recommendation of a study (``normlab advise``), computed from its rows alone.

A study's row (``normlab.lab.userstudy``) is one run of one arm (``as-is``: the model as
given, or a normalization put in by surgery) at one batch size, learning rate and seed, with
the metric on the validation and the test split and the measured time per training step.
``RULE`` below is the whole decision; it is printed with the advice and on the page.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from pathlib import Path

from normlab.results.inference import STABLE, paired_interval, seeds_needed, stability
from normlab.results.store import read_rows

__all__ = ["BASELINE", "RULE", "advice_lines", "advise", "advise_folder", "study_claims",
           "study_rows"]

BASELINE = "as-is"

RULE = ("Per batch size, each arm's learning rate is the one with the best mean validation "
        "metric over seeds (a diverged or failed run counts as the worst). At those rates, "
        "for each seed, d = test metric(arm) - test metric(as-is), signed so that d > 0 means "
        "the arm is better; effect = mean(d) with a 95% t interval over the seeds both "
        "finished. An arm wins if the interval lies above 0, loses if it lies below 0, and "
        "ties (within the noise) otherwise. Use the winner with the largest effect; if no arm "
        "wins, keep what you have (as-is). No recommendation from fewer than 2 paired seeds. "
        "An arm whose runs all stopped with an error (a surgery refusal, batch norm on a batch "
        "of 1) is reported with the reason and never recommended; if as-is itself cannot run, "
        "the arm with the best mean validation metric is named, against the next best. Cost: "
        "the mean measured training time per step at the chosen rate. Stability: the share of "
        f"seed-bootstrap resamples giving the same verdict (fragile below {STABLE:.0%}).")


def study_rows(rows: list[dict], keys=None) -> list[dict]:
    """The latest row of each study run (of ``keys`` only, when given)."""
    keys = None if keys is None else set(keys)
    latest = {}
    for r in rows:
        cfg = r.get("config") or {}
        if r.get("kind") == "run" and cfg.get("study") and (keys is None or r["key"] in keys):
            latest[r["key"]] = r
    return list(latest.values())


def _finite(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _value(row: dict, split: str) -> float | None:
    """The row's metric on ``split`` (val or test); None for a run that stopped with an
    error (it has no final evaluation)."""
    cfg = row["config"]
    if row.get("status") == "error":
        return None
    v = (row.get("final") or {}).get(f"{split}_{cfg['metric_name']}")
    return float(v) if _finite(v) else None


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _arm_summary(rows: list[dict], sign: float) -> dict:
    """One arm at one batch size: its best learning rate (validation) and its rows there."""
    by_lr: dict[float, list[dict]] = {}
    for r in rows:
        by_lr.setdefault(r["config"]["lr"], []).append(r)
    scores = {}
    for lr, rs in by_lr.items():
        vals = [_value(r, "val") for r in rs]
        # a diverged or failed seed counts as the worst: the rate is not safe for this arm
        scores[lr] = -math.inf if any(v is None for v in vals) else sign * statistics.fmean(vals)
    ran = {lr: s for lr, s in scores.items() if s > -math.inf}
    if not ran:
        partial = {lr: rs for lr, rs in by_lr.items() if any(_value(r, "val") is not None
                                                            for r in rs)}
        if not partial:
            errors = Counter(r.get("error") or r.get("status") for r in rows)
            return {"status": "error", "reason": errors.most_common(1)[0][0], "lr": None,
                    "rows": [], "lrs": {}}
        # every rate lost a seed: take the best mean over the seeds that finished
        ran = {lr: sign * _mean([_value(r, "val") for r in rs]) for lr, rs in partial.items()}
    best = max(sorted(ran), key=lambda lr: ran[lr])
    chosen = sorted(by_lr[best], key=lambda r: r["config"]["seed"])
    failed = [r for r in chosen if _value(r, "test") is None]
    spp = [r.get("seconds_per_step") for r in chosen if _finite(r.get("seconds_per_step"))]
    return {"status": "ok", "reason": (f"{len(failed)} of {len(chosen)} seeds failed or "
                                       "diverged at this rate" if failed else None),
            "lr": best, "rows": chosen,
            "lrs": {f"{lr:g}": (None if s == -math.inf else sign * s)
                    for lr, s in sorted(scores.items())},
            "val": _mean(_value(r, "val") for r in chosen),
            "test": _mean(_value(r, "test") for r in chosen),
            "n_seeds": len(chosen),
            "seconds_per_step": statistics.fmean(spp) if spp else None,
            "surgery": next((r.get("surgery") for r in chosen if r.get("surgery")), None)}


def _verdict(diffs) -> str | None:
    ci = paired_interval(diffs)
    return None if ci is None else "wins" if ci[0] > 0 else "loses" if ci[1] < 0 else "ties"


def _paired(a: dict, b: dict, sign: float) -> dict:
    """Paired by seed: d = sign * (test(a) - test(b)), its mean and 95% interval."""
    tb = {r["config"]["seed"]: _value(r, "test") for r in b["rows"]}
    diffs = []
    for r in a["rows"]:
        va, vb = _value(r, "test"), tb.get(r["config"]["seed"])
        if va is not None and vb is not None:
            diffs.append(sign * (va - vb))
    verdict = _verdict(diffs)
    ci = paired_interval(diffs)
    share = stability(diffs, _verdict)
    needed = None
    if verdict == "ties" and len(diffs) >= 2:
        needed = seeds_needed(statistics.fmean(diffs), statistics.stdev(diffs))
    return {"effect": statistics.fmean(diffs) if diffs else None,
            "ci": None if ci is None else list(ci), "paired_seeds": len(diffs),
            "verdict": verdict, "seeds_needed": needed, "stability": share,
            "fragile": share is not None and share < STABLE}


def advise(rows: list[dict]) -> dict:
    """The advice over study rows (``study_rows`` is applied): ``{"rule", "metric", "better",
    "regimes": [{"batch_size", "arms": [...], "use", "decision", "text"}]}``.

    ``decision``: ``switch`` (an arm beats as-is decisively), ``keep`` (nothing does),
    ``replace`` (as-is cannot run at this batch size; the best arm that runs),
    ``undecided`` (fewer than 2 paired seeds, or nothing ran)."""
    rows = study_rows(rows)
    if not rows:
        return {"rule": RULE, "metric": None, "better": None, "regimes": []}
    cfg0 = rows[0]["config"]
    metric, better = cfg0["metric_name"], cfg0["better"]
    sign = 1.0 if better == "higher" else -1.0
    regimes = []
    for bs in sorted({r["config"]["batch_size"] for r in rows}):
        at = [r for r in rows if r["config"]["batch_size"] == bs]
        order = list(dict.fromkeys(r["config"]["arm"] for r in at))
        if BASELINE in order:
            order.remove(BASELINE)
            order.insert(0, BASELINE)
        arms = {a: _arm_summary([r for r in at if r["config"]["arm"] == a], sign)
                for a in order}
        for a in order:
            arms[a]["arm"] = a
        regimes.append(_decide(bs, arms, metric, sign))
    return {"rule": RULE, "metric": metric, "better": better, "regimes": regimes}


def _cost(arm: dict, base: dict | None) -> str:
    s = arm.get("seconds_per_step")
    if s is None:
        return "time per step not measured"
    text = f"{s * 1e3:.3g} ms/step"
    b = None if base is None else base.get("seconds_per_step")
    if b and arm is not base:
        text += f" ({s / b:.2f}x as-is)"
    return text


def _stable(a: dict) -> str:
    share = a.get("stability")
    if share is None:
        return ""
    return (f" but fragile (the same verdict in only {share:.0%} of seed-bootstrap resamples)"
            if a.get("fragile") else f" (stable in {share:.0%} of seed-bootstrap resamples)")


def _fmt(v) -> str:
    return "-" if v is None else f"{v:+.3g}"


def _decide(bs: int, arms: dict, metric: str, sign: float) -> dict:
    base = arms.get(BASELINE)
    ran = [a for a in arms.values() if a["status"] == "ok"]
    out = {"batch_size": bs, "arms": [], "use": None, "decision": "undecided", "text": ""}
    if base is not None and base["status"] == "ok":
        for a in ran:
            a.update(_paired(a, base, sign) if a is not base else
                     {"effect": None, "ci": None, "verdict": None, "paired_seeds": None,
                      "seeds_needed": None, "stability": None, "fragile": False})
        others = [a for a in ran if a is not base]
        if base["n_seeds"] < 2 or any(a["paired_seeds"] < 2 for a in others):
            out["text"] = ("no recommendation: fewer than 2 paired seeds (run the same "
                           "command with --seeds 2 or more; finished runs are kept)")
        else:
            winners = [a for a in others if a["verdict"] == "wins"]
            if winners:
                best = max(winners, key=lambda a: a["effect"])
                out.update(use=best["arm"], decision="switch", text=(
                    f"use {best['arm']} (lr {best['lr']:g}): better than as-is by "
                    f"{_fmt(best['effect'])} {metric}, 95% interval [{_fmt(best['ci'][0])}, "
                    f"{_fmt(best['ci'][1])}], decisive{_stable(best)}; cost "
                    f"{_cost(best, base)}"))
            else:
                ties = [a for a in others if a["verdict"] == "ties"]
                text = (f"keep what you have (as-is, lr {base['lr']:g}): no arm beats it "
                        "decisively")
                if ties:
                    t = max(ties, key=lambda a: a["effect"])
                    text += (f"; closest: {t['arm']} {_fmt(t['effect'])} {metric}, 95% "
                             f"interval [{_fmt(t['ci'][0])}, {_fmt(t['ci'][1])}], a tie "
                             "within the noise")
                out.update(use=BASELINE, decision="keep", text=text)
    elif ran:  # the model's own normalization cannot run here
        why = "no runs" if base is None else base["reason"]
        ranked = sorted(ran, key=lambda a: -math.inf if a["val"] is None  # chosen on val
                        else sign * a["val"], reverse=True)
        best = ranked[0]
        for a in ran:
            a.update({"effect": None, "ci": None, "verdict": None, "paired_seeds": None,
                      "seeds_needed": None, "stability": None, "fragile": False})
        if len(ranked) > 1:
            best.update(_paired(best, ranked[1], sign))
            best["against"] = ranked[1]["arm"]
        if best["n_seeds"] < 2 or (len(ranked) > 1 and best["paired_seeds"] < 2):
            out["text"] = (f"as-is cannot run at batch size {bs} ({why}); no recommendation "
                           "from fewer than 2 seeds")
        else:
            text = (f"as-is cannot run at batch size {bs} ({why}); use {best['arm']} "
                    f"(lr {best['lr']:g}, test {metric} {best['test']:.3g})")
            if len(ranked) > 1:
                word = {"wins": "decisive", "ties": "a tie within the noise",
                        "loses": "worse"}[best["verdict"]]
                text += (f": against {ranked[1]['arm']} {_fmt(best['effect'])} {metric}, 95% "
                         f"interval [{_fmt(best['ci'][0])}, {_fmt(best['ci'][1])}], {word}")
            out.update(use=best["arm"], decision="replace",
                       text=text + f"; cost {_cost(best, None)}")
    else:
        out["text"] = "no arm could run at this batch size"
    for a in arms.values():
        entry = {k: v for k, v in a.items() if k != "rows"}
        entry["cost"] = _cost(a, base if base is not None and base["status"] == "ok" else None)
        out["arms"].append(entry)
    return out


def advice_lines(advice: dict) -> list[str]:
    """The advice as lines of text (what ``normlab advise`` prints)."""
    if not advice["regimes"]:
        return ["no study rows here yet"]
    better = "higher" if advice["better"] == "higher" else "lower"
    lines = [f"metric: {advice['metric']} ({better} is better); effect = improvement over "
             "as-is on the test split, each arm at its own best learning rate"]
    for reg in advice["regimes"]:
        lines.append(f"batch size {reg['batch_size']}: {reg['text']}")
        for a in reg["arms"]:
            if a["status"] == "error":
                lines.append(f"  {a['arm']:<14} cannot run: {a['reason']}")
                continue
            ci = "" if not a.get("ci") else f" [{_fmt(a['ci'][0])}, {_fmt(a['ci'][1])}]"
            word = a.get("verdict") or "one seed: no interval"
            vs = "" if a.get("effect") is None else \
                f"  vs {a.get('against', BASELINE)} {_fmt(a['effect'])}{ci} {word}"
            seeds = f" (about {a['seeds_needed']} seeds would decide)" \
                if a.get("seeds_needed") else ""
            if a.get("fragile"):
                seeds += f" fragile ({a['stability']:.0%})"
            test = "-" if a["test"] is None else f"{a['test']:.3g}"
            lines.append(f"  {a['arm']:<14} lr {a['lr']:<6g} test {test:<7} n={a['n_seeds']}"
                         f"  {a['cost']}{vs}{seeds}"
                         + (f"  ({a['reason']})" if a.get("reason") else ""))
    lines.append(f"rule: {advice['rule']}")
    return lines


def advise_folder(folder) -> dict:
    """The advice of a study folder: its ``results.jsonl`` rows, limited to the current
    plan's run keys when ``config.json`` names them."""
    folder = Path(folder)
    keys = None
    config = folder / "config.json"
    if config.is_file():
        try:
            keys = json.loads(config.read_text("utf-8")).get("run_keys")
        except (ValueError, OSError, AttributeError):
            keys = None
    rows, _ = read_rows(folder / "results.jsonl")
    return advise(study_rows(rows, keys))


def study_claims(rows: list[dict]) -> list[dict]:
    """claims.json entries for a study: per batch size, each arm against as-is at their own
    best learning rates (so ``normlab report`` decides and draws them as lab claims)."""
    advice = advise(rows)
    metric, claims = advice["metric"], []
    for reg in advice["regimes"]:
        bs = reg["batch_size"]
        arms = {a["arm"]: a for a in reg["arms"]}
        chosen = {a: [r["key"] for r in study_rows(rows) if r["config"]["batch_size"] == bs
                      and r["config"]["arm"] == a and r["config"]["lr"] == s["lr"]]
                  for a, s in arms.items() if s["status"] == "ok"}
        base_keys = chosen.get(BASELINE) or [r["key"] for r in study_rows(rows)
                                             if r["config"]["batch_size"] == bs and
                                             r["config"]["arm"] == BASELINE]
        for arm in arms:
            if arm == BASELINE:
                continue
            keys = chosen.get(arm) or [r["key"] for r in study_rows(rows)
                                       if r["config"]["batch_size"] == bs
                                       and r["config"]["arm"] == arm]
            claims.append({
                "id": f"bs{bs}-{arm}", "claim_of_rows": "study",
                "title": f"batch size {bs}: {arm} against as-is, each at its own best "
                         "learning rate",
                "effect": {"metric": f"final:test_{metric}", "arm": arm, "baseline": BASELINE,
                           "better": advice["better"]},
                "figure": {"type": "bars", "key": f"test_{metric}",
                           "ylabel": f"test {metric}"},
                "setup": "The study's runs at each arm's learning rate chosen on the "
                         "validation split.",
                "paper": None, "run_keys": keys + base_keys,
                "setup_keys": ["steps", "batch_size", "lr", "optimizer"]})
    return claims
