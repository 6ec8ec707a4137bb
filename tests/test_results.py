from __future__ import annotations

from normlab.results import append_row, environment, read_rows


def test_append_and_read_back(tmp_path):
    path = tmp_path / "sub" / "rows.jsonl"
    append_row(path, {"a": 1})
    append_row(path, {"a": 2, "nan": float("nan")})
    rows, bad = read_rows(path)
    assert [r["a"] for r in rows] == [1, 2] and bad == 0


def test_a_line_cut_short_loses_only_itself(tmp_path):
    path = tmp_path / "rows.jsonl"
    append_row(path, {"a": 1})
    with open(path, "a") as f:
        f.write('{"a": 2, "trunc')  # a crash in the middle of a write
    append_row(path, {"a": 3})
    rows, bad = read_rows(path)
    assert [r["a"] for r in rows] == [1, 3] and bad == 1


def test_missing_file_reads_empty(tmp_path):
    assert read_rows(tmp_path / "none.jsonl") == ([], 0)


def test_environment_names_versions():
    env = environment()
    assert {"normlab", "torch", "python", "allocator"} <= set(env)
