from __future__ import annotations

import json
import subprocess
import sys

import pytest

from normlab.cli import main


def test_bench_writes_rows_and_table(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    assert main(["bench", "--quick", "--reps", "2", "--ops", "LayerNorm", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "LayerNorm" in printed and "worst normlab/torch.nn time ratio" in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    providers = {r["provider"] for r in rows}
    assert providers == {"torch.nn", "normlab", "copy_"}
    for r in rows:
        assert r["p20"] <= r["p50"] <= r["p80"] and r["gbps"] > 0
    nl_rows = [r for r in rows if r["provider"] == "normlab"]
    assert {r["mode"] for r in nl_rows} == {"forward", "forward+backward"}
    assert all(r["ratio"] > 0 and r["baseline"] == "torch.nn" for r in nl_rows)


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
