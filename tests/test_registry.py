from __future__ import annotations

import pytest
import torch

import normlab
import normlab.nn as nl

SHAPES = {"2d": (4, 12, 5, 5), "1d": (4, 12, 7), "0d": (4, 12)}
CASES = [(name, sid) for name in normlab.list_norm_layers() if name != "adain"
         for sid in SHAPES if not (name == "instance" and sid == "0d")]  # instance needs positions


@pytest.mark.parametrize("name,sid", CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_every_kind_replaces_every_other(name, sid):
    """One constructor convention: the channel count first, for any input rank."""
    shape = SHAPES[sid]
    m = normlab.create_norm_layer(name, 12)
    y = m(torch.randn(shape))
    assert y.shape == shape
    assert isinstance(m, normlab.get_norm_layer(name))


def test_registry_defaults():
    assert normlab.create_norm_layer("group", 64).num_groups == 32
    assert normlab.create_norm_layer("group", 48).num_groups == 16
    assert normlab.create_norm_layer("group", 12, num_groups=3).num_groups == 3
    ln = normlab.create_norm_layer("layer", 8)
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    want = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (8,)).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln.double()(x), want)
    nhwc = normlab.create_norm_layer("batch", 8, channel_axis=-1)
    assert nhwc.channel_axis == -1
    assert normlab.get_norm_layer("BATCH") is nl.BatchNorm
    a = normlab.create_norm_layer("adain", 3)
    assert a(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)).shape == (2, 3, 4, 4)
