"""The statistics of paired differences over seeds, on plain numbers (no rows, no claims).

``stats`` turns a claim's rows into one paired difference per seed; this module says what
those differences support:

* ``paired_interval``: mean and two-sided t interval (95% by default);
* ``seeds_needed``: how many seeds would give the observed effect a 95% interval excluding
  zero with 80% power, taking the observed mean and standard deviation as the truth. The
  paired t test's sample size in closed form with t quantiles,

      n >= ((t(1 - alpha/2, n - 1) + t(power, n - 1)) * sd / |mean|) ** 2,

  iterated on n (the right side falls as n grows, so the smallest n that satisfies it is found
  by counting up). It is the normal-approximation formula with t quantiles in place of z; it
  agrees with the exact noncentral-t power to within a seed (tests/test_verdicts.py);
* ``stability``: the share of seed-bootstrap resamples that give the same verdict. Seeds are
  drawn with replacement, as many as there are, and the *whole* decision is made again on each
  resample (including which points it is taken at), so the share says how much the verdict
  rests on the particular seeds. Up to 7 seeds every distinct resample is evaluated (the exact
  bootstrap); beyond, the generator is seeded (``BOOTSTRAP_SEED``): the same rows always give
  the same share, so a page can be reproduced byte for byte;
* ``equivalence``: two one-sided tests (TOST) against a declared margin: "as good as".

With 3 to 5 seeds a bootstrap has few distinct resamples (10 for 3 seeds) and is read as a
coarse warning, not a probability. A resample that is one seed drawn n times carries one seed's
information and is decided as one seed (inconclusive, by the rule's "fewer than 2 seeds"); so
with 3 seeds even a large effect is stable in at most 24 of 27 resamples (89%). A verdict whose
share is below ``STABLE`` (85%) is called *fragile*: the threshold sits below that 89% so that
a 3-seed verdict can be stable at all, and above what an interval with its edge at zero gets
(55-80% with 3 to 20 seeds, in simulation: about half the resamples land on each side).
"""

from __future__ import annotations

import functools
import itertools
import math
import random
import statistics
from collections.abc import Callable, Sequence

__all__ = ["BOOTSTRAP_SEED", "MAX_SEEDS_ESTIMATE", "RESAMPLES", "STABLE", "equivalence",
           "paired_interval", "seeds_needed", "stability", "t_quantile"]

STABLE = 0.85  # below this share of resamples agreeing, a verdict is "fragile"
RESAMPLES = 2000  # bootstrap resamples per verdict: +-0.8% standard error on a share near 0.85
BOOTSTRAP_SEED = 21  # fixed: the same rows give the same stability on every machine
MAX_SEEDS_ESTIMATE = 1000  # seeds_needed counts no further ("more than 1000")

# quantiles for small df when scipy is missing (it comes with the lab extra)
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


@functools.lru_cache(maxsize=4096)
def t_quantile(df: int, q: float = 0.975) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom."""
    try:
        from scipy.stats import t

        return float(t.ppf(q, df))
    except ImportError:  # pragma: no cover - scipy comes with the lab extra
        if q != 0.975:
            raise
        keys = sorted(k for k in _T975 if k <= df)
        return _T975[keys[-1]] if df <= 30 else 1.96


def paired_interval(diffs: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """The two-sided ``level`` t interval of the mean of ``diffs`` (None for fewer than 2)."""
    n = len(diffs)
    if n < 2:
        return None
    mean = statistics.fmean(diffs)
    half = t_quantile(n - 1, 0.5 + level / 2) * statistics.stdev(diffs) / math.sqrt(n)
    return mean - half, mean + half


def seeds_needed(mean: float | None, sd: float | None, *, alpha: float = 0.05,
                 power: float = 0.8) -> int | None:
    """Seeds for which an effect ``mean`` with per-seed spread ``sd`` gets a ``1 - alpha``
    interval excluding zero with probability ``power`` (formula in the module docstring).

    None when there is nothing to extrapolate from (no effect, or no spread measured);
    ``MAX_SEEDS_ESTIMATE + 1`` when even that many would not do."""
    if mean is None or sd is None or not math.isfinite(mean) or not math.isfinite(sd):
        return None
    if mean == 0 or sd <= 0:
        return None
    ratio = sd / abs(mean)
    for n in range(2, MAX_SEEDS_ESTIMATE + 1):
        need = ((t_quantile(n - 1, 1 - alpha / 2) + t_quantile(n - 1, power)) * ratio) ** 2
        if n >= need:
            return n
    return MAX_SEEDS_ESTIMATE + 1


def stability(entries: Sequence, verdict_of: Callable[[list], str], *,
              resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> float | None:
    """The share of seed-bootstrap resamples of ``entries`` (one per seed, any type) for which
    ``verdict_of(resample)`` equals ``verdict_of(entries)``; None for fewer than 2 seeds.

    When the distinct resamples (multisets of n seeds out of n) are no more than
    ``resamples`` (up to 7 seeds: 1716), every one is evaluated once and weighted by its
    multinomial probability: the exact bootstrap share, with no sampling error. Beyond that,
    ``resamples`` draws from a generator seeded with ``seed``."""
    entries = list(entries)
    n = len(entries)
    if n < 2:
        return None
    observed = verdict_of(entries)

    def decide(picks):
        if len(set(picks)) < 2:  # n copies of one seed carry one seed's information
            picks = picks[:1]
        return verdict_of([entries[i] for i in picks]) == observed

    if math.comb(2 * n - 1, n) <= resamples:
        same = 0.0
        for picks in itertools.combinations_with_replacement(range(n), n):
            ways = math.factorial(n)
            for i in set(picks):
                ways //= math.factorial(picks.count(i))
            same += ways * decide(list(picks))
        return same / n ** n
    rng = random.Random(seed)
    same = sum(decide([rng.randrange(n) for _ in range(n)]) for _ in range(resamples))
    return same / resamples


def equivalence(diffs: Sequence[float], margin: float, *, alpha: float = 0.05) -> dict:
    """"As good as": two one-sided t tests at level ``alpha`` against ``+-margin``.

    Equivalent when the ``1 - 2 alpha`` interval (90% for the usual 0.05) lies inside
    ``(-margin, margin)``; "different" when it lies wholly outside (the difference is larger
    than the margin, one way or the other); inconclusive otherwise or with fewer than 2
    seeds."""
    if not margin > 0:
        raise ValueError(f"equivalence: margin must be positive, got {margin!r}")
    n = len(diffs)
    mean = statistics.fmean(diffs) if n else None
    ci = paired_interval(diffs, 1 - 2 * alpha)
    if ci is None:
        verdict = "inconclusive"
    elif -margin < ci[0] and ci[1] < margin:
        verdict = "equivalent"
    elif ci[0] >= margin or ci[1] <= -margin:
        verdict = "different"
    else:
        verdict = "inconclusive"
    return {"verdict": verdict, "effect": mean, "ci": None if ci is None else list(ci),
            "level": 1 - 2 * alpha, "margin": margin, "n_seeds": n}
