from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from normlab.cli import main


def test_bench_writes_rows_and_table(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    threads = ["1", "2"] if (os.cpu_count() or 1) >= 2 else ["1"]
    assert main(["bench", "--quick", "--reps", "2", "--ops", "RMSNorm", "--out", str(out),
                 "--threads", *threads]) == 0
    printed = capsys.readouterr().out
    assert "RMSNorm" in printed and "worst normlab/torch.nn time ratio" in printed
    assert "base of copy" in printed and "normlab of copy" in printed
    assert printed.count("torch threads=") == len(threads)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["threads"] for r in rows} == {int(n) for n in threads}
    providers = {r["provider"] for r in rows}
    assert providers == {"torch.nn", "normlab", "copy_"}
    for r in rows:
        if r["provider"] != "copy_":  # effective bandwidth over copy's, in the same loop
            assert r["of_copy"] == pytest.approx(r["gbps"] / r["copy_gbps"])
    for r in rows:
        assert r["p20"] <= r["p50"] <= r["p80"] and r["gbps"] > 0
    nl_rows = [r for r in rows if r["provider"] == "normlab"]
    assert {r["mode"] for r in nl_rows} == {"forward", "forward+backward"}
    assert all(r["ratio"] > 0 and r["baseline"] == "torch.nn" for r in nl_rows)


def test_bench_pointwise_rows_name_their_baseline_and_memory(tmp_path, capsys):
    """Derf has no torch.nn twin: its rows are timed against the plain torch composition, with
    the recomputing variant and a layer norm in the same rotation, and the bytes each keeps."""
    out = tmp_path / "bench.jsonl"
    assert main(["bench", "--quick", "--reps", "2", "--ops", "Derf", "--out", str(out)]) == 0
    assert "baseline = torch w*erf(a*x+s)+b" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    timed = [r for r in rows if r["provider"] != "copy_"]
    assert {r["provider"] for r in timed} == {"torch w*erf(a*x+s)+b", "normlab",
                                              "normlab recompute", "torch.nn.LayerNorm"}
    assert all(r["baseline"] == "torch w*erf(a*x+s)+b" and r["ratio"] > 0 for r in timed)
    saved = {r["provider"]: r["saved_mb"] for r in timed if r["mode"] == "forward+backward"}
    # 2048 x 1024 float32 = 8 MiB per buffer: the composition keeps erf's input and output;
    # normlab runs its numba kernels there (2 Mi elements, over the 1 Mi threshold), which
    # recompute erf in the backward: nothing beyond x, as the recomputing variant of the native
    # path; the layer norm keeps its 2048 means and rstds
    assert saved == {"torch w*erf(a*x+s)+b": 16.0, "normlab": 0.0, "normlab recompute": 0.0,
                     "torch.nn.LayerNorm": 2 * 2048 * 4 / 2 ** 20}


def test_bad_arguments_exit_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--reps", "0"])
    assert e.value.code == 2
    assert "expected an integer in [1, 10000], got '0'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["bench", "--ops", "Nope"])
    assert e.value.code == 2


def test_console_entry_points():
    r = subprocess.run([sys.executable, "-m", "normlab", "--version"], capture_output=True,
                       text=True, check=True)
    assert r.stdout.startswith("normlab ")
    r = subprocess.run([sys.executable, "-m", "normlab", "bench", "--help"], capture_output=True,
                       text=True, check=True)
    assert "--quick" in r.stdout


# the argument errors of every subcommand: exit 2 and a line naming the argument (argparse
# prints its usage line before it), never a traceback and nothing written
BAD_ARGUMENTS = [
    (["lab", "--out", ""], r"argument --out: expected a path, got an empty string"),
    (["lab", "--seeds", "0"], r"argument --seeds: expected an integer in \[1, 100\]"),
    (["report", ""], r"argument dir: expected a path, got an empty string"),
    (["bench", "--out", " "], r"argument --out: expected a path"),
    (["bench", "--threads", "100000"], r"argument --threads: expected an integer in \[1, \d+\] "
                                       r"\(the number of cores\)"),
    (["bench", "--reps", "1000000"], r"argument --reps: expected an integer in \[1, 10000\]"),
    (["style", "--demo", "--out", ""], r"argument --out: expected a path"),
    (["style", "--demo", "--out", "o.png", "--size", "8"],
     r"argument --size: expected an integer in \[16, 1024\] \(the encoder's 16"),
    (["style", "--demo", "--out", "o.png", "--size", "100000"],
     r"argument --size: expected an integer in \[16, 1024\]"),
    (["style", "--demo", "--out", "o.png", "--steps", "10000000"],
     r"argument --steps: expected an integer in \[1, 10000\]"),
    (["explain", "batch", "--out", "x.txt"], r"argument --out: expected a .png file, got 'x.txt'"),
    (["explain", "batch", "--out", ""], r"argument --out: expected a path"),
    (["explain", "batch", "--shape", "1000,1000,1000,1000"],
     r"argument --shape: expected at most 1000000 elements"),
    (["explain", "batch", "--shape", "4,64,8,8", "--out", "big.png"],
     r"argument --out: a picture of at most 4096 elements"),
    (["explain", "group", "--groups", "4"], r"--groups 4 does not divide the 6 channels"),
]


@pytest.mark.parametrize("args,pattern", BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_bad_arguments_of_every_subcommand(args, pattern, tmp_path, capsys, monkeypatch):
    import re

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.search(pattern, err.strip().splitlines()[-1]), err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_explain_writes_a_png_atomically(tmp_path, capsys):
    out = tmp_path / "g.png"
    assert main(["explain", "group", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png"]  # no temporary left
