"""Long-format result rows and their append-only JSONL store (shared by bench, lab, report),
whole-file atomic writes, and the one-writer lock of a results folder."""

from normlab.results.lock import FolderBusy, folder_lock
from normlab.results.store import append_row, environment, read_rows, row_problem, write_atomic

__all__ = ["FolderBusy", "append_row", "environment", "folder_lock", "read_rows", "row_problem",
           "write_atomic"]
