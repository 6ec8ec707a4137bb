"""Verdicts a scientist would sign: declared decision points, seed-bootstrap stability, the
seeds an inconclusive verdict would need, equivalence, and two folders compared; each on
synthetic rows or numbers whose answer is known."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from normlab.results.inference import (
    MAX_SEEDS_ESTIMATE,
    STABLE,
    equivalence,
    seeds_needed,
    stability,
    t_quantile,
)
from normlab.results.stats import claim_verdict, compare_verdicts, decision_problem, paired_effect


def _row(claim, arm, seed, acc, x=None):
    return {"kind": "run", "claim": claim, "status": "ok",
            "config": {"arm": arm, "seed": seed, "x": x, "steps": 100, "eval_every": 10},
            "final": {"test_acc": acc, "train_acc": acc}, "evals": []}


_TRAINS = {"key": "test_acc", "chance": 0.1, "margin": 0.1}
LR = {"id": "lr", "title": "Higher rates",
      "effect": {"metric": "final:test_acc", "arm": "batch", "baseline": "none",
                 "better": "higher", "decide": {"rule": "area", "log": True,
                                                "trains": _TRAINS, "why": "test"}}}


def _sweep(acc, seeds=3, jitter=0.01):
    """Rows of a learning-rate sweep: ``acc[arm][x]`` plus a small per-seed jitter."""
    rows = []
    for arm, by_x in acc.items():
        for x, a in by_x.items():
            for s in range(seeds):
                rows.append(_row("lr", arm, s, a + jitter * (s - 1) * (1 if arm == "batch"
                                                                        else -0.5), x))
    return rows


# --------------------------------------------------------------------------------------------
# declared decision points: never where every arm is at chance


def test_a_collapsed_top_rate_is_never_the_decision_point():
    # batch norm far ahead at 1 and 3, both arms at chance at 10 (none a hair "better" there)
    acc = {"batch": {0.1: 0.60, 1.0: 0.70, 3.0: 0.65, 10.0: 0.095},
           "none": {0.1: 0.55, 1.0: 0.20, 3.0: 0.10, 10.0: 0.105}}
    rows = _sweep(acc)
    v = claim_verdict(LR, rows)
    assert v["verdict"] == "reproduced"
    assert "x = 0.1, 1, 3" in v["comparison"] and "left out, every arm at chance: x = 10" \
        in v["comparison"]
    # the old rule took the verdict at x = 10, between two chance levels (issue 21's case)
    old = {**LR, "effect": {k: w for k, w in LR["effect"].items() if k != "decide"}
           | {"at_max_x": True}}
    v = claim_verdict(old, rows)
    assert v["verdict"] == "inconclusive" and "at x=10.0" in v["comparison"]


def test_the_area_is_the_mean_over_log_rate_by_hand():
    # x = 0.01, 0.1, 1 are one decade apart; differences d1, d2, d3 = 0.1, 0.3, 0.2 at every
    # seed, so mean over log x = ((d1 + d2) / 2 + (d2 + d3) / 2) / 2 = (d1 + 2 d2 + d3) / 4
    acc = {"batch": {0.01: 0.5, 0.1: 0.7, 1.0: 0.6, 100.0: 0.1},
           "none": {0.01: 0.4, 0.1: 0.4, 1.0: 0.4, 100.0: 0.1}}
    v = claim_verdict(LR, _sweep(acc, jitter=0.0))
    assert v["effect"] == pytest.approx((0.1 + 2 * 0.3 + 0.2) / 4)


def test_a_point_where_only_one_arm_trains_is_kept():
    acc = {"batch": {1.0: 0.6, 10.0: 0.5}, "none": {1.0: 0.5, 10.0: 0.1}}
    v = claim_verdict(LR, _sweep(acc))
    assert "x = 1, 10" in v["comparison"] and "left out" not in v["comparison"]


def test_every_arm_at_chance_everywhere_is_not_measured():
    acc = {"batch": {1.0: 0.11, 10.0: 0.1}, "none": {1.0: 0.1, 10.0: 0.12}}
    v = claim_verdict(LR, _sweep(acc))
    assert v["effect"] is None and v["verdict"] == "inconclusive"
    assert "every arm is at chance" in v["note"]


def test_a_seed_rule_with_a_trains_guard_refuses_two_chance_levels():
    spec = {"id": "c", "title": "t", "effect": {"metric": "final:test_acc", "arm": "a",
            "baseline": "b", "better": "higher", "decide": {"trains": _TRAINS}}}
    rows = [_row("c", "a", s, 0.12 + 0.001 * s) for s in range(3)] + \
           [_row("c", "b", s, 0.10) for s in range(3)]
    v = claim_verdict(spec, rows)
    assert v["effect"] is None and "neither arm trains" in v["note"]
    rows[0]["final"]["test_acc"] = 0.9  # one arm trains on average now: decided
    assert claim_verdict(spec, rows)["effect"] is not None


@pytest.mark.parametrize("decide, problem", [
    ("area", "must be an object"),
    ({"rule": "max"}, "one of seed, area"),
    ({"rule": "area"}, "needs 'trains'"),
    ({"rule": "area", "trains": {"key": "test_acc", "chance": "0.1", "margin": 0.1}},
     "numbers chance and margin"),
    ({"rule": "seed", "why": 3}, "'why' must be a string"),
])
def test_bad_decisions_are_named(decide, problem):
    assert problem in decision_problem({"decide": decide})


def test_good_decisions_pass():
    assert decision_problem({}) is None
    assert decision_problem(LR["effect"]) is None


# --------------------------------------------------------------------------------------------
# stability over seed-bootstrap resamples


def _standardized(n, seed=0):
    rng = random.Random(seed)
    z = [rng.gauss(0, 1) for _ in range(n)]
    mu, sd = statistics.fmean(z), statistics.stdev(z)
    return [(v - mu) / sd for v in z]


def _verdict(diffs):
    return paired_effect(diffs)["verdict"]


def test_stability_near_half_at_the_noise_level_and_near_one_when_large():
    n = 20
    half = t_quantile(n - 1) / math.sqrt(n)  # the interval's half width for sd 1
    z = _standardized(n)
    edge = [1.001 * half + v for v in z]  # the interval's lower edge just above zero
    assert _verdict(edge) == "reproduced"
    assert 0.4 <= stability(edge, _verdict) <= 0.65
    large = [4 * half + v for v in z]
    assert stability(large, _verdict) >= 0.99
    # an inconclusive verdict at the edge is as fragile
    assert 0.35 <= stability([0.999 * half + v for v in z], _verdict) <= 0.6


def test_with_three_seeds_one_seed_thrice_cannot_decide():
    # a large effect: every resample with two or more distinct seeds reproduces; the 3 of 27
    # that repeat one seed three times are decided as one seed (inconclusive): 24/27
    d = [1.0, 1.1, 0.9]
    assert stability(d, _verdict) == pytest.approx(24 / 27, abs=1e-12)
    assert 24 / 27 >= STABLE  # a 3-seed verdict can be stable


def test_bootstrap_is_deterministic():
    d = [0.3 + v for v in _standardized(12)]  # 12 seeds: sampled resamples
    assert stability(d, _verdict) == stability(d, _verdict)
    assert stability(d, _verdict, seed=1) != stability(d, _verdict)
    assert stability([1.0], _verdict) is None


def test_few_seeds_are_bootstrapped_exactly():
    # 4 seeds, one far off (inconclusive): the 35 distinct resamples, weighted by how many of
    # the 256 ordered draws give each, agree with 200000 sampled draws (standard error 0.001)
    d = [0.30, 0.32, 0.31, -0.5]
    exact = stability(d, _verdict)
    assert stability(d, _verdict, seed=7) == exact  # no generator involved
    assert exact == pytest.approx(_sampled_share(d, 200000), abs=0.005)
    assert 0.3 < exact < 0.95  # neither trivially all nor none


def _sampled_share(d, draws):
    rng = random.Random(11)
    obs = _verdict(d)
    same = 0
    for _ in range(draws):
        picks = [rng.randrange(len(d)) for _ in d]
        if len(set(picks)) < 2:
            picks = picks[:1]
        same += _verdict([d[i] for i in picks]) == obs
    return same / draws


def test_claim_verdict_reports_stability_and_fragility():
    spec = {"id": "c", "title": "t", "effect": {"metric": "final:test_acc", "arm": "a",
                                                "baseline": "b", "better": "higher"}}
    n = 10
    half = t_quantile(n - 1) / math.sqrt(n) * 0.01
    z = _standardized(n, 3)
    rows = [_row("c", "b", s, 0.5) for s in range(n)]
    edge = rows + [_row("c", "a", s, 0.5 + 1.001 * half + 0.01 * z[s]) for s in range(n)]
    v = claim_verdict(spec, edge)
    assert v["verdict"] == "reproduced" and v["fragile"] and v["stability"] < STABLE
    solid = rows + [_row("c", "a", s, 0.5 + 5 * half + 0.01 * z[s]) for s in range(n)]
    v = claim_verdict(spec, solid)
    assert v["verdict"] == "reproduced" and not v["fragile"] and v["stability"] > 0.99
    assert v["seeds_needed"] is None  # decided: nothing to extrapolate


def test_the_decision_is_made_again_on_each_resample():
    # At x = 10 only seed 0 of the plain arm trains (0.35): its mean over the 3 seeds, 0.183,
    # stays below chance + margin = 0.2, so x = 10 is left out and x = 1 (d = 0.05 +- 0.003)
    # decides: reproduced. A resample that draws seed 0 twice lifts the mean to 0.27, brings
    # x = 10 in, where seed 0's d is -0.25: inconclusive. Of the 27 equally likely resamples,
    # 7 draw seed 0 twice or more and 2 more repeat one other seed three times (one seed):
    # 18/27 reproduce. A selection fixed once on all seeds would give 24/27.
    acc = {"batch": {1.0: 0.60, 10.0: 0.1}, "none": {1.0: 0.55, 10.0: 0.1}}
    rows = _sweep(acc, jitter=0.002)
    for r in rows:
        if r["config"]["x"] == 10.0 and r["config"]["seed"] == 0 and \
                r["config"]["arm"] == "none":
            r["final"]["test_acc"] = 0.35
    v = claim_verdict(LR, rows)
    assert v["verdict"] == "reproduced" and "left out, every arm at chance: x = 10" \
        in v["comparison"]
    assert v["stability"] == pytest.approx(18 / 27, abs=1e-12) and v["fragile"]


# --------------------------------------------------------------------------------------------
# seeds that would decide an inconclusive verdict


def _exact_power(n, d):
    """Power of the two-sided 95% paired t test at standardized effect d (noncentral t)."""
    from scipy.stats import nct, t

    tc, nc = t.ppf(0.975, n - 1), d * math.sqrt(n)
    return nct.sf(tc, n - 1, nc) + nct.cdf(-tc, n - 1, nc)


@pytest.mark.parametrize("d", [0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 3.0])
def test_seeds_needed_against_the_exact_power(d):
    n = seeds_needed(d, 1.0)
    exact = next(k for k in range(2, 5000) if _exact_power(k, d) >= 0.8)
    assert n == exact
    assert seeds_needed(-d, 1.0) == n and seeds_needed(2 * d, 2.0) == n  # scale-free


def test_seeds_needed_published_and_limits():
    # the usual table value for a paired t test, d = 0.5, two-sided 0.05, power 0.8: 34
    assert seeds_needed(0.5, 1.0) == 34
    # large n: the normal formula ((1.95996 + 0.84162) / d)^2 = 784.9 for d = 0.1
    assert 785 <= seeds_needed(0.1, 1.0) <= 790
    assert seeds_needed(0.0, 1.0) is None and seeds_needed(None, 1.0) is None
    assert seeds_needed(1.0, 0.0) is None
    assert seeds_needed(0.01, 1.0) == MAX_SEEDS_ESTIMATE + 1


def test_seeds_needed_by_simulation():
    # with the estimated number of seeds drawn from N(0.02, 0.03), about 80% of experiments
    # give a 95% interval above zero; with a third fewer, clearly less
    n = seeds_needed(0.02, 0.03)
    rng = random.Random(5)

    def share(k, sims=3000):
        return statistics.fmean(_verdict([rng.gauss(0.02, 0.03) for _ in range(k)])
                                == "reproduced" for _ in range(sims))
    assert 0.76 <= share(n) <= 0.84
    assert share(int(n * 2 / 3)) < 0.7


def test_claim_verdict_gives_seeds_only_when_inconclusive():
    spec = {"id": "c", "title": "t", "effect": {"metric": "final:test_acc", "arm": "a",
                                                "baseline": "b", "better": "higher"}}
    diffs = [0.05, -0.01, 0.03]  # mean 0.0233, sd 0.0306: inconclusive with 3 seeds
    rows = [_row("c", "b", s, 0.5) for s in range(3)] + \
           [_row("c", "a", s, 0.5 + d) for s, d in enumerate(diffs)]
    v = claim_verdict(spec, rows)
    assert v["verdict"] == "inconclusive"
    assert v["seeds_needed"] == seeds_needed(statistics.fmean(diffs), statistics.stdev(diffs))
    assert 5 <= v["seeds_needed"] <= 20  # (2.0 + 0.85)^2 * (0.0306 / 0.0233)^2 ~ 14


# --------------------------------------------------------------------------------------------
# equivalence (two one-sided tests)


def test_equivalence_by_hand():
    # d = 0.01, -0.01, 0.02, 0: mean 0.005, sd 0.01291, t(0.95, 3) = 2.3534,
    # 90% interval 0.005 +- 0.01519 = [-0.0102, 0.0202]
    d = [0.01, -0.01, 0.02, 0.0]
    out = equivalence(d, 0.05)
    assert out["verdict"] == "equivalent"
    assert out["ci"] == pytest.approx([-0.0102, 0.0202], abs=2e-4)
    assert equivalence(d, 0.015)["verdict"] == "inconclusive"  # 0.0202 > 0.015
    assert equivalence([v + 0.1 for v in d], 0.05)["verdict"] == "different"
    assert equivalence([v - 0.1 for v in d], 0.05)["verdict"] == "different"
    assert equivalence([0.0], 0.05)["verdict"] == "inconclusive"
    with pytest.raises(ValueError, match="margin must be positive"):
        equivalence(d, 0)


# --------------------------------------------------------------------------------------------
# two folders of the same study


def test_two_folders_differ_in_one_claim():
    spec = lambda cid: {"id": cid, "title": cid, "effect": {  # noqa: E731
        "metric": "final:test_acc", "arm": "a", "baseline": "b", "better": "higher"}}
    base = {cid: [_row(cid, "b", s, 0.5) for s in range(3)] for cid in ("one", "two")}
    gain = [0.10, 0.11, 0.12]
    a_rows = {cid: base[cid] + [_row(cid, "a", s, 0.5 + g) for s, g in enumerate(gain)]
              for cid in base}
    b_rows = dict(a_rows)
    b_rows["two"] = base["two"] + [_row("two", "a", s, 0.5 + g - 0.11)
                                   for s, g in enumerate(gain)]
    va = [claim_verdict(spec(c), a_rows[c]) for c in ("one", "two")]
    vb = [claim_verdict(spec(c), b_rows[c]) for c in ("one", "two")]
    out = compare_verdicts(va, vb)
    assert [c["id"] for c in out] == ["one", "two"]
    assert out[0]["agree"] and out[0]["flags"] == []
    assert not out[1]["agree"]
    assert out[1]["flags"] == ["verdicts differ: reproduced vs inconclusive"]
    assert out[1]["a"]["effect"] == pytest.approx(0.11)
    assert out[1]["b"]["effect"] == pytest.approx(0.0, abs=1e-12)
    only = compare_verdicts(va, vb[:1])
    assert only[1]["flags"] == ["only in A"] and not only[1]["agree"]


# --------------------------------------------------------------------------------------------
# the page, the terminal and `normlab report A B`


def _folder(path, gains, machine="x86_64"):
    """A lab folder with claims 'solid' and 'shaky' (claimed arm a, baseline b, 3 seeds):
    per-seed gains of a over b from ``gains[claim]``."""
    import json

    path.mkdir()
    claims, rows = [], []
    for cid, gain in gains.items():
        keys = []
        for arm in ("a", "b"):
            for s, g in enumerate(gain):
                key = f"{cid}-{arm}{s}"
                keys.append(key)
                rows.append({**_row(cid, arm, s, 0.5 + (g if arm == "a" else 0.0)), "key": key,
                             "env": {"machine": machine, "torch": "2.13.0"}})
        claims.append({"id": cid, "title": f"Claim {cid}", "run_keys": keys,
                       "effect": {"metric": "final:test_acc", "arm": "a", "baseline": "b",
                                  "better": "higher",
                                  "decide": {"rule": "seed", "why": "as named"}},
                       "figure": {"type": "bars", "key": "test_acc"}})
    (path / "claims.json").write_text(json.dumps({"claims": claims}))
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "config.json").write_text(json.dumps({"preset": "default", "seeds": 3}))
    return path


GAINS = {"solid": [0.10, 0.11, 0.12], "shaky": [0.05, -0.01, 0.03]}


def test_page_and_terminal_show_stability_and_seeds(tmp_path, capsys):
    from normlab.cli import main

    folder = _folder(tmp_path / "lab", GAINS)
    assert main(["report", str(folder)]) == 0
    out = capsys.readouterr().out
    n = seeds_needed(statistics.fmean(GAINS["shaky"]), statistics.stdev(GAINS["shaky"]))
    assert f"about {n} seeds would decide this" in out
    assert f"rerun the same command with --seeds={n} (finished runs are kept)" in out
    solid = next(line for line in out.splitlines() if line.startswith("solid"))
    assert "reproduced" in solid and "89%" in solid and "fragile" not in solid
    page = (folder / "index.html").read_text()
    assert "reproduced</span>, <span>stable in 89% of resamples</span>" in page
    assert f"<b>about {n} seeds would decide this</b>" in page
    assert f"<code>--seeds={n}</code>" in page
    assert "Decided: the two arms as declared, paired by seed: as named." in page


def test_report_compares_two_folders_claim_by_claim(tmp_path, capsys):
    from normlab.cli import main

    a = _folder(tmp_path / "a", GAINS)
    b = _folder(tmp_path / "b", {**GAINS, "solid": [g - 0.11 for g in GAINS["solid"]]},
                machine="aarch64")
    before = {p: sorted(x.name for x in p.iterdir()) for p in (a, b)}
    page = tmp_path / "cmp.html"
    assert main(["report", str(a), str(b), "--out", str(page)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.split()}
    assert "verdicts differ: reproduced vs inconclusive" in lines["solid"]
    assert lines["shaky"].count("inconclusive 0.0233") == 2 and "differ" not in lines["shaky"]
    assert "machine: x86_64 vs aarch64" in out
    assert "1 of 2 claims disagree or differ" in out
    html_ = page.read_text()
    assert html_.count("verdicts differ") == 1 and "aarch64" in html_
    assert {p: sorted(x.name for x in p.iterdir()) for p in (a, b)} == before  # not written


def test_report_out_without_a_second_folder_is_refused(tmp_path, capsys):
    from normlab.cli import main

    folder = _folder(tmp_path / "lab", GAINS)
    with pytest.raises(SystemExit) as e:
        main(["report", str(folder), "--out", str(tmp_path / "x.html")])
    assert e.value.code == 2
    assert "--out: only with a second folder OTHER" in capsys.readouterr().err
    assert main(["report", str(folder), str(tmp_path / "missing")]) == 2
    assert "no claims.json here" in capsys.readouterr().err


def test_comparison_flags_a_different_decision_point():
    rows = _sweep({"batch": {1.0: 0.6, 10.0: 0.1}, "none": {1.0: 0.5, 10.0: 0.1}})
    old = {**LR, "effect": {k: w for k, w in LR["effect"].items() if k != "decide"}
           | {"at_max_x": True}}
    out = compare_verdicts([claim_verdict(old, rows)], [claim_verdict(LR, rows)])
    assert out[0]["flags"] == ["verdicts differ: inconclusive vs reproduced",
                               "decided differently (rule or decision points)"]
    why = {**LR, "effect": {**LR["effect"], "decide": {**LR["effect"]["decide"], "why": "b"}}}
    same = compare_verdicts([claim_verdict(LR, rows)], [claim_verdict(why, rows)])
    assert same[0]["flags"] == []  # another reason in words is not another decision
