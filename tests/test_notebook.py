"""What a notebook sees: normlab.explain(kind) is a matplotlib figure drawn from the plan, and a
lab result is shown as its verdict table (``_repr_html_``)."""

import re
import sys

import pytest

import normlab
from normlab.report.explain import SHELF_KINDS, draw_shelf
from normlab.results.table import LabResult, summary_html

pytest.importorskip("matplotlib")


def test_explain_is_reached_lazily_from_the_root_package():
    assert normlab.explain is sys.modules["normlab.report.explain"].explain
    with pytest.raises(AttributeError, match="no attribute 'explian'"):
        normlab.explian  # noqa: B018


def _axes(fig):
    return [ax for sub in fig.subfigs for ax in sub.axes]


@pytest.mark.parametrize("kind,shelves", [("group", 4), ("rms", 5)])
def test_explain_draws_the_shelf_and_the_2d_view(kind, shelves):
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    fig = normlab.explain(kind, shape=(2, 6, 3, 3), groups=2)
    assert isinstance(fig, Figure)
    top, bottom = fig.subfigs
    assert [ax.name for ax in top.axes] == ["3d"] * shelves  # four kinds, plus kind if other
    titles = [ax.get_title() for ax in top.axes]
    assert titles[:4] == [f"{k} norm" for k in SHELF_KINDS] and f"{kind} norm" in titles
    bold = [ax.get_title() for ax in top.axes if ax.title.get_fontweight() == "bold"]
    assert bold == [f"{kind} norm"]
    assert len(bottom.axes) == 2  # one 2-D panel per sample
    assert plt.get_fignums() == []  # drawn outside pyplot: a notebook's backend is untouched


def test_the_shelf_shades_exactly_the_first_elements_group():
    # the cubes' colours read back, against the definitions (DESIGN.md's table), not the plan
    n, c, p = 3, 4, 2
    definitions = {  # the statistics group of element (0, 0, 0)
        "batch": lambda i, j, k: j == 0,  # page 0 of every book
        "layer": lambda i, j, k: i == 0,  # the whole first book
        "instance": lambda i, j, k: i == 0 and j == 0,  # one page of one book
        "group": lambda i, j, k: i == 0 and j < 2,  # C/G = 2 pages of one book
    }
    fig = draw_shelf(tuple(definitions), shape=(n, c, p, 1), groups=2)
    for ax, (kind, member) in zip(fig.axes, definitions.items(), strict=True):
        assert len(ax.cubes) == n * c * p
        for (i, j, k), poly in ax.cubes.items():
            faces = poly.get_facecolor()  # lit differently per face: compare hue, not level
            red = bool((faces[:, 0] > 2 * faces[:, 1:3].max(axis=1)).all())
            assert red == member(i, j, k), (kind, i, j, k)


def test_explain_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match=r"kind must be one of .*got 'weight'"):
        normlab.explain("weight")


SUMMARY = {"claims": [
    {"id": "faster-training", "verdict": "reproduced", "effect": -120.0, "ci": [-200.0, -40.5],
     "n_seeds": 3, "stability": 0.89, "fragile": False, "note": None},
    {"id": "placement", "verdict": "inconclusive", "effect": 0.0125, "ci": [-0.01, 0.035],
     "n_seeds": 3, "stability": 0.6, "fragile": True, "note": "x < y & z"},
    {"id": "batch-size-one", "verdict": "inconclusive", "effect": None, "ci": None,
     "n_seeds": 0, "stability": None, "note": None},
]}


def test_a_lab_result_shows_its_verdict_table_as_html():
    result = LabResult(summary=SUMMARY, counts={"ran": 4, "already_done": 2, "planned": 6},
                       settings={})
    assert result["counts"]["ran"] == 4 and isinstance(result, dict)  # still the plain dict
    page = result._repr_html_()
    assert "4 runs trained, 2 already done (6 planned)" in page
    rows = re.findall(r"<tr>(.*?)</tr>", page)
    cells = [re.findall(r"<td>(.*?)</td>", r) for r in rows[1:]]
    assert cells[0] == ["faster-training", "reproduced", "-120", "[-200, -40.5]", "3", "89%",
                        ""]
    assert cells[1] == ["placement", "inconclusive", "0.0125", "[-0.01, 0.035]", "3",
                        "60% fragile", "x &lt; y &amp; z"]  # escaped
    assert cells[2] == ["batch-size-one", "inconclusive", "-", "-", "0", "-", "not measured"]
    assert "no summary" in summary_html(None)


def test_run_lab_returns_a_lab_result(tmp_path):
    from normlab.lab.study import run_lab

    result = run_lab(tmp_path / "lab", preset="quick", only=["placement"], seeds=2, workers=1,
                     overrides={"data": "tabular", "hidden": [8], "eval_every": 5, "steps": 5},
                     progress=False)
    assert isinstance(result, LabResult)
    page = result._repr_html_()
    assert "4 runs trained" in page and ">placement<" in page
