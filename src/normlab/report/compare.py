"""Two lab folders of the same study (other machines, other versions), claim by claim.

Each folder's verdicts are recomputed from its own rows (``results.stats.summarize``), exactly
as its page would show them; the comparison (``stats.compare_verdicts``) lists both verdicts and
effects and flags what disagrees. Neither folder is written: the page goes to its own file.
"""

from __future__ import annotations

import html
from pathlib import Path

from normlab.report.render import _CSS, _fmt, _interval, load_folder
from normlab.results import write_atomic
from normlab.results.stats import compare_verdicts, stability_words, summarize

__all__ = ["ENV_KEYS", "compare_folders"]

ENV_KEYS = ("normlab", "torch", "python", "machine", "processor", "cpus", "allocator")
_SETTINGS = ("preset", "seeds", "steps_scale", "only", "overrides")


def _verdicts(folder, warn):
    specs, rows, settings, _ = load_folder(folder, warn)
    verdicts = summarize(specs, rows)["claims"]
    env: dict[str, set] = {}
    for r in rows:
        for k in ENV_KEYS:
            env.setdefault(k, set()).add(str((r.get("env") or {}).get(k)))
    return verdicts, {k: ", ".join(sorted(v)) for k, v in env.items()}, settings


def compare_folders(a, b, out=None, warn=None) -> dict:
    """Compare the lab folders ``a`` and ``b``; write the page to ``out`` (if given, whole or
    not at all) and return ``{"claims": [...], "env": [env_a, env_b], "differences": [...]}``
    where ``differences`` names the environment keys and settings that differ."""
    va, env_a, set_a = _verdicts(a, warn)
    vb, env_b, set_b = _verdicts(b, warn)
    claims = compare_verdicts(va, vb)
    diffs = [f"{k}: {env_a.get(k, '?')} vs {env_b.get(k, '?')}" for k in ENV_KEYS
             if env_a.get(k) != env_b.get(k)]
    diffs += [f"setting {k}: {set_a.get(k)!r} vs {set_b.get(k)!r}" for k in _SETTINGS
              if set_a.get(k) != set_b.get(k)]
    result = {"claims": claims, "env": [env_a, env_b], "differences": diffs,
              "folders": [str(a), str(b)]}
    if out is not None:
        write_atomic(Path(out), _page(result))
    return result


def _cell(v) -> str:
    if v is None:
        return "<td colspan=2>–</td>"
    badge = f'<span class="v {v["verdict"].replace(" ", "-")}">{v["verdict"]}</span>'
    words = stability_words(v)
    if words:
        cls = " class=fragile" if v.get("fragile") else ""
        badge += f"<br><span{cls}>{html.escape(words)}</span>"
    effect = (html.escape(v.get("note") or "not measured") if v["effect"] is None else
              f"{_fmt(v['effect'])} {_interval(v['ci'])}, n = {v['n_seeds']}")
    return f"<td>{badge}</td><td>{effect}</td>"


def _flags(flags) -> str:
    return "" if not flags else f"<b class=fragile>{'<br>'.join(map(html.escape, flags))}</b>"


def _page(result) -> str:
    a, b = result["folders"]
    rows = "".join(
        f"<tr><td>{html.escape(c['title'])}<br><code>{html.escape(c['id'])}</code></td>"
        f"{_cell(c['a'])}{_cell(c['b'])}"
        f"<td>{_flags(c['flags'])}</td></tr>" for c in result["claims"])
    env = "".join(f"<tr><td>{k}</td><td>{html.escape(result['env'][0].get(k, '?'))}</td>"
                  f"<td>{html.escape(result['env'][1].get(k, '?'))}</td></tr>"
                  for k in ENV_KEYS)
    n_dis = sum(bool(c["flags"]) for c in result["claims"])
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<title>normlab: two lab folders compared</title><style>{_CSS}</style></head>"
            f"<body><h1>Two lab folders compared</h1>"
            f"<p class=small>A = {html.escape(a)}<br>B = {html.escape(b)}</p>"
            f"<p>{n_dis} of {len(result['claims'])} claims disagree or differ.</p>"
            f"<table><tr><th>claim</th><th>A verdict</th><th>A effect [95% interval]</th>"
            f"<th>B verdict</th><th>B effect [95% interval]</th><th>flags</th></tr>{rows}"
            f"</table><h2>Where the folders were made</h2>"
            f"<table><tr><th></th><th>A</th><th>B</th></tr>{env}</table>"
            + ("<p class=small>Differences: " + html.escape("; ".join(result["differences"]))
               + "</p>" if result["differences"] else "")
            + "</body></html>")
