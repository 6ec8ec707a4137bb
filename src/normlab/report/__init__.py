"""The lab report: reads a lab folder's files (never the training code) and renders a page;
``explain`` draws which elements share statistics, from the spec table."""

from normlab.report.explain import describe, draw, group_ids
from normlab.report.render import ReportError, load_folder, render_report

__all__ = ["ReportError", "describe", "draw", "group_ids", "load_folder", "render_report"]
