"""The documentation site: every ```python block of docs/*.md runs (a page's blocks top to
bottom in one namespace, as a reader runs them), and the pages generated at build time
(scripts/docs_hooks.py) say what the code holds. `scripts/docs.sh build` (strict) is run by
scripts/test.sh; this file runs the snippets."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


def _pages_with_code():
    return sorted(p for p in DOCS.rglob("*.md") if FENCE.search(p.read_text()))


def test_the_tutorial_pages_have_code_to_run():
    names = {p.name for p in _pages_with_code()}
    assert {"index.md", "concept.md", "tutorial.md", "surgery.md", "lab.md",
            "errors.md"} <= names


@pytest.mark.parametrize("page", _pages_with_code(), ids=lambda p: str(p.relative_to(DOCS)))
def test_every_python_block_of_a_page_runs(page, tmp_path, monkeypatch):
    text = page.read_text()
    if "import timm" in text or "from transformers" in text:
        from tests import zoo

        try:
            zoo.load_zoo()  # torchvision's CPU wheel needs the tests' tolerant import
        except ImportError as exc:
            pytest.skip(f"the zoo extra is not installed ({exc})")
    if "normlab.explain" in text or "normlab.report" in text:
        pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)  # a snippet that writes a file writes it here
    namespace = {"__name__": f"docs_{page.stem}"}
    for i, block in enumerate(FENCE.findall(text)):
        line = text[:text.index(block)].count("\n") + 1
        code = compile(block, f"{page.relative_to(ROOT)}:{line} (block {i + 1})", "exec")
        exec(code, namespace)  # noqa: S102 - the page's own code, as a reader would run it


# ------------------------------------------------------------------------------------------
# the generated pages


@pytest.fixture(scope="module")
def hooks():
    pytest.importorskip("mkdocs")
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "scripts" /
                                                  "docs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_claims_page_has_every_claim_with_its_published_result(hooks):
    from normlab.lab.claims import CLAIMS

    snapshot = {"command": "normlab lab --seeds 3", "date": "2026-01-02",
                "env": {"normlab": "9.9", "torch": "2.13.0", "cpus": 2},
                "summary": {"claims": [
                    {"id": CLAIMS[0]["id"], "verdict": "reproduced", "effect": 12.5,
                     "ci": [3.25, 21.75], "n_seeds": 3, "stability": 0.89, "note": None}]}}
    page = hooks.claims_page(snapshot)
    for c in CLAIMS:
        assert f"{{#{c['id']}}}" in page and c["paper"] in page and c["setup"] in page
    first = page.split(f"{{#{CLAIMS[0]['id']}}}", 1)[1].split("\n## ", 1)[0]
    assert ("**reproduced**, effect 12.5 " in first and "[3.25, 21.8], 3 seeds" in first
            and "stable in 89%" in first)
    second = page.split(f"{{#{CLAIMS[1]['id']}}}", 1)[1].split("\n## ", 1)[0]
    assert "not in the snapshot" in second
    assert "normlab 9.9" in page and "2026-01-02" in page
    assert "No lab snapshot is committed" in hooks.claims_page(None)


def test_the_committed_snapshot_is_a_lab_summary(hooks):
    import json

    path = DOCS / "lab-snapshot.json"
    if not path.is_file():
        pytest.skip("no docs/lab-snapshot.json committed")
    snap = json.loads(path.read_text())
    ids = {c["id"] for c in snap["summary"]["claims"]}
    from normlab.lab.claims import CLAIMS

    assert ids <= {c["id"] for c in CLAIMS}  # no verdict of a claim that no longer exists
    assert all(c["verdict"] in ("reproduced", "not reproduced", "inconclusive")
               for c in snap["summary"]["claims"])


def test_the_errors_table_has_a_row_per_tested_bad_input(hooks):
    sys.path.insert(0, str(ROOT))
    from tests.test_errors import BAD

    table = hooks.errors_table().splitlines()
    assert len(table) == 2 + len(BAD)
    # a known row: what it raises now, as the user sees it
    row = next(r for r in table[2:] if "float64 weight" in r.split("|")[1])
    assert "`TypeError`" in row and "weight must have the input" in row


def test_a_kind_the_kinds_page_lacks_gets_a_section(hooks):
    class Page:
        pass

    text = "## batch\n\n<!-- kinds-not-described -->"
    out = hooks.on_page_markdown(text, Page(), {}, None)
    from normlab import spec

    for kind in spec.KINDS:
        assert f"## {kind}" in out
    assert out.count("## batch") == 1 and "img/explain/layer.png" in out
    for kind in spec.POINTWISE:  # no statistics: nothing to draw, and no link to a picture
        assert f"img/explain/{kind}.png" not in out


def test_the_study_page_shows_the_rule_advise_prints(hooks):
    from normlab.results.advice import RULE

    page = (DOCS / "study.md").read_text()
    out = hooks.on_page_markdown(page, None, {}, None)
    assert "<!-- advice-rule -->" in page and "<!-- advice-rule -->" not in out
    assert f"> {RULE}" in out
