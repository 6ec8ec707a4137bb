"""MkDocs hooks (mkdocs.yml ``hooks:``): the pages and pictures generated from the code at build
time, so that they cannot drift from it.

* ``claims.md``: every claim of ``normlab.lab.claims.CLAIMS`` (title, setup, the rule's metric
  and arms, the published result) with its verdict in the committed lab snapshot
  (``docs/lab-snapshot.json``, written by ``scripts/docs.sh snapshot DIR`` from a lab folder);
  a claim the snapshot lacks says so.
* ``errors.md``'s table: every row of ``tests/test_errors.py``'s ``BAD`` table, called, with
  the exception and the message it raises now.
* ``study.md``'s rule: ``normlab.results.advice.RULE``, the text ``normlab advise`` prints.
* ``img/explain/*.png``: ``normlab.explain`` pictures (the shelf, and each kind of
  ``normlab.spec.STATISTICS_KINDS``; the pointwise kinds share no statistics, so have no
  picture), drawn from the plan; ``kinds.md`` gets a section for any kind of the table it does
  not describe yet.

The pictures are cached under ``build/docs-cache/`` keyed by the source of spec.py and
report/explain.py, so ``mkdocs serve`` does not redraw them on every edit.
"""

from __future__ import annotations

import hashlib
import html
import importlib.util
import io
import json
import sys
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CACHE = ROOT / "build" / "docs-cache"


def _check_normlab_is_ours() -> None:
    """The pages are generated from this tree's normlab, not another installed copy."""
    import normlab

    if not Path(normlab.__file__).resolve().is_relative_to(ROOT / "src"):
        raise RuntimeError(f"normlab is imported from {normlab.__file__}, not {ROOT / 'src'}: "
                           "pip install -e . here, or set PYTHONPATH=src")

SNAPSHOT = ROOT / "docs" / "lab-snapshot.json"


# ------------------------------------------------------------------------------------------
# pictures


def _picture_key() -> str:
    h = hashlib.sha256()
    for rel in ("src/normlab/spec.py", "src/normlab/report/explain.py"):
        h.update((ROOT / rel).read_bytes())
    return h.hexdigest()[:16]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def pictures() -> dict[str, bytes]:
    """``{site path: PNG bytes}`` of every picture the pages show."""
    from normlab import spec
    from normlab.report.explain import draw, draw_shelf, explain

    folder = CACHE / _picture_key()
    names = ["img/explain/shelf.png", "img/explain/explain-group.png"] + [
        f"img/explain/{k}.png" for k in spec.STATISTICS_KINDS]
    if all((folder / n).is_file() for n in names):
        return {n: (folder / n).read_bytes() for n in names}
    out = {"img/explain/shelf.png": _png(draw_shelf()),
           "img/explain/explain-group.png": _png(explain("group"))}
    for kind in spec.STATISTICS_KINDS:
        fig = draw(kind)
        out[f"img/explain/{kind}.png"] = _png(fig)
    for name, data in out.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return out


