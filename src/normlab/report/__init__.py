"""The lab report: reads a lab folder's files (never the training code) and renders a page;
``compare`` sets two folders of the same study side by side; ``explain`` draws which elements
share statistics, from the spec table."""

from normlab.report.compare import compare_folders
from normlab.report.explain import describe, draw, draw_shelf, group_ids
from normlab.report.render import ReportError, load_folder, render_report

# (``explain``, the whole figure, stays in ``normlab.report.explain``: re-exported here its
# name would hide the submodule; ``normlab.explain`` is the short way to it)
__all__ = ["ReportError", "compare_folders", "describe", "draw", "draw_shelf", "group_ids",
           "load_folder", "render_report"]
