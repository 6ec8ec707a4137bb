"""The lab's data sets are the same numbers in every process, whatever its torch thread count:
the Ray engine's driver builds them with its threads, a local worker with one (issue 14)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

_BUILD = """
import sys, numpy as np, torch
torch.set_num_threads(int(sys.argv[1]))
from normlab.lab import data
parts = []
for name in ("mnist1d", "digits", "tabular"):
    ds = data.load(name, 0)
    parts += [ds.x_train.numpy().ravel(), ds.x_test.numpy().ravel()]
np.save(sys.argv[2], np.concatenate([p.astype(np.float64) for p in parts]))
"""


@pytest.mark.slow
def test_data_sets_do_not_depend_on_the_thread_count(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    out = {}
    for n in (1, 2):
        out[n] = tmp_path / f"t{n}.npy"
        subprocess.run([sys.executable, "-c", _BUILD, str(n), str(out[n])], check=True,
                       env=env, timeout=300)
    a, b = np.load(out[1]), np.load(out[2])
    assert a.size > 100_000  # MNIST-1D's 160k values are in it (torch's mean parallelizes there)
    assert np.array_equal(a, b)