# ------------------------------------------------------------------------------------------
# the claims page


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def claims_page(snapshot: dict | None) -> str:
    """The claims page in Markdown: one section per claim of CLAIMS, its latest verdict from
    ``snapshot`` (``{"summary": ..., "command", "date", "env"}``) when it has the claim."""
    from normlab.lab.claims import CLAIMS

    verdicts = {c["id"]: c for c in (snapshot or {}).get("summary", {}).get("claims", [])}
    lines = ["# The claims and their verdicts", "",
             "Generated at build time from `normlab.lab.claims.CLAIMS` (the claims the lab "
             "decides) and the lab snapshot `docs/lab-snapshot.json`. A verdict is computed "
             "from the rows by the rule on the [lab page](lab.md); none is written by hand.",
             ""]
    if snapshot:
        env = snapshot.get("env", {})
        lines += [f"**Snapshot:** `{snapshot.get('command', 'normlab lab')}`, "
                  f"{snapshot.get('date', '?')}, normlab {env.get('normlab', '?')}, torch "
                  f"{env.get('torch', '?')}, {env.get('cpus', '?')} CPUs. Refresh it with "
                  "`scripts/docs.sh snapshot DIR` after a `normlab lab --out DIR`.", ""]
    else:
        lines += ["**No lab snapshot is committed**: run `normlab lab --out DIR`, then "
                  "`scripts/docs.sh snapshot DIR`.", ""]
    lines += ["| claim | presets | verdict | effect | 95% interval | seeds |",
              "|---|---|---|---|---|---|"]
    for c in CLAIMS:
        v = verdicts.get(c["id"])
        presets = ", ".join(c.get("presets", ("quick", "default", "full")))
        if v is None:
            lines.append(f"| [{c['id']}](#{c['id']}) | {presets} | not in the snapshot | | | |")
            continue
        ci = "-" if not v.get("ci") else f"[{_fmt(v['ci'][0])}, {_fmt(v['ci'][1])}]"
        lines.append(f"| [{c['id']}](#{c['id']}) | {presets} | **{v['verdict']}** | "
                     f"{_fmt(v.get('effect'))} | {ci} | {v.get('n_seeds', '-')} |")
    lines.append("")
    for c in CLAIMS:
        e = c["effect"]
        v = verdicts.get(c["id"])
        lines += [f"## {c['title']} {{#{c['id']}}}", "",
                  f"`{c['id']}`. {c['setup']}", "",
                  f"- **Measured:** `{e['metric']}`, arm `{e['arm']}` against `{e['baseline']}`"
                  f", {e['better']} is better ({e.get('unit', '')}).",
                  f"- **Where it is decided:** {e.get('decide', {}).get('why', 'paired by seed')}",
                  f"- **Published:** {c['paper']}"]
        if v is None:
            lines.append("- **Latest verdict:** not in the snapshot (run `normlab lab --full` "
                         f"or `--only {c['id']}`).")
        else:
            words = f"**{v['verdict']}**"
            if v.get("effect") is not None:
                ci = v.get("ci") or [None, None]
                words += (f", effect {_fmt(v['effect'])} {e.get('unit', '')} (95% interval "
                          f"[{_fmt(ci[0])}, {_fmt(ci[1])}], {v.get('n_seeds')} seeds")
                if v.get("stability") is not None:
                    words += f", stable in {v['stability']:.0%} of resamples"
                words += ")"
            if v.get("note"):
                words += f"; {v['note']}"
            lines.append(f"- **Latest verdict:** {words}")
            if v.get("settings"):
                lines.append(f"- **Settings of those runs:** {v['settings']}")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# the errors table


def _load_error_table():
    spec = importlib.util.spec_from_file_location("_docs_test_errors",
                                                  ROOT / "tests" / "test_errors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BAD


def errors_table() -> str:
    """Every row of tests/test_errors.py's BAD table: what was given, what it raises now."""
    rows = ["| bad input | raises | message |", "|---|---|---|"]
    for name, call, exc, _pattern in _load_error_table():
        try:
            call()
        except exc as err:  # the contract: this type, this message (the test checks it)
            message = str(err).splitlines()[0] if str(err) else ""
            got = type(err).__name__
        else:
            raise RuntimeError(f"tests/test_errors.py row {name!r} raised nothing")
        cell = html.escape(message).replace("|", "&#124;")
        rows.append(f"| {html.escape(name)} | `{got}` | {cell} |")
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------
# mkdocs events

_ERRORS_MARK = "<!-- errors-table -->"
_KINDS_MARK = "<!-- kinds-not-described -->"
_RULE_MARK = "<!-- advice-rule -->"


def on_files(files, config):
    _check_normlab_is_ours()
    for name, data in pictures().items():
        files.append(File.generated(config, name, content=data))
    snapshot = json.loads(SNAPSHOT.read_text()) if SNAPSHOT.is_file() else None
    files.append(File.generated(config, "claims.md", content=claims_page(snapshot)))
    return files


def on_page_markdown(markdown, page, config, files):
    if _ERRORS_MARK in markdown:
        markdown = markdown.replace(_ERRORS_MARK, errors_table())
    if _RULE_MARK in markdown:
        from normlab.results.advice import RULE

        markdown = markdown.replace(_RULE_MARK, f"> {RULE}")
    if _KINDS_MARK in markdown:
        from normlab import spec
        from normlab.report.explain import describe

        def section(k):
            if k in spec.POINTWISE:  # no statistics: no group to describe or draw
                return (f"## {k}\n\nA pointwise kind: each element is mapped on its own, no "
                        "statistics are computed, so there is no picture.\n")
            return f"## {k}\n\n{describe(k)}\n\n![{k}](img/explain/{k}.png)\n"

        extra = [section(k) for k in spec.KINDS if f"## {k}" not in markdown]
        markdown = markdown.replace(_KINDS_MARK, "\n".join(extra))
    return markdown
