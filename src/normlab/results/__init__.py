"""Long-format result rows and their append-only JSONL store (shared by bench, lab, report)."""

from normlab.results.store import append_row, environment, read_rows

__all__ = ["append_row", "environment", "read_rows"]
