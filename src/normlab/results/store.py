"""An append-only JSONL store: one JSON object per line, written and flushed as each result
finishes, so that an interrupted run loses nothing that had finished.

A line cut short by a crash, or one that is not a row, is skipped when reading (with a message
naming the line), never fatal. Every other file is written whole (``write_atomic``).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
from pathlib import Path

__all__ = ["append_row", "environment", "read_rows", "row_problem", "write_atomic"]


def environment() -> dict:
    """Versions and machine, recorded in every row."""
    import torch

    from normlab._version import __version__

    return {
        "normlab": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "allocator": "jemalloc" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "default",
    }


def append_row(path, row: dict) -> None:
    """Append one row as a line and flush it to disk.

    If the write fails (a full disk), the file is cut back to its length before the call and
    the error propagates: a partial row is never left behind to look like a finished one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(row, sort_keys=True, allow_nan=True).encode("utf-8") + b"\n"
    with open(path, "a+b") as f:
        start = f.seek(0, os.SEEK_END)
        try:
            if start > 0:  # a line cut short by a crash must not swallow this row
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = b"\n" + line
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        except BaseException:  # a full disk, or Ctrl-C in the middle of the write
            try:
                f.truncate(start)
                f.flush()
                os.fsync(f.fileno())
            except OSError:  # pragma: no cover - the reader skips a partial line anyway
                pass
            raise


def write_atomic(path, data: bytes | str) -> None:
    """Write a whole file so that readers see the old content or the new, never a part.

    The data goes to a temporary file in the same folder, is flushed to disk, then renamed
    over ``path``. On failure (e.g. a full disk) the temporary file is removed, ``path`` is
    untouched and the ``OSError`` propagates. Every file but the append-only rows is written
    this way (report page, summary, claims, config, images)."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself durable (POSIX; not on Windows)
        dfd = os.open(path.parent or ".", os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def row_problem(row) -> str | None:
    """Why ``row`` (one parsed line) is not a usable row, or None if it is.

    Every row is a JSON object. A lab row (``kind == "run"``) also has a string ``key`` and
    ``claim``, a ``config`` object with a string ``arm`` and an integer ``seed``, a ``final``
    object of numbers (or nulls) and ``evals``, a list of objects with a numeric ``step``.
    This is the one place a row's shape is checked; readers may then index it freely."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    if row.get("kind") != "run":
        return None
    for name in ("key", "claim"):
        if not isinstance(row.get(name), str):
            return f"a run row needs a string {name!r}"
    cfg = row.get("config")
    if not isinstance(cfg, dict):
        return "a run row needs a 'config' object"
    if not isinstance(cfg.get("arm"), str):
        return "the config needs a string 'arm'"
    if not isinstance(cfg.get("seed"), int) or isinstance(cfg.get("seed"), bool):
        return "the config needs an integer 'seed'"
    if cfg.get("x") is not None and not _is_number(cfg["x"]):
        return "the config's 'x' is neither a number nor null"
    for name in ("steps", "eval_every"):
        if not _is_number(cfg.get(name)):
            return f"the config needs a numeric {name!r}"
    final = row.get("final", {})
    if not isinstance(final, dict):
        return "'final' is not an object"
    for k, v in final.items():
        if v is not None and not _is_number(v):
            return f"final {k!r} is not a number ({type(v).__name__})"
    evals = row.get("evals", [])
    if not isinstance(evals, list) or not all(
            isinstance(e, dict) and _is_number(e.get("step")) for e in evals):
        return "'evals' is not a list of objects with a numeric 'step'"
    for e in evals:
        for k, v in e.items():
            if k == "probe":
                if not (isinstance(v, list) and all(
                        isinstance(q, list) and len(q) == 3 and all(map(_is_number, q))
                        for q in v)):
                    return "an evaluation's 'probe' is not a list of 3 percentiles per layer"
            elif v is not None and not _is_number(v):
                return f"evaluation {k!r} is not a number ({type(v).__name__})"
    for name in ("env", "images"):
        if name in row and not isinstance(row[name], dict):
            return f"{name!r} is not an object"
    return None


def read_rows(path) -> tuple[list[dict], list[str]]:
    """The usable rows of ``path`` and one message per line skipped (``"line 7: ..."``).

    A line that is not UTF-8, not JSON (a line cut short by a crash) or not a row's shape
    (``row_problem``) is skipped, never fatal; the caller reports the messages."""
    path = Path(path)
    if not path.exists():
        return [], []
    rows, skipped = [], []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                skipped.append(f"line {number}: not UTF-8 text")
                continue
            if not line:
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                skipped.append(f"line {number}: not valid JSON (a line cut short?)")
                continue
            problem = row_problem(row)
            if problem:
                skipped.append(f"line {number}: {problem}")
                continue
            rows.append(row)
    return rows, skipped
