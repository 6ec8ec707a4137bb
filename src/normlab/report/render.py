"""Render a lab folder into ``index.html`` from its files alone (never from the training code).

Reads ``claims.json`` (specs), ``results.jsonl`` (rows) and ``config.json``; recomputes every
verdict and each claim's settings line from the rows (``normlab.results.stats.summarize``),
writes ``summary.json`` (its only writer: ``normlab lab`` renders through here too) and one
self-contained page: figures embedded as PNG data, no script, nothing fetched.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import statistics
from pathlib import Path

from normlab import spec
from normlab.report.explain import describe, draw, draw_shelf
from normlab.results import read_rows, write_atomic
from normlab.results.advice import RULE as ADVICE_RULE
from normlab.results.advice import advise_folder
from normlab.results.stats import (
    RULE,
    decision_problem,
    metric,
    metric_problem,
    seeds_words,
    stability_words,
    summarize,
)

__all__ = ["ReportError", "load_folder", "render_report"]


class ReportError(ValueError):
    """The folder is not a lab folder (one clear line for the CLI)."""


def _spec_problem(spec) -> str | None:
    """Why one entry of claims.json cannot be rendered, or None."""
    if not isinstance(spec, dict):
        return f"expected an object, got {type(spec).__name__}"
    for name in ("id", "title"):
        if not isinstance(spec.get(name), str):
            return f"needs a string {name!r}"
    eff = spec.get("effect")
    if not isinstance(eff, dict) or not all(isinstance(eff.get(k), str)
                                            for k in ("metric", "arm", "baseline", "better")):
        return "needs an 'effect' object with string metric, arm, baseline and better"
    if metric_problem(eff["metric"]) or eff["better"] not in ("higher", "lower"):
        return (metric_problem(eff["metric"]) or
                f"effect 'better' must be higher or lower, got {eff['better']!r}")
    if decision_problem(eff):
        return decision_problem(eff)
    fig = spec.get("figure")
    if not isinstance(fig, dict) or fig.get("type") not in _FIGURES:
        return f"needs a 'figure' object whose type is one of {', '.join(_FIGURES)}"
    for name in ("run_keys", "setup_keys"):
        keys = spec.get(name, [])
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            return f"{name!r} is not a list of strings"
    return None


def _read_json(path: Path):
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"not valid JSON ({type(exc).__name__})") from None
    except OSError as exc:
        raise ValueError(f"unreadable ({exc.strerror or exc})") from None


def load_folder(folder, warn=None) -> tuple[list[dict], list[dict], dict, int]:
    """(claim specs, current rows, settings, skipped lines) of a lab folder.

    What cannot be used is skipped, with one ``warn(message)`` naming the file and the line
    or entry: a results.jsonl line that is not a row (``results.read_rows``), a claims.json
    entry of the wrong shape, a config.json that is not an object. Only a folder with no
    usable claims.json at all is an error (``ReportError``)."""
    warn = warn or (lambda message: None)
    folder = Path(folder)
    claims_path = folder / "claims.json"
    if not claims_path.is_file():
        raise ReportError(f"{folder}: no claims.json here; is it a `normlab lab` output folder?")
    try:
        data = _read_json(claims_path)
    except ValueError as exc:
        raise ReportError(f"{claims_path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("claims"), list):
        raise ReportError(f"{claims_path}: expected an object with a 'claims' list")
    specs = []
    for i, spec_ in enumerate(data["claims"]):
        problem = _spec_problem(spec_)
        if problem:
            warn(f"{claims_path} claim entry {i + 1}: {problem}; skipped")
        else:
            specs.append(spec_)
    settings: dict = {}
    config_path = folder / "config.json"
    if config_path.is_file():
        try:
            settings = _read_json(config_path)
        except ValueError as exc:
            warn(f"{config_path}: {exc}; ignored")
            settings = {}
        if not isinstance(settings, dict):
            warn(f"{config_path}: expected an object, got {type(settings).__name__}; ignored")
            settings = {}
    rows, skipped = read_rows(folder / "results.jsonl")
    for message in skipped:
        warn(f"{folder / 'results.jsonl'} {message}; skipped")
    latest = {r["key"]: r for r in rows if r.get("kind") == "run"}
    keys = {k for s in specs for k in s.get("run_keys", [])}
    current = [r for k, r in latest.items() if k in keys]
    return specs, current, settings, len(skipped)


# --------------------------------------------------------------------------------------------
# figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _by_arm(rows):
    arms: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (r["config"]["arm"], r["config"].get("x") or 0,
                                         r["config"]["seed"])):
        arms.setdefault(r["config"]["arm"], []).append(r)
    return arms


def _fig_curve(claim, rows):
    plt = _plt()
    key = claim["figure"]["key"]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for arm, rs in _by_arm(rows).items():
        rs = [r for r in rs if r.get("evals")]
        if not rs:
            continue
        steps = [e["step"] for e in rs[0]["evals"]]
        series = [[e.get(key, math.nan) for e in r["evals"]] for r in rs
                  if len(r["evals"]) == len(steps)]
        if not series:
            continue
        mean = [statistics.fmean(v) for v in zip(*series, strict=True)]
        lo = [min(v) for v in zip(*series, strict=True)]
        hi = [max(v) for v in zip(*series, strict=True)]
        (line,) = ax.plot(steps, mean, label=f"{arm} (n={len(series)})")
        ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.15)
    target = claim["effect"]["metric"]
    if target.startswith("steps_to:"):
        ax.axhline(float(target.rsplit(":", 1)[1]), color="grey", ls=":", lw=1)
    ax.set_xlabel("training step")
    ax.set_ylabel(claim["figure"].get("ylabel", key))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _family(arm: str) -> str:
    return arm.split(":", 1)[0]


def _fig_sweep(claim, rows):
    plt = _plt()
    key = claim["figure"]["key"]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    fams: dict[str, dict] = {}
    for r in rows:
        c, v = r["config"], (r.get("final") or {}).get(key)
        if v is None:
            continue
        fams.setdefault(_family(c["arm"]), {}).setdefault(c.get("x"), []).append(v)
    for fam, by_x in sorted(fams.items()):
        xs = sorted(x for x in by_x if x is not None)
        if xs:
            ax.errorbar(xs, [statistics.fmean(by_x[x]) for x in xs],
                        yerr=[statistics.stdev(by_x[x]) if len(by_x[x]) > 1 else 0 for x in xs],
                        marker="o", capsize=3, label=fam)
        if None in by_x:
            ax.axhline(statistics.fmean(by_x[None]), ls="--", lw=1.2,
                       label=f"{fam} (does not depend on x)", color=f"C{len(ax.lines) % 10}")
    if claim["figure"].get("logx"):
        ax.set_xscale("log", base=2 if "ghost" in claim["figure"].get("xlabel", "") else 10)
    ax.set_xlabel(claim["figure"].get("xlabel", "x"))
    ax.set_ylabel(claim["figure"].get("ylabel", key))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _metric_for_bars(claim, row):
    key = claim["figure"]["key"]
    if key == "gap":
        return metric(row, "gap")
    return (row.get("final") or {}).get(key)


def _fig_bars(claim, rows):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for i, rs in enumerate(_by_arm(rows).values()):
        vals = [_metric_for_bars(claim, r) for r in rs]
        vals = [v for v in vals if v is not None]
        errors = [r for r in rs if r.get("status") == "error"]
        if vals:
            ax.bar(i, statistics.fmean(vals), color=f"C{i}", alpha=0.6)
            ax.scatter([i] * len(vals), vals, color="black", s=10, zorder=3)
        if errors:
            ax.text(i, 0.02, "error:\ncannot\ntrain", ha="center", va="bottom", fontsize=7,
                    color="darkred")
    ax.set_xticks(range(len(_by_arm(rows))))
    ax.set_xticklabels(list(_by_arm(rows)), fontsize=8)
    ax.set_ylabel(claim["figure"].get("ylabel", ""))
    ax.grid(alpha=0.3, axis="y")
    return fig


def _fig_shifts(claim, rows):
    plt = _plt()
    shifts = claim["figure"]["shifts"]
    arms = _by_arm(rows)
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    width = 0.8 / max(len(arms), 1)
    for i, (arm, rs) in enumerate(arms.items()):
        means = []
        for s in shifts:
            k = "test_acc" if s == "none" else f"test_acc_{s}"
            vals = [(r.get("final") or {}).get(k) for r in rs]
            vals = [v for v in vals if v is not None]
            means.append(statistics.fmean(vals) if vals else math.nan)
        ax.bar([j + i * width for j in range(len(shifts))], means, width, label=arm)
    ax.set_xticks([j + width * (len(arms) - 1) / 2 for j in range(len(shifts))])
    ax.set_xticklabels(["as trained" if s == "none" else s for s in shifts], fontsize=8)
    ax.set_ylabel(claim["figure"].get("ylabel", "test accuracy"))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return fig


def _fig_probe(claim, rows):
    plt = _plt()
    arms = _by_arm(rows)
    n_layers = max((len(e["probe"]) for rs in arms.values() for r in rs
                    for e in r.get("evals", []) if e.get("probe")), default=0)
    fig, axes = plt.subplots(n_layers or 1, len(arms), figsize=(3.2 * len(arms),
                                                              1.9 * max(n_layers, 1)),
                             squeeze=False, sharex=True)
    for j, (arm, rs) in enumerate(arms.items()):
        r = rs[0]  # one seed, as in the paper's figure
        evals = [e for e in r.get("evals", []) if e.get("probe")]
        steps = [e["step"] for e in evals]
        for layer in range(n_layers):
            ax = axes[layer][j]
            for q, style in zip(range(3), (":", "-", ":"), strict=True):
                ax.plot(steps, [e["probe"][layer][q] for e in evals], style, color=f"C{j}")
            ax.set_title(f"{arm}, hidden layer {layer + 1}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    axes[-1][0].set_xlabel("training step", fontsize=8)
    fig.suptitle(claim["figure"].get("ylabel", ""), fontsize=9)
    fig.tight_layout()
    return fig


def _fig_images(claim, rows):
    from PIL import Image

    plt = _plt()
    arms = _by_arm(rows)
    names = [("content", "content"), ("low_contrast_content", "content at 30% contrast"),
             ("output", "stylized"), ("output_low_contrast", "stylized (30% contrast)")]
    fig, axes = plt.subplots(len(arms), 4, figsize=(8, 2.2 * len(arms)), squeeze=False)
    for i, (arm, rs) in enumerate(arms.items()):
        images = next((r["images"] for r in rs if r.get("images")), {})
        for j, (key, title) in enumerate(names):
            ax = axes[i][j]
            ax.axis("off")
            if key in images:
                ax.imshow(Image.open(io.BytesIO(base64.b64decode(images[key]))))
            ax.set_title(f"{arm}: {title}" if j >= 2 else title, fontsize=8)
    fig.tight_layout()
    return fig


_FIGURES = {"curve": _fig_curve, "sweep": _fig_sweep, "bars": _fig_bars,
            "shifts": _fig_shifts, "probe": _fig_probe, "images": _fig_images}


# --------------------------------------------------------------------------------------------
# tables and page


def _fmt(v, digits=3):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}g}" if abs(v) >= 100 else f"{v:.{digits}f}"


def _interval(ci, v=None) -> str:
    if not ci:
        return "–"
    text = f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"
    if v is not None and v.get("test") == "equivalence":  # TOST: 90%, against the margin
        text += f" (90%; margin ±{_fmt(v['margin'])})"
    return text


def _effect_words(v: dict, unit: str) -> str:
    """"0.012 accuracy, 95% interval [a, b]" (or the equivalence form with its margin)."""
    if v["effect"] is None:
        return html.escape(v.get("note") or "not measured: no paired seeds")
    ci = v["ci"]
    if not ci:
        text = f"{_fmt(v['effect'])} (no interval: fewer than 2 paired seeds)"
    elif v.get("test") == "equivalence":
        text = (f"{_fmt(v['effect'])} {html.escape(unit)}, 90% interval "
                f"[{_fmt(ci[0])}, {_fmt(ci[1])}] against the equivalence margin "
                f"±{_fmt(v['margin'])} (two one-sided tests at 5%)")
    else:
        text = (f"{_fmt(v['effect'])} {html.escape(unit)}, 95% interval "
                f"[{_fmt(ci[0])}, {_fmt(ci[1])}]")
    if v.get("note"):
        text += f" ({html.escape(v['note'])})"
    return text


def _also_html(verdict: dict) -> str:
    """The claim's further comparisons of the same runs, one line each."""
    lines = []
    for a in verdict.get("also") or []:
        v, stab = a["verdict"], stability_words(a)
        lines.append(f'<li><span class="v {v.replace(" ", "-")}">{v}</span> '
                     f"{html.escape(a['comparison'])}: {_effect_words(a, a.get('unit', ''))}"
                     f"; n = {a['n_seeds']}" + (f", {html.escape(stab)}" if stab else "")
                     + "</li>")
    return ("<p>Also, in the same runs:</p><ul>" + "".join(lines) + "</ul>") if lines else ""


