"""The lab's reliability (issue 19): settings checked before any run, bad rows and files
skipped with the line named, one lab per folder, workers that die with their parent, Ctrl-C
that keeps what finishes, a full disk that costs one line and no row."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from normlab.cli import main
from normlab.lab.claims import BASE, CHECKS
from normlab.lab.study import run_lab
from normlab.results import read_rows
from normlab.results.stats import claim_verdict

# a lab of 4 tiny runs (MLP of 8 on the breast-cancer table, 5 steps): seconds, not minutes
TINY = ["--only", "placement", "--quick", "--seeds", "2", "--data=tabular", "--hidden=8",
        "--eval_every=5", "--steps=5", "--no-progress"]
TINY_OVERRIDES = {"data": "tabular", "hidden": [8], "eval_every": 5, "steps": 5}


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------------------------
# the bad settings table: each is exit 2, one line naming key, expectation and value, and
# nothing is run (the folder is not even created)

BAD_SETTINGS = [
    (["--lr=nan"], r"--lr=nan: expected a finite number in \(0, 100\], got 'nan'"),
    (["--lr=inf"], r"--lr=inf: expected a finite number"),
    (["--lr=0"], r"--lr=0.0: expected a finite number in \(0, 100\]"),
    (["--batch_size=0"], r"--batch_size=0: expected an integer in \[1, 4096\], got '0'"),
    (["--steps=0"], r"--steps=0: expected an integer in \[1, 1000000\]"),
    (["--hidden="], r"--hidden=: expected a comma-separated list of 1 to 16 items.*got an "
                    r"empty list"),
    (["--hidden=0,8"], r"--hidden=0,8: expected .* each an integer in \[1, 4096\]"),
    (["--eval_every=0"], r"--eval_every=0: expected an integer in \[1, 1000000\]"),
    (["--data=imagenet"], r"--data=imagenet: expected one of mnist1d, digits, digits_rgb, "
                          r"tabular, mnist1d_seq, mnist1d_tokens, got 'imagenet'"),
    (["--momentum=-0.1"], r"--momentum=-0.1: expected a finite number in \[0, 1\)"),
    (["--dropout=1.5"], r"--dropout=1.5: expected a finite number in \[0, 1\)"),
    (["--activation=gelu"], r"--activation=gelu: expected one of relu, sigmoid, tanh"),
    (["--optimizer=lbfgs"], r"--optimizer=lbfgs: expected one of sgd, adam"),
    (["--placement=middle"], r"--placement=middle: expected one of before, after"),
    (["--kernel_size=0"], r"--kernel_size=0: expected an integer in \[1, 15\]"),
    (["--test_shifts=blur"], r"--test_shifts=blur: expected .* one of contrast, brightness"),
    (["--seq_lengths=40-20"], r"--seq_lengths=40-20: expected .* 1 <= lo <= hi"),
    (["--rnn_hidden=0"], r"--rnn_hidden=0: expected an integer in \[1, 4096\]"),
    (["--lr=abc"], r"--lr=abc: expected float"),
    # between keys, on a claim's resolved runs
    (["--data=mnist1d_seq"], r"claim .*: models rnn and seqcnn need data mnist1d_seq.*"
                             r"\(got model=mlp, --data=mnist1d_seq\)"),
    (["--only", "placement", "--model=cnn", "--data=tabular"],
     r"claim placement, arm before: model cnn needs data with positions .*\(got --model=cnn, "
     r"--data=tabular\)"),
    (["--only", "regularization", "--test_shifts=contrast"], r"test_shifts need image data"),
    # an override that every chosen claim sets itself would be silently ignored
    (["--norm=batch"], r"--norm=batch: every chosen claim sets norm itself"),
    (["--only", "placement", "--placement=after"], r"every chosen claim sets placement"),
    # the CLI's own arguments
    (["--only", ",,"], r"--only: no claim named"),
    (["--only", " "], r"--only: no claim named"),
    (["--seeds", "1000"], r"--seeds: expected an integer in \[1, 100\]"),
    (["--workers", "100000"], r"--workers: expected an integer in \[1, \d+\] \(the number of "
                              r"cores\)"),
]


def _exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own errors
        return exc.code


@pytest.mark.parametrize("args,pattern", BAD_SETTINGS, ids=[" ".join(a) for a, _ in BAD_SETTINGS])
def test_a_bad_setting_is_one_line_before_any_run(args, pattern, tmp_path, capsys):
    out = tmp_path / "lab"
    assert _exit_code(["lab", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]  # argparse prints its usage line first
    assert re.search(pattern, line), line
    if args[0] not in ("--seeds", "--workers"):
        _one_line(err)
    assert not out.exists()  # checked before any run: nothing was written


def test_every_base_key_has_a_check_that_its_default_passes():
    assert set(CHECKS) == set(BASE)
    for key, check in CHECKS.items():
        assert check.ok(BASE[key]), key


def test_a_preset_never_raises_steps_above_the_setting():
    from normlab.lab.study import plan_study

    _, plans, _ = plan_study("quick", only=["placement"], overrides={"steps": 10})
    assert {cfg["steps"] for runs in plans.values() for cfg in runs} == {10}


# --------------------------------------------------------------------------------------------
# a target never reached is not a measured zero


def test_a_target_never_reached_is_not_measured(tmp_path, capsys):
    from normlab.cli import _print_summary
    from normlab.report import render_report

    claim = {"id": "fast", "title": "Fast", "effect": {"metric": "steps_to:test_acc:0.9",
             "arm": "a", "baseline": "b", "better": "lower"},
             "figure": {"type": "curve", "key": "test_acc"}, "run_keys": []}
    rows = []
    for arm in ("a", "b"):
        for seed in range(3):
            key = f"{arm}{seed}"
            claim["run_keys"].append(key)
            rows.append({"kind": "run", "key": key, "claim": "fast",
                         "config": {"arm": arm, "seed": seed, "x": None, "steps": 10,
                                    "eval_every": 5},
                         "evals": [{"step": s, "test_acc": 0.5} for s in (0, 5, 10)],
                         "final": {"test_acc": 0.5}, "status": "ok", "env": {}})
    v = claim_verdict(claim, rows)
    assert v["verdict"] == "inconclusive" and v["effect"] is None and v["ci"] is None
    assert "never reached" in v["note"]
    _print_summary({"claims": [v]})
    printed = capsys.readouterr().out
    assert "never reached" in printed and "[0, 0]" not in printed
    # one seed where an arm got there: measured, the both-censored seeds left out
    rows[0]["evals"][-1]["test_acc"] = 0.95
    v = claim_verdict(claim, rows)
    assert v["n_seeds"] == 1 and v["effect"] == 5.0 and "2 seed(s)" in v["note"]  # 15 - 10
    rows[0]["evals"][-1]["test_acc"] = 0.5
    (tmp_path / "claims.json").write_text(json.dumps({"claims": [claim]}))
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    render_report(tmp_path)
    page = (tmp_path / "index.html").read_text()
    assert page.count("not measured: the target was never reached in any run") == 2


# --------------------------------------------------------------------------------------------
# the bad rows and files table: report and resume warn, naming the line, and keep the rest


@pytest.fixture(scope="module")
def tiny_lab(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "lab"
    assert main(["lab", "--out", str(out), "--workers", "1", *TINY]) == 0
    return out


BAD_ROWS = [
    b'{"kind": "run", "key": "cut sh',
    b"[1, 2]",
    b"3.5",
    b'{"kind": "run", "config": {"arm": "before", "seed": 0}}',
    b'{"kind": "run", "key": "k", "claim": "placement", "config": {"arm": "before", '
    b'"seed": 0, "steps": 5, "eval_every": 5}, "final": {"test_acc": "high"}}',
    b'{"kind": "run", "key": "\xff\xfe"}',
]


@pytest.mark.slow
def test_bad_rows_and_files_are_skipped_with_the_line_named(tiny_lab, tmp_path, capsys):
    out = tmp_path / "lab"
    shutil.copytree(tiny_lab, out)
    good = json.loads((out / "summary.json").read_text())
    n_good = len(read_rows(out / "results.jsonl")[0])
    with open(out / "results.jsonl", "ab") as f:
        for line in BAD_ROWS:
            f.write(line + b"\n")
    claims = json.loads((out / "claims.json").read_text())
    claims["claims"].append(["not", "a", "claim"])
    claims["claims"].append({"id": "x", "title": "y", "effect": {"metric": "nope:1", "arm": "a",
                                                                 "baseline": "b",
                                                                 "better": "higher"},
                             "figure": {"type": "bars"}})
    (out / "claims.json").write_text(json.dumps(claims))
    (out / "config.json").write_text("[1, 2, 3]")
    assert main(["report", str(out)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for i in range(len(BAD_ROWS)):
        assert f"results.jsonl line {n_good + 1 + i}:" in err, err
    assert "claims.json claim entry 2: expected an object" in err
    assert "claims.json claim entry 3: unknown metric 'nope:1'" in err
    assert "config.json: expected an object, got list; ignored" in err
    assert json.loads((out / "summary.json").read_text()) == good  # good rows all kept
    # resume: the same warnings from the lab, nothing retrained, same verdicts
    (out / "claims.json").write_text('{"claims": 7}')  # the lab rewrites its own files
    assert main(["lab", "--out", str(out), "--workers", "1", *TINY]) == 0
    captured = capsys.readouterr()
    for i in range(len(BAD_ROWS)):
        assert f"results.jsonl line {n_good + 1 + i}:" in captured.err
    assert "0 runs trained, 4 already done" in captured.out
    assert json.loads((out / "summary.json").read_text()) == good


def test_a_claims_json_of_the_wrong_shape_is_one_line(tmp_path, capsys):
    for text in ("[1]", '{"claims": 3}', "\xff", "{"):
        (tmp_path / "claims.json").write_bytes(text.encode("latin-1"))
        assert main(["report", str(tmp_path)]) == 2
        assert "claims.json: " in _one_line(capsys.readouterr().err)


# --------------------------------------------------------------------------------------------
# processes: one lab per folder, workers die with their parent, Ctrl-C keeps what finishes


def _lab(out, *extra, workers=1):
    return subprocess.Popen([sys.executable, "-m", "normlab", "lab", "--out", str(out),
                             "--workers", str(workers), *TINY[:-3], *extra, "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_rows(out, n, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if len(read_rows(Path(out) / "results.jsonl")[0]) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {n} rows in time: {proc.poll()} {proc.stderr.read()[-2000:]}")


def _children(pid: int) -> set[int]:
    """Live child processes of ``pid``, from /proc (no psutil)."""
    kids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.add(int(entry))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_two_labs_on_one_folder(tmp_path, capsys):
    out = tmp_path / "lab"
    first = _lab(out, "--steps=5", "--eval_every=5", "--seeds", "40")
    try:
        _wait_rows(out, 1, first)  # the first lab holds the folder and is running
        before = (out / "claims.json").read_bytes()
        assert main(["lab", "--out", str(out), *TINY]) == 2
        line = _one_line(capsys.readouterr().err)
        assert f"{out} is in use by another normlab process (pid {first.pid})" in line
        assert (out / "claims.json").read_bytes() == before  # the second wrote nothing
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    # killed: the OS released the lock, so the next lab goes ahead (no stale lock)
    result = run_lab(out, preset="quick", only=["placement"], seeds=2, workers=1,
                     overrides=TINY_OVERRIDES, progress=False)
    assert result["counts"]["planned"] == 4
    keys = [r["key"] for r in read_rows(out / "results.jsonl")[0]]
    assert len(keys) == len(set(keys))  # no run trained twice


def _ignores_sigint(pid: int) -> bool:
    """Whether ``pid`` ignores SIGINT: what a lab worker's initializer sets first."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = int(status.split("SigIgn:")[1].split()[0], 16)
    return bool(mask & (1 << (signal.SIGINT - 1)))


