"""The setup line of a claim, generated from the resolved configs of the rows it shows.

The claim's own prose says what kind of experiment it is (model family, data, what is
measured); every setting with a number (steps, learning rate, batch size, widths, seeds, ...)
is stated from the rows, so that a page never describes a setup that did not run (``--quick``,
``--full`` and ``--key=value`` overrides included). Which settings to state is the claim's
``setup_keys`` (written by the lab into claims.json); a key is looked up in the row's config,
then in the row itself (e.g. ``epochs``, which the run computes from its data set's size).
"""

from __future__ import annotations

import json

__all__ = ["setup_line"]


def _value(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        if v and all(isinstance(s, list) for s in v):  # spans: [[8, 12], [36, 40]]
            return " or ".join("-".join(_value(e) for e in s) for s in v)
        return "-".join(_value(e) for e in v) if v else "none"
    return str(v)


def _lookup(row: dict, key: str):
    cfg = row["config"]
    return cfg[key] if key in cfg else row.get(key)


def setup_line(rows: list[dict], keys) -> str:
    """``"key value, ..., N seeds"`` over ``rows`` (empty without rows or keys).

    A setting with one value is stated once; one that equals each run's ``x`` is stated as
    ``key = x (values)``; any other that varies is stated per value with the arms using it."""
    if not rows or not keys:
        return ""
    parts = []
    for key in keys:
        found = [(r["config"]["arm"], r["config"].get("x"), _lookup(r, key)) for r in rows]
        found = [f for f in found if f[2] is not None]
        if not found:
            continue
        label = key.replace("_", " ")
        arms: dict[str, list[str]] = {}  # value (as JSON) -> arms, in order of first use
        for arm, _, value in found:
            names = arms.setdefault(json.dumps(value, sort_keys=True), [])
            if arm not in names:
                names.append(arm)
        values = [json.loads(v) for v in arms]
        if len(values) == 1:
            parts.append(f"{label} {_value(values[0])}")
        elif all(x is not None and value == x for _, x, value in found):
            parts.append(f"{label} = x ({', '.join(_value(v) for v in values)})")
        else:
            parts.append(f"{label} " + "; ".join(
                f"{_value(json.loads(v))} ({', '.join(names)})" for v, names in arms.items()))
    seeds = {r["config"]["seed"] for r in rows}
    parts.append(f"{len(seeds)} seed{'' if len(seeds) == 1 else 's'}")
    return ", ".join(parts)