def _table(claim, rows) -> str:
    m = claim["effect"]["metric"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        c = r["config"]
        groups.setdefault((c["arm"], c.get("x")), []).append(r)
    head = ("<tr><th>arm</th><th>x</th><th>seeds</th><th>final test acc</th>"
            f"<th>{html.escape(m)}</th><th>status</th></tr>")
    body = []
    for (arm, x), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        accs = [(r.get("final") or {}).get("test_acc") for r in rs]
        accs = [a for a in accs if a is not None]
        vals = [metric(r, m) for r in rs]
        vals = [v for v in vals if v is not None and math.isfinite(v)]
        status = sorted({r.get("status", "?") for r in rs})
        errs = sorted({r["error"] for r in rs if r.get("error")})
        st = ", ".join(status) + "".join(f"<br><code>{html.escape(e)}</code>" for e in errs)

        def ms(v):
            if not v:
                return "–"
            sd = f" ± {_fmt(statistics.stdev(v))}" if len(v) > 1 else ""
            return _fmt(statistics.fmean(v)) + sd
        body.append(f"<tr><td>{html.escape(str(arm))}</td><td>{'' if x is None else x}</td>"
                    f"<td>{len(rs)}</td><td>{ms(accs)}</td><td>{ms(vals)}</td>"
                    f"<td>{st}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


_CSS = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
color:#222;line-height:1.45}
h1{margin-bottom:.2rem} section{border-top:1px solid #ddd;margin-top:2rem;padding-top:1rem}
table{border-collapse:collapse;font-size:.85rem;margin:.6rem 0}
td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}
.v{display:inline-block;padding:.1rem .5rem;border-radius:.3rem;color:white;font-weight:600}
.reproduced{background:#2e7d32}.not-reproduced{background:#c62828}
.equivalent{background:#2e7d32}.different{background:#c62828}
.inconclusive{background:#757575} img{max-width:100%} .small{font-size:.85rem;color:#555}
.fragile{color:#b45309;font-weight:600}
code{font-size:.8rem}
"""


def _stability_cell(v) -> str:
    if v.get("stability") is None:
        return "–"
    text = f"{v['stability']:.0%}"
    return f"<span class=fragile>{text} fragile</span>" if v.get("fragile") else text


def _claim_section(claim, verdict, rows) -> str:
    v = verdict["verdict"]
    effect = _effect_words(verdict, claim["effect"].get("unit", ""))
    fig_html = ""
    if rows:
        try:
            fig = _FIGURES[claim["figure"]["type"]](claim, rows)
            fig_html = f'<img alt="{html.escape(claim["title"])}" src="data:image/png;base64,' \
                       f'{_png(fig)}">'
        except Exception as exc:  # a figure must never cost the page
            fig_html = f"<p class=small>figure unavailable: {html.escape(str(exc))}</p>"
    else:
        fig_html = "<p class=small>no finished runs yet</p>"
    return (f'<section id="{html.escape(claim["id"])}"><h2>{html.escape(claim["title"])}</h2>'
            f'<p><span class="v {v.replace(" ", "-")}">{v}</span>{_stability_html(verdict)} '
            f"effect {effect}; n = {verdict['n_seeds']} seeds{_seeds_html(verdict)}</p>"
            f"<p class=small>Decided: {html.escape(verdict.get('decision') or '')}.<br>"
            f"Comparison: {html.escape(verdict['comparison'])}.<br>"
            f"Setup: {html.escape(claim.get('setup', ''))}"
            + (f"<br>Settings of the runs shown: {html.escape(verdict['settings'])}."
               if verdict.get("settings") else "") + "</p>"
            f"{_also_html(verdict)}{fig_html}{_table(claim, rows)}"
            f"<p><b>Published:</b> {html.escape(claim.get('paper') or '')}</p></section>")


def _stability_html(v) -> str:
    words = stability_words(v)
    if not words:
        return ""
    cls = " class=fragile" if v.get("fragile") else ""
    return f", <span{cls}>{html.escape(words)}</span>;"


def _seeds_html(v) -> str:
    words = seeds_words(v)
    if not words:
        return ""
    n = v["seeds_needed"]
    return (f". <b>{html.escape(words)}</b> (rerun the same <code>normlab lab</code> command "
            f"with <code>--seeds={n}</code>; finished runs are kept)")


def _explain_section() -> str:
    parts = []
    for kind in spec.STATISTICS_KINDS:
        img = _png(draw(kind))
        parts.append(f'<h3>{kind}</h3><p class=small>{html.escape(describe(kind))}</p>'
                     f'<img alt="{kind} statistics group" src="data:image/png;base64,{img}">')
    shelf = _png(draw_shelf())
    return ('<section id="explain"><h2>What each normalization averages over</h2>'
            '<img alt="batch, layer, instance and group norm as books on a shelf" '
            f'src="data:image/png;base64,{shelf}">'
            "<p class=small>Below, an input of shape (N, C, H, W) = (2, 6, 3, 3), group norm "
            "with 2 groups; drawn from the same statistics table the layers use.</p>"
            + "".join(parts) + "</section>")


def _advice_section(advice: dict) -> str:
    """The study's recommendation per batch size, each arm's rate, effect and cost."""
    parts = []
    for reg in advice["regimes"]:
        rows_html = "".join(
            f"<tr><td>{html.escape(a['arm'])}</td>"
            + (f"<td colspan=5>cannot run: <code>{html.escape(str(a['reason']))}</code></td>"
               if a["status"] == "error" else
               f"<td>{a['lr']:g}</td><td>{_fmt(a['test'])}</td><td>"
               + ("–" if a.get("effect") is None else
                  f"{_fmt(a['effect'])} {_interval(a.get('ci'))} "
                  f"{html.escape(a['verdict'] or 'one seed: no interval')}")
               + f"</td><td>{a['n_seeds']}</td><td>{html.escape(a['cost'])}</td>")
            + "</tr>" for a in reg["arms"])
        parts.append(f"<h3>batch size {reg['batch_size']}</h3><p><b>"
                     f"{html.escape(reg['text'])}</b></p><table><tr><th>arm</th><th>lr "
                     f"(best on validation)</th><th>test {html.escape(str(advice['metric']))}"
                     "</th><th>effect vs as-is, 95% interval</th><th>seeds</th><th>cost</th>"
                     f"</tr>{rows_html}</table>")
    return ('<section id="advice"><h2>Recommendation</h2>' + "".join(parts) +
            f"<p class=small><b>Rule of the advice.</b> {html.escape(ADVICE_RULE)}</p>"
            "</section>")


def render_report(folder, warn=None) -> dict:
    """Recompute the verdicts and settings lines from the rows, write summary.json and
    index.html (each whole or not at all: ``results.write_atomic``); return the summary.
    ``warn(message)`` hears of every line or entry skipped (``load_folder``)."""
    folder = Path(folder)
    specs, rows, settings, bad = load_folder(folder, warn)
    summary = summarize(specs, rows)
    verdicts, sections = summary["claims"], []
    for claim, verdict in zip(specs, verdicts, strict=True):
        crows = [r for r in rows if r.get("claim") == claim.get("claim_of_rows", claim["id"])
                 and r["key"] in set(claim.get("run_keys", []))]
        sections.append(_claim_section(claim, verdict, crows))
    study = settings.get("kind") == "study"
    advice_html = ""
    if study:  # `normlab study`: the recommendation first, from the rows alone
        summary["advice"] = advise_folder(folder)
        advice_html = _advice_section(summary["advice"])
    write_atomic(folder / "summary.json", json.dumps(summary, indent=2))
    overview = "".join(
        f'<tr><td><a href="#{html.escape(v["id"])}">{html.escape(v["title"])}</a></td>'
        f'<td><span class="v {v["verdict"].replace(" ", "-")}">{v["verdict"]}</span></td>'
        + (f'<td colspan=2>{html.escape(v.get("note") or "not measured")}</td>'
           if v["effect"] is None else
           f'<td>{_fmt(v["effect"])}</td><td>{_interval(v["ci"], v)}</td>') +
        f'<td>{v["n_seeds"]}</td><td>{_stability_cell(v)}</td>'
        f'<td>{v["seeds_needed"] or ""}</td></tr>' for v in verdicts)
    env = rows[0].get("env", {}) if rows else {}
    note = f"<p class=small>{bad} unreadable line(s) in results.jsonl were skipped.</p>" \
        if bad else ""
    skipped = settings.get("skipped") if isinstance(settings.get("skipped"), dict) else {}
    note += "".join(f"<p class=small>Claim {html.escape(str(cid))} was skipped: "
                    f"{html.escape(str(why))}.</p>" for cid, why in skipped.items())
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<title>normlab {'study' if study else 'lab'} report</title><style>{_CSS}"
            f"</style></head><body>"
            f"<h1>normlab {'study' if study else 'lab'} report</h1><p class=small>"
            f"{len(rows)} runs; "
            + (f"model {html.escape(str(settings.get('model')))}, data "
               f"{html.escape(str(settings.get('data')))}, " if study else
               f"preset {html.escape(str(settings.get('preset', '?')))}, ") +
            f"{settings.get('seeds', '?')} seeds; torch {html.escape(str(env.get('torch')))}, "
            f"normlab {html.escape(str(env.get('normlab')))}, "
            f"{html.escape(str(env.get('machine')))}.</p>{note}"
            f"{advice_html}<p><b>Rule.</b> {html.escape(RULE)}</p>"
            f"<table><tr><th>claim</th><th>verdict</th><th>effect</th><th>95% interval "
            f"(equivalence: 90%)</th>"
            f"<th>seeds</th><th>stability</th><th>seeds to decide</th></tr>{overview}</table>"
            + "".join(sections) + _explain_section() + "</body></html>")
    write_atomic(folder / "index.html", page)
    return summary
