"""A model built from normlab.nn layers trains like the same model built from torch.nn layers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import normlab.nn as nl


def _cnn(lib):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), lib.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), lib.GroupNorm(4, 8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), lib.InstanceNorm2d(8, affine=True), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 6 * 6, 16), lib.LayerNorm(16), nn.ReLU(),
        nn.Linear(16, 16), lib.RMSNorm(16), nn.Linear(16, 4))


@pytest.mark.parametrize("backend", [None, "reference"])
def test_trains_like_torch_nn(backend):
    torch.manual_seed(0)
    ref = _cnn(nn).double()
    ours = _cnn(nl).double()
    ours.load_state_dict(ref.state_dict(), strict=True)
    for m in ours.modules():
        if hasattr(m, "backend"):
            m.backend = backend
    opt_r = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    opt_o = torch.optim.SGD(ours.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, 6, 6, generator=g, dtype=torch.float64)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
    losses_r, losses_o = [], []
    for step in range(25):
        idx = torch.arange(step * 16, step * 16 + 16) % 64
        for model, opt, losses in ((ref, opt_r, losses_r), (ours, opt_o, losses_o)):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            losses.append(loss.item())
    torch.testing.assert_close(torch.tensor(losses_o), torch.tensor(losses_r), rtol=1e-6,
                               atol=1e-8)
    assert losses_o[-1] < losses_o[0]  # it learned something
    ref.eval()
    ours.eval()
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-6, atol=1e-8)


def test_deepcopy_and_pickle_roundtrip():
    m = nl.BatchNorm2d(4, activation="relu", channel_axis=-1)
    m2 = copy.deepcopy(m)
    assert repr(m2) == repr(m)
    x = torch.randn(2, 3, 3, 4)
    torch.testing.assert_close(m2(x), m(x))