def _is_worker(pid: int) -> bool:
    """A spawned pool worker, not multiprocessing's resource tracker (which ignores SIGINT
    too, and starts at about the same time)."""
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_workers_die_with_their_parent(tmp_path):
    out = tmp_path / "lab"
    proc = _lab(out, "--steps=20000", "--eval_every=10000", "--seeds", "4", workers=2)
    try:
        deadline, kids = time.time() + 90, set()
        while time.time() < deadline and len(kids) < 2 and proc.poll() is None:
            kids = {k for k in _children(proc.pid) if _ignores_sigint(k) and _is_worker(k)}
            time.sleep(0.1)
        assert len(kids) == 2, "the workers did not start"
        time.sleep(0.5)  # the workers are in their (30 s) runs now
        os.kill(proc.pid, signal.SIGKILL)  # the parent only, not its group
        proc.wait()
        deadline = time.time() + 5
        while time.time() < deadline and _group_alive(proc.pid):
            time.sleep(0.05)
        assert not [k for k in kids if _alive(k)], "a worker outlived its parent"
        assert not _group_alive(proc.pid)  # nor anything else the lab started
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_ctrl_c_keeps_what_finishes_and_starts_nothing_new(tmp_path):
    out = tmp_path / "lab"
    # default preset (no scaling): 8 runs of 300 steps, 2 at a time
    proc = subprocess.Popen([sys.executable, "-m", "normlab", "lab", "--out", str(out),
                             "--workers", "2", "--only", "placement", "--seeds", "4",
                             "--data=tabular", "--hidden=8", "--steps=300",
                             "--eval_every=100", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    _wait_rows(out, 1, proc)
    at_signal = len(read_rows(out / "results.jsonl")[0])
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    rows, skipped = read_rows(out / "results.jsonl")
    assert skipped == []
    # the runs in flight (at most one per worker, +1 if a run ended between the count and the
    # signal) finished and were kept; nothing else started
    assert at_signal < len(rows) <= at_signal + 3, (at_signal, len(rows))
    assert len(rows) < 8  # the runs not started were cancelled
    assert "interrupted" in err and "Traceback" not in err
    assert not _children(proc.pid)


# --------------------------------------------------------------------------------------------
# a full disk: one line, exit 2, the rows intact and the old page whole


@pytest.mark.slow
def test_disk_full_is_one_line_and_keeps_the_rows(tiny_lab, tmp_path, capsys):
    from tests.test_results import _tiny_tmpfs, fill

    with _tiny_tmpfs(tmp_path, size="2m") as mnt:
        out = mnt / "lab"
        shutil.copytree(tiny_lab, out)
        rows_before = (out / "results.jsonl").read_bytes()
        page_before = (out / "index.html").read_bytes()
        fill(mnt)
        assert main(["report", str(out)]) == 2
        line = _one_line(capsys.readouterr().err)
        assert line.startswith("normlab report: error: cannot write") and \
            "No space left on device" in line
        assert (out / "index.html").read_bytes() == page_before
        # the lab on the full disk (2 more seeds to run): one line, every row still valid
        assert main(["lab", "--out", str(out), "--workers", "1", *TINY[:4], "4",
                     *TINY[5:]]) == 2
        line = _one_line(capsys.readouterr().err)
        assert "No space left on device" in line
        rows, skipped = read_rows(out / "results.jsonl")
        assert skipped == [] and (out / "results.jsonl").read_bytes().startswith(rows_before)
        assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
