from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid

import pytest

from normlab.results import append_row, environment, read_rows, row_problem, write_atomic


def test_append_and_read_back(tmp_path):
    path = tmp_path / "sub" / "rows.jsonl"
    append_row(path, {"a": 1})
    append_row(path, {"a": 2, "nan": float("nan")})
    rows, skipped = read_rows(path)
    assert [r["a"] for r in rows] == [1, 2] and skipped == []


def test_a_line_cut_short_loses_only_itself(tmp_path):
    path = tmp_path / "rows.jsonl"
    append_row(path, {"a": 1})
    with open(path, "a") as f:
        f.write('{"a": 2, "trunc')  # a crash in the middle of a write
    append_row(path, {"a": 3})
    rows, skipped = read_rows(path)
    assert [r["a"] for r in rows] == [1, 3]
    assert skipped == ["line 2: not valid JSON (a line cut short?)"]


def test_missing_file_reads_empty(tmp_path):
    assert read_rows(tmp_path / "none.jsonl") == ([], [])


def test_environment_names_versions():
    env = environment()
    assert {"normlab", "torch", "python", "allocator"} <= set(env)


# --------------------------------------------------------------------------------------------
# rows of the wrong shape: one place decides, every reader skips them with the line named

GOOD = {"kind": "run", "key": "k1", "claim": "c", "config": {"arm": "a", "seed": 0, "x": None,
                                                            "steps": 10, "eval_every": 5},
        "final": {"test_acc": 0.5, "train_loss": None},
        "evals": [{"step": 0, "test_acc": 0.1, "train_loss": None}], "env": {}}


def _bad(**change):
    row = json.loads(json.dumps(GOOD))
    for k, v in change.items():
        if k.startswith("config_"):
            row["config"][k[7:]] = v
        elif v is _DROP:
            row.pop(k)
        else:
            row[k] = v
    return json.dumps(row).encode()


_DROP = object()

# (the bytes of one line, what the skip message must say)
BAD_LINES = [
    (b'{"kind": "run", "key": "cut sh', "not valid JSON"),
    (b"garbage", "not valid JSON"),
    (b"[1, 2, 3]", "expected a JSON object, got list"),
    (b"42", "expected a JSON object, got int"),
    (b'"text"', "expected a JSON object, got str"),
    (b"null", "expected a JSON object, got NoneType"),
    (b'{"kind": "run", "a\xff": 1}', "not UTF-8"),
    (_bad(key=_DROP), "needs a string 'key'"),
    (_bad(key=7), "needs a string 'key'"),
    (_bad(config=_DROP), "needs a 'config' object"),
    (_bad(config=[1]), "needs a 'config' object"),
    (_bad(config_arm=None), "string 'arm'"),
    (_bad(config_seed="0"), "integer 'seed'"),
    (_bad(config_x="big"), "'x' is neither a number nor null"),
    (_bad(config_steps="10"), "numeric 'steps'"),
    (_bad(final="0.5"), "'final' is not an object"),
    (_bad(final={"test_acc": "high"}), "final 'test_acc' is not a number"),
    (_bad(final={"test_acc": [1]}), "final 'test_acc' is not a number"),
    (_bad(evals={"step": 0}), "'evals' is not a list"),
    (_bad(evals=[{"test_acc": 1}]), "'evals' is not a list"),
    (_bad(evals=[{"step": 0, "test_acc": "x"}]), "evaluation 'test_acc' is not a number"),
    (_bad(evals=[{"step": 0, "probe": [[1, 2]]}]), "'probe' is not a list of 3"),
    (_bad(env=[]), "'env' is not an object"),
]


def test_the_good_row_is_good():
    assert row_problem(GOOD) is None
    assert row_problem({"kind": "bench", "op": "x"}) is None  # other kinds: an object


@pytest.mark.parametrize("line,message", BAD_LINES, ids=range(len(BAD_LINES)))
def test_a_bad_line_is_skipped_and_named(tmp_path, line, message):
    path = tmp_path / "rows.jsonl"
    append_row(path, GOOD)
    with open(path, "ab") as f:
        f.write(line + b"\n")
    append_row(path, {**GOOD, "key": "k2"})
    rows, skipped = read_rows(path)
    assert [r["key"] for r in rows] == ["k1", "k2"]  # the good rows around it are kept
    assert len(skipped) == 1 and skipped[0].startswith("line 2: ") and message in skipped[0]


# --------------------------------------------------------------------------------------------
# whole files are written atomically; a failed append leaves no partial row


def test_write_atomic_replaces_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "page.html"
    write_atomic(path, "old")
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["page.html"]


class _Boom(Exception):
    pass


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_atomic(path, "old")

    def fail(*a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        write_atomic(path, "new" * 1000)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["summary.json"]


@contextlib.contextmanager
def _tiny_tmpfs(tmp_path, size="256k"):
    mnt = tmp_path / f"full-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(r.stderr or r.stdout).strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(folder):
    """Fill the file system of ``folder`` to the last byte."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * chunk):
                    pass
    finally:
        os.close(fd)


def test_disk_full_append_and_atomic_write(tmp_path):
    with _tiny_tmpfs(tmp_path) as mnt:
        rows_path = mnt / "results.jsonl"
        append_row(rows_path, GOOD)
        write_atomic(mnt / "index.html", "<p>old page</p>")
        before = rows_path.read_bytes()
        fill(mnt)
        with pytest.raises(OSError) as e:
            append_row(rows_path, {**GOOD, "key": "k2", "pad": "x" * 20_000})
        assert e.value.errno == 28
        assert rows_path.read_bytes() == before  # no partial row left behind
        with pytest.raises(OSError):
            write_atomic(mnt / "index.html", "<p>new page</p>" * 10_000)
        assert (mnt / "index.html").read_text() == "<p>old page</p>"
        assert sorted(os.listdir(mnt)) == ["filler", "index.html", "results.jsonl"]
        assert [r["key"] for r in read_rows(rows_path)[0]] == ["k1"]
