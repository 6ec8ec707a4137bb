"""A summary's verdict table as HTML, and the result object that shows it in a notebook.

``LabResult`` is what ``normlab.lab.run_lab`` returns: a dict (``result["summary"]``,
``["counts"]``, ``["settings"]``) whose ``_repr_html_`` is the table of its summary, so a lab
run that is the last expression of a notebook cell shows its verdicts. Any later result holding
a summary of the same shape (``results.stats.summarize``) may use it.
"""

from __future__ import annotations

import html

__all__ = ["LabResult", "summary_html"]


def _number(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def summary_html(summary: dict | None) -> str:
    """One row per claim: id, verdict, effect, 95% interval, seeds, stability, note."""
    if not summary:
        return "<p>no summary (not the process that writes the rows)</p>"
    head = ("<tr><th>claim</th><th>verdict</th><th>effect</th><th>95% interval</th>"
            "<th>seeds</th><th>stability</th><th>note</th></tr>")
    rows = []
    for c in summary.get("claims", []):
        ci = c.get("ci")
        interval = "-" if not ci else f"[{_number(ci[0])}, {_number(ci[1])}]"
        share = c.get("stability")
        stab = "-" if share is None else f"{share:.0%}" + (" fragile" if c.get("fragile")
                                                          else "")
        note = c.get("note") or ("" if c.get("effect") is not None else "not measured")
        cells = [c.get("id"), c.get("verdict"), _number(c.get("effect")), interval,
                 c.get("n_seeds", "-"), stab, note]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in cells)
                    + "</tr>")
    return f"<table class=\"normlab-summary\">{head}{''.join(rows)}</table>"


class LabResult(dict):
    """A lab run's result: the plain dict it always was, shown as its verdict table by
    Jupyter (``_repr_html_``)."""

    def _repr_html_(self) -> str:
        counts = self.get("counts") or {}
        line = ""
        if counts:
            line = (f"<p>{counts.get('ran', 0)} runs trained, {counts.get('already_done', 0)} "
                    f"already done ({counts.get('planned', 0)} planned)</p>")
        return line + summary_html(self.get("summary"))
